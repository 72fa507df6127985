"""A bounded pool of daemon worker threads, for work that may never return.

Embedded query engines (Oxigraph, kglite) have no way to cancel a running query, so a store runs
each query in a worker thread and stops waiting at its time-out. ``concurrent.futures``' pool is
not fit for that: it joins its workers when the interpreter exits, so one runaway query (a cross
product that would run for hours) keeps a finished ``ragkit eval`` from exiting. These workers are
daemon threads: an abandoned query keeps its worker (and a core) busy until it ends, but never the
process alive.

Example:
    >>> pool = DaemonPool(2, "demo")
    >>> pool.submit(lambda: 6 * 7).result(timeout=5)
    42
    >>> pool.shutdown()
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["DaemonPool"]


class DaemonPool:
    """Runs callables on up to ``workers`` daemon threads, started as needed.

    Args:
        workers: threads at most; further calls wait in line for a free one.
        name: the threads' name prefix.
    """

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self.name = name
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # workers waiting for an item that no submitted item has claimed
        self._waiting = 0  # items submitted while every worker was busy and none could be started
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn()`` on a worker; its future holds the result or the exception."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._queue.put((fut, fn))
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.workers:
                t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
            else:
                self._waiting += 1
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                    fut.set_exception(e)
            with self._lock:
                if self._waiting:
                    self._waiting -= 1  # takes an item that waits in line
                else:
                    self._idle += 1

    def shutdown(self) -> None:
        """Stop taking work, cancel what waits in line, and let idle workers end (busy ones end when
        their call returns)."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)
