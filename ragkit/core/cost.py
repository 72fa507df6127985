"""What model calls cost: prices per million tokens or per hour, recorded per stage in the trace.

A :class:`Price` says what one model costs: per million input and output tokens (a hosted API), per
hour of generation time (a self-hosted instance: the hardware's hourly cost times the seconds the
call took), or both. :func:`record_cost` adds a call to the running stage's trace line under
``extra["cost"]``; :func:`trace_cost` sums a whole run per model, which is the cost of one request.

Example:
    >>> from ragkit.core.cost import Price
    >>> Price(input_per_million=0.25, output_per_million=1.0).cost(tokens_in=2000, tokens_out=100)
    0.0006
    >>> round(Price(per_hour=33.0).cost(seconds=1.5), 6)   # an 8-GPU instance for 1.5 s
    0.01375
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ragkit.core.metrics import GenerationStats, Trace, current_recorder

__all__ = ["Price", "record_cost", "trace_cost"]


class Price(BaseModel):
    """What a model costs. Amounts are in one currency of your choice (USD in the examples)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    input_per_million: float = Field(0.0, ge=0)
    """Per million prompt tokens."""
    output_per_million: float = Field(0.0, ge=0)
    """Per million generated tokens."""
    per_hour: float = Field(0.0, ge=0)
    """Per hour of generation time (self-hosted hardware)."""

    def cost(self, tokens_in: int = 0, tokens_out: int = 0, seconds: float = 0.0) -> float:
        """The cost of one call."""
        return round(tokens_in * self.input_per_million / 1e6 + tokens_out * self.output_per_million / 1e6 + seconds * self.per_hour / 3600, 12)


def record_cost(model: str, stats: GenerationStats | None, price: Price) -> float:
    """Add one call of ``model`` to the current stage's ``extra["cost"]``; returns its cost.

    The entry is ``{"total": x, "models": {model: {"calls", "tokens_in", "tokens_out", "seconds", "cost"}}}``;
    ``extra["cost_total"]`` repeats the total as a plain number.
    """
    stats = stats or GenerationStats()
    amount = price.cost(stats.tokens_in, stats.tokens_out, stats.seconds)
    rec = current_recorder()
    if rec is not None:
        entry = rec.trace.extra.setdefault("cost", {"total": 0.0, "models": {}})
        m = entry["models"].setdefault(model, {"calls": 0, "tokens_in": 0, "tokens_out": 0, "seconds": 0.0, "cost": 0.0})
        m["calls"] += 1
        m["tokens_in"] += stats.tokens_in
        m["tokens_out"] += stats.tokens_out
        m["seconds"] = round(m["seconds"] + stats.seconds, 6)
        m["cost"] = round(m["cost"] + amount, 12)
        entry["total"] = round(entry["total"] + amount, 12)
        rec.trace.extra["cost_total"] = entry["total"]  # a scalar copy: evaluation keeps scalar notes per stage
    return amount


def trace_cost(trace: Trace) -> dict[str, Any]:
    """The cost of a whole run: ``{"total": x, "models": {...}}`` summed over its stages."""
    out: dict[str, Any] = {"total": 0.0, "models": {}}
    for st in trace.stages:
        entry = st.extra.get("cost")
        if not isinstance(entry, dict):
            continue
        out["total"] = round(out["total"] + float(entry.get("total", 0.0)), 12)
        for name, m in entry.get("models", {}).items():
            acc = out["models"].setdefault(name, {"calls": 0, "tokens_in": 0, "tokens_out": 0, "seconds": 0.0, "cost": 0.0})
            for k in acc:
                acc[k] = round(acc[k] + m.get(k, 0), 12) if isinstance(acc[k], float) else acc[k] + m.get(k, 0)
    return out
