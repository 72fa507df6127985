"""Per-stage measurements of a pipeline run: wall time, tokens, TTFT/TPOT, errors.

The pipeline opens a :class:`StageRecorder` around each stage's ``run`` and makes it current through a
context variable, so a model provider deep inside a stage can report tokens and timings without the
stage passing anything around, and two pipelines running in two threads never see each other's.
"""

from __future__ import annotations

import contextlib
import contextvars
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "StageTrace",
    "Trace",
    "StageRecorder",
    "GenerationStats",
    "current_recorder",
    "emit_token",
    "current_listener",
    "recording",
    "streaming_to",
]

TokenCallback = Callable[[str], None]


@dataclass
class GenerationStats:
    """What one model call did. Times in seconds."""

    tokens_in: int = 0
    tokens_out: int = 0
    ttft: float | None = None
    """Time to first token: from the call to the first generated token."""
    seconds: float = 0.0
    inter_token: list[float] = field(default_factory=list)
    """Gaps between consecutive output tokens."""
    cached_tokens: int = 0
    """Prompt tokens whose key/value cache was reused instead of recomputed."""
    speculation: str | None = None
    """The speculative decoding used (``prompt_lookup``, ``draft_model``), None when none was."""
    draft_tokens: int = 0
    """Tokens drafted for the model to check (speculative decoding only)."""
    accepted_tokens: int = 0
    """Drafted tokens the model accepted: each saved one sequential forward pass."""
    forced_tokens: int = 0
    """Steps where a decoding constraint ruled out the model's first choice (a sign the model was
    heading for a name the schema lacks)."""
    ended_rows: int = 0
    """Sequences a decoding constraint ended because the query was over: what the model wrote next
    would have been cut from it (Cypher: a clause after the final ``RETURN``)."""
    batch_size: int = 1
    """Prompts decoded together in the batch this call was part of (see ``LocalLLM(max_batch=...)``);
    ``seconds`` is then the whole batch's time. Under continuous batching: the mean number of rows this
    call's steps were shared with (itself included), and ``seconds`` runs from when it joined to its end."""

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted tokens; None when nothing was drafted."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (total - TTFT) / (tokens_out - 1)."""
        if self.ttft is None or self.tokens_out < 2:
            return None
        return (self.seconds - self.ttft) / (self.tokens_out - 1)


@dataclass
class StageTrace:
    """One stage's line in a run's trace."""

    name: str
    type: str
    seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    ttft: float | None = None
    tpot: float | None = None
    model_calls: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    draft_tokens: int = 0
    """Tokens drafted by speculative decoding in this stage's model calls."""
    accepted_tokens: int = 0
    """Of those, the ones the model accepted."""

    @property
    def tokens_per_second(self) -> float | None:
        if not self.tokens_out or not self.seconds:
            return None
        return self.tokens_out / self.seconds

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted tokens of speculative decoding; None when nothing was drafted."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_second"] = self.tokens_per_second
        d["acceptance_rate"] = self.acceptance_rate
        return d


@dataclass
class Trace:
    """The record of one pipeline run: a :class:`StageTrace` per stage, in run order."""

    stages: list[StageTrace] = field(default_factory=list)
    seconds: float = 0.0
    ttft: float | None = None
    """From the start of the run to the first token streamed to the caller (None when nothing streamed)."""

    @property
    def tokens_in(self) -> int:
        return sum(s.tokens_in for s in self.stages)

    @property
    def tokens_out(self) -> int:
        return sum(s.tokens_out for s in self.stages)

    def stage(self, name: str) -> StageTrace:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "ttft": self.ttft,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "stages": [s.to_dict() for s in self.stages],
        }


class StageRecorder:
    """Collects what happens inside one stage's run. Obtain it with :func:`current_recorder`."""

    def __init__(self, trace: StageTrace) -> None:
        self.trace = trace
        self._tpots: list[float] = []
        self._ttfts: list[float] = []

    def record_generation(self, stats: GenerationStats) -> None:
        """Add one model call's tokens and timings to the stage."""
        t = self.trace
        t.tokens_in += stats.tokens_in
        t.tokens_out += stats.tokens_out
        t.model_calls += 1
        t.draft_tokens += stats.draft_tokens
        t.accepted_tokens += stats.accepted_tokens
        if stats.batch_size > 1:  # the largest batch a call of this stage was decoded in
            t.extra["batch_size"] = max(int(t.extra.get("batch_size", 1)), stats.batch_size)
        if stats.ttft is not None:
            self._ttfts.append(stats.ttft)
            t.ttft = self._ttfts[0] if len(self._ttfts) == 1 else statistics.median(self._ttfts)
        if stats.tpot is not None:
            self._tpots.append(stats.tpot)
            t.tpot = statistics.median(self._tpots)

    def add_tokens(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Count tokens a stage processed without generating (e.g. an embedder)."""
        self.trace.tokens_in += tokens_in
        self.trace.tokens_out += tokens_out

    def note(self, key: str, value: Any) -> None:
        """Attach a stage-specific figure to the trace (e.g. ``candidates``, ``repairs``)."""
        self.trace.extra[key] = value


@dataclass
class _RunContext:
    recorder: StageRecorder | None = None
    on_token: TokenCallback | None = None
    stream_stage: str | None = None


_ctx: contextvars.ContextVar[_RunContext] = contextvars.ContextVar("ragkit_run_context", default=_RunContext())


def current_recorder() -> StageRecorder | None:
    """The recorder of the stage now running in this thread/task, or None outside a pipeline."""
    return _ctx.get().recorder


def emit_token(text: str) -> None:
    """Hand a piece of generated text to whoever is streaming this run (no-op when nobody is)."""
    listener = current_listener()
    if listener is not None:
        listener(text)


def is_streaming() -> bool:
    """Whether tokens emitted now would reach a listener."""
    return current_listener() is not None


def current_listener() -> TokenCallback | None:
    """The callback that tokens emitted now would reach, or None; callable from any thread afterwards.

    A model that decodes several runs' calls in one batch takes each caller's listener this way, in
    the caller's thread, and hands each row's text to its own listener.
    """
    ctx = _ctx.get()
    if ctx.on_token is not None and (ctx.stream_stage is None or (ctx.recorder is not None and ctx.recorder.trace.name == ctx.stream_stage)):
        return ctx.on_token
    return None


@contextlib.contextmanager
def streaming_to(on_token: TokenCallback | None, stage: str | None = None) -> Iterator[None]:
    """Within the block, tokens emitted by ``stage`` (or by any stage when None) go to ``on_token``."""
    old = _ctx.get()
    tok = _ctx.set(_RunContext(recorder=old.recorder, on_token=on_token, stream_stage=stage))
    try:
        yield
    finally:
        _ctx.reset(tok)


@contextlib.contextmanager
def recording(trace: StageTrace) -> Iterator[StageRecorder]:
    """Make a fresh recorder for ``trace`` current for the block, and time the block into it."""
    rec = StageRecorder(trace)
    old = _ctx.get()
    tok = _ctx.set(_RunContext(recorder=rec, on_token=old.on_token, stream_stage=old.stream_stage))
    start = time.perf_counter()
    try:
        yield rec
    finally:
        trace.seconds = time.perf_counter() - start
        _ctx.reset(tok)
