"""Where evaluation items run: in this process (``local``) or spread over a Ray cluster (``ray``).

An evaluation is a list of :class:`GraphJob` objects, one per graph: the pipeline definition, the
graph file, the few-shot bank built for that graph, and the items to run. An engine turns a job into
one prediction row per item (see :func:`ragkit.eval.kgqa._run_one` for a row's fields).

* :class:`LocalEngine` builds the pipeline once per graph and runs the items one after the other,
  or ``concurrency`` at a time in threads when every component of the pipeline is thread-safe; the
  local model then decodes the queries of concurrent items together in batches (``LocalLLM(max_batch=...)``).
* :class:`RayEngine` splits a job's items into chunks and runs each chunk as a Ray task that builds
  its own pipeline (a worker process keeps loaded model weights between tasks, so a model loads
  once per worker, not once per chunk). Rows come back as chunks finish; the evaluation writes
  them to the predictions file as it does locally, so an interrupted run resumes the same way.

Decoding is greedy and the few-shot protocol is per item, so both engines give the same rows; only
the timings differ. A pipeline's ``cache:`` block is ignored during evaluation. ``ray.init()`` connects to ``$RAY_ADDRESS`` when it is set (an existing
cluster), else starts a local one with as many workers as cores. Workers must see the dataset and
model files at the same paths (a shared filesystem, or the same image on every node).

Example:
    >>> from ragkit.eval.engines import get_engine
    >>> get_engine("local").name
    'local'
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ragkit.errors import MissingDependencyError, RagkitError, UserError

logger = logging.getLogger(__name__)

__all__ = ["GraphJob", "Engine", "LocalEngine", "RayEngine", "get_engine", "ENGINES"]

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class GraphJob:
    """The items of one graph and everything needed to run them anywhere."""

    spec: dict[str, Any]
    """The pipeline definition (``Pipeline.to_dict()``)."""
    source: str
    """The pipeline file, for messages."""
    graph_file: str
    bank_text: str
    """The few-shot bank for this graph, as JSON Lines."""
    items: list[Any]
    """:class:`~ragkit.eval.kgqa.KgqaItem` objects."""
    gold_rows: dict[Any, Any]
    skip_answer: bool = False
    cwd: str = ""
    """The working directory relative paths in the pipeline refer to."""
    adapters: dict[str, str] = field(default_factory=dict)
    """Per-resource LoRA adapter folders for these items (k-fold fine-tuned models)."""
    concurrency: int = 1
    """Items run at once, in threads (the pipeline's components must all be thread-safe)."""


def run_job(job: GraphJob) -> list[dict[str, Any]]:
    """Run every item of ``job`` here and return its prediction rows (what a Ray task executes)."""
    if job.cwd and Path(job.cwd).is_dir() and os.getcwd() != job.cwd:
        os.chdir(job.cwd)  # a worker process starts elsewhere; the pipeline's relative paths must resolve
    return list(_iter_job(job))


def _iter_job(job: GraphJob) -> Iterator[dict[str, Any]]:
    from ragkit.eval import kgqa  # late: kgqa imports this module

    with tempfile.TemporaryDirectory(prefix="ragkit-job-") as tmp:
        bank_file = Path(tmp) / "bank.jsonl"
        bank_file.write_text(job.bank_text, encoding="utf-8")
        # A response cache would let one item's answer serve another's and hide the items' latency:
        # evaluation measures the pipeline itself.
        spec = {k: v for k, v in job.spec.items() if k != "cache"}
        pipe = kgqa._pipeline_for_graph(spec, Path(job.graph_file), bank_file, job.source, job.adapters)
        kept = [o for o in ("query", "rows", "confidence", "error") if o in pipe.outputs]
        runner = pipe.upstream(*kept) if job.skip_answer else pipe
        banks = [r for r in pipe.resources.values() if type(r).type_name == "example_bank"]
        try:
            runner.warm_up()
            schema = kgqa._store_schema(pipe)
            if job.concurrency <= 1 or len(job.items) <= 1:
                for it in job.items:
                    yield kgqa._run_one(runner, banks, it, job.gold_rows, schema)
            else:
                yield from _run_concurrently(runner, banks, job, schema)
        finally:
            pipe.close()


def check_concurrency(pipe: Any, concurrency: int, source: str) -> None:
    """Refuse ``concurrency`` > 1 for a pipeline with a component not declared thread-safe."""
    from ragkit.serve.runner import unsafe_components

    unsafe = unsafe_components(pipe) if concurrency > 1 else []
    if unsafe:
        raise UserError(f"{source}: cannot run {concurrency} items at once: {', '.join(unsafe)} are not declared thread-safe (use --concurrency 1)")


def _run_concurrently(runner: Any, banks: list[Any], job: GraphJob, schema: Any) -> Iterator[dict[str, Any]]:
    import concurrent.futures

    from ragkit.eval import kgqa

    check_concurrency(runner, job.concurrency, job.source)
    pool = concurrent.futures.ThreadPoolExecutor(job.concurrency, thread_name_prefix="ragkit-eval")
    try:
        futures = [pool.submit(kgqa._run_one, runner, banks, it, job.gold_rows, schema) for it in job.items]
        for f in concurrent.futures.as_completed(futures):
            yield f.result()  # rows come in the order items finish; the predictions file is keyed by id
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an interrupt drops the items not started


class Engine:
    """Runs a :class:`GraphJob`'s items and yields one prediction row per item, in any order."""

    name = ""

    def run(self, job: GraphJob) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine started."""


class LocalEngine(Engine):
    """Runs the items in this process, one after the other."""

    name = "local"

    def run(self, job: GraphJob) -> Iterator[dict[str, Any]]:
        yield from _iter_job(job)


class RayEngine(Engine):
    """Spreads the items over a Ray cluster.

    Args:
        address: the cluster to join (``auto``, ``ray://host:10001``...); None uses ``$RAY_ADDRESS``
            or starts a local cluster.
        num_cpus: CPUs of a local cluster started here (None: all cores).
        chunk_size: items per task; None splits a job evenly over the cluster's CPUs.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, chunk_size: int | None = None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.address = address
        self.num_cpus = num_cpus
        self.chunk_size = chunk_size
        self._started = False
        self._task: Any = None

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("ray", "ray", "the Ray evaluation engine") from None
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is not None:
                kw["address"] = self.address
            elif self.num_cpus is not None:
                kw["num_cpus"] = self.num_cpus
            ray.init(**kw)
            self._started = True
        if self._task is None:
            self._task = ray.remote(num_cpus=1, max_retries=1)(run_job)
        return ray

    def run(self, job: GraphJob) -> Iterator[dict[str, Any]]:
        ray = self._ray()
        if not job.items:
            return
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = self.chunk_size or -(-len(job.items) // workers)
        chunks = [job.items[i : i + size] for i in range(0, len(job.items), size)]
        pending = [self._task.remote(replace(job, items=c)) for c in chunks]
        logger.info("%d item(s) of %s in %d Ray task(s)", len(job.items), Path(job.graph_file).name, len(pending))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                rows = ray.get(done[0])
            except Exception as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, RagkitError):  # a user's mistake reads the same as with the local engine
                    raise cause from None
                raise
            yield from rows

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        self._task = None


def get_engine(name: str | Engine, **kw: Any) -> Engine:
    """The engine called ``name`` (``local`` or ``ray``); an :class:`Engine` is returned as is."""
    if isinstance(name, Engine):
        return name
    if name == "local":
        return LocalEngine()
    if name == "ray":
        return RayEngine(**kw)
    raise UserError(f"unknown engine {name!r} (use one of: {', '.join(ENGINES)})")
