"""Running one loaded pipeline for a server: off the event loop, a bounded number at a time.

A pipeline's stages hold models and caches that are not all safe to share between threads, so by
default one run happens at a time; a pipeline all of whose components declare ``thread_safe = True``
may run several. Requests beyond ``max_queue`` (running plus waiting) are refused at once instead
of piling up: a caller is better served by a quick "busy, retry in N s" than by a time-out.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ragkit.core.component import Component
from ragkit.core.pipeline import Pipeline, PipelineResult
from ragkit.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["PipelineRunner", "QueueFullError", "unsafe_components"]


class QueueFullError(Exception):
    """More requests are running or waiting than the server accepts; the caller should retry later."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(f"the server is busy: {limit} requests are already running or waiting (retry in {retry_after} s)")


def unsafe_components(pipeline: Pipeline) -> list[str]:
    """Names of the stages and resources that do not declare ``thread_safe = True``."""
    out = []
    named: list[tuple[str, Component]] = [(f"stage '{n}'", s) for n, s in pipeline.stages.items()]
    named += [(f"resource '{n}'", r) for n, r in pipeline._all_resources().items()]
    for label, comp in named:
        if not getattr(type(comp), "thread_safe", False):
            out.append(f"{label} ({type(comp).type_name or type(comp).__name__})")
    return out


class PipelineRunner:
    """Runs ``pipeline`` in worker threads, ``concurrency`` at a time, admitting at most ``max_queue``.

    Args:
        pipeline: the loaded pipeline.
        concurrency: runs at once; more than 1 only for a pipeline whose components are all thread-safe.
        max_queue: runs admitted at once, running plus waiting; beyond it :meth:`submit` refuses.
    """

    def __init__(self, pipeline: Pipeline, *, concurrency: int = 1, max_queue: int = 16) -> None:
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if max_queue < concurrency:
            raise ConfigError(f"max_queue ({max_queue}) must be at least the concurrency ({concurrency}), or no run could ever wait")
        if concurrency > 1:
            unsafe = unsafe_components(pipeline)
            if unsafe:
                raise ConfigError(
                    f"this pipeline cannot run {concurrency} requests at once: {', '.join(unsafe)} "
                    "are not declared thread-safe (use concurrency 1)"
                )
        self.pipeline = pipeline
        self.concurrency = concurrency
        self.max_queue = max_queue
        self._pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="ragkit-serve")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._recent: list[float] = []  # seconds of recent runs, for Retry-After

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - self._running)

    def retry_after(self) -> int:
        """Seconds a refused caller should wait: about what the queue ahead needs to drain a slot."""
        with self._lock:
            recent = sorted(self._recent)
        typical = recent[len(recent) // 2] if recent else 1.0
        return max(1, min(60, round(typical * max(1, self.waiting) / self.concurrency)))

    def submit(self, inputs: dict[str, Any], on_token: Callable[[str], None] | None = None) -> concurrent.futures.Future[PipelineResult]:
        """Queue one run. Raises :class:`QueueFullError` at once when ``max_queue`` runs are admitted."""
        with self._lock:
            full = self._admitted >= self.max_queue
            if not full:
                self._admitted += 1
        if full:
            raise QueueFullError(self.max_queue, self.retry_after())
        try:
            fut = self._pool.submit(self._run, inputs, on_token)
        except BaseException:
            with self._lock:
                self._admitted -= 1
            raise
        # Released when the run really ends, not when its caller stops waiting: a client that hangs
        # up does not stop a run in progress, and the slot is busy until then.
        fut.add_done_callback(self._release)
        return fut

    def _run(self, inputs: dict[str, Any], on_token: Callable[[str], None] | None) -> PipelineResult:
        with self._lock:
            self._running += 1
        start = time.perf_counter()
        try:
            return self.pipeline.run(inputs, on_token=on_token)
        finally:
            with self._lock:
                self._running -= 1
                self._recent = (self._recent + [time.perf_counter() - start])[-20:]

    def _release(self, _fut: Any) -> None:
        with self._lock:
            self._admitted -= 1

    def shutdown(self) -> None:
        """Stop accepting runs, wait for those admitted, and close the pipeline."""
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.pipeline.close()
