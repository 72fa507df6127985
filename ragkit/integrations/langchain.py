"""A ragkit pipeline as a LangChain ``Runnable``, and LangChain parts inside ragkit pipelines.

Both directions need only ``langchain-core`` (``pip install 'ragkit[langchain]'``):

* :class:`PipelineRunnable` (or :func:`as_runnable`) wraps a :class:`~ragkit.Pipeline`: ``invoke``,
  ``batch`` and ``stream`` take a question string (for a pipeline with a ``question`` input) or a
  dict of inputs, and give the pipeline's outputs dict. ``stream`` yields ``{"answer": piece}``
  chunks as the answer is generated, then one chunk with the other outputs; chunks add up (``+``)
  to the full outputs dict, as LangChain's streaming of dicts expects.
* ``langchain_retriever`` (:class:`~ragkit.stages.retrievers.langchain.LangChainRetriever`): a
  LangChain retriever as a stage.
* ``langchain_chat_model`` (:class:`~ragkit.models.langchain.LangChainChatModel`): a LangChain chat
  model as an LLM resource.

``batch`` runs one input at a time unless ``max_concurrency`` is set in the config: local models
share one CPU, and running them in parallel threads is slower, not faster.

Example:
    >>> from ragkit import Pipeline
    >>> from ragkit.testing import EchoStage, UpperStage
    >>> from ragkit.integrations.langchain import as_runnable
    >>> pipe = Pipeline().add_stage("echo", EchoStage()).add_stage("upper", UpperStage())
    >>> _ = pipe.connect("echo.text", "upper.text").add_input("text", "echo.text").add_output("out", "upper.text")
    >>> chain = as_runnable(pipe)
    >>> chain.invoke({"text": "hi"})
    {'out': 'HI'}
    >>> chain.batch([{"text": "a"}, {"text": "b"}])
    [{'out': 'A'}, {'out': 'B'}]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from ragkit.core.pipeline import Pipeline
from ragkit.errors import InputError
from ragkit.models.langchain import LangChainChatModel, require_langchain
from ragkit.stages.retrievers.langchain import LangChainRetriever

require_langchain("ragkit.integrations.langchain")

from langchain_core.runnables import Runnable, RunnableConfig  # noqa: E402
from langchain_core.runnables.config import get_config_list  # noqa: E402
from langchain_core.runnables.utils import AddableDict  # noqa: E402

__all__ = ["PipelineRunnable", "as_runnable", "LangChainRetriever", "LangChainChatModel"]

_DONE = object()


class PipelineRunnable(Runnable[Any, dict[str, Any]]):
    """A ragkit pipeline as a LangChain Runnable (see the module docstring).

    Args:
        pipeline: the pipeline to run.
        with_trace: add the run's trace (``Trace.to_dict()``) to the outputs under ``"trace"``.
    """

    def __init__(self, pipeline: Pipeline, *, with_trace: bool = False) -> None:
        self.pipeline = pipeline
        self.with_trace = with_trace

    def _inputs(self, value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            if "question" not in self.pipeline.inputs:
                raise InputError(f"this pipeline has no 'question' input; pass a dict of its inputs ({', '.join(self.pipeline.inputs)})")
            return {"question": value}
        if isinstance(value, dict):
            return dict(value)
        raise InputError(f"pass a question string or a dict of pipeline inputs, not {type(value).__name__}")

    def _outputs(self, result: Any) -> dict[str, Any]:
        out = dict(result.outputs)
        if self.with_trace:
            out["trace"] = result.trace.to_dict()
        return out

    def _run(self, value: Any) -> dict[str, Any]:
        return self._outputs(self.pipeline.run(self._inputs(value)))

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:  # noqa: A002
        return self._call_with_config(self._run, input, config)

    def batch(
        self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *, return_exceptions: bool = False, **kwargs: Any
    ) -> list[dict[str, Any]]:
        configs = [RunnableConfig(**{**c, "max_concurrency": c.get("max_concurrency") or 1}) for c in get_config_list(config, len(inputs))]
        return super().batch(inputs, configs, return_exceptions=return_exceptions, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:  # noqa: A002
        inputs = self._inputs(input)
        key = "answer" if "answer" in self.pipeline.outputs else "tokens"
        pieces: queue.Queue[Any] = queue.Queue()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = self.pipeline.run(inputs, on_token=pieces.put)
            except BaseException as e:  # noqa: BLE001  (handed to the consumer's thread)
                box["error"] = e
            finally:
                pieces.put(_DONE)

        thread = threading.Thread(target=work, name="ragkit-stream", daemon=True)
        thread.start()
        streamed = []
        while True:
            piece = pieces.get()
            if piece is _DONE:
                break
            streamed.append(piece)
            yield AddableDict({key: piece})
        thread.join()
        if "error" in box:
            raise box["error"]
        rest = self._outputs(box["result"])
        if streamed:
            rest.pop(key, None)  # its text has been streamed; the chunks add up to it
        yield AddableDict(rest)


def as_runnable(pipeline: Pipeline | str, *, with_trace: bool = False) -> PipelineRunnable:
    """A :class:`PipelineRunnable` for ``pipeline`` (a Pipeline, or the path of a pipeline file)."""
    pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.from_yaml(pipeline)
    return PipelineRunnable(pipe, with_trace=with_trace)
