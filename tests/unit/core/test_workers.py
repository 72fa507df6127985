"""The daemon worker pool that stores run queries on: results, errors, bounds, shutdown, and a
runaway call that does not keep the process from exiting."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ragkit.core.workers import DaemonPool


def test_results_and_errors_come_back_through_the_future() -> None:
    pool = DaemonPool(2, "t")
    assert pool.submit(lambda: 42).result(timeout=10) == 42

    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        pool.submit(boom).result(timeout=10)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: 1)


def test_no_more_threads_than_workers_and_every_call_runs() -> None:
    pool = DaemonPool(3, "t")
    running, peak, lock = [0], [0], threading.Lock()

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return i

    futures = [pool.submit(lambda i=i: work(i)) for i in range(20)]
    assert [f.result(timeout=30) for f in futures] == list(range(20))
    assert peak[0] <= 3 and len(pool._threads) <= 3
    # once they are idle, later calls reuse the workers
    assert [pool.submit(lambda: 1).result(timeout=10) for _ in range(5)] == [1] * 5
    assert len(pool._threads) <= 3
    pool.shutdown()


def test_shutdown_cancels_what_waits_in_line() -> None:
    pool = DaemonPool(1, "t")
    release = threading.Event()
    busy = pool.submit(release.wait)
    waiting = pool.submit(lambda: 1)
    pool.shutdown()
    release.set()
    assert busy.result(timeout=10) is True
    assert waiting.cancelled()


def test_a_runaway_call_does_not_keep_the_process_alive() -> None:
    # concurrent.futures joins its workers at exit: a query that never ends hung the process
    script = textwrap.dedent(
        """
        import concurrent.futures, time
        from ragkit.core.workers import DaemonPool

        def forever():
            while True:
                time.sleep(0.05)

        pool = DaemonPool(1, "runaway")
        try:
            pool.submit(forever).result(timeout=0.2)
        except concurrent.futures.TimeoutError:
            print("gave up waiting")
        """
    )
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: a runaway worker kept it alive")
    assert done.returncode == 0, done.stderr
    assert "gave up waiting" in done.stdout
