"""Tokenomics from prediction rows: percentiles, hardware and API cost, hidden costs, price tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragkit.errors import InputError
from ragkit.tokenomics.costs import API_PRICES, api_costs, busy_seconds, hardware_cost, load_api_prices, percentile, tokenomics


def test_percentile() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 0.5) == 50.0 and percentile(xs, 0.95) == 95.0 and percentile(xs, 1.0) == 100.0
    assert percentile([3.0], 0.95) == 3.0 and percentile([], 0.5) is None and percentile([None, 2.0], 0.5) == 2.0


def test_hardware_cost() -> None:
    c = hardware_cost(busy_seconds=7200, price_per_hour=0.5, tokens=2_000_000, questions=4000)
    assert c["usd"] == pytest.approx(1.0) and c["per_million_tokens"] == pytest.approx(0.5) and c["per_1k_questions"] == pytest.approx(0.25)
    assert hardware_cost(busy_seconds=1, price_per_hour=1, tokens=0, questions=0)["per_million_tokens"] is None
    with pytest.raises(InputError, match="0 or more"):
        hardware_cost(busy_seconds=1, price_per_hour=-1, tokens=1, questions=1)


def test_api_costs_and_table(tmp_path: Path) -> None:
    c = api_costs(1_000_000, 500_000, 1000, {"x": {"input": 0.2, "output": 1.0}})
    assert c["x"]["usd"] == pytest.approx(0.7) and c["x"]["per_1k_questions"] == pytest.approx(0.7)
    assert all(0.2 <= p["input"] <= 1.0 for p in API_PRICES.values())  # the dated 2024 range of CONTEXT.md
    f = tmp_path / "prices.yaml"
    f.write_text("mine: {input: 0.1, output: 0.4}\nflat: 0.3\n")
    assert load_api_prices(f) == {"mine": {"input": 0.1, "output": 0.4}, "flat": {"input": 0.3, "output": 0.3}}
    f.write_text("bad: {input: -1}\n")
    with pytest.raises(InputError, match="entry 'bad' needs 'input' and 'output'"):
        load_api_prices(f)
    f.write_text("[1, 2]")
    with pytest.raises(InputError, match="maps names to"):
        load_api_prices(f)


def _row(total: float, qg_calls: int, repairs: int, candidates: int) -> dict[str, Any]:
    return {
        "timings": {"total": total, "ttft": total / 2},
        "tokens": {"in": 100 * qg_calls + 50, "out": 10 * qg_calls + 5},
        "stages": {
            "querygen": {
                "type": "sparql_generator",
                "seconds": total * 0.8,
                "tokens_in": 100 * qg_calls,
                "tokens_out": 10 * qg_calls,
                "ttft": 0.1,
                "tpot": 0.02,
                "model_calls": qg_calls,
                "notes": {
                    "prompt_tokens": 100,
                    "prompt_schema_tokens": 60,
                    "prompt_examples_tokens": 25,
                    "prompt_question_tokens": 10,
                    "repairs": repairs,
                    "candidates": candidates,
                },
            },
            "generate": {"type": "answer_generator", "seconds": total * 0.2, "tokens_in": 50, "tokens_out": 5, "ttft": 0.05, "tpot": 0.01, "model_calls": 1, "notes": {}},
        },
    }


def test_tokenomics_of_rows() -> None:
    rows = [_row(1.0, 1, 0, 1), _row(3.0, 3, 1, 3)]
    t = tokenomics(rows, price_per_hour=3.6, energy={"kwh": 0.002, "kg_co2e": 0.001, "items": 2, "basis": "estimated"})
    assert t["questions"] == 2 and t["tokens_in"] == 150 + 350 and t["tokens_out"] == 15 + 35
    assert t["latency_p50"] == 1.0 and t["latency_p95"] == 3.0 and t["latency_values"] == [1.0, 3.0]
    assert t["hardware"]["usd"] == pytest.approx(4.0 * 3.6 / 3600)
    assert t["hardware"]["per_million_tokens"] == pytest.approx(0.004 / 550 * 1e6)
    assert t["energy"]["kg_co2e_per_1k_questions"] == pytest.approx(0.5) and t["energy"]["kwh_per_1k_questions"] == pytest.approx(1.0)
    qg = t["stages"]["querygen"]
    assert qg["tokens_in"] == 400 and qg["model_calls"] == 4 and qg["tpot_p50"] == 0.02
    assert qg["throughput_tokens_per_s"] == pytest.approx(40 / 3.2)
    assert qg["prompt"]["parts_mean"] == {"examples": 25.0, "question": 10.0, "schema": 60.0}
    assert qg["prompt"]["question_share"] == 0.1 and qg["prompt"]["shares"]["schema"] == 0.6
    assert qg["extra_calls"] == {"model_calls_beyond_first": 2, "repair_rounds": 1, "extra_candidates": 2, "tokens_in_of_extra_calls": 200}
    assert "extra_calls" not in t["stages"]["generate"] and "prompt" not in t["stages"]["generate"]
    assert set(t["api"]) == set(API_PRICES) and "hardware" not in tokenomics(rows)


def test_busy_seconds_is_the_union_of_the_items_spans() -> None:
    def row(start: float | None, total: float) -> dict[str, Any]:
        return {"timings": {"start": start, "total": total}}

    assert busy_seconds([row(0, 2), row(1, 2), row(5, 1)]) == pytest.approx(4.0)  # [0,3] and [5,6]
    assert busy_seconds([row(0, 4), row(1, 1)]) == pytest.approx(4.0)  # one inside the other
    assert busy_seconds([row(None, 2), row(None, 3)]) == pytest.approx(5.0)  # older lines: each as if alone
    assert busy_seconds([]) == 0.0


def test_concurrent_items_are_not_paid_twice() -> None:
    sequential = [_row(2.0, 1, 0, 1), _row(2.0, 1, 0, 1)]
    for i, r in enumerate(sequential):
        r["timings"]["start"] = 100.0 + 2.0 * i
    concurrent = [dict(r, timings={**r["timings"], "start": 100.0}) for r in sequential]
    seq, con = tokenomics(sequential, price_per_hour=3.6), tokenomics(concurrent, price_per_hour=3.6)
    assert seq["busy_seconds"] == 4.0 and con["busy_seconds"] == 2.0
    assert con["hardware"]["usd"] == pytest.approx(seq["hardware"]["usd"] / 2)
    assert con["questions_per_s"] == pytest.approx(2 * seq["questions_per_s"])
    assert con["throughput_tokens_per_s"] == pytest.approx(2 * seq["throughput_tokens_per_s"])
    assert seq["concurrency_mean"] == 1.0 and con["concurrency_mean"] == 2.0
    assert con["latency_p50"] == seq["latency_p50"]  # each question still waited as long
