"""FinOps levers with the real bundled models: the semantic cache on all-MiniLM-L6-v2 and in the demo
pipeline, and the routed LLM on SmolLM2 (no fakes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragkit import Pipeline
from ragkit.core.cost import Price, trace_cost
from ragkit.core.metrics import StageTrace, Trace, recording
from ragkit.models.base import ChatMessage
from ragkit.models.embedder import SentenceEmbedder
from ragkit.models.llm import LocalLLM
from ragkit.models.router import RoutedLLM
from ragkit.stages.cache.semantic import SemanticCache

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [json.loads(line) for line in (ROOT / "tests/data/semantic_cache_pairs.jsonl").read_text().splitlines() if line.strip()]


def test_minilm_cache_never_serves_a_near_duplicate_and_hits_paraphrases() -> None:
    cache = SemanticCache(embedder=SentenceEmbedder(device="cpu"))  # default threshold 0.9
    served, hits, n_same = [], 0, 0
    for i, p in enumerate(PAIRS):
        ns = f"pair{i}"
        cache.put(p["a"], {"answer": p["a"]}, kind="answer", namespace=ns)
        found = cache.lookup(p["b"], kind="answer", namespace=ns)
        if p["same_meaning"]:
            n_same += 1
            hits += found.hit
        elif found.hit:
            served.append((p["a"], p["b"]))
    assert served == []
    assert hits / n_same >= 0.85, f"paraphrase hit rate {hits}/{n_same}"


def test_the_cached_demo_pipeline_answers_a_paraphrase_from_the_cache(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "pipelines/kgqa_sparql_cached.yaml").read_text())
    spec["resources"]["qa_cache"]["path"] = str(tmp_path / "cache.sqlite")
    pipe = Pipeline.from_dict(spec)
    try:
        first = pipe.run(question="Who wrote Cold Water Gospel?")
        assert first.trace.stages[0].extra["answer_cache"] == "miss" and first.trace.tokens_out > 0
        again = pipe.run(question="Who is the author of Cold Water Gospel?")
        assert [s.name for s in again.trace.stages] == ["cache:qa_cache"]
        assert again.outputs["answer"] == first.outputs["answer"] and again.outputs["rows"] == json.loads(json.dumps(first.outputs["rows"]))
        assert again.trace.tokens_out == 0  # no model generated anything
        other = pipe.run(question="Who wrote The Glass Orchard?")
        assert other.trace.stages[0].extra["answer_cache"] != "hit"
    finally:
        pipe.close()


def test_router_escalates_on_real_models_and_prices_each_call() -> None:
    small, large = LocalLLM(device="cpu"), LocalLLM(device="cpu", prefix_cache=False)
    router = RoutedLLM(
        small=small,
        large=large,
        min_score=-0.0001,  # a real reply is never that sure: every call escalates
        small_price=Price(input_per_million=0.1, output_per_million=0.2),
        large_price=Price(input_per_million=1.0, output_per_million=2.0),
    )
    st = StageTrace(name="generate", type="answer_generator")
    with recording(st):
        gen = router.generate([ChatMessage(role="user", content="What is the capital of France?")], max_new_tokens=12)
    assert gen.text.strip()
    assert st.extra["routes"][0].startswith("large (low confidence")
    cost = trace_cost_of(st)
    s, l = cost["models"]["small"], cost["models"]["large"]
    assert s["calls"] == 1 and l["calls"] == 1 and s["tokens_in"] == l["tokens_in"] > 0
    assert l["cost"] == pytest.approx((l["tokens_in"] * 1.0 + l["tokens_out"] * 2.0) / 1e6)
    assert st.tokens_in == s["tokens_in"] + l["tokens_in"]

    keep = RoutedLLM(small=small, large=large, min_score=-50.0)
    st2 = StageTrace(name="generate", type="answer_generator")
    with recording(st2):
        keep.generate([ChatMessage(role="user", content="What is the capital of France?")], max_new_tokens=12)
    assert st2.extra["routes"] == ["small"]


def trace_cost_of(st: StageTrace) -> dict[str, Any]:
    return trace_cost(Trace(stages=[st]))
