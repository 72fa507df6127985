"""dense_retriever, bm25_retriever and hybrid_retriever (with the hashing embedder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textkit_helpers import FIXTURE_CORPUS, synthetic_docs, write_jsonl

from ragkit import Pipeline
from ragkit.errors import InputError
from ragkit.ingest import Document
from ragkit.stages.retrievers.text import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    reciprocal_rank_fusion,
)
from ragkit.stores.vector import Passage, VectorIndex
from ragkit.testing import HashingEmbedder


@pytest.fixture
def index() -> VectorIndex:
    return VectorIndex(embedder=HashingEmbedder(), corpus=str(FIXTURE_CORPUS))


def test_defaults(index: VectorIndex) -> None:
    assert DenseRetriever(index=index).top_k == 10
    h = HybridRetriever(index=index)
    assert (h.top_k, h.fetch_k, h.rrf_k, h.dense_weight, h.bm25_weight) == (10, 50, 60, 1.0, 1.0)
    assert BM25Retriever(index=index).init_params["backend"] == "auto"


def test_yaml_round_trip_of_all_three() -> None:
    spec = {
        "version": 1,
        "resources": {"emb": {"type": "hashing_embedder"}, "index": {"type": "faiss_index", "embedder": "emb", "corpus": str(FIXTURE_CORPUS)}},
        "stages": [
            {"name": "dense", "type": "dense_retriever", "index": "index", "top_k": 4},
            {"name": "sparse", "type": "bm25_retriever", "index": "index", "backend": "numpy", "k1": 1.2},
            {"name": "hybrid", "type": "hybrid_retriever", "index": "index", "top_k": 3, "rrf_k": 10, "filters": {"title": ["Vesk", "Greywater"]}},
        ],
        "inputs": {"question": ["dense.question", "sparse.question", "hybrid.question"]},
    }
    pipe = Pipeline.from_dict(spec)
    assert Pipeline.from_dict(pipe.to_dict()).to_dict() == pipe.to_dict()
    out = pipe.run(question="Which city is home to Tidewell Publishing?")
    assert [p.title for p in out.stage_outputs["hybrid"].passages][0] == "Vesk"  # type: ignore[attr-defined]
    assert {p.title for p in out.stage_outputs["hybrid"].passages} <= {"Vesk", "Greywater"}  # type: ignore[attr-defined]


def test_warm_up_builds_index_and_bm25_once(index: VectorIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    r = HybridRetriever(index=index)
    builds = []
    real = r._bm25._build_bm25s
    monkeypatch.setattr(r._bm25, "_build_bm25s", lambda texts: (builds.append(1), real(texts))[1])
    r.warm_up()
    r.warm_up()
    r.run(question="Who wrote Ember and Ivy?")
    assert builds == [1] and index.embedder.setup_calls == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [DenseRetriever, BM25Retriever, HybridRetriever])
def test_finds_the_passage_about_the_asked_entity(index: VectorIndex, cls: type) -> None:
    out = cls(index=index, top_k=3).run(question="When was Harrow & Finch founded?")
    assert out.passages[0].id == "lib-p03"
    assert all(isinstance(p, Passage) for p in out.passages) and len(out.passages) == 3
    assert out.passages[0].score >= out.passages[-1].score


@pytest.mark.parametrize("backend", ["bm25s", "numpy"])
def test_bm25_backends_agree_on_the_top_passage(index: VectorIndex, backend: str) -> None:
    out = BM25Retriever(index=index, top_k=2, backend=backend).run(question="Which publisher did Osric Penhallow's fantasy novels appear under?")  # type: ignore[arg-type]
    assert out.passages[0].id in ("lib-p05", "lib-p23")


def test_bm25_sees_added_documents(index: VectorIndex) -> None:
    r = BM25Retriever(index=index, top_k=1)
    assert r.run(question="zeppelin hangar").passages == []
    index.add([Document(id="z", text="The zeppelin hangar of Vesk.")])
    assert r.run(question="zeppelin hangar").passages[0].id == "z"


def test_run_filters_override_stage_filters(tmp_path: Path) -> None:
    idx = VectorIndex(embedder=HashingEmbedder(), corpus=str(write_jsonl(tmp_path / "c.jsonl", synthetic_docs(40))))
    r = HybridRetriever(index=idx, top_k=5, filters={"topic": "river"})
    assert {p.metadata["topic"] for p in r.run(question="note number").passages} == {"river"}
    assert {p.metadata["topic"] for p in r.run(question="note number", filters={"topic": "island"}).passages} == {"island"}


def test_reciprocal_rank_fusion() -> None:
    a = [Passage(id="x", text=""), Passage(id="y", text="")]
    b = [Passage(id="y", text=""), Passage(id="z", text="")]
    fused = reciprocal_rank_fusion([a, b], k=1)
    assert [p.id for p in fused] == ["y", "x", "z"]
    assert fused[0].score == pytest.approx(1 / 3 + 1 / 2)
    assert [p.id for p in reciprocal_rank_fusion([a, b], k=1, weights=[1.0, 0.0])] == ["x", "y", "z"]


def test_bad_input_and_parameters(index: VectorIndex) -> None:
    with pytest.raises(InputError, match="empty"):
        DenseRetriever(index=index).run(question="  ")
    with pytest.raises(ValueError, match="top_k"):
        DenseRetriever(index=index, top_k=0)
    with pytest.raises(ValueError, match="fetch_k"):
        HybridRetriever(index=index, top_k=20, fetch_k=10)
    with pytest.raises(ValueError, match="not both 0"):
        HybridRetriever(index=index, dense_weight=0, bm25_weight=0)
    with pytest.raises(ValueError, match="k1"):
        BM25Retriever(index=index, k1=0)


def test_concurrent_searches_get_what_they_get_alone(index: VectorIndex) -> None:
    from concurrent.futures import ThreadPoolExecutor

    retriever = HybridRetriever(index=index, top_k=4)
    retriever.warm_up()
    questions = [c.title for c in index.chunks()][:12] * 4
    alone = [[p.id for p in retriever.run(question=q).passages] for q in questions]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: [p.id for p in retriever.run(question=q).passages], questions))
    assert together == alone


def test_a_bm25_search_reads_one_build_while_the_index_changes(index: VectorIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    retriever = BM25Retriever(index=index, top_k=3)
    retriever.warm_up()
    state = retriever._bm25._ensure()
    real = retriever._bm25._scores

    def scores_then_change(st: object, query: str) -> object:
        out = real(st, query)  # type: ignore[arg-type]
        if not getattr(scores_then_change, "done", False):
            scores_then_change.done = True  # type: ignore[attr-defined]
            # mid-search, another thread deletes chunks and its search rebuilds BM25 over what is left
            index.delete([c.id for c in index.chunks()[:5]], save=False)
            retriever._bm25._ensure()
        return out

    monkeypatch.setattr(retriever._bm25, "_scores", scores_then_change)
    found = retriever.run(question="When was Harrow & Finch founded?").passages
    assert found[0].id == "lib-p03"  # scores and chunks of one build: positions not shifted by the rebuild
    assert "lib-p03" in {c.id for c in state.chunks[:5]}  # the rebuild did remove it, so mixing builds would show
    rebuilt = retriever._bm25._ensure()
    assert rebuilt.version == index.version and len(rebuilt.chunks) == len(state.chunks) - 5
