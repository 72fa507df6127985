"""Tokenomics of an evaluation run, from its predictions: time, tokens, money and hidden costs.

Every prediction line carries ``timings`` (``total``, ``ttft``), ``tokens`` (``in``, ``out``) and
``stages``: one entry per stage with its seconds, tokens, TTFT, TPOT, model calls and notes (see
:func:`stage_record`). From those:

* **quality of experience**: TTFT, TPOT (time per output token after the first), latency p50/p95
  (nearest rank), throughput (output tokens per second of generation);
* **cost**: self-hosted hardware costs ``price_per_hour`` for the seconds the run kept it busy, so
  ``cost = busy seconds x price / 3600``; per million tokens (in + out) and per thousand questions.
  Busy seconds are the union of the items' ``[start, start + total]`` spans (:func:`busy_seconds`):
  items run concurrently (``ragkit eval --concurrency``) share the machine and are not paid twice;
  beside it, what the same tokens would cost at per-token API prices (:data:`API_PRICES`, dated);
* **hidden costs** (the cause of bill shock): how much of each prompt is schema, few-shot examples,
  instructions and context rather than the question, and the tokens spent on extra candidates and
  repair rounds (every model call after a stage's first).

Example:
    >>> from ragkit.tokenomics.costs import hardware_cost
    >>> round(hardware_cost(busy_seconds=3600, price_per_hour=0.5, tokens=1_000_000, questions=1000)["per_million_tokens"], 3)
    0.5
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ragkit.errors import InputError

__all__ = [
    "API_PRICES",
    "API_PRICES_AS_OF",
    "load_api_prices",
    "percentile",
    "busy_seconds",
    "stage_record",
    "hardware_cost",
    "api_costs",
    "tokenomics",
]

API_PRICES_AS_OF = "2024"
API_PRICES: dict[str, dict[str, float]] = {
    # USD per million tokens. The 2024 market range reported by Dong & Xie (arXiv 2405.17147, see
    # shared/CONTEXT.md): $0.2-$1.0 per million tokens, the cheapest around $0.25. These are reference
    # points, not any vendor's price list: pass --api-prices FILE with current prices to compare with.
    "api-low-2024": {"input": 0.20, "output": 0.20},
    "api-cheapest-typical-2024": {"input": 0.25, "output": 0.25},
    "api-high-2024": {"input": 1.00, "output": 1.00},
}


def load_api_prices(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a price table: JSON or YAML ``{name: {"input": usd_per_million, "output": usd_per_million}}``.

    Raises:
        InputError: naming the file and the entry that is wrong.
    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{p}: cannot read the API price table ({e})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f'{p}: an API price table maps names to {{"input": USD per million tokens, "output": ...}}')
    out: dict[str, dict[str, float]] = {}
    for name, v in data.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = {"input": v, "output": v}
        if not isinstance(v, dict) or not {"input", "output"} <= set(v) or not all(isinstance(v[k], (int, float)) and v[k] >= 0 for k in ("input", "output")):
            raise InputError(f"{p}: entry {name!r} needs 'input' and 'output' prices, USD per million tokens, 0 or more")
        out[str(name)] = {"input": float(v["input"]), "output": float(v["output"])}
    return out


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``; None when there are none."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    return xs[max(0, min(len(xs) - 1, math.ceil(q * len(xs)) - 1))]


def stage_record(stage: Any) -> dict[str, Any]:
    """The JSON a prediction keeps for one :class:`~ragkit.core.metrics.StageTrace`."""
    notes = {k: v for k, v in stage.extra.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return {
        "type": stage.type,
        "seconds": round(stage.seconds, 5),
        "tokens_in": stage.tokens_in,
        "tokens_out": stage.tokens_out,
        "ttft": None if stage.ttft is None else round(stage.ttft, 5),
        "tpot": None if stage.tpot is None else round(stage.tpot, 6),
        "model_calls": stage.model_calls,
        "notes": notes,
    }


def stage_records(trace: Any) -> dict[str, dict[str, Any]]:
    """``{stage name: stage_record}`` of a run's trace (empty when there is no trace)."""
    return {s.name: stage_record(s) for s in trace.stages} if trace is not None else {}


