"""Response caching around a pipeline run: the ``cache:`` block of a pipeline file.

A pipeline may name a cache resource (a :class:`ResponseCache`, e.g. ``semantic_cache``) that is
consulted before any stage runs::

    resources:
      qa_cache: {type: semantic_cache, embedder: embedder, store: graph, path: .ragkit/qa-cache.sqlite}
    cache:
      resource: qa_cache
      question: question        # the pipeline input used as the lookup key (default)
      answer: true              # an answer hit returns the stored outputs: no stage runs
      query_stage: querygen     # a query hit reuses this stage's output; the stages only it needs are skipped

Two levels, cheapest first:

1. **answer**: the declared outputs of an earlier run of a question with the same meaning are
   returned at once. The trace then has one line, the cache's.
2. **query** (when ``query_stage`` is set): the stored output of that stage (the generated query) is
   used instead of running it, and the stages whose only purpose was to feed it (schema reading,
   example retrieval, entity linking) are skipped; the query still runs against the store and the
   answer is generated from fresh rows.

On a miss the pipeline runs as usual and, when its ``error`` output is empty, both levels are stored.
The cache line of the trace (named ``cache:<resource>``) notes ``answer_cache``/``query_cache`` as
``hit``, ``miss`` or ``refused``, the similarity, and invalidated entries. A cache that fails (a
locked or unreadable file) is logged and bypassed: it must never stop a pipeline from answering.

Entries are namespaced by a hash of the pipeline's definition (its resources and stages, the cache
itself excluded), so two pipelines sharing one cache file never serve each other's answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import Resource
from ragkit.core.metrics import StageTrace, Trace, recording
from ragkit.errors import ConfigError, RagkitError

if TYPE_CHECKING:
    from ragkit.core.pipeline import Pipeline, PipelineResult
    from ragkit.core.stage import Output

logger = logging.getLogger(__name__)

__all__ = ["ResponseCache", "CacheLookup", "CacheSpec", "run_cached", "pipeline_namespace"]


@dataclass
class CacheLookup:
    """What one lookup found."""

    hit: bool
    payload: dict[str, Any] | None = None
    similarity: float | None = None
    """Cosine similarity of the best candidate (the hit's, or the best refused one)."""
    matched: str | None = None
    """The stored question that matched (or the best refused one)."""
    refused: list[str] = field(default_factory=list)
    """Why near-duplicates above the threshold were refused (the meaning guard's reasons)."""
    invalidated: int = 0
    """Entries dropped during this lookup because the data changed or they expired."""


class ResponseCache(Resource):
    """A cache of pipeline results keyed by question. :class:`~ragkit.stages.cache.semantic.SemanticCache` implements it."""

    def lookup(self, question: str, *, kind: str, namespace: str) -> CacheLookup:
        """The stored payload for ``question`` (or one meaning the same), for this kind and namespace."""
        raise NotImplementedError

    def put(self, question: str, payload: dict[str, Any], *, kind: str, namespace: str) -> None:
        """Remember ``payload`` (JSON-able) for ``question``."""
        raise NotImplementedError

    def stats(self, namespace: str | None = None) -> dict[str, int]:
        """Counters: ``hits``, ``misses``, ``refusals``, ``invalidations``, ``stores``, ``entries``."""
        raise NotImplementedError

    def clear(self, namespace: str | None = None) -> int:
        """Drop entries (all, or one namespace's). Returns how many."""
        raise NotImplementedError


class CacheSpec(BaseModel):
    """The ``cache:`` block of a pipeline file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resource: str
    """The name of a cache resource declared under ``resources:``."""
    question: str = "question"
    """The pipeline input whose text is the lookup key."""
    answer: bool = True
    """Cache the declared outputs; a hit runs no stage."""
    query_stage: str | None = None
    """Also cache this stage's output; a hit skips it and the stages only it needs."""


def check_spec(pipe: Pipeline, spec: CacheSpec) -> list[tuple[str, str]]:
    """Problems with ``spec`` in ``pipe``, as (field, message) pairs."""
    problems: list[tuple[str, str]] = []
    res = pipe.resources.get(spec.resource)
    if res is None:
        declared = ", ".join(pipe.resources) or "none"
        problems.append(("resource", f"cache: resource '{spec.resource}' is not declared (declare it under resources:; declared: {declared})"))
    elif not isinstance(res, ResponseCache):
        problems.append(
            ("resource", f"cache: resource '{spec.resource}' is a {type(res).type_name or type(res).__name__}, not a cache (use e.g. type: semantic_cache)")
        )
    if spec.question not in pipe.inputs:
        problems.append(("question", f"cache: the pipeline has no input '{spec.question}' (inputs: {', '.join(pipe.inputs) or 'none'})"))
    if spec.query_stage is not None and spec.query_stage not in pipe.stages:
        problems.append(("query_stage", f"cache: no stage named '{spec.query_stage}' (stages: {', '.join(pipe.stages)})"))
    if not spec.answer and spec.query_stage is None:
        problems.append(("answer", "cache: caches nothing (set answer: true, or name a query_stage)"))
    return problems


def pipeline_namespace(pipe: Pipeline) -> str:
    """A short hash of the pipeline's definition without its cache: equal pipelines share entries."""
    try:
        d = pipe.to_dict()
    except ConfigError:  # unregistered Python stages: fall back on their classes and parameters
        d = {"stages": {n: [type(s).__qualname__, repr(s)] for n, s in pipe.stages.items()}, "connections": [str(c) for c in pipe.connections]}
    d.pop("cache", None)
    if pipe.cache is not None:
        d.get("resources", {}).pop(pipe.cache.resource, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def run_cached(
    pipe: Pipeline,
    data: dict[str, Any],
    *,
    on_token: Callable[[str], None] | None,
    stream_stage: str | None,
    on_stage: Callable[[str, Output], None] | None,
) -> PipelineResult:
    """Run ``pipe`` on ``data`` through its cache (see the module docstring)."""
    from ragkit.core.pipeline import PipelineResult

    spec = pipe.cache
    assert spec is not None
    question = data.get(spec.question)
    cache = pipe.resources.get(spec.resource)
    if not isinstance(question, str) or not question.strip() or not isinstance(cache, ResponseCache):
        return pipe.run(data, on_token=on_token, stream_stage=stream_stage, on_stage=on_stage, use_cache=False)

    start = time.perf_counter()
    line = StageTrace(name=f"cache:{spec.resource}", type=type(cache).type_name or type(cache).__name__)
    namespace = pipeline_namespace(pipe)
    precomputed: dict[str, Any] = {}
    with recording(line) as rec:
        try:
            if spec.answer:
                found = cache.lookup(question, kind="answer", namespace=namespace)
                if found.hit and found.payload is not None:
                    outputs = dict(found.payload.get("outputs", {}))
                    rec.note("served", "answer")
                    trace = Trace(stages=[line])
                    answer = outputs.get("answer")
                    if on_token is not None and isinstance(answer, str) and answer:
                        trace.ttft = time.perf_counter() - start
                        on_token(answer)
                    line.seconds = time.perf_counter() - start
                    trace.seconds = line.seconds
                    return PipelineResult(outputs=outputs, stage_outputs={}, trace=trace)
            if spec.query_stage is not None:
                found = cache.lookup(question, kind="query", namespace=namespace)
                if found.hit and found.payload is not None:
                    model = type(pipe.stages[spec.query_stage]).output_type()
                    if model is not None:
                        precomputed[spec.query_stage] = model.model_validate(found.payload["output"])
                        rec.note("served", "query")
        except (RagkitError, OSError, ValueError, KeyError) as e:  # a broken cache must not stop answers
            logger.warning("cache '%s' failed, running without it: %s", spec.resource, e)
            rec.note("cache_error", f"{type(e).__name__}: {e}")
            precomputed = {}
    lookup_seconds = time.perf_counter() - start
    result = pipe.run(data, on_token=on_token, stream_stage=stream_stage, on_stage=on_stage, use_cache=False, precomputed=precomputed)
    result.trace.stages.insert(0, line)
    result.trace.seconds += lookup_seconds
    if result.trace.ttft is not None:
        result.trace.ttft += lookup_seconds
    if not result.outputs.get("error") and "cache_error" not in line.extra:
        t0 = time.perf_counter()
        try:
            if spec.answer:
                cache.put(question, {"outputs": _jsonable(result.outputs)}, kind="answer", namespace=namespace)
            qs = spec.query_stage
            if qs is not None and qs not in precomputed and qs in result.stage_outputs:
                cache.put(question, {"output": _jsonable(result.stage_outputs[qs])}, kind="query", namespace=namespace)
        except (RagkitError, OSError, ValueError) as e:
            logger.warning("cache '%s' could not store a result: %s", spec.resource, e)
            line.extra["cache_error"] = f"{type(e).__name__}: {e}"
        line.extra["store_seconds"] = round(time.perf_counter() - t0, 6)
    return result
