"""KGQA evaluation: value comparison, metrics, the query-disjoint few-shot protocol, resuming, and the
``ragkit eval`` command, on a tiny dataset written to a temporary folder.

The pipeline is the real KGQA wiring (schema reader, few-shot retriever, SPARQL generator, graph
retriever on embedded Oxigraph) with a scripted LLM whose rules map each question to a reply. Every
gold query holds a string literal, so each example's turn in a prompt carries a ``Values:`` line and
the rule key ``"<question>\\n<|assistant|>"`` only matches the question being asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import ragkit.eval.kgqa as kgqa
from ragkit import Pipeline
from ragkit.errors import InputError, UserError
from ragkit.eval.kgqa import KgqaReport, answer_f1, bootstrap_ci, canonical, evaluate_kgqa, execution_match, load_kgqa


# ---- canonical values and metrics ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b"),
    [
        (5.0, 5),
        ("5", 5),
        ("5.0", 5),
        (" 5 ", 5),
        ("+5", 5),
        ("-0.50", -0.5),
        ("1e3", 1000),
        (0.1, "0.1"),
        (True, "true"),
        (True, "True"),
        (False, "false"),
        ([3, 1, 2], [2, 3, 1]),
        (["b", "a"], ("a", "b")),
        ({"b": 1, "a": 2.0}, {"a": "2", "b": 1}),
        (None, None),
    ],
)
def test_canonical_equal(a: Any, b: Any) -> None:
    assert canonical(a) == canonical(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, True),
        ("1,000", 1000),
        ("abc", "ABC"),
        ([1, 2], [1, 2, 2]),
        (None, "None"),
        (0.1, 0.1000001),
        ("http://x/5", 5),
    ],
)
def test_canonical_different(a: Any, b: Any) -> None:
    assert canonical(a) != canonical(b)


def test_canonical_forms() -> None:
    assert canonical(5.0) == "5" and canonical(2.5) == "2.5" and canonical(True) == "true" and canonical(None) == "null"
    assert canonical([3, 1, 2]) == "[1,2,3]" and canonical("Rome") == "Rome"
    assert canonical(float("nan")) == "nan" and canonical(float("inf")) == "inf"


def test_execution_match() -> None:
    assert execution_match([["a", 1]], [[1, "a"]])  # column order ignored
    assert execution_match([["a"], ["b"]], [["b"], ["a"]])  # row order ignored
    assert execution_match([[5.0]], [["5"]]) and execution_match([["true"]], [[True]])
    assert not execution_match([["a"], ["a"]], [["a"]])  # multiplicity matters
    assert not execution_match([["a"]], [["a"], ["a"]])
    assert not execution_match([["a", "b"]], [["a"], ["b"]])  # row boundaries matter
    assert execution_match([], []) and not execution_match([], [["a"]]) and not execution_match([["a"]], [])


def test_answer_f1() -> None:
    assert answer_f1([["a"], ["b"]], [["a"]]) == pytest.approx(2 / 3)
    assert answer_f1([["a", "b"]], [["b"], ["a"]]) == 1.0  # values, not rows
    assert answer_f1([["a"], ["a"]], [["a"]]) == 1.0  # sets
    assert answer_f1([[5.0]], [["5"]]) == 1.0
    assert answer_f1([], []) == 1.0 and answer_f1([], [["a"]]) == 0.0 and answer_f1([["a"]], []) == 0.0
    assert answer_f1([["x"]], [["a"]]) == 0.0
    assert answer_f1([["a"], ["b"], ["c"], ["d"]], [["a"], ["e"]]) == pytest.approx(2 * 0.25 * 0.5 / 0.75)


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([]) == (0.0, 0.0)
    assert bootstrap_ci([1.0] * 20) == (1.0, 1.0) and bootstrap_ci([0.0] * 20) == (0.0, 0.0)
    values = [0.0, 1.0] * 50
    lo, hi = bootstrap_ci(values)
    assert 0.0 < lo < 0.5 < hi < 1.0 and hi - lo < 0.35
    assert bootstrap_ci(values) == (lo, hi)  # seeded: reproducible
    lo2, hi2 = bootstrap_ci([0.0, 1.0, 1.0, 1.0] * 25, samples=400, seed=3)
    assert lo2 <= 0.75 <= hi2 and lo2 > lo


# ---- a tiny KGQA dataset ------------------------------------------------------------------------
P = "PREFIX ex: <http://example.org/people/>\nPREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"
B = "PREFIX ex: <http://example.org/books/>\nPREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"
ANN_CITY = P + 'SELECT ?c WHERE { ?p rdfs:label "Ann" ; ex:livesIn ?x . ?x rdfs:label ?c }'
BOB_CITY = P + 'SELECT ?c WHERE { ?p rdfs:label "Bob" ; ex:livesIn ?x . ?x rdfs:label ?c }'
PEOPLE = """\
@prefix ex: <http://example.org/people/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
ex:ann a ex:Person ; rdfs:label "Ann" ; ex:livesIn ex:rome ; ex:age 30 .
ex:bob a ex:Person ; rdfs:label "Bob" ; ex:livesIn ex:oslo ; ex:age 40 .
ex:rome a ex:City ; rdfs:label "Rome" .
ex:oslo a ex:City ; rdfs:label "Oslo" .
"""
BOOKS = """\
@prefix ex: <http://example.org/books/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
ex:dune a ex:Book ; rdfs:label "Dune" ; ex:year 1965 ; ex:genre "novel" .
"""


@dataclass(frozen=True)
class Item:
    id: str
    graph: str
    question: str
    sparql: str
    answers: list[list[Any]] | None
    reply: str  # what the scripted LLM writes for it


ITEMS = [
    Item("p1", "people", "Where does Ann live?", ANN_CITY, [["Rome"]], ANN_CITY),
    # the same gold query as p1 (case and whitespace differ); no gold rows, so only the query rule links them
    Item("p2", "people", "Which city is Ann's home?", ANN_CITY.replace("SELECT", "select").replace(" ;", "  ;\n"), None, ANN_CITY),
    # another query with p1's gold rows
    Item("p3", "people", "What is the hometown of Ann?", P + 'SELECT DISTINCT ?name WHERE { ?who rdfs:label "Ann" . ?who ex:livesIn ?t . ?t rdfs:label ?name }', [["Rome"]], ANN_CITY),
    Item("p4", "people", "Where does Bob live?", BOB_CITY, [["Oslo"]], BOB_CITY),
    Item("p5", "people", "How old is Bob?", P + 'SELECT ?a WHERE { ?p rdfs:label "Bob" ; ex:age ?a }', [[40]], BOB_CITY),  # answered wrongly
    Item("b1", "books", "When was Dune published?", B + 'SELECT ?y WHERE { ?b rdfs:label "Dune" ; ex:year ?y }', [[1965]], B + 'SELECT ?y WHERE { ?b rdfs:label "Dune" ; ex:year ?y }'),
    Item("b2", "books", "Which novels are there?", B + 'SELECT ?t WHERE { ?b ex:genre "novel" ; rdfs:label ?t }', [["Dune"]], "I don't know."),  # no query
]
N = len(ITEMS)
CORRECT = {"p1", "p3", "p4", "b1"}
REQUIRED_KEYS = {"id", "query", "rows", "answer", "error", "confidence", "correct", "f1", "valid", "timings", "tokens"}


def write_dataset(folder: Path) -> Path:
    (folder / "graphs").mkdir(parents=True)
    (folder / "graphs" / "people.ttl").write_text(PEOPLE, encoding="utf-8")
    (folder / "graphs" / "books.ttl").write_text(BOOKS, encoding="utf-8")
    lines = []
    for it in ITEMS:
        row: dict[str, Any] = {"id": it.id, "graph": it.graph, "question": it.question, "sparql": it.sparql}
        if it.answers is not None:
            row["answers"] = it.answers
        lines.append(json.dumps(row))
    (folder / "questions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def pipeline_spec() -> dict[str, Any]:
    return {
        "version": 1,
        "name": "tiny_kgqa",
        "resources": {
            "llm": {"type": "scripted_llm", "responses": ["I don't know."], "rules": {f"{it.question}\n<|assistant|>": it.reply for it in ITEMS}},
            "embedder": {"type": "hashing_embedder", "dimension": 64},
            "graph": {"type": "oxigraph_store", "path": "replaced-by-eval.ttl"},
            "examples": {"type": "example_bank", "path": "replaced-by-eval.jsonl", "embedder": "embedder"},
        },
        "stages": [
            {"name": "examples", "type": "few_shot_retriever", "bank": "examples", "top_k": 4},
            {"name": "schema", "type": "graph_schema_reader", "store": "graph"},
            {"name": "querygen", "type": "sparql_generator", "llm": "llm", "store": "graph", "num_candidates": 2, "repair_rounds": 1},
            {"name": "retrieve", "type": "graph_query_retriever", "store": "graph"},
        ],
        "connections": [
            "examples.examples -> schema.examples",
            "schema.graph_schema -> querygen.graph_schema",
            "schema.text -> querygen.schema_text",
            "examples.examples -> querygen.examples",
            "querygen.generated -> retrieve.generated",
        ],
        "inputs": {"question": ["schema.question", "examples.question", "querygen.question"]},
        "outputs": {"query": "retrieve.query", "rows": "retrieve.rows", "confidence": "retrieve.confidence", "error": "retrieve.error"},
    }


def write_pipeline(folder: Path, spec: dict[str, Any] | None = None) -> Path:
    p = folder / "tiny_kgqa.yaml"
    p.write_text(yaml.safe_dump(spec or pipeline_spec(), sort_keys=False), encoding="utf-8")
    return p


@dataclass
class Runs:
    dataset: Path
    pipeline: Path
    predictions: Path
    first_lines: list[bytes]
    first: KgqaReport
    full: KgqaReport
    first_pipes: list[Pipeline]
    full_pipes: list[Pipeline]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Evaluate the first 2 questions, then resume on all of them; keep the pipelines each run built."""
    root = tmp_path_factory.mktemp("kgqa")
    dataset = write_dataset(root / "tiny")
    pipeline = write_pipeline(root)
    predictions = root / "out" / "preds.jsonl"
    built: list[Pipeline] = []
    real = kgqa._pipeline_for_graph

    def capture(*args: Any, **kw: Any) -> Pipeline:
        built.append(real(*args, **kw))
        return built[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kgqa, "_pipeline_for_graph", capture)
        first = evaluate_kgqa(pipeline, dataset, predictions, limit=2)
        first_lines = predictions.read_bytes().splitlines(keepends=True)
        first_pipes = list(built)
        built.clear()
        full = evaluate_kgqa(pipeline, dataset, predictions)
    yield Runs(dataset, pipeline, predictions, first_lines, first, full, first_pipes, list(built))


