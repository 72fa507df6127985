"""LocalLLM's batcher (who runs alone, who waits, what shares a batch; no model: a scripted runner) and loop guard."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from ragkit.models.llm import LocalLLM, _Batcher, _common_prefix, _Request, looping


def request(text: str, max_new_tokens: int = 8, beams: int = 1, constraint: Any = None, temperature: float = 0.0) -> _Request:
    return _Request(text, max_new_tokens, (), temperature, beams, constraint)


class Runner:
    """Records each batch; the first batch blocks until ``release`` is set, so others pile up behind it."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, batch: list[_Request]) -> list[str]:
        self.batches.append([r.text for r in batch])
        if len(self.batches) == 1:
            self.started.set()
            assert self.release.wait(10)
        if self.fail_on is not None and any(r.text == self.fail_on for r in batch):
            raise RuntimeError("model failed")
        return [r.text.upper() for r in batch]


def caller(batcher: _Batcher, results: dict[str, Any]) -> Any:
    """A thread target that submits a call and notes what its caller got, result or error."""

    def call(r: _Request) -> None:
        try:
            results[r.text] = batcher.submit(r)
        except Exception as e:  # the test inspects what each caller got
            results[r.text] = e

    return call


def submit_all(batcher: _Batcher, runner: Runner, first: _Request, others: list[_Request]) -> dict[str, Any]:
    """Submit ``first``; once it runs, submit ``others`` from threads; then let the first batch end."""
    results: dict[str, Any] = {}
    call = caller(batcher, results)
    threads = [threading.Thread(target=call, args=(first,))]
    threads[0].start()
    assert runner.started.wait(10)
    for r in others:
        threads.append(threading.Thread(target=call, args=(r,)))
        threads[-1].start()
    deadline = time.monotonic() + 10
    while len(batcher._queue) < len(others) and time.monotonic() < deadline:  # everyone is waiting
        time.sleep(0.01)
    runner.release.set()
    for t in threads:
        t.join(10)
    return results


def test_a_lone_call_runs_at_once() -> None:
    runner = Runner()
    runner.release.set()
    assert _Batcher(runner, 8).submit(request("a")) == "A"
    assert runner.batches == [["a"]]


def test_calls_that_arrive_while_busy_share_a_batch_by_settings() -> None:
    runner = Runner()
    others = [request("b"), request("c", max_new_tokens=99), request("d"), request("e", beams=3), request("f")]
    results = submit_all(_Batcher(runner, 8), runner, request("a"), others)
    assert results == {t: t.upper() for t in "abcdef"}  # each caller gets its own result
    assert runner.batches[0] == ["a"]
    # the oldest waiting call leads; only calls with its settings join it
    assert sorted(map(sorted, runner.batches[1:])) == [["b", "d", "f"], ["c"], ["e"]]


def test_constrained_and_plain_calls_are_not_mixed() -> None:
    runner = Runner()
    results = submit_all(_Batcher(runner, 8), runner, request("a"), [request("b", constraint=object()), request("c"), request("d", constraint=object())])
    assert len(results) == 4
    assert sorted(map(sorted, runner.batches[1:])) == [["b", "d"], ["c"]]


def test_max_batch_caps_a_batch() -> None:
    runner = Runner()
    submit_all(_Batcher(runner, 2), runner, request("a"), [request(t) for t in "bcde"])
    assert [len(b) for b in runner.batches] == [1, 2, 2]


def test_an_error_reaches_every_caller_of_its_batch_and_the_batcher_goes_on() -> None:
    runner = Runner(fail_on="c")
    batcher = _Batcher(runner, 8)
    results = submit_all(batcher, runner, request("a"), [request("b"), request("c")])
    assert results["a"] == "A"
    assert isinstance(results["b"], RuntimeError) and isinstance(results["c"], RuntimeError)
    assert batcher.submit(request("z")) == "Z"  # not left busy


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        LocalLLM(max_batch=0)


def test_looping_finds_a_block_written_again_and_again() -> None:
    a, b, c = list(range(8)), list(range(10, 18)), list(range(20, 28))
    assert looping([99, *a, *a, *a], repeats=3)  # 8 tokens three times: 24
    assert not looping([99, *a, *a], repeats=3)  # twice only
    assert not looping([*a, *b, *a, *c, *a], repeats=3)  # the same block, not in a row
    assert looping([*b, *a, *a], repeats=2, min_span=16) and not looping([*b, *a, *a], repeats=2)  # 16 < 24 tokens
    assert not looping([5, 0, 0, 0, 0], repeats=4)  # "10000", digit by digit: short blocks must fill the span
    assert looping([5] + [0] * 24, repeats=4) and not looping([5] + [0] * 23, repeats=4)
    block = list(range(100, 132))
    assert looping([9, *block, *block], repeats=2) and not looping([9, *block, *block], repeats=2, max_period=31)
    assert not looping([], repeats=2)