def busy_seconds(rows: Sequence[dict[str, Any]]) -> float:
    """Seconds during which at least one item ran: the length of the union of the rows' spans
    ``[timings.start, timings.start + timings.total]``. A row without ``start`` (an older predictions
    file) adds its whole latency, as if it ran alone."""
    spans = []
    alone = 0.0
    for r in rows:
        t = r["timings"]
        if t.get("start") is None:
            alone += float(t["total"])
        else:
            spans.append((float(t["start"]), float(t["start"]) + float(t["total"])))
    spans.sort()
    covered, end = 0.0, -math.inf
    for a, b in spans:
        if a > end:
            covered += b - a
            end = b
        elif b > end:
            covered += b - end
            end = b
    return covered + alone


def hardware_cost(*, busy_seconds: float, price_per_hour: float, tokens: int, questions: int) -> dict[str, float | None]:
    """Self-hosted cost: the hardware's price for the seconds it was busy, per million tokens and per 1,000 questions."""
    if price_per_hour < 0:
        raise InputError(f"the hardware price per hour must be 0 or more, not {price_per_hour}")
    usd = busy_seconds * price_per_hour / 3600
    return {
        "price_per_hour": price_per_hour,
        "busy_seconds": busy_seconds,
        "usd": usd,
        "per_million_tokens": usd / tokens * 1e6 if tokens else None,
        "per_1k_questions": usd / questions * 1000 if questions else None,
    }