def prompts_for(pipes: list[Pipeline], question: str) -> list[str]:
    """The prompts in which ``question`` was the one asked (an example's turn has a ``Values:`` line)."""
    turn = f"<|user|>\n{question}\n<|assistant|>\n"
    return [p for pipe in pipes for p in pipe.resources["llm"].prompts if turn in p]  # type: ignore[attr-defined]


def first_prompt(runs: Runs, item_id: str) -> str:
    it = next(i for i in ITEMS if i.id == item_id)
    found = [p for p in prompts_for(runs.first_pipes + runs.full_pipes, it.question) if p.endswith(f"<|user|>\n{it.question}\n<|assistant|>\n")]
    assert found, f"no prompt asked {it.question!r}"
    return found[0]


def test_predictions_have_the_required_keys_and_scores(runs: Runs) -> None:
    rows = [json.loads(line) for line in runs.predictions.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [it.id for it in ITEMS]
    for r in rows:
        assert REQUIRED_KEYS <= set(r), r.keys()
        assert set(r["timings"]) >= {"total", "ttft", "stages"} and set(r["tokens"]) == {"in", "out"}
        assert set(r["timings"]["stages"]) == {"examples", "schema", "querygen", "retrieve"}
        assert r["tokens"]["in"] > 0
    by_id = {r["id"]: r for r in rows}
    assert {i for i, r in by_id.items() if r["correct"]} == CORRECT
    assert by_id["p1"]["rows"] == [["Rome"]] and by_id["p1"]["query"] == ANN_CITY and by_id["p1"]["f1"] == 1.0
    assert by_id["b1"]["rows"] == [["1965"]] and by_id["b1"]["correct"]  # "1965" from the store == 1965 in the gold
    assert by_id["p5"]["valid"] and not by_id["p5"]["correct"] and by_id["p5"]["f1"] == 0.0
    assert not by_id["b2"]["valid"] and by_id["b2"]["error"].startswith("refused:") and by_id["b2"]["rows"] == []  # prose is not a query
    assert by_id["b2"]["confidence"] == 0.0 and by_id["p1"]["confidence"] > 0.5


def test_predictions_record_every_candidate_and_whether_it_was_right(runs: Runs) -> None:
    rows = {r["id"]: r for r in map(json.loads, runs.predictions.read_text(encoding="utf-8").splitlines())}
    for r in rows.values():
        assert r["candidates"] and r["candidates"][0]["origin"] == "greedy"
        if r["valid"]:  # the greedy query ran and was kept: it is the chosen query, and right when the row is
            assert r["candidates"][0]["query"] == r["query"] and r["candidates"][0]["correct"] == r["correct"]
    assert all(c["error"] and not c["correct"] for c in rows["b2"]["candidates"])  # prose: nothing ran


def test_a_right_candidate_the_selection_passed_over_is_found(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ragkit.stages.querygen.base import GeneratedQuery, QueryCandidate, QueryGenOutput
    from ragkit.stages.retrievers.graph import GraphQueryRetriever
    from ragkit.stores.rdf import OxigraphStore

    (tmp_path / "people.ttl").write_text(PEOPLE, encoding="utf-8")
    store = OxigraphStore(path=str(tmp_path / "people.ttl"))
    pipe = SimpleNamespace(stages={"retrieve": GraphQueryRetriever(store, row_limit=1)})
    chosen = QueryCandidate(query=BOB_CITY, rows=1)
    right = QueryCandidate(query=ANN_CITY, rows=1, origin="beam")
    age = P + 'SELECT ?a WHERE { ?p rdfs:label "Ann" ; ex:age ?a }'
    bad = QueryCandidate(query="SELECT nonsense", error="QueryParseError: ...", origin="beam")
    first = QueryGenOutput(generated=GeneratedQuery(language="sparql", query=BOB_CITY, candidates=[chosen, right]), query=BOB_CITY)
    # a fallback generator's output holds the first one's candidates again: each is reported once
    fallback = GeneratedQuery(language="sparql", query=BOB_CITY, candidates=[chosen, QueryCandidate(query=age, rows=1, origin="repair"), bad])
    outputs = {"first": first, "second": QueryGenOutput(generated=fallback, query=BOB_CITY), "other": SimpleNamespace()}
    found = kgqa._candidates(pipe, outputs, [["Rome"]])  # type: ignore[arg-type]
    assert found is not None
    assert [(c["query"], c["origin"], c["correct"]) for c in found] == [
        (BOB_CITY, "greedy", False),
        (ANN_CITY, "beam", True),
        (age, "repair", False),
        ("SELECT nonsense", "beam", False),
    ]
    assert found[3]["error"].startswith("QueryParseError") and found[2]["rows"] == 1
    # read as the retriever reads the chosen query (row_limit 1): two cities can't match a gold of two rows
    every = P + "SELECT ?c WHERE { ?x a ex:City ; rdfs:label ?c }"
    both = GeneratedQuery(language="sparql", query=every, candidates=[QueryCandidate(query=every, rows=1)])
    cities = {"g": QueryGenOutput(generated=both, query=every)}
    assert [c["correct"] for c in kgqa._candidates(pipe, cities, [["Oslo"], ["Rome"]]) or []] == [False]  # type: ignore[arg-type]
    pipe.stages["retrieve"].row_limit = 5
    assert [c["correct"] for c in kgqa._candidates(pipe, cities, [["Oslo"], ["Rome"]]) or []] == [True]  # type: ignore[arg-type]
    assert kgqa._candidates(pipe, {}, [["Rome"]]) is None  # type: ignore[arg-type]


def test_report(runs: Runs) -> None:
    rep = runs.full
    assert rep.n == N and rep.dataset == str(runs.dataset) and rep.pipeline == str(runs.pipeline)
    assert rep.execution_accuracy == pytest.approx(len(CORRECT) / N)
    lo, hi = rep.execution_accuracy_ci
    assert 0.0 <= lo <= rep.execution_accuracy <= hi <= 1.0
    assert rep.valid_query_rate == pytest.approx((N - 1) / N)
    assert rep.answer_f1 == pytest.approx(len(CORRECT) / N)
    assert rep.tokens_in > 0 and rep.latency_p50 <= rep.latency_p95
    assert runs.first.n == 2 and runs.first.execution_accuracy == 0.5  # p1 right, p2 has no gold rows


def test_protocol_hides_examples_with_the_same_query_or_the_same_rows(runs: Runs) -> None:
    questions = {it.id: it.question for it in ITEMS}
    queries = {it.id: it.sparql for it in ITEMS}
    # p1: p2 has its query, p3 its rows; p4 and p5 are fair examples
    p1 = first_prompt(runs, "p1")
    for hidden in ("p2", "p3"):
        assert questions[hidden] not in p1 and queries[hidden] not in p1
    for shown in ("p4", "p5"):
        assert f"<|user|>\n{questions[shown]}\nValues: " in p1 and queries[shown] in p1
    # p2 (no gold rows): only p1 shares its query; p3 shares nothing with it
    p2 = first_prompt(runs, "p2")
    assert questions["p1"] not in p2 and questions["p3"] in p2 and questions["p4"] in p2
    # p3: p1 has its rows; p2's (empty) gold rows differ
    p3 = first_prompt(runs, "p3")
    assert questions["p1"] not in p3 and questions["p2"] in p3 and queries["p2"] in p3
    # p4: only itself is hidden
    p4 = first_prompt(runs, "p4")
    assert all(questions[i] in p4 for i in ("p1", "p2", "p3", "p5"))
    # an item never sees itself as an example, nor another graph's questions
    for it in ITEMS:
        prompt = first_prompt(runs, it.id)
        assert prompt.count(it.question) == 1 and it.sparql not in prompt
        other = [o.question for o in ITEMS if o.graph != it.graph]
        assert not any(q in prompt for q in other)


def test_each_graph_gets_its_own_graph_and_bank(runs: Runs) -> None:
    assert len(runs.full_pipes) == 2
    people, books = runs.full_pipes
    assert people.resources["graph"].paths == [str(runs.dataset / "graphs" / "people.ttl")]  # type: ignore[attr-defined]
    assert books.resources["graph"].paths == [str(runs.dataset / "graphs" / "books.ttl")]  # type: ignore[attr-defined]
    assert {e.question for e in books.resources["examples"]._examples} == {"When was Dune published?", "Which novels are there?"}  # type: ignore[attr-defined]


def test_resume_keeps_finished_lines_and_runs_only_the_rest(runs: Runs) -> None:
    lines = runs.predictions.read_bytes().splitlines(keepends=True)
    assert len(runs.first_lines) == 2 and len(lines) == N
    assert lines[:2] == runs.first_lines
    assert len(runs.first_pipes) == 1  # the first run needed only the people graph
    # the second run did not ask p1 or p2 again
    assert prompts_for(runs.full_pipes, "Where does Ann live?") == []
    assert prompts_for(runs.full_pipes, "Which city is Ann's home?") == []
    assert prompts_for(runs.full_pipes, "Where does Bob live?")


def test_a_finished_run_is_not_recomputed(runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preds = tmp_path / "preds.jsonl"
    preds.write_bytes(runs.predictions.read_bytes() + b'{"id": "cut-off')  # an interrupted last line is ignored
    monkeypatch.setattr(kgqa, "_pipeline_for_graph", lambda *a, **k: pytest.fail("nothing should run"))
    rep = evaluate_kgqa(runs.pipeline, runs.dataset, preds)
    assert rep.n == N and rep.execution_accuracy == runs.full.execution_accuracy


def test_selection_options(runs: Runs, tmp_path: Path) -> None:
    rep = evaluate_kgqa(runs.pipeline, runs.dataset, tmp_path / "books.jsonl", graphs=["books"], per_graph=1, skip_answer=True)
    assert rep.n == 1
    assert [json.loads(line)["id"] for line in (tmp_path / "books.jsonl").read_text().splitlines()] == ["b1"]
    with pytest.raises(InputError, match="no questions selected"):
        evaluate_kgqa(runs.pipeline, runs.dataset, tmp_path / "none.jsonl", graphs=["nope"])
    rep = evaluate_kgqa(runs.pipeline, runs.dataset, tmp_path / "ids.jsonl", ids=["b2", "p3", "p1"], skip_answer=True)
    assert [json.loads(line)["id"] for line in (tmp_path / "ids.jsonl").read_text().splitlines()] == ["p1", "p3", "b2"]  # file order
    assert rep.n == 3
    assert [i.id for i in kgqa.select_items(kgqa.load_kgqa(runs.dataset), ids=["b2", "p3", "p1"], graphs=["people"], per_graph=1)] == ["p1"]
    with pytest.raises(InputError, match="--ids names 'x1' and 1 more, not in the dataset"):
        evaluate_kgqa(runs.pipeline, runs.dataset, tmp_path / "bad.jsonl", ids=["p1", "x2", "x1"])
    assert not (tmp_path / "bad.jsonl").exists()  # refused before anything ran


def test_read_ids(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("# held out by fold-0\np1\n\n  b2  \n")
    assert kgqa.read_ids(tmp_path / "ids.txt") == ["p1", "b2"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(InputError, match="lists no question id"):
        kgqa.read_ids(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="cannot read the ids file"):
        kgqa.read_ids(tmp_path / "gone.txt")
    # a fold set's index: what its finished folds held out
    (tmp_path / "set").mkdir()
    index = tmp_path / "set" / "ragkit_folds.json"
    index.write_text(json.dumps({"fold_count": 3, "folds": [{"adapter": "fold-0", "held_out": ["p1", "b2"]}, {"adapter": "fold-1", "held_out": ["p3"]}]}))
    assert kgqa.read_ids(index) == ["p1", "b2", "p3"]
    index.write_text(json.dumps({"fold_count": 3, "folds": []}))
    with pytest.raises(InputError, match="no finished fold yet"):
        kgqa.read_ids(index)


def test_a_remote_store_is_a_user_error(runs: Runs, tmp_path: Path) -> None:
    spec = pipeline_spec()
    spec["resources"]["graph"] = {"type": "sparql_endpoint", "url": "http://127.0.0.1:9/sparql"}
    pipe = write_pipeline(tmp_path, spec)
    with pytest.raises(UserError, match="no file-backed graph store \\('graph' is remote\\)"):
        evaluate_kgqa(pipe, runs.dataset, tmp_path / "preds.jsonl")


def test_bad_datasets(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="questions.jsonl not found"):
        load_kgqa(tmp_path)
    (tmp_path / "questions.jsonl").write_text('{"id": "a", "graph": "g", "question": "q?", "sparql": "ASK {}"}\n{"id": "b"}\n')
    with pytest.raises(InputError, match="questions.jsonl:2: not a KGQA item"):
        load_kgqa(tmp_path)
    (tmp_path / "questions.jsonl").write_text('{"id": "a", "graph": "g", "question": "q?", "cypher": "RETURN 1", "answers": [[1]]}\n')
    (item,) = load_kgqa(tmp_path)
    assert (item.language, item.query, item.answers) == ("cypher", "RETURN 1", [[1]])


def test_missing_graph_file(runs: Runs, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    (ds / "graphs").mkdir(parents=True)
    (ds / "questions.jsonl").write_text(json.dumps({"id": "x", "graph": "gone", "question": "q?", "sparql": ANN_CITY}) + "\n")
    with pytest.raises(InputError, match="no graph file for 'gone'"):
        evaluate_kgqa(runs.pipeline, ds, tmp_path / "preds.jsonl")


# ---- the command ------------------------------------------------------------------------------
def test_ragkit_eval_command(runs: Runs, tmp_path: Path) -> None:
    preds, report = tmp_path / "preds.jsonl", tmp_path / "report.json"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}
    env.pop("RAGKIT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ragkit.cli", "eval", str(runs.pipeline), "--dataset", str(runs.dataset), "--predictions", str(preds), "--report", str(report), "--no-carbon"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "KGQA evaluation on" in proc.stdout and "tiny_kgqa" in proc.stdout
    assert f"{len(CORRECT) / N:.1%}" in proc.stdout and f"{(N - 1) / N:.1%}" in proc.stdout
    assert len(preds.read_text().splitlines()) == N
    (figures,) = json.loads(report.read_text())
    assert figures["n"] == N and figures["execution_accuracy"] == pytest.approx(len(CORRECT) / N)


def test_skip_answer_still_records_query_errors(runs: Runs, tmp_path: Path) -> None:
    spec = pipeline_spec()
    spec["resources"]["llm"] = {"type": "scripted_llm", "responses": ["I don't know."]}
    preds = tmp_path / "errors.jsonl"
    rep = evaluate_kgqa(write_pipeline(tmp_path, spec), runs.dataset, preds, per_graph=1, skip_answer=True)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert rows and all(r["error"] and not r["valid"] for r in rows)
    assert rep.valid_query_rate == 0.0


# ---- concurrency -------------------------------------------------------------------------------
def test_concurrent_items_give_the_sequential_rows(runs: Runs, tmp_path: Path) -> None:
    preds = tmp_path / "concurrent.jsonl"
    rep = evaluate_kgqa(runs.pipeline, runs.dataset, preds, concurrency=3)
    rows = {r["id"]: r for r in map(json.loads, preds.read_text().splitlines())}
    sequential = {r["id"]: r for r in map(json.loads, runs.predictions.read_text().splitlines())}
    assert set(rows) == set(sequential)  # every item once, in whatever order they finished
    for i, r in rows.items():
        assert (r["query"], r["rows"], r["correct"], r["error"]) == (sequential[i]["query"], sequential[i]["rows"], sequential[i]["correct"], sequential[i]["error"])
    assert rep.execution_accuracy == runs.full.execution_accuracy
    # the protocol still holds per item: exclusions are per thread
    assert {i for i, r in rows.items() if r["correct"]} == CORRECT


def test_concurrency_needs_thread_safe_components(runs: Runs, tmp_path: Path) -> None:
    spec = pipeline_spec()
    spec["resources"]["graph"] = {"type": "rdflib_store", "path": "replaced-by-eval.ttl"}  # rdflib is not declared thread-safe
    with pytest.raises(UserError, match=r"cannot run 2 items at once: resource 'graph' \(rdflib_store\).*use --concurrency 1"):
        evaluate_kgqa(write_pipeline(tmp_path, spec), runs.dataset, tmp_path / "preds.jsonl", concurrency=2)
    with pytest.raises(InputError, match="concurrency must be at least 1"):
        evaluate_kgqa(runs.pipeline, runs.dataset, tmp_path / "preds.jsonl", concurrency=0)


def test_a_fold_set_answers_each_question_with_the_adapter_that_held_it_out(runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local_llm whose adapter is a k-fold set: each question runs on a pipeline built with the fold
    that held it out (never one that trained on it), one pipeline per graph and fold."""
    from ragkit.errors import ModelError
    from ragkit.models.adapters import FOLDS_META

    folds = tmp_path / "set"
    held = [["p1", "p4", "b1"], ["p2", "p3", "p5", "b2"]]
    for i in range(2):
        (folds / f"fold-{i}").mkdir(parents=True)
        (folds / f"fold-{i}" / "adapter_config.json").write_text("{}")
    (folds / FOLDS_META).write_text(json.dumps({"folds": [{"adapter": f"fold-{i}", "held_out": h} for i, h in enumerate(held)]}))
    spec = pipeline_spec()
    scripted = spec["resources"]["llm"]
    spec["resources"]["llm"] = {"type": "local_llm", "adapter": str(folds)}
    built: dict[int, dict[str, str]] = {}
    answered_by: dict[str, str] = {}
    real_build, real_run = kgqa._pipeline_for_graph, kgqa._run_one

    def build(spec: dict[str, Any], graph_file: Path, bank_file: Path, source: str, adapters: dict[str, str] | None = None) -> Pipeline:
        fake = json.loads(json.dumps(spec))
        fake["resources"]["llm"] = scripted  # no model is loaded; which adapter it was given is what counts
        pipe = real_build(fake, graph_file, bank_file, source)
        built[id(pipe)] = dict(adapters or {})
        return pipe

    def run_one(pipe: Any, banks: Any, it: Any, *args: Any, **kw: Any) -> dict[str, Any]:
        answered_by[it.id] = built[id(pipe)]["llm"]
        return real_run(pipe, banks, it, *args, **kw)

    monkeypatch.setattr(kgqa, "_pipeline_for_graph", build)
    monkeypatch.setattr(kgqa, "_run_one", run_one)
    rep = evaluate_kgqa(write_pipeline(tmp_path, spec), runs.dataset, tmp_path / "preds.jsonl")
    assert rep.n == N
    assert answered_by == {i: str(folds / f"fold-{f}") for f, ids in enumerate(held) for i in ids}
    assert len(built) == 4  # (people, fold-0), (people, fold-1), (books, fold-0), (books, fold-1)
    (folds / FOLDS_META).write_text(json.dumps({"folds": [{"adapter": "fold-0", "held_out": ["p1"]}]}))
    with pytest.raises(ModelError, match="no fold of .* held out item 'p2'"):
        evaluate_kgqa(write_pipeline(tmp_path, spec), runs.dataset, tmp_path / "other.jsonl")
    # a run still training has written the folds it finished: their items can be evaluated with --ids
    (folds / FOLDS_META).write_text(json.dumps({"fold_count": 2, "folds": [{"adapter": "fold-0", "held_out": held[0]}]}))
    with pytest.raises(ModelError, match="has 1 of its 2 folds trained, and none held out item 'p2'.*--ids"):
        evaluate_kgqa(write_pipeline(tmp_path, spec), runs.dataset, tmp_path / "partial.jsonl")
    answered_by.clear()
    rep = evaluate_kgqa(write_pipeline(tmp_path, spec), runs.dataset, tmp_path / "partial.jsonl", ids=held[0])
    assert rep.n == 3 and answered_by == {i: str(folds / "fold-0") for i in held[0]}
