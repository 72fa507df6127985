"""Evaluation data must not leak into code, prompts, pipelines, example banks or fixtures: no
question string, gold query or id of the benchmark sets in ``../shared/data`` appears in them.

Results (``benchmarks/results``), notebook outputs and adapters are measurements, not inputs, and are
not scanned. Skipped when the data is not beside the checkout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
SCANNED = ("ragkit", "pipelines", "fixtures", "tests", "benchmarks/pipelines", "docker", "docs")
SUFFIXES = {".py", ".yaml", ".yml", ".json", ".jsonl", ".ttl", ".nt", ".cypher", ".md", ".txt", ".sh"}


def _evaluation_items() -> list[dict]:
    items = []
    for name in ("spider4sparql", "movies", "hotpotqa"):
        f = DATA / name / "questions.jsonl"
        if f.is_file():
            items += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return items


def _needles(items: list[dict]) -> set[str]:
    out = set()
    for it in items:
        out.add(str(it["id"]))
        q = " ".join(str(it.get("question", "")).split())
        if len(q) >= 30:  # short questions ("How many singers do we have?") could be written independently
            out.add(q)
        for key in ("sparql", "cypher"):
            gold = " ".join(str(it.get(key, "")).split())
            if len(gold) >= 60:
                out.add(gold)
    return out


def test_no_evaluation_question_query_or_id_in_the_repository() -> None:
    items = _evaluation_items()
    if not items:
        pytest.skip(f"no evaluation data in {DATA}")
    needles = _needles(items)
    me = Path(__file__).resolve()
    found = []
    for top in SCANNED:
        for f in sorted((ROOT / top).rglob("*")):
            if not f.is_file() or f.suffix not in SUFFIXES or f.resolve() == me:
                continue
            text = " ".join(f.read_text(encoding="utf-8", errors="replace").split())
            found += [f"{f.relative_to(ROOT)}: {n[:60]}" for n in needles if n in text]
    assert not found, "evaluation data in the repository:\n" + "\n".join(found[:20])
