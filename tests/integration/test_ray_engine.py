"""``ragkit eval --engine ray`` on a real local Ray cluster (2 CPUs): the same prediction rows as the
local engine, on a tiny KGQA dataset written here, with the scripted LLM and embedded Oxigraph."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragkit.errors import UserError
from ragkit.eval.engines import GraphJob, RayEngine, get_engine
from ragkit.eval.kgqa import evaluate_kgqa

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ray = pytest.importorskip("ray")

PFX = "PREFIX ex: <http://example.org/town/>\nPREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"
GRAPHS = {
    "town": """\
@prefix ex: <http://example.org/town/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
ex:mia a ex:Person ; rdfs:label "Mia" ; ex:worksAt ex:mill ; ex:age 31 .
ex:leo a ex:Person ; rdfs:label "Leo" ; ex:worksAt ex:bakery ; ex:age 45 .
ex:ivy a ex:Person ; rdfs:label "Ivy" ; ex:worksAt ex:mill ; ex:age 28 .
ex:mill a ex:Workplace ; rdfs:label "Old Mill" .
ex:bakery a ex:Workplace ; rdfs:label "Corner Bakery" .
""",
    "port": """\
@prefix ex: <http://example.org/town/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
ex:gull a ex:Ship ; rdfs:label "Gull" ; ex:tonnage 120 .
ex:tern a ex:Ship ; rdfs:label "Tern" ; ex:tonnage 80 .
""",
}


def work(name: str) -> str:
    return PFX + f'SELECT ?w WHERE {{ ?p rdfs:label "{name}" ; ex:worksAt ?x . ?x rdfs:label ?w }}'


def age(name: str) -> str:
    return PFX + f'SELECT ?a WHERE {{ ?p rdfs:label "{name}" ; ex:age ?a }}'


def tonnage(name: str) -> str:
    return PFX + f'SELECT ?t WHERE {{ ?s rdfs:label "{name}" ; ex:tonnage ?t }}'


ITEMS = [
    ("t1", "town", "Where does Mia work?", work("Mia"), [["Old Mill"]], work("Mia")),
    ("t2", "town", "Where does Leo work?", work("Leo"), [["Corner Bakery"]], work("Leo")),
    ("t3", "town", "Where does Ivy work?", work("Ivy"), [["Old Mill"]], work("Leo")),  # wrong entity
    ("t4", "town", "How old is Leo?", age("Leo"), [[45]], age("Leo")),
    ("t5", "town", "How old is Mia?", age("Mia"), [[31]], "no idea"),
    ("s1", "port", "What is the tonnage of Gull?", tonnage("Gull"), [[120]], tonnage("Gull")),
    ("s2", "port", "What is the tonnage of Tern?", tonnage("Tern"), [[80]], tonnage("Tern")),
]


def write_dataset(root: Path) -> tuple[Path, Path]:
    ds = root / "tiny"
    (ds / "graphs").mkdir(parents=True)
    for g, text in GRAPHS.items():
        (ds / "graphs" / f"{g}.ttl").write_text(text)
    (ds / "questions.jsonl").write_text("".join(json.dumps({"id": i, "graph": g, "question": q, "sparql": s, "answers": a}) + "\n" for i, g, q, s, a, _ in ITEMS))
    spec = {
        "version": 1,
        "resources": {
            "llm": {"type": "scripted_llm", "responses": ["no idea"], "rules": {f"{q}\n<|assistant|>": r for _, _, q, _, _, r in ITEMS}},
            "embedder": {"type": "hashing_embedder", "dimension": 64},
            "graph": {"type": "oxigraph_store", "path": "replaced.ttl"},
            "examples": {"type": "example_bank", "path": "replaced.jsonl", "embedder": "embedder"},
        },
        "stages": [
            {"name": "examples", "type": "few_shot_retriever", "bank": "examples", "top_k": 2},
            {"name": "schema", "type": "graph_schema_reader", "store": "graph"},
            {"name": "querygen", "type": "sparql_generator", "llm": "llm", "store": "graph", "num_candidates": 1, "repair_rounds": 0},
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
    pf = root / "tiny_kgqa.yaml"
    pf.write_text(yaml.safe_dump(spec, sort_keys=False))
    return ds, pf


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def rows_by_id(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row.pop("timings")  # wall-clock figures differ between any two runs; everything else must not
        for rec in (row.get("stages") or {}).values():
            for k in ("seconds", "ttft", "tpot"):
                rec.pop(k, None)
            rec["notes"] = {k: v for k, v in rec.get("notes", {}).items() if "seconds" not in k}
        out[row["id"]] = row
    return out


def test_ray_gives_the_same_rows_and_figures_as_local(cluster: None, tmp_path: Path) -> None:
    ds, pf = write_dataset(tmp_path)
    local = evaluate_kgqa(pf, ds, tmp_path / "local.jsonl")
    engine = RayEngine(chunk_size=2)  # several tasks per graph
    remote = evaluate_kgqa(pf, ds, tmp_path / "ray.jsonl", engine=engine)
    a, b = rows_by_id(tmp_path / "local.jsonl"), rows_by_id(tmp_path / "ray.jsonl")
    assert set(a) == {i[0] for i in ITEMS} and a == b
    assert (remote.n, remote.execution_accuracy, remote.answer_f1, remote.valid_query_rate) == (
        local.n,
        local.execution_accuracy,
        local.answer_f1,
        local.valid_query_rate,
    )
    assert local.execution_accuracy == pytest.approx(5 / 7)
    assert ray.is_initialized()  # the engine did not shut down a cluster it did not start


def test_resume_and_cli_with_the_ray_engine(cluster: None, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ragkit.cli import cli

    ds, pf = write_dataset(tmp_path)
    pred = tmp_path / "preds.jsonl"
    evaluate_kgqa(pf, ds, pred, limit=3, engine="ray")
    assert len(pred.read_text().splitlines()) == 3
    res = CliRunner().invoke(cli, ["eval", str(pf), "--dataset", str(ds), "--predictions", str(pred), "--engine", "ray"])
    assert res.exit_code == 0, res.output
    assert sorted(rows_by_id(pred)) == sorted(i[0] for i in ITEMS)  # the first 3 were not run again
    assert len(pred.read_text().splitlines()) == len(ITEMS)


def test_a_user_error_in_a_ray_task_reads_as_locally(cluster: None, tmp_path: Path) -> None:
    ds, pf = write_dataset(tmp_path)
    spec = yaml.safe_load(pf.read_text())
    spec["resources"]["graph"] = {"type": "sparql_endpoint", "url": "http://127.0.0.1:9/sparql"}
    job = GraphJob(spec, "p.yaml", str(ds / "graphs/town.ttl"), "", [object()], {}, cwd=str(tmp_path))
    with pytest.raises(UserError, match="no file-backed graph store"):
        list(get_engine("ray").run(job))
    with pytest.raises(UserError, match="unknown engine"):
        get_engine("spark")


def test_batch_indexing_on_ray_gives_the_same_index(cluster: None) -> None:
    from ragkit.ingest import Document
    from ragkit.stores.vector import VectorIndex
    from ragkit.testing import HashingEmbedder

    docs = [Document(id=f"d{i}", title=f"Doc {i}", text=f"Item {i} is about topic {i % 7} and place {i % 5}.") for i in range(40)]
    local, remote = VectorIndex(embedder=HashingEmbedder(dimension=64)), VectorIndex(embedder=HashingEmbedder(dimension=64))
    assert local.add(docs) == remote.add(docs, engine="ray") == 40
    ids = [c.id for c in local.chunks()]
    assert ids == [c.id for c in remote.chunks()]
    assert (local.vectors(ids) == remote.vectors(ids)).all()
    q = "What is item 12 about?"
    assert [(p.id, p.score) for p in local.search(q, k=5)] == [(p.id, p.score) for p in remote.search(q, k=5)]
