"""Text QA metrics and evaluate_textqa on a fake pipeline over the fixture corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from textkit_helpers import FIXTURE_CORPUS, FIXTURE_QUESTIONS

import ragkit.stages.rerankers.confidence  # noqa: F401  (registers the stage types until they are built-ins)
import ragkit.stages.retrievers.text  # noqa: F401
from ragkit import Pipeline
from ragkit.errors import InputError
from ragkit.eval.textqa import (
    abstention_metrics,
    evaluate_textqa,
    exact_match,
    ndcg_at_k,
    normalize_answer,
    read_textqa,
    recall_at_k,
    reciprocal_rank,
    token_f1,
)


def test_squad_normalisation_em_and_f1() -> None:
    assert normalize_answer("  The  Quick, brown fox! ") == "quick brown fox"
    assert exact_match("an Apple", ["apple", "pear"]) == 1.0 and exact_match("apples", ["apple"]) == 0.0
    assert token_f1("the big red barn", ["red barn"]) == pytest.approx(0.8)
    assert token_f1("", [""]) == 1.0 and token_f1("x", ["y"]) == 0.0


def test_ranking_metrics() -> None:
    assert recall_at_k(["a", "x", "b"], ["a", "b"], 2) == 0.5 and recall_at_k(["a", "x", "b"], ["a", "b"], 3) == 1.0
    assert reciprocal_rank(["x", "b"], ["a", "b"]) == 0.5 and reciprocal_rank(["x"], ["a"]) == 0.0
    assert ndcg_at_k(["a", "b"], ["a", "b"], 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "a"], ["a"], 10) == pytest.approx(1 / math.log2(3))
    assert math.isnan(recall_at_k(["a"], [], 5))


def test_abstention_metrics() -> None:
    m = abstention_metrics([True, True, False, False], [False, True, False, True])
    assert m == {"rate": 0.5, "precision": 0.5, "recall": 0.5, "rate_on_answerable": 0.5}


def test_bad_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="questions.jsonl does not exist"):
        read_textqa(tmp_path)
    (tmp_path / "questions.jsonl").write_text('{"id": "a", "question": 3}\n')
    with pytest.raises(InputError, match=r"questions.jsonl:1: needs"):
        read_textqa(tmp_path)


def _fake_pipeline(threshold: float) -> Pipeline:
    return Pipeline.from_dict(
        {
            "version": 1,
            "resources": {
                "emb": {"type": "hashing_embedder"},
                "llm": {"type": "scripted_llm", "rules": {"Lanternfish Press": "1921"}, "responses": ["Greywater"]},
                "index": {"type": "faiss_index", "embedder": "emb", "corpus": str(FIXTURE_CORPUS)},
            },
            "stages": [
                {"name": "retrieve", "type": "hybrid_retriever", "index": "index", "top_k": 10},
                {"name": "rerank", "type": "confidence_reranker", "embedder": "emb", "top_k": 3, "abstain_threshold": threshold},
                {"name": "prompt", "type": "prompt_builder", "llm": "llm"},
                {"name": "generate", "type": "answer_generator", "llm": "llm"},
            ],
            "connections": [
                "retrieve.passages -> rerank.passages",
                "rerank.passages -> prompt.passages",
                "rerank.abstained -> prompt.abstained",
                "prompt.prompt -> generate.prompt",
            ],
            "inputs": {"question": ["retrieve.question", "rerank.question", "prompt.question"]},
            "outputs": {"answer": "generate.text", "passages": "rerank.passages", "abstained": "rerank.abstained"},
        }
    )


def test_evaluate_textqa_writes_one_line_per_question(tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    summary = evaluate_textqa(_fake_pipeline(0.0), FIXTURE_QUESTIONS, out, limit=4)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["lib-t01", "lib-t02", "lib-t03", "lib-t04"]
    for x in lines:
        assert set(x) == {"id", "answer", "abstained", "retrieved", "timings", "tokens", "stages"}
        assert x["timings"]["total"] > 0 and set(x["timings"]["stages"]) == {"retrieve", "rerank", "prompt", "generate"}
        assert x["tokens"]["out"] > 0 and len(x["retrieved"]) == 3
    assert lines[0]["answer"] == "1921" and lines[0]["retrieved"][0] == "lib-p01"
    assert summary["n"] == 4 and summary["exact_match"] == 0.5  # 1921 and Greywater right; the others get "Greywater"
    assert summary["recall@5"] is not None and summary["abstention"]["rate"] is None  # no unanswerable item among the 4


def test_abstention_is_recorded_and_scored(tmp_path: Path) -> None:
    summary = evaluate_textqa(_fake_pipeline(1.0), FIXTURE_QUESTIONS, tmp_path / "p.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(x["abstained"] for x in lines) and all(x["tokens"]["out"] == 0 for x in lines)
    assert summary["abstention"] == {"rate": 1.0, "precision": 0.2, "recall": 1.0, "rate_on_answerable": 1.0}
    assert summary["exact_match"] == 0.0