def api_costs(tokens_in: int, tokens_out: int, questions: int, prices: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """What the same tokens would cost at each per-token price: in total and per 1,000 questions."""
    out = {}
    for name, p in prices.items():
        usd = (tokens_in * p["input"] + tokens_out * p["output"]) / 1e6
        out[name] = {"input": p["input"], "output": p["output"], "usd": usd, "per_1k_questions": usd / questions * 1000 if questions else None}
    return out


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def _stage_figures(name: str, recs: list[dict[str, Any]], n_questions: int) -> dict[str, Any]:
    secs = [r["seconds"] for r in recs]
    t_in = sum(r.get("tokens_in", 0) for r in recs)
    t_out = sum(r.get("tokens_out", 0) for r in recs)
    calls = sum(r.get("model_calls", 0) for r in recs)
    gen_secs = sum(r["seconds"] for r in recs if r.get("tokens_out"))
    fig: dict[str, Any] = {
        "type": recs[0].get("type", ""),
        "runs": len(recs),
        "seconds_total": round(sum(secs), 4),
        "latency_p50": _r(percentile(secs, 0.5)),
        "latency_p95": _r(percentile(secs, 0.95)),
        "tokens_in": t_in,
        "tokens_out": t_out,
        "tokens_in_per_question": round(t_in / n_questions, 2) if n_questions else None,
        "tokens_out_per_question": round(t_out / n_questions, 2) if n_questions else None,
        "model_calls": calls,
        "ttft_p50": _r(percentile((r.get("ttft") for r in recs), 0.5)),
        "tpot_p50": _r(percentile((r.get("tpot") for r in recs), 0.5), 5),
        "throughput_tokens_per_s": round(t_out / gen_secs, 2) if gen_secs and t_out else None,
    }
    # Hidden costs: the prompt's parts (stages note prompt_<part>_tokens beside prompt_tokens).
    parts: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    extra_tokens = 0
    repairs = 0
    extra_candidates = 0
    for r in recs:
        notes = r.get("notes") or {}
        if isinstance(notes.get("prompt_tokens"), (int, float)):
            totals.append(notes["prompt_tokens"])
            if r.get("model_calls", 0) > 1:
                extra_tokens += max(0, r.get("tokens_in", 0) - notes["prompt_tokens"])
        for k, v in notes.items():
            if k.startswith("prompt_") and k.endswith("_tokens") and k != "prompt_tokens" and isinstance(v, (int, float)):
                parts[k[len("prompt_") : -len("_tokens")]].append(v)
        if "repairs" in notes:  # a query generator: its candidates beyond the first are extra work
            repairs += int(notes["repairs"] or 0)
            extra_candidates += max(0, int(notes.get("candidates", 1) or 1) - 1)
    if totals:
        mean_total = statistics.fmean(totals)
        shares = {k: round(statistics.fmean(v) / mean_total, 4) if mean_total else None for k, v in sorted(parts.items())}
        fig["prompt"] = {
            "tokens_mean": round(mean_total, 1),
            "parts_mean": {k: round(statistics.fmean(v), 1) for k, v in sorted(parts.items())},
            "shares": shares,
            "question_share": shares.get("question"),
        }
    if "repairs" in (recs[0].get("notes") or {}) or extra_tokens:
        fig["extra_calls"] = {
            "model_calls_beyond_first": max(0, calls - len(recs)),
            "repair_rounds": repairs,
            "extra_candidates": extra_candidates,
            "tokens_in_of_extra_calls": extra_tokens,
        }
    return fig


def tokenomics(
    rows: Sequence[dict[str, Any]],
    *,
    price_per_hour: float | None = None,
    api_prices: dict[str, dict[str, float]] | None = None,
    energy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-run and per-stage figures of a run's prediction rows, its cost, and its energy per question.

    Args:
        rows: prediction lines (dicts with ``timings``, ``tokens`` and, when recorded, ``stages``).
        price_per_hour: USD per hour of the hardware the pipeline ran on (None: no self-hosted cost).
        api_prices: per-token price table to compare with (default :data:`API_PRICES`).
        energy: a combined energy reading (see :func:`ragkit.tokenomics.carbon.combine_readings`).
    """
    n = len(rows)
    totals = [float(r["timings"]["total"]) for r in rows]
    busy = busy_seconds(rows)
    # Overlapping items (concurrency) each count the seconds they shared: scale summed stage seconds by
    # how much of the summed latency the machine really spent.
    overlap = busy / sum(totals) if totals and sum(totals) else 1.0
    t_in = sum(int(r["tokens"]["in"]) for r in rows)
    t_out = sum(int(r["tokens"]["out"]) for r in rows)
    by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        for name, rec in (r.get("stages") or {}).items():
            by_stage[name].append(rec)
    stages = {name: _stage_figures(name, recs, n) for name, recs in by_stage.items()}
    gen_secs = sum(f["seconds_total"] for f in stages.values() if f["tokens_out"])
    tpots = [rec.get("tpot") for recs in by_stage.values() for rec in recs if rec.get("tpot") is not None]
    out: dict[str, Any] = {
        "questions": n,
        "latency_p50": _r(percentile(totals, 0.5)),
        "latency_p95": _r(percentile(totals, 0.95)),
        "latency_mean": _r(statistics.fmean(totals)) if totals else None,
        "ttft_p50": _r(percentile((r["timings"].get("ttft") for r in rows), 0.5)),
        "ttft_p95": _r(percentile((r["timings"].get("ttft") for r in rows), 0.95)),
        "tpot_p50": _r(percentile(tpots, 0.5), 5),
        "throughput_tokens_per_s": round(t_out / (gen_secs * overlap), 2) if gen_secs and t_out and overlap else None,
        "questions_per_s": round(n / busy, 4) if busy else None,
        "busy_seconds": round(busy, 3),
        "concurrency_mean": round(1 / overlap, 3) if overlap else None,
        "tokens_in": t_in,
        "tokens_out": t_out,
        "tokens_in_per_question": round(t_in / n, 2) if n else None,
        "tokens_out_per_question": round(t_out / n, 2) if n else None,
        "stages": stages,
        "latency_values": [round(x, 4) for x in totals],
        "api_prices_as_of": API_PRICES_AS_OF if api_prices is None else "user table",
        "api": api_costs(t_in, t_out, n, API_PRICES if api_prices is None else api_prices),
    }
    if price_per_hour is not None:
        out["hardware"] = hardware_cost(busy_seconds=busy, price_per_hour=price_per_hour, tokens=t_in + t_out, questions=n)
    if energy is not None:
        items = energy.get("items") or 0
        out["energy"] = {
            **energy,
            "kwh_per_1k_questions": energy["kwh"] / items * 1000 if items else None,
            "kg_co2e_per_1k_questions": energy["kg_co2e"] / items * 1000 if items else None,
        }
    return out


def read_energy_log(path: Path) -> list[dict[str, Any]]:
    """The energy readings saved beside a predictions file, one JSON line per session."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
