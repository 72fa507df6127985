"""The `ragkit` command, run as a user runs it: in a subprocess, checking exit codes and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KGQA = ROOT / "pipelines" / "kgqa_sparql.yaml"
EXAMPLES = ROOT / "fixtures" / "library" / "examples.jsonl"
TINY = "http://example.org/tiny/"
ANSWER = "Ann lives in Rome."


def ragkit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}
    env.pop("RAGKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ragkit.cli", *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def fake_pipeline(tmp_path: Path, examples: Path = EXAMPLES) -> Path:
    """The KGQA wiring on fakes: scripted LLM, tiny in-memory graph, hashing embedder."""
    text = textwrap.dedent(
        f"""\
        version: 1
        name: fake_kgqa
        resources:
          llm:
            type: scripted_llm
            responses: ["SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}"]
            rules: {{"Context:": "{ANSWER}"}}
          embedder:
            type: hashing_embedder
            dimension: 64
          graph:
            type: tiny_graph_store
          examples:
            type: example_bank
            path: {json.dumps(str(examples))}
            embedder: embedder
        stages:
          - name: schema
            type: graph_schema_reader
            store: graph
          - name: examples
            type: few_shot_retriever
            bank: examples
            top_k: 2
          - name: querygen
            type: sparql_generator
            llm: llm
            num_candidates: 1
          - name: retrieve
            type: graph_query_retriever
            store: graph
          - name: prompt
            type: prompt_builder
            llm: llm
          - name: generate
            type: answer_generator
            llm: llm
        connections:
          - schema.graph_schema -> querygen.graph_schema
          - schema.text -> querygen.schema_text
          - examples.examples -> querygen.examples
          - querygen.generated -> retrieve.generated
          - retrieve.context -> prompt.graph
          - prompt.prompt -> generate.prompt
        inputs:
          question: [schema.question, examples.question, querygen.question, prompt.question]
        outputs:
          answer: generate.text
          query: retrieve.query
        """
    )
    p = tmp_path / "fake_kgqa.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def assert_user_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert fragment in proc.stderr


# ---- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "--help"], ["stages", "--help"], ["-h"]])
def test_help_exits_zero(args: list[str]) -> None:
    proc = ragkit(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert proc.stderr == ""


def test_top_level_help_lists_the_commands() -> None:
    out = ragkit("--help").stdout
    for command in ("run", "validate", "stages"):
        assert command in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "ragkit"
    if not script.exists():
        pytest.skip("no ragkit console script next to this interpreter")
    proc = subprocess.run([str(script), "--version"], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


# ---- stages -----------------------------------------------------------------------------------


def test_stages_lists_sparql_generator_with_its_sockets_and_params() -> None:
    proc = ragkit("stages")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("sparql_generator")))
    block = []
    for ln in lines[start + 1 :]:
        if not ln.startswith(" "):
            break
        block.append(ln.strip())
    text = "\n".join(block)
    assert "inputs: question: str, graph_schema: GraphSchema, schema_text: str, examples: list[QueryExample]" in text
    assert "outputs: generated: GeneratedQuery, query: str" in text
    assert "llm: resource LLM" in text and "num_candidates: int = 3" in text
    for name in ("echo", "upper", "graph_query_retriever", "answer_generator"):
        assert any(ln.startswith(name + " ") for ln in lines), name


def test_stages_json() -> None:
    proc = ragkit("stages", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["type"]: row for row in json.loads(proc.stdout)}
    gen = rows["sparql_generator"]
    assert gen["class"] == "ragkit.stages.querygen.sparql.SparqlQueryGenerator"
    assert "question: str" in gen["inputs"] and "query: str" in gen["outputs"]


def test_stages_resources_json_is_valid() -> None:
    proc = ragkit("stages", "--resources", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    by_type = {row["type"]: row for row in rows}
    assert {"scripted_llm", "hashing_embedder", "tiny_graph_store", "example_bank", "local_llm"} <= set(by_type)
    assert all("inputs" not in row and isinstance(row["params"], list) for row in rows)
    assert any(p.startswith("embedder: resource Embedder") for p in by_type["example_bank"]["params"])


# ---- validate ---------------------------------------------------------------------------------


def test_validate_kgqa_is_quick_and_imports_no_torch() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from ragkit.cli import main
        try:
            main(["validate", {str(KGQA)!r}])
        except SystemExit as e:
            code = e.code
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "transformers", "sentence_transformers", "faiss", "pyoxigraph", "rdflib"}})
        print("exit", code, "heavy", ",".join(heavy) or "-")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{KGQA}: ok (") and "stages" in lines[0]
    assert lines[-1] in ("exit 0 heavy -", "exit None heavy -")


def test_validate_fake_pipeline(tmp_path: Path) -> None:
    path = fake_pipeline(tmp_path)
    proc = ragkit("validate", str(path))
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"{path}: ok (6 stages, 4 resources, 6 connections)"


# ---- run --------------------------------------------------------------------------------------


def test_run_streams_the_answer_and_prints_the_trace(tmp_path: Path) -> None:
    proc = ragkit("run", str(fake_pipeline(tmp_path)), "-q", "Where does Ann live?")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert proc.stderr == ""
    assert "-- generated SPARQL (querygen) --" in out
    assert "-- graph result (retrieve): 1 row(s)" in out
    assert f"-- answer --\n{ANSWER}\n" in out
    assert out.index("-- generated SPARQL") < out.index("-- answer --") < out.index("per-stage trace")
    table = out[out.index("per-stage trace") :]
    for stage in ("schema", "examples", "querygen", "retrieve", "prompt", "generate", "total"):
        assert f" {stage} " in table, stage
    for column in ("time", "tokens in", "tokens out", "TTFT", "TPOT"):
        assert column in table


def test_run_json_has_outputs_and_trace(tmp_path: Path) -> None:
    proc = ragkit("run", str(fake_pipeline(tmp_path)), "--question", "Where does Ann live?", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["outputs"]["answer"] == ANSWER
    assert data["outputs"]["query"].endswith(f"<{TINY}livesIn> ?c }}")
    trace = data["trace"]
    assert [s["name"] for s in trace["stages"]] == ["schema", "examples", "querygen", "retrieve", "prompt", "generate"]
    gen = trace["stages"][-1]
    assert gen["type"] == "answer_generator" and gen["tokens_out"] == 4 and gen["model_calls"] == 1
    assert trace["tokens_out"] >= gen["tokens_out"] and trace["seconds"] >= gen["seconds"]


def test_run_with_inputs_given_by_name(tmp_path: Path) -> None:
    p = tmp_path / "echo.yaml"
    p.write_text(
        "version: 1\nstages:\n  - {name: echo, type: echo}\n  - {name: upper, type: upper}\n"
        "connections: [echo.text -> upper.text]\ninputs: {text: echo.text}\noutputs: {answer: upper.text}\n",
        encoding="utf-8",
    )
    proc = ragkit("run", str(p), "-i", "text=hello there", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"] == {"answer": "HELLO THERE"}
    proc = ragkit("run", str(p), "-i", "text=hi")
    assert proc.returncode == 0 and "-- answer --\nHI\n" in proc.stdout


def test_run_takes_the_question_as_an_argument(tmp_path: Path) -> None:
    proc = ragkit("run", str(fake_pipeline(tmp_path)), "Where does Ann live?", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"]["answer"] == ANSWER
    both = ragkit("run", str(fake_pipeline(tmp_path)), "Where does Ann live?", "-q", "Where does Bob live?")
    assert_user_error(both, "two questions given ('Where does Ann live?' and -q 'Where does Bob live?'): pass one")


def test_run_without_the_question_is_a_user_error(tmp_path: Path) -> None:
    assert_user_error(ragkit("run", str(fake_pipeline(tmp_path))), "needs its input 'question' (pass it after the file, or -q/--question)")


def test_run_with_an_unknown_input_is_a_user_error(tmp_path: Path) -> None:
    proc = ragkit("run", str(fake_pipeline(tmp_path)), "-q", "Where?", "-i", "colour=red")
    assert_user_error(proc, "unknown pipeline input(s) ['colour']")
    assert_user_error(ragkit("run", str(fake_pipeline(tmp_path)), "-q", "Where?", "-i", "colour"), "is not NAME=VALUE")


def test_run_on_a_missing_file_is_a_user_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_user_error(ragkit("run", str(missing), "-q", "x"), f"{missing}: no such file")


def test_run_on_bad_yaml_is_a_user_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\nstages:\n  - name: echo\n    type: [echo\n", encoding="utf-8")
    proc = ragkit("run", str(p), "-q", "x")
    assert_user_error(proc, f"error: {p}:")
    assert "invalid YAML" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_a_user_error_inside_a_stage_exits_2(tmp_path: Path) -> None:
    proc = ragkit("run", str(fake_pipeline(tmp_path, examples=tmp_path / "missing.jsonl")), "-q", "Where does Ann live?")
    assert_user_error(proc, "does not exist (check the 'path' of the example_bank resource)")


def test_empty_question_is_a_user_error(tmp_path: Path) -> None:
    assert_user_error(ragkit("run", str(fake_pipeline(tmp_path)), "-q", "  "), "the question is empty")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = ragkit("--debug", "run", str(tmp_path / "nope.yaml"), "-q", "x")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


# ---- ragkit serve -------------------------------------------------------------------------------


def test_serve_missing_file_exits_2_with_one_line() -> None:
    r = ragkit("serve", "no/such/pipeline.yaml")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: no/such/pipeline.yaml: no such file (check the path)"


def test_serve_pipeline_without_question_input_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\nstages:\n  - {name: echo, type: echo}\ninputs: {text: [echo.text]}\noutputs: {answer: echo.text}\n")
    r = ragkit("serve", str(f), "--port", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "needs a pipeline with a 'question' input" in r.stderr


def test_serve_concurrency_on_an_unsafe_pipeline_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\nstages:\n  - {name: echo, type: echo}\ninputs: {question: [echo.text]}\noutputs: {answer: echo.text}\n")
    r = ragkit("serve", str(f), "--concurrency", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "stage 'echo' (echo)" in r.stderr and "use concurrency 1" in r.stderr


def test_long_commands_write_progress_lines_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from ragkit.cli import _plain_progress

    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    update = _plain_progress("adapter step", every=60.0)
    update(0, 100, loss="-")  # the first call prints
    now[0] += 30
    update(10, 100, loss="0.5000")  # within a minute of the last line: nothing
    now[0] += 40
    update(20, 100, loss="0.4000")
    now[0] += 5
    update(100, 100, loss="0.1000")  # the last step always prints
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "adapter step: 0/100, loss -, 0m00s elapsed",
        "adapter step: 20/100, loss 0.4000, 1m10s elapsed, about 4m40s left",
        "adapter step: 100/100, loss 0.1000, 1m15s elapsed",
    ]
    # a resumed run starts at its checkpoint's step: the time left comes from this session's steps only
    update = _plain_progress("adapter step", every=60.0)
    update(50, 100)
    now[0] += 60
    update(60, 100)
    assert capsys.readouterr().err.splitlines()[-1] == "adapter step: 60/100, 1m00s elapsed, about 4m00s left"


def test_a_signal_asks_training_to_stop_after_its_step_and_a_second_stops_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    import signal

    from ragkit.cli import _stop_after_step

    before = signal.getsignal(signal.SIGTERM)
    with _stop_after_step() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.is_set()  # no exception: the step under way finishes
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert "stopping after the step under way" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
