"""``ragkit eval`` on both layouts: text QA wiring, resuming after an interrupt without recomputing,
tokenomics and energy bookkeeping, several pipelines in one table, reports, and user errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_kgqa_eval import ITEMS, pipeline_spec, write_dataset, write_pipeline

import ragkit.tokenomics.carbon as carbon
from ragkit.core.pipeline import Pipeline
from ragkit.errors import InputError
from ragkit.eval.kgqa import evaluate_kgqa, schema_term_check
from ragkit.eval.runner import EvalSettings, dataset_kind, evaluate_pipeline, textqa_pipeline
from ragkit.eval.textqa import evaluate_textqa, read_textqa
from ragkit.stores.base import GraphSchema, SchemaClass, SchemaProperty

ROOT = Path(__file__).resolve().parents[3]


def text_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "fixtures" / "text" / "library_corpus.jsonl", folder / "corpus.jsonl")
    shutil.copy(ROOT / "fixtures" / "text" / "questions.jsonl", folder / "questions.jsonl")
    return folder


def text_pipeline(folder: Path, name: str = "fake_text", threshold: float = 0.0) -> Path:
    spec = {
        "version": 1,
        "name": name,
        "resources": {
            "emb": {"type": "hashing_embedder"},
            "llm": {"type": "scripted_llm", "rules": {"Lanternfish Press": "1921"}, "responses": ["Greywater"]},
            "index": {"type": "faiss_index", "embedder": "emb", "corpus": "replaced-by-eval.jsonl"},
        },
        "stages": [
            {"name": "retrieve", "type": "hybrid_retriever", "index": "index", "top_k": 10},
            {"name": "rerank", "type": "confidence_reranker", "embedder": "emb", "top_k": 3, "abstain_threshold": threshold},
            {"name": "prompt", "type": "prompt_builder", "llm": "llm"},
            {"name": "generate", "type": "answer_generator", "llm": "llm"},
        ],
        "connections": ["retrieve.passages -> rerank.passages", "rerank.passages -> prompt.passages", "rerank.abstained -> prompt.abstained", "prompt.prompt -> generate.prompt"],
        "inputs": {"question": ["retrieve.question", "rerank.question", "prompt.question"]},
        "outputs": {"answer": "generate.text", "passages": "rerank.passages", "abstained": "rerank.abstained"},
    }
    p = folder / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return p


def counting(pipe: Any, calls: list[str], stop_after: int | None = None) -> None:
    """Count the pipeline's runs; raise KeyboardInterrupt (as Ctrl-C would) on run ``stop_after + 1``."""
    real = pipe.run

    def run(*args: Any, **kw: Any) -> Any:
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(kw["question"])
        return real(*args, **kw)

    pipe.run = run


