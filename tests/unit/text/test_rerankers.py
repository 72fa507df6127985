"""confidence_reranker: backends, calibration artifacts, graph fusion, coverage-aware selection, abstention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragkit import Pipeline
from ragkit.errors import InputError
from ragkit.stages.rerankers.calibration import (
    Calibrator,
    brier_score,
    expected_calibration_error,
)
from ragkit.stages.rerankers.confidence import ConfidenceReranker
from ragkit.stages.rerankers.selection import Candidate, question_parts, select
from ragkit.stages.retrievers.graph import GraphContext
from ragkit.stores.vector import Passage
from ragkit.testing import HashingEmbedder, ScriptedLLM

PASSAGES = [
    Passage(id="bob", title="Bob", text="Bob lives in Oslo, the capital of Norway."),
    Passage(id="ann", title="Ann", text="Ann lives in Rome and works as a baker."),
    Passage(id="ann2", title="Ann", text="Ann lives in Rome; Ann bakes bread in Rome."),
    Passage(id="cat", title="Cats", text="Cats sleep most of the day."),
]


# ---- calibration --------------------------------------------------------------------------------
def test_platt_fit_is_monotone_and_calibrated() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, 4000)
    y = (rng.uniform(0, 1, 4000) < 1 / (1 + np.exp(-(4 * s - 1)))).astype(int)
    cal = Calibrator.fit(s, y, method="platt", backend="bi_encoder")
    assert cal.params["a"] == pytest.approx(4, rel=0.15) and cal.params["b"] == pytest.approx(-1, abs=0.2)
    assert cal.info["ece"] < 0.03 and cal.info["n"] == 4000


def test_isotonic_fit_is_monotone() -> None:
    cal = Calibrator.fit([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0, 1, 0, 1, 1, 1], method="isotonic")
    p = cal.predict([0.0, 0.15, 0.35, 0.7]).tolist()
    assert p == sorted(p) and 0 <= p[0] and p[-1] == 1.0


def test_artifact_is_json_and_round_trips(tmp_path: Path) -> None:
    cal = Calibrator.fit([0.1, 0.2, 0.8, 0.9, 0.7, 0.3], [0, 0, 1, 1, 1, 0], backend="bi_encoder", note="unit")
    path = cal.save(tmp_path / "cal" / "bi.json")
    d = json.loads(path.read_text())
    assert d["format"] == "ragkit-calibration" and d["method"] == "platt" and d["note"] == "unit"
    again = Calibrator.load(path)
    assert again.predict([0.5]).tolist() == cal.predict([0.5]).tolist() and again.backend == "bi_encoder"


@pytest.mark.parametrize(
    ("content", "msg"),
    [
        (None, "does not exist"),
        ("{", "not valid JSON"),
        ('{"format": "x"}', "not a ragkit calibration"),
        ('{"format": "ragkit-calibration", "method": "platt", "params": {}}', "malformed"),
    ],
)
def test_bad_calibration_files(tmp_path: Path, content: str | None, msg: str) -> None:
    p = tmp_path / "c.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(InputError, match=msg):
        Calibrator.load(p)


def test_fit_needs_both_classes() -> None:
    with pytest.raises(InputError, match="both relevant"):
        Calibrator.fit([0.1, 0.2], [1, 1])


def test_scores() -> None:
    assert brier_score([1.0, 0.0], [1, 0]) == 0.0
    assert expected_calibration_error([0.9, 0.9], [1, 0]) == pytest.approx(0.4)


# ---- selection ----------------------------------------------------------------------------------
def test_question_parts() -> None:
    assert question_parts("Which publisher is headquartered in the birthplace of Ada Quill?") == {
        "ada quill": 2.0,
        "publisher": 1.0,
        "headquarter": 1.0,
        "birthplace": 1.0,
    }


def test_selection_covers_both_entities_instead_of_repeating_one() -> None:
    q = "Are Ann Lee and Bob Ray both directors?"
    cands = [
        Candidate("a1", "Ann Lee is a director.", p=0.9),
        Candidate("a2", "Ann Lee is a film director.", p=0.8),
        Candidate("b1", "Bob Ray is a director.", p=0.7),
    ]
    assert [c.key for c in select(q, cands, k=2)] == ["a1", "b1"]
    assert [c.key for c in select(q, cands, k=2, coverage_weight=0, redundancy_weight=0)] == ["a1", "a2"]


def test_selection_follows_a_bridge_named_by_a_chosen_item() -> None:
    q = "In which country is the city where Ann was born?"
    cands = [
        Candidate("ann", "Ann was born in Lirria.", title="Ann", p=0.8),
        Candidate("other", "A city on a river in a country.", title="Other", p=0.5),
        Candidate("lirria", "Lirria lies in Marisande.", title="Lirria", p=0.45),
    ]
    assert [c.key for c in select(q, cands, k=2, coverage_weight=0, redundancy_weight=0, bridge_weight=0.2)] == ["ann", "lirria"]


# ---- the stage ----------------------------------------------------------------------------------
def test_defaults() -> None:
    r = ConfidenceReranker(embedder=HashingEmbedder())
    assert (r.backend, r.top_k, r.candidates, r.abstain_threshold, r.calibration) == ("bi_encoder", 5, 20, 0.3, None)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cal = Calibrator.fit([0.0, 0.1, 0.5, 0.6], [0, 0, 1, 1], backend="bi_encoder").save(tmp_path / "cal.json")
    spec = {
        "version": 1,
        "resources": {"emb": {"type": "hashing_embedder"}},
        "stages": [{"name": "rerank", "type": "confidence_reranker", "embedder": "emb", "top_k": 2, "calibration": str(cal), "abstain_threshold": 0.2}],
        "inputs": {"question": "rerank.question", "passages": "rerank.passages"},
        "outputs": {"passages": "rerank.passages", "abstained": "rerank.abstained"},
    }
    pipe = Pipeline.from_dict(spec)
    assert Pipeline.from_dict(pipe.to_dict()).to_dict() == pipe.to_dict()
    out = pipe.run(question="Where does Bob live?", passages=PASSAGES)
    assert out["passages"][0].id == "bob" and out["abstained"] is False


def test_warm_up_loads_once() -> None:
    emb = HashingEmbedder()
    r = ConfidenceReranker(embedder=emb, calibration=None)
    r.warm_up()
    r.warm_up()
    r.run(question="Where does Ann live?", passages=PASSAGES)
    assert emb.setup_calls == 1 and r.calibrator.method == "sigmoid"


def test_bi_encoder_rerank_gives_probabilities_and_diverse_context() -> None:
    out = ConfidenceReranker(embedder=HashingEmbedder(), top_k=2).run(question="Where does Ann live and where does Bob live?", passages=PASSAGES)
    assert {p.id for p in out.passages} == {"ann", "bob"} or {p.id for p in out.passages} == {"ann2", "bob"}  # one Ann, not two
    assert all(0 < p.score < 1 for p in out.passages)
    assert [i.kind for i in out.items] == ["passage", "passage"] and out.graph is None


def test_graph_rows_fuse_as_one_item_with_their_confidence() -> None:
    graph = GraphContext(query="SELECT ...", columns=["city"], rows=[["Rome"]], confidence=0.95)
    out = ConfidenceReranker(embedder=HashingEmbedder(), top_k=2).run(question="Where does Ann live?", passages=PASSAGES, graph=graph)
    assert out.items[0].kind == "graph" and out.items[0].probability == pytest.approx(0.95)
    assert out.graph == graph and len(out.passages) == 1
    assert out.confidence >= 0.47 and not out.abstained


def test_weak_graph_is_left_out_when_passages_are_better() -> None:
    graph = GraphContext(query="SELECT ...", columns=["x"], rows=[["nothing useful"]], confidence=0.01)
    out = ConfidenceReranker(embedder=HashingEmbedder(), top_k=1).run(question="Where does Bob live?", passages=PASSAGES, graph=graph)
    assert out.graph is None and out.passages[0].id == "bob"


def test_abstains_below_the_threshold_and_says_why() -> None:
    out = ConfidenceReranker(embedder=HashingEmbedder(), abstain_threshold=0.9).run(question="What do cats eat for breakfast?", passages=PASSAGES)
    assert out.abstained and "below the threshold 0.90" in out.reason
    empty = ConfidenceReranker(embedder=HashingEmbedder()).run(question="Anything?", passages=[])
    assert empty.abstained and empty.reason == "no context was retrieved" and empty.confidence == 0.0


def test_uncovered_question_parts_lower_the_best_item_confidence() -> None:
    q = "Where does Ann live?"
    full = ConfidenceReranker(embedder=HashingEmbedder(), confidence_method="best_item", coverage_penalty=0.0).run(question=q, passages=PASSAGES[3:])
    penalised = ConfidenceReranker(embedder=HashingEmbedder(), confidence_method="best_item", coverage_penalty=0.5).run(question=q, passages=PASSAGES[3:])
    assert penalised.confidence < full.confidence


def test_part_support_is_the_mean_best_probability_covering_each_part() -> None:
    # "ann" is named only by an improbable passage; "live" by a probable one: the mean of the two
    from ragkit.stages.rerankers.selection import question_parts

    q = "Where does Ann live?"
    assert question_parts(q) == {"ann": 2.0, "live": 1.0}
    ps = [Passage(id="a", text="Ann."), Passage(id="b", text="They live.")]
    r = ConfidenceReranker(embedder=HashingEmbedder(), top_k=2, coverage_weight=0, redundancy_weight=0, bridge_weight=0)
    probs = dict(zip(["a", "b"], r.probabilities(q, ps)))
    out = r.run(question=q, passages=ps)
    assert out.confidence == pytest.approx((2 * probs["a"] + probs["b"]) / 3, abs=1e-5)
    best = ConfidenceReranker(embedder=HashingEmbedder(), top_k=2, confidence_method="best_item", coverage_penalty=0.0).run(question=q, passages=ps)
    assert best.confidence == pytest.approx(max(probs.values()), abs=1e-5)
    assert "weakest part" in out.reason


def test_a_known_entity_named_only_by_an_unlikely_passage_lowers_part_support() -> None:
    # A probable passage about the river and the town, and the entity named only by a passage that
    # barely relates to the question: every part is covered, so best_item stays high; part_support not.
    q = "Which river flows through Ann Lee's home town?"
    ps = [
        Passage(id="river", text="Which river flows through the home town? The river flows through the town."),
        Passage(id="ann", text="Ann Lee's cat sleeps."),
    ]
    kw: dict[str, object] = {"embedder": HashingEmbedder(), "top_k": 2}
    probs = ConfidenceReranker(**kw).probabilities(q, ps)  # type: ignore[arg-type]
    assert probs[0] > probs[1]
    support = ConfidenceReranker(**kw).run(question=q, passages=ps)  # type: ignore[arg-type]
    best = ConfidenceReranker(confidence_method="best_item", **kw).run(question=q, passages=ps)  # type: ignore[arg-type]
    assert best.confidence == pytest.approx(probs[0], abs=1e-5)  # full coverage: no penalty
    assert support.confidence < best.confidence


def test_the_graph_result_supports_every_part() -> None:
    graph = GraphContext(query="SELECT ...", columns=["city"], rows=[["Rome"]], confidence=0.9)
    out = ConfidenceReranker(embedder=HashingEmbedder(), top_k=1).run(question="Where does Ann live?", passages=[], graph=graph)
    assert out.confidence == pytest.approx(0.9)


def test_calibration_of_another_backend_is_refused(tmp_path: Path) -> None:
    p = Calibrator.fit([0.0, 1.0, 0.2, 0.9], [0, 1, 0, 1], backend="cross_encoder").save(tmp_path / "ce.json")
    with pytest.raises(InputError, match="fitted for backend 'cross_encoder'"):
        ConfidenceReranker(embedder=HashingEmbedder(), calibration=str(p)).warm_up()


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"backend": "bi_encoder"}, "needs 'embedder'"),
        ({"backend": "query_likelihood", "embedder": HashingEmbedder()}, "needs 'llm'"),
        ({"backend": "cross_encoder"}, "needs 'model'"),
        ({"backend": "magic", "embedder": HashingEmbedder()}, "backend must be one of"),
        ({"embedder": HashingEmbedder(), "abstain_threshold": 2}, "abstain_threshold"),
        ({"embedder": HashingEmbedder(), "confidence_method": "mean"}, "confidence_method must be"),
    ],
)
def test_bad_parameters(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        ConfidenceReranker(**kw)  # type: ignore[arg-type]


def test_empty_question() -> None:
    with pytest.raises(InputError, match="empty"):
        ConfidenceReranker(embedder=HashingEmbedder()).run(question="", passages=PASSAGES)


def test_query_likelihood_needs_a_transformers_model() -> None:
    from ragkit.errors import ModelError

    with pytest.raises(ModelError, match="needs a transformers model"):
        ConfidenceReranker(backend="query_likelihood", llm=ScriptedLLM()).warm_up()


def test_missing_cross_encoder_folder(tmp_path: Path) -> None:
    from ragkit.errors import ModelError

    with pytest.raises(ModelError, match="no config.json"):
        ConfidenceReranker(backend="cross_encoder", model=str(tmp_path)).warm_up()


def test_bi_encoder_embeds_each_passage_once_across_questions() -> None:
    from ragkit.stages.rerankers.backends import BiEncoderScorer

    calls: list[int] = []

    class Counting(HashingEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            calls.append(len(texts))
            return super().embed(texts)

    scorer = BiEncoderScorer(Counting(), cache_size=3)
    texts = [p.text for p in PASSAGES[:3]]
    first = scorer.score("where?", texts)
    second = scorer.score("where?", texts)
    assert first.tolist() == pytest.approx(second.tolist())
    assert calls == [3, 1, 1]  # passages once, then only the question
    scorer.score("where?", [PASSAGES[3].text])  # evicts the oldest
    assert len(scorer._cache) == 3


def test_fit_calibration_from_labelled_retrieval_results(tmp_path: Path) -> None:
    from ragkit.stages.rerankers.confidence import fit_calibration

    r = ConfidenceReranker(embedder=HashingEmbedder())
    examples = [("Where does Ann live?", PASSAGES, ["ann", "ann2"]), ("Where does Bob live?", PASSAGES, ["bob"])]
    cal = fit_calibration(r, examples, note="two questions")
    assert cal.backend == "bi_encoder" and cal.info["n"] == 8 and cal.info["positives"] == 3
    p = cal.save(tmp_path / "c.json")
    tuned = ConfidenceReranker(embedder=HashingEmbedder(), calibration=str(p))
    assert tuned.calibrator.method == "platt"


def test_bi_encoder_reuses_the_index_vectors() -> None:
    from ragkit.ingest import Document
    from ragkit.stores.vector import VectorIndex

    calls: list[list[str]] = []

    class Counting(HashingEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            calls.append(list(texts))
            return super().embed(texts)

    emb = Counting()
    idx = VectorIndex(embedder=emb)
    idx.add([Document(id=p.id, title=p.title, text=p.text) for p in PASSAGES])
    calls.clear()
    stored = ConfidenceReranker(embedder=emb, index=idx)
    outsider = Passage(id="new", title="New", text="Not in the index.")
    with_index = stored.raw_scores("Where does Ann live?", [*PASSAGES, outsider])
    assert calls == [["New\nNot in the index."], ["Where does Ann live?"]]  # only the unknown passage and the question
    plain = ConfidenceReranker(embedder=HashingEmbedder()).raw_scores("Where does Ann live?", [*PASSAGES, outsider])
    assert with_index == pytest.approx(plain, abs=1e-5)


def test_index_with_another_embedder_is_refused() -> None:
    from ragkit.stores.vector import VectorIndex

    with pytest.raises(ValueError, match="'index' must be built with the reranker's 'embedder'"):
        ConfidenceReranker(embedder=HashingEmbedder(), index=VectorIndex(embedder=HashingEmbedder()))