def test_max_repeats_is_off_or_at_least_two() -> None:
    assert LocalLLM().max_repeats == 0
    for bad in (1, -1):
        with pytest.raises(ValueError, match="max_repeats must be 0"):
            LocalLLM(max_repeats=bad)


class _CharTokenizer:
    """Token id = character code; 0 is the end token."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if i)


def test_a_batch_streams_each_row_to_its_own_listener_up_to_its_end() -> None:
    import torch

    from ragkit.models.llm import _StepClock

    heard: dict[str, list[str]] = {"a": [], "c": []}

    def broken(piece: str) -> None:
        raise ConnectionError("the client went away")

    clock = _StepClock(_CharTokenizer(), [heard["a"].append, broken, None, heard["c"].append], stop=["!"], ends={0})
    clock.put(torch.zeros((4, 3), dtype=torch.long))  # the prompt: not streamed
    for step in ["hxyh", "i!zi", "!w0!", "?v00"]:
        clock.put(torch.tensor([ord(ch) if ch != "0" else 0 for ch in step]))
    assert heard["a"] == ["h", "i"]  # nothing from the stop string on
    assert heard["c"] == ["h", "i"]  # ... nor after the end token
    assert len(clock.times) == 4 and clock.rows[1].done  # the failing listener was dropped, the batch went on


def test_the_shared_start_of_a_batch_leaves_each_prompt_a_token_of_its_own() -> None:
    assert _common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert _common_prefix([[1, 2], [1, 2, 3]]) == 1  # the shorter prompt keeps its last token
    assert _common_prefix([[7, 8, 9], [7, 8, 9]]) == 2
    assert _common_prefix([[1, 2], [3, 4]]) == 0


class Stream:
    """A scripted continuous decoder: at each step it asks for more calls, then finishes the oldest row."""

    def __init__(self) -> None:
        self.admitted: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, calls: list[_Request], admit: Any, deliver: Any) -> None:
        rows = list(calls)
        self.admitted.append([r.text for r in calls])
        self.started.set()
        assert self.release.wait(10)
        while rows:
            more = admit(8 - len(rows))
            if more:
                self.admitted[-1] += [r.text for r in more]
                rows += more
            done = rows.pop(0)
            deliver(done, done.text.upper())


def test_single_sequences_and_beams_join_a_continuous_batch_and_samples_wait_for_it() -> None:
    runner, stream = Runner(), Stream()
    runner.release.set()
    batcher = _Batcher(runner, 8, stream)
    results: dict[str, Any] = {}
    call = caller(batcher, results)
    threads = [threading.Thread(target=call, args=(request("a"),))]
    threads[0].start()
    assert stream.started.wait(10)
    # while "a" decodes: plain and constrained calls with any settings, beams, several samples, another plain call
    later = [request("b"), request("c", max_new_tokens=99, constraint=object()), request("d", beams=3), request("s", beams=3, temperature=0.7), request("e")]
    for r in later:
        threads.append(threading.Thread(target=call, args=(r,)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while not any(q is r for q in batcher._queue) and time.monotonic() < deadline:
            time.sleep(0.01)
    stream.release.set()
    for t in threads:
        t.join(10)
    assert results == {t: t.upper() for t in "abcdse"}
    assert stream.admitted[0] == ["a", "b", "c", "d"]  # joined the rows in flight; "e" waits behind the samples
    assert runner.batches == [["s"]]
    assert stream.admitted[1] == ["e"]


def test_a_beam_search_takes_a_row_per_beam() -> None:
    batcher = _Batcher(Runner(), 4, Stream())
    batcher._queue = [request("x", beams=3), request("y", beams=3)]
    assert [r.text for r in batcher._leading(4)] == ["x"]  # "y" would make 6 rows of 4
    assert batcher._leading(2) == []  # 3 rows do not fit in 2
    batcher._queue = [request("wide", beams=6), request("z")]
    assert [r.text for r in batcher._leading(4)] == ["wide"]  # wider than any batch: it goes alone


def test_an_error_in_a_continuous_batch_reaches_every_call_in_flight_and_the_batcher_goes_on() -> None:
    gate = threading.Event()

    def stream(calls: list[_Request], admit: Any, deliver: Any) -> None:
        if calls[0].text == "a":
            assert gate.wait(10)  # "b" and "c" queue up behind "a"
            deliver(calls[0], "A")
            return
        deliver(calls[0], calls[0].text.upper())
        raise RuntimeError("model failed")

    batcher = _Batcher(Runner(), 8, stream)
    results: dict[str, Any] = {}
    call = caller(batcher, results)
    threads = [threading.Thread(target=call, args=(request(t),)) for t in "abc"]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not batcher._taken and time.monotonic() < deadline:  # "a" is decoding
        time.sleep(0.01)
    for t in threads[1:]:
        t.start()
    while len(batcher._queue) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    assert results["a"] == "A" and results["b"] == "B"
    assert isinstance(results["c"], RuntimeError)
    assert batcher.submit(request("z")) == "Z"  # not left busy
