"""The few-shot example retriever: nearest examples (``similar``) or the same ones for every question (``fixed``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit.core.pipeline import Pipeline
from ragkit.stages.retrievers.examples import FewShotExampleRetriever
from ragkit.stores.examples import ExampleBank
from ragkit.testing import HashingEmbedder

EXAMPLES = [
    ("Who wrote X?", "SELECT ?a WHERE { ?b <http://e/author> ?a }"),
    ("Where is Y?", "SELECT ?p WHERE { ?y <http://e/place> ?p }"),
    ("How many books are there?", "SELECT (COUNT(?b) AS ?n) WHERE { ?b a <http://e/Book> }"),
    ("Who published Z?", "SELECT ?p WHERE { ?z <http://e/publisher> ?p }"),
]


def bank() -> ExampleBank:
    return ExampleBank.from_examples(EXAMPLES, HashingEmbedder())


def test_default_selection_is_similar() -> None:
    assert FewShotExampleRetriever(bank=bank()).selection == "similar"


def test_fixed_gives_the_same_first_examples_whatever_the_question() -> None:
    r = FewShotExampleRetriever(bank=bank(), top_k=2, selection="fixed")
    a = [e.query for e in r.run(question="How many books are there?").examples]
    b = [e.query for e in r.run(question="Who published Z?").examples]
    assert a == b == [EXAMPLES[0][1], EXAMPLES[1][1]]


def test_similar_depends_on_the_question() -> None:
    r = FewShotExampleRetriever(bank=bank(), top_k=1, diversity=0.0)
    assert r.run(question="How many books are there?").examples[0].query == EXAMPLES[2][1]
    assert r.run(question="Who published Z?").examples[0].query == EXAMPLES[3][1]


def test_fixed_skips_excluded_examples_and_takes_the_next() -> None:
    b = bank()
    r = FewShotExampleRetriever(bank=b, top_k=2, selection="fixed")
    with b.excluding(lambda e: e.question == "Who wrote X?"):
        got = [e.query for e in r.run(question="anything").examples]
    assert got == [EXAMPLES[1][1], EXAMPLES[2][1]]


def test_fixed_with_top_k_zero_gives_nothing() -> None:
    assert FewShotExampleRetriever(bank=bank(), top_k=0, selection="fixed").run(question="q").examples == []


def test_bad_selection_is_refused() -> None:
    with pytest.raises(ValueError, match="selection must be 'similar' or 'fixed'"):
        FewShotExampleRetriever(bank=bank(), selection="random")  # type: ignore[arg-type]


def test_fixed_selection_round_trips_through_yaml(tmp_path: Path) -> None:
    bank_file = tmp_path / "bank.jsonl"
    bank_file.write_text("".join(f'{{"question": "{q}", "query": "{s}"}}\n' for q, s in EXAMPLES[:2]), encoding="utf-8")
    text = f"""
version: 1
resources:
  embedder: {{type: hashing_embedder}}
  examples: {{type: example_bank, path: {bank_file}, embedder: embedder, persist: false}}
stages:
  - {{name: examples, type: few_shot_retriever, bank: examples, top_k: 1, selection: fixed}}
inputs:
  question: [examples.question]
outputs:
  examples: examples.examples
"""
    f = tmp_path / "p.yaml"
    f.write_text(text, encoding="utf-8")
    pipe = Pipeline.from_yaml(f)
    assert pipe.to_dict()["stages"][0]["selection"] == "fixed"
    out = tmp_path / "again.yaml"
    pipe.to_yaml(out)
    again = Pipeline.from_yaml(out)
    assert again.to_dict() == pipe.to_dict()
    assert [e.question for e in again.run(question="Where is Y?")["examples"]] == ["Who wrote X?"]


def test_shipped_fixed_few_shot_pipeline_differs_from_kgqa_sparql_only_in_selection() -> None:
    root = Path(__file__).resolve().parents[3]
    fixed = Pipeline.from_yaml(root / "pipelines" / "baselines" / "sparql_fixed_few_shot.yaml").to_dict()
    similar = Pipeline.from_yaml(root / "pipelines" / "kgqa_sparql.yaml").to_dict()
    assert fixed["stages"][0].pop("selection") == "fixed"
    for d in (fixed, similar):
        d.pop("name", None)
        d.pop("description", None)
    assert fixed == similar