def test_layouts(tmp_path: Path) -> None:
    assert dataset_kind(text_dataset(tmp_path / "t")) == "textqa"
    assert dataset_kind(write_dataset(tmp_path / "k")) == "kgqa"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither a text QA folder"):
        dataset_kind(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        dataset_kind(tmp_path / "gone")


def test_text_eval_resumes_after_an_interrupt_without_recomputing(tmp_path: Path) -> None:
    ds, preds = text_dataset(tmp_path / "ds"), tmp_path / "out" / "p.jsonl"
    questions = [q["question"] for q in read_textqa(ds)]
    first: list[str] = []
    pipe = textqa_pipeline(text_pipeline(tmp_path), ds)
    counting(pipe, first, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate_textqa(pipe, ds, preds)
    kept = preds.read_bytes()
    assert first == questions[:3] and len(kept.splitlines()) == 3
    preds.write_bytes(kept + b'{"id": "lib-t0')  # the interrupt may also cut a line in half
    second: list[str] = []
    pipe = textqa_pipeline(text_pipeline(tmp_path), ds)
    counting(pipe, second)
    ticks: list[tuple[int, int]] = []
    summary = evaluate_textqa(pipe, ds, preds, progress=lambda d, t: ticks.append((d, t)))
    assert second == questions[3:]  # the three finished items were not asked again
    assert preds.read_bytes().startswith(kept) and len(preds.read_text().splitlines()) == len(questions)
    assert summary["n"] == len(questions) and ticks[0] == (3, len(questions)) and ticks[-1] == (len(questions), len(questions))
    third: list[str] = []
    counting(pipe, third)
    assert evaluate_textqa(pipe, ds, preds)["n"] == len(questions) and third == []


def test_kgqa_eval_resumes_after_an_interrupt_without_recomputing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds, pipeline, preds = write_dataset(tmp_path / "ds"), write_pipeline(tmp_path), tmp_path / "p.jsonl"
    calls: list[str] = []
    real = Pipeline.run

    def run(self: Pipeline, *args: Any, **kw: Any) -> Any:
        if stop[0] is not None and len(calls) == stop[0]:
            raise KeyboardInterrupt
        calls.append(kw["question"])
        return real(self, *args, **kw)

    stop: list[int | None] = [3]
    monkeypatch.setattr(Pipeline, "run", run)
    with pytest.raises(KeyboardInterrupt):
        evaluate_kgqa(pipeline, ds, preds)
    assert [json.loads(x)["id"] for x in preds.read_text().splitlines()] == [it.id for it in ITEMS[:3]]
    calls.clear()
    stop[0] = None
    rep = evaluate_kgqa(pipeline, ds, preds)
    assert calls == [it.question for it in ITEMS[3:]] and rep.n == len(ITEMS)
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    assert all("stages" in r and "schema_terms" in r for r in rows)
    assert rows[0]["schema_terms"] == {"named": 2, "unknown": []}  # rdfs:label and ex:livesIn, both in the graph
    assert rep.unknown_term_rate == 0.0 and rep.queries_with_unknown_terms == 0.0
    assert rows[0]["stages"]["querygen"]["notes"]["prompt_schema_tokens"] > 0


def test_schema_term_check() -> None:
    rdf = GraphSchema(
        language="sparql",
        classes=(SchemaClass(name="http://e/Person"),),
        properties=(SchemaProperty(name="http://e/livesIn"),),
        prefixes={"e": "http://e/"},
    )
    q = "PREFIX e: <http://e/> SELECT ?c WHERE { ?p a e:Person ; e:livesIn ?c ; e:bornIn ?b . ?c a e:Town }"
    check = schema_term_check(q, rdf)
    assert check is not None and check["named"] == 4 and sorted(check["unknown"]) == ["http://e/Town", "http://e/bornIn"]
    escaped = GraphSchema(language="sparql", properties=(SchemaProperty(name="http://e/singer#name"),))
    assert schema_term_check(r"PREFIX s: <http://e/singer> SELECT ?n WHERE { ?x s:\#name ?n }", escaped) == {"named": 1, "unknown": []}
    assert schema_term_check("SELECT ?x WHERE {", rdf) is None and schema_term_check("", rdf) is None
    pg = GraphSchema(language="cypher", classes=(SchemaClass(name="Movie"),), properties=(SchemaProperty(name="ACTED_IN", kind="relationship"),))
    assert schema_term_check("MATCH (p:Person)-[:ACTED_IN]->(m:Movie) RETURN m", pg) == {"named": 3, "unknown": ["label :Person"]}


class FakeMeter:
    """Stands in for codecarbon in unit tests: a fixed reading per session."""

    def __init__(self, *args: Any) -> None:
        self.reading: Any = None

    def __enter__(self) -> FakeMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reading = carbon.EnergyReading(
            kwh=0.001, kg_co2e=0.0005, seconds=1.0, basis="estimated", cpu_method="cpu_load", ram_method="estimated",
            gpu_method=None, cpu_kwh=0.0008, ram_kwh=0.0002, gpu_kwh=0.0, country_iso_code=None, region=None, grid_g_per_kwh=500.0,
        )  # fmt: skip


def test_evaluate_pipeline_text_tokenomics_and_energy_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(carbon, "EnergyMeter", FakeMeter)
    ds, pf, preds = text_dataset(tmp_path / "ds"), text_pipeline(tmp_path), tmp_path / "p.jsonl"
    evaluate_pipeline(pf, ds, preds, EvalSettings(limit=4))
    rep = evaluate_pipeline(pf, ds, preds, EvalSettings(price_per_hour=0.5))
    n = len(read_textqa(ds))
    log = [json.loads(x) for x in (tmp_path / "p.jsonl.energy.jsonl").read_text().splitlines()]
    assert [r["items"] for r in log] == [4, n - 4]
    again = evaluate_pipeline(pf, ds, preds, EvalSettings())  # nothing left to run: no new session
    assert len((tmp_path / "p.jsonl.energy.jsonl").read_text().splitlines()) == 2 and again["n"] == n
    assert rep["kind"] == "textqa" and rep["name"] == "fake_text" and rep["n"] == n
    assert set(rep["metrics"]) >= {"recall@5", "mrr", "ndcg@10", "exact_match", "f1", "abstention_precision", "abstention_recall"}
    em = rep["metrics"]["exact_match"]
    assert 0.0 <= em["ci"][0] <= em["value"] <= em["ci"][1] <= 1.0
    t = rep["tokenomics"]
    assert t["questions"] == n and t["tokens_in"] == rep["tokens"]["in"]
    assert t["hardware"]["usd"] == pytest.approx(sum(t["latency_values"]) * 0.5 / 3600, rel=1e-3)
    assert t["energy"]["items"] == n and t["energy"]["kg_co2e_per_1k_questions"] == pytest.approx(0.001 / n * 1000)
    prompt = t["stages"]["prompt"]["prompt"]
    assert set(prompt["parts_mean"]) == {"context", "instructions", "question"} and 0 < prompt["question_share"] < 0.5
    assert t["stages"]["generate"]["tokens_out"] > 0


def test_an_interrupted_session_keeps_its_energy_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(carbon, "EnergyMeter", FakeMeter)
    ds, pf, preds = text_dataset(tmp_path / "ds"), text_pipeline(tmp_path), tmp_path / "p.jsonl"
    real = Pipeline.run
    calls: list[str] = []

    def run(self: Pipeline, *args: Any, **kw: Any) -> Any:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(kw["question"])
        return real(self, *args, **kw)

    monkeypatch.setattr(Pipeline, "run", run)
    with pytest.raises(KeyboardInterrupt):
        evaluate_pipeline(pf, ds, preds, EvalSettings())
    log = [json.loads(x) for x in (tmp_path / "p.jsonl.energy.jsonl").read_text().splitlines()]
    assert [r["items"] for r in log] == [3]  # the three items it wrote, with the energy they took


def test_a_text_pipeline_without_a_corpus_is_a_user_error(tmp_path: Path) -> None:
    ds = text_dataset(tmp_path / "ds")
    with pytest.raises(Exception, match="no resource with a 'corpus'"):
        evaluate_pipeline(write_pipeline(tmp_path), ds, tmp_path / "p.jsonl", EvalSettings(carbon=False))


def ragkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("RAGKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ragkit.cli", *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_eval_command_compares_text_pipelines_and_writes_reports(tmp_path: Path) -> None:
    ds = text_dataset(tmp_path / "ds")
    a, b = text_pipeline(tmp_path, "answers"), text_pipeline(tmp_path, "abstains", threshold=1.0)
    out = ragkit(
        "eval", str(a), str(b), "--dataset", str(ds), "--predictions", str(tmp_path / "preds"), "--no-carbon",
        "--price-per-hour", "0.5", "--report", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Text QA evaluation on" in out.stdout and "Tokenomics" in out.stdout
    assert "answers" in out.stdout and "abstains" in out.stdout
    reports = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in reports] == ["answers", "abstains"]
    assert reports[1]["metrics"]["abstention_recall"]["value"] == 1.0 and reports[1]["tokens"]["out"] == 0
    assert reports[0]["tokenomics"]["hardware"]["price_per_hour"] == 0.5
    page = (tmp_path / "r.html").read_text()
    assert page.count("<svg") >= 4 and "answers" in page and "abstains" in page
    assert "<script" not in page and "<link" not in page and not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # self-contained


def test_eval_command_user_errors(tmp_path: Path) -> None:
    ds = text_dataset(tmp_path / "ds")
    pf = text_pipeline(tmp_path)
    cases = [
        (["--per-graph", "2"], "apply to KGQA folders only"),
        (["--ids", str(pf)], "apply to KGQA folders only"),
        (["--api-prices", str(pf)], "needs 'input' and 'output'"),
        (["--country", "France"], "not ISO 3166 alpha-3"),
    ]
    for extra, message in cases:
        out = ragkit("eval", str(pf), "--dataset", str(ds), *extra, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (extra, out.stderr)
    out = ragkit("eval", str(tmp_path / "gone.yaml"), "--dataset", str(ds), cwd=tmp_path)
    assert out.returncode == 2 and "does not exist" in out.stderr
    (tmp_path / "empty").mkdir()
    out = ragkit("eval", str(pf), "--dataset", str(tmp_path / "empty"), cwd=tmp_path)
    assert out.returncode == 2 and "neither a text QA folder" in out.stderr


def test_eval_command_ids_file(tmp_path: Path) -> None:
    ds, pf = write_dataset(tmp_path / "ds"), write_pipeline(tmp_path, pipeline_spec())
    (tmp_path / "ids.txt").write_text("p2\nb1\n")
    out = ragkit("eval", str(pf), "--dataset", str(ds), "--ids", str(tmp_path / "ids.txt"), "--skip-answer", "--no-carbon",
                 "--predictions", str(tmp_path / "p.jsonl"), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(line)["id"] for line in (tmp_path / "p.jsonl").read_text().splitlines()) == ["b1", "p2"]
    (tmp_path / "ids.txt").write_text("p2\nnot-an-id\n")
    out = ragkit("eval", str(pf), "--dataset", str(ds), "--ids", str(tmp_path / "ids.txt"), "--no-carbon", cwd=tmp_path)
    assert out.returncode == 2 and "'not-an-id'" in out.stderr and "not in the dataset" in out.stderr and "Traceback" not in out.stderr


def test_eval_command_stops_on_sigterm_like_ctrl_c_and_resumes(tmp_path: Path) -> None:
    ds, preds = write_dataset(tmp_path / "ds"), tmp_path / "p.jsonl"
    spec = pipeline_spec()
    spec["resources"]["llm"]["seconds_per_token"] = 0.05  # a slow model, so the signal lands mid-run
    pf = write_pipeline(tmp_path, spec)
    args = [sys.executable, "-m", "ragkit.cli", "eval", str(pf), "--dataset", str(ds), "--predictions", str(preds), "--no-carbon"]
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (preds.is_file() and preds.read_text().count("\n") >= 1) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    done = preds.read_text().count("\n")
    assert proc.returncode == 130, err
    assert "interrupted: the finished items are kept in" in err and "Traceback" not in err
    assert 1 <= done < len(ITEMS)
    again = ragkit("eval", str(pf), "--dataset", str(ds), "--predictions", str(preds), "--no-carbon", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert preds.read_text().count("\n") == len(ITEMS)
