"""Pipeline files: YAML round trips, shared resources, ${env:...}, safe loading, the closed registry
and entry-point plug-ins."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from ragkit import Pipeline, stage_types
from ragkit.core import component
from ragkit.errors import ConfigError
from ragkit.stages.generators.local import AnswerGenerator
from ragkit.stages.prompts.builder import PromptBuilder
from ragkit.testing import EchoStage, ScriptedLLM, TinyGraphStore, UpperStage

ROOT = Path(__file__).resolve().parents[3]
KGQA = ROOT / "pipelines" / "kgqa_sparql.yaml"
HEAVY = ("torch", "transformers", "sentence_transformers", "faiss", "rdflib", "pyoxigraph", "neo4j")
TINY = "http://example.org/tiny/"

FAKE_KGQA = f"""\
version: 1
name: fake_kgqa
description: the KGQA pipeline on fakes
resources:
  llm:
    type: scripted_llm
    responses: ["SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}"]
    rules: {{"Context:": "Ann lives in Rome."}}
  embedder:
    type: hashing_embedder
    dimension: 64
  graph:
    type: tiny_graph_store
  examples:
    type: example_bank
    path: fixtures/library/examples.jsonl
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

ECHO_UPPER = """\
version: 1
stages:
  - name: echo
    type: echo
  - name: upper
    type: upper
    suffix: "!"
connections:
  - echo.text -> upper.text
inputs:
  text: echo.text
outputs:
  out: upper.text
"""


def write(tmp_path: Path, text: str, name: str = "pipe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths in pipeline files (fixtures/...) are taken from the working directory."""
    monkeypatch.chdir(ROOT)


# ---- round trips --------------------------------------------------------------------------------


def test_python_to_yaml_to_python(tmp_path: Path) -> None:
    llm = ScriptedLLM(responses=["Ann lives in Rome."], seconds_per_token=0.0)
    pipe = Pipeline(name="answer_only", description="prompt -> generate")
    pipe.add_resource("llm", llm)
    pipe.add_stage("prompt", PromptBuilder(llm=llm, max_prompt_tokens=512)).add_stage("generate", AnswerGenerator(llm=llm, stop=["\n"]))
    pipe.connect("prompt.prompt", "generate.prompt").add_input("question", "prompt.question").add_output("answer", "generate.text")

    text = pipe.to_yaml(tmp_path / "out.yaml")
    assert (tmp_path / "out.yaml").read_text(encoding="utf-8") == text
    data = yaml.safe_load(text)
    assert data["resources"] == {"llm": {"type": "scripted_llm", "responses": ["Ann lives in Rome."]}}
    assert data["stages"][0] == {"name": "prompt", "type": "prompt_builder", "llm": "llm", "max_prompt_tokens": 512}  # defaults left out
    back = Pipeline.from_yaml(tmp_path / "out.yaml")
    assert back == pipe
    assert back.to_yaml() == text
    assert back.run(question="Where does Ann live?")["answer"] == "Ann lives in Rome."


def test_fake_kgqa_yaml_round_trip(tmp_path: Path, in_repo: None) -> None:
    pipe = Pipeline.from_yaml(write(tmp_path, FAKE_KGQA))
    again = Pipeline.from_yaml(write(tmp_path, pipe.to_yaml(), "again.yaml"))
    assert again == pipe
    assert Pipeline.from_dict(pipe.to_dict()) == pipe
    assert again.to_dict()["stages"][1] == {"name": "examples", "type": "few_shot_retriever", "bank": "examples", "top_k": 2}
    assert pipe != Pipeline.from_yaml(write(tmp_path, FAKE_KGQA.replace("top_k: 2", "top_k: 3"), "other.yaml"))


def test_fake_kgqa_from_yaml_runs(tmp_path: Path, in_repo: None) -> None:
    pipe = Pipeline.from_yaml(write(tmp_path, FAKE_KGQA))
    result = pipe.run(question="Where does Ann live?")
    assert result["answer"] == "Ann lives in Rome."
    assert result["query"].endswith(f"<{TINY}livesIn> ?c }}")
    pipe.close()


def test_kgqa_sparql_yaml_round_trip(tmp_path: Path, in_repo: None) -> None:
    pipe = Pipeline.from_yaml(KGQA)
    types = {type(s).type_name for s in pipe.stages.values()}
    assert {"graph_schema_reader", "few_shot_retriever", "sparql_generator", "graph_query_retriever", "answer_generator"} <= types
    assert {"llm", "embedder", "graph", "examples"} <= set(pipe.resources)
    assert not any(r.is_warm for r in pipe.resources.values())
    again = Pipeline.from_yaml(write(tmp_path, pipe.to_yaml()))
    assert again == pipe
    assert again.to_dict() == pipe.to_dict()


def test_loading_kgqa_sparql_imports_no_heavy_package() -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        from ragkit import Pipeline
        pipe = Pipeline.from_yaml({str(KGQA)!r})
        pipe.to_yaml()
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_shared_resources_are_one_object(tmp_path: Path, in_repo: None) -> None:
    pipe = Pipeline.from_yaml(write(tmp_path, FAKE_KGQA))
    llm = pipe.resources["llm"]
    assert pipe.stages["querygen"].llm is llm
    assert pipe.stages["prompt"].llm is llm
    assert pipe.stages["generate"].llm is llm
    assert pipe.stages["schema"].store is pipe.stages["retrieve"].store is pipe.resources["graph"]
    assert pipe.stages["examples"].bank is pipe.resources["examples"]
    assert pipe.resources["examples"].embedder is pipe.resources["embedder"]
    pipe.warm_up()
    assert llm.setup_calls == 1 and pipe.resources["embedder"].setup_calls == 1
    pipe.close()


def test_resources_declared_in_any_order(tmp_path: Path, in_repo: None) -> None:
    text = FAKE_KGQA.replace(
        "  embedder:\n    type: hashing_embedder\n    dimension: 64\n", ""
    ).replace("stages:\n", "  embedder:\n    type: hashing_embedder\n    dimension: 64\nstages:\n", 1)
    pipe = Pipeline.from_yaml(write(tmp_path, text))
    assert pipe.resources["examples"].embedder is pipe.resources["embedder"]


# ---- ${env:...} ---------------------------------------------------------------------------------


def test_env_is_substituted_and_never_written_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGKIT_TEST_SECRET", "hunter2")
    text = textwrap.dedent(
        """\
        version: 1
        resources:
          llm:
            type: scripted_llm
            responses: ["token ${env:RAGKIT_TEST_SECRET}"]
        stages:
          - name: upper
            type: upper
            suffix: "-${env:RAGKIT_TEST_SECRET}"
          - name: prompt
            type: prompt_builder
            llm: llm
        inputs:
          text: upper.text
          question: prompt.question
        """
    )
    pipe = Pipeline.from_yaml(write(tmp_path, text))
    assert pipe.stages["upper"].suffix == "-hunter2"
    assert pipe.resources["llm"].responses == ["token hunter2"]  # nested inside a list too
    assert pipe.run(text="a", question="q").stage_outputs["upper"].text == "A-hunter2"

    out = pipe.to_yaml()
    assert "hunter2" not in out
    assert "${env:RAGKIT_TEST_SECRET}" in out
    assert "hunter2" not in repr(pipe.stages["upper"]) and "hunter2" not in repr(pipe.resources["llm"])
    assert yaml.safe_load(out)["stages"][0]["suffix"] == "-${env:RAGKIT_TEST_SECRET}"
    assert Pipeline.from_yaml(write(tmp_path, out, "again.yaml")) == pipe

    monkeypatch.setenv("RAGKIT_TEST_SECRET", "other")
    assert Pipeline.from_yaml(write(tmp_path, out, "again.yaml")).stages["upper"].suffix == "-other"


def test_unset_env_fails_loudly_with_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGKIT_TEST_UNSET", raising=False)
    path = write(tmp_path, ECHO_UPPER.replace('suffix: "!"', 'suffix: "x${env:RAGKIT_TEST_UNSET}"'))
    with pytest.raises(ConfigError) as exc:
        Pipeline.from_yaml(path)
    (issue,) = exc.value.issues
    assert (issue.file, issue.line, issue.column) == (str(path), 7, 15)
    assert "environment variable 'RAGKIT_TEST_UNSET' is not set" in issue.message
    assert "export RAGKIT_TEST_UNSET=" in issue.message


def test_wrong_value_from_env_does_not_echo_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGKIT_TEST_SECRET", "hunter2")
    text = ECHO_UPPER.replace("version: 1\n", "version: 1\nresources:\n  graph:\n    type: tiny_graph_store\n    timeout: ${env:RAGKIT_TEST_SECRET}\n")
    with pytest.raises(ConfigError) as exc:
        Pipeline.from_yaml(write(tmp_path, text))
    msg = str(exc.value)
    assert "field 'timeout'" in msg and "${env:RAGKIT_TEST_SECRET}" in msg
    assert "hunter2" not in msg


# ---- safe loading and the closed registry -------------------------------------------------------


@pytest.mark.parametrize(
    "tagged",
    ['!!python/object/apply:os.system ["echo pwned"]', "!!python/name:os.system", "!!python/object:ragkit.testing.fakes.UpperStage {}"],
)
def test_python_tags_are_rejected_with_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tagged: str) -> None:
    def forbidden(*args: object) -> int:
        raise AssertionError("YAML executed code")

    monkeypatch.setattr(os, "system", forbidden)
    path = write(tmp_path, ECHO_UPPER.replace('suffix: "!"', f"suffix: {tagged}"))
    with pytest.raises(ConfigError) as exc:
        Pipeline.from_yaml(path)
    (issue,) = exc.value.issues
    assert (issue.line, issue.column) == (7, 13)
    assert "!!python/" in issue.message and "not allowed" in issue.message


@pytest.mark.parametrize("where", ["stage", "resource"])
def test_dotted_import_paths_are_not_types(tmp_path: Path, where: str) -> None:
    if where == "stage":
        text = ECHO_UPPER.replace("type: upper", "type: ragkit.testing.fakes.UpperStage")
    else:
        text = ECHO_UPPER.replace("version: 1\n", "version: 1\nresources:\n  llm:\n    type: ragkit.testing.fakes:ScriptedLLM\n")
    with pytest.raises(ConfigError) as exc:
        Pipeline.from_yaml(write(tmp_path, text))
    (issue,) = exc.value.issues
    assert f"unknown {where} type" in issue.message
    assert "dotted import paths are not accepted" in issue.message
    assert issue.line > 0


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, ECHO_UPPER.replace('    suffix: "!"\n', '    suffix: "!"\n    suffix: "?"\n'))
    with pytest.raises(ConfigError, match=r":8:5: duplicate key 'suffix' \(first given on line 7; keep one\)"):
        Pipeline.from_yaml(path)


def test_from_dict_reports_without_positions() -> None:
    data = yaml.safe_load(ECHO_UPPER)
    data["stages"][1]["sufix"] = "?"
    with pytest.raises(ConfigError) as exc:
        Pipeline.from_dict(data, source="<test>")
    assert str(exc.value) == "<test>: stage 'upper': unknown field 'sufix' (did you mean 'suffix'?)"


def test_union_errors_are_reported_once(tmp_path: Path) -> None:
    path = write(tmp_path, ECHO_UPPER.replace("  text: echo.text", "  text: 5"))
    with pytest.raises(ConfigError) as exc:
        Pipeline.from_yaml(path)
    assert len(exc.value.issues) == 1
    assert exc.value.issues[0].line == 11 and "field 'inputs.text'" in exc.value.issues[0].message


def test_several_independent_mistakes_are_all_reported(tmp_path: Path) -> None:
    text = ECHO_UPPER.replace("type: echo", "type: ecko").replace('suffix: "!"', "sufix: '!'")
    with pytest.raises(ConfigError) as exc:
        Pipeline.from_yaml(write(tmp_path, text))
    assert [(i.line, i.column) for i in exc.value.issues] == [(4, 11), (7, 5)]


# ---- entry-point plug-ins -----------------------------------------------------------------------

PLUGIN = '''
from ragkit import Output, Stage


class Shout(Output):
    text: str


class ShoutStage(Stage):
    """Shouts (a third-party stage)."""

    def __init__(self, times: int = 2) -> None:
        self.times = times

    def run(self, text: str) -> Shout:
        return Shout(text="!".join([text.upper()] * self.times))


class NotAStage:
    pass
'''


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[metadata.EntryPoint]:
    """A registry that reloads its entry points, from a fake ``entry_points()`` returning the list given back."""
    (tmp_path / "ragkit_test_plugin.py").write_text(PLUGIN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ragkit_test_plugin", raising=False)
    stage_types()  # built-ins registered first, as in real use
    monkeypatch.setattr(component, "_STAGES", dict(component._STAGES))
    monkeypatch.setattr(component, "_RESOURCES", dict(component._RESOURCES))
    monkeypatch.setattr(component, "_builtins_loaded", False)
    eps: list[metadata.EntryPoint] = []

    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(component.metadata, "entry_points", entry_points)
    return eps


def test_entry_point_plugin_is_registered(fresh_registry: list[metadata.EntryPoint], tmp_path: Path) -> None:
    fresh_registry.append(metadata.EntryPoint(name="shout", value="ragkit_test_plugin:ShoutStage", group="ragkit.stages"))
    types = stage_types()
    assert "shout" in types and "sparql_generator" in types
    assert types["shout"].__name__ == "ShoutStage" and types["shout"].type_name == "shout"

    text = ECHO_UPPER.replace("type: upper\n    suffix: \"!\"", "type: shout\n    times: 3")
    pipe = Pipeline.from_yaml(write(tmp_path, text))
    assert pipe.run(text="hi")["out"] == "HI!HI!HI"
    assert Pipeline.from_yaml(write(tmp_path, pipe.to_yaml(), "again.yaml")) == pipe


def test_broken_plugins_only_log_a_warning(fresh_registry: list[metadata.EntryPoint], caplog: pytest.LogCaptureFixture) -> None:
    fresh_registry += [
        metadata.EntryPoint(name="missing_module", value="ragkit_no_such_module_xyz:Stage", group="ragkit.stages"),
        metadata.EntryPoint(name="not_a_stage", value="ragkit_test_plugin:NotAStage", group="ragkit.stages"),
        metadata.EntryPoint(name="Bad-Name", value="ragkit_test_plugin:ShoutStage", group="ragkit.stages"),
        metadata.EntryPoint(name="echo", value="ragkit_test_plugin:ShoutStage", group="ragkit.stages"),
        metadata.EntryPoint(name="shout", value="ragkit_test_plugin:ShoutStage", group="ragkit.stages"),
    ]
    with caplog.at_level(logging.WARNING, logger="ragkit.core.component"):
        types = stage_types()
    assert "shout" in types  # the good plug-in still loads
    assert types["echo"] is EchoStage  # a plug-in cannot take a built-in's name
    assert not {"missing_module", "not_a_stage", "Bad-Name"} & set(types)
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for name in ("missing_module", "not_a_stage", "Bad-Name", "echo"):
        assert repr(name) in warned
    assert "Traceback" not in warned


def test_registry_is_closed_to_unregistered_classes() -> None:
    pipe = Pipeline().add_stage("t", _Unregistered())
    with pytest.raises(ConfigError, match="is not registered"):
        pipe.to_dict()
    assert TinyGraphStore.type_name == "tiny_graph_store" and UpperStage.type_name == "upper"


class _Unregistered(EchoStage):
    type_name = ""


def test_version_must_be_the_integer_one(tmp_path: Path) -> None:
    for bad in ("true", '"1"', "1.0"):
        with pytest.raises(ConfigError, match="unsupported version"):
            Pipeline.from_yaml(write(tmp_path, ECHO_UPPER.replace("version: 1", f"version: {bad}")))


def test_a_constructor_raising_anything_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_init(self: UpperStage, suffix: str = "") -> None:
        raise KeyError("suffix table")

    monkeypatch.setattr(UpperStage, "__init__", broken_init)
    with pytest.raises(ConfigError) as exc:
        Pipeline.from_yaml(write(tmp_path, ECHO_UPPER))
    (issue,) = exc.value.issues
    assert (issue.line, issue.column) == (7, 13)  # the value of the parameter the error names
    assert "stage 'upper': KeyError: 'suffix table'" in issue.message


def test_a_file_can_extend_another_and_change_parameters(tmp_path: Path, in_repo: None) -> None:
    variant = tmp_path / "variants" / "no_constraint.yaml"
    variant.parent.mkdir()
    variant.write_text(
        f"extends: {os.path.relpath(KGQA, variant.parent)}\n"
        "name: kgqa_sparql_unconstrained\n"
        "set:\n  querygen.constrained: false\n  querygen.num_candidates: 1\n  resources.llm.dtype: float32\n  schema.max_tokens: null\n"
    )
    pipe = Pipeline.from_yaml(variant)
    base = Pipeline.from_yaml(KGQA).to_dict()
    d = pipe.to_dict()
    assert d["name"] == "kgqa_sparql_unconstrained"
    qg = next(s for s in d["stages"] if s["name"] == "querygen")
    assert qg["constrained"] is False and qg["num_candidates"] == 1
    assert d["resources"]["llm"]["dtype"] == "float32"
    schema = next(s for s in d["stages"] if s["name"] == "schema")
    assert "max_tokens" not in schema or schema["max_tokens"] != 900  # removed: the stage's default
    assert d["connections"] == base["connections"]  # everything else is the base's


def test_an_extending_file_can_add_a_resource_and_name_it(tmp_path: Path, in_repo: None) -> None:
    variant = tmp_path / "review.yaml"
    body = (
        f"extends: {KGQA}\nset:\n  resources.reviewer: {{type: local_llm, dtype: float32}}\n"
        "  querygen.selection: review\n  querygen.reviewer: reviewer\n"
    )
    variant.write_text(body + "  resources.embedder: null\n")
    with pytest.raises(ConfigError, match="embedder"):  # removed, and still named by the examples bank
        Pipeline.from_yaml(variant)
    variant.write_text(body)
    pipe = Pipeline.from_yaml(variant)
    assert pipe.resources["reviewer"].dtype == "float32" and pipe.resources["reviewer"] is not pipe.resources["llm"]  # type: ignore[attr-defined]
    assert pipe.stages["querygen"].reviewer is pipe.resources["reviewer"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("extends: missing.yaml\n", "cannot read"),
        ("extends: self.yaml\n", "cycle"),
        ("extends: {base}\nset:\n  nosuchstage.x: 1\n", "no stage or resource 'nosuchstage'"),
        ("extends: {base}\nset:\n  querygen.type: x\n", "cannot be changed"),
        ("extends: {base}\nset:\n  resources.reviewer: local_llm\n", "takes a resource: a mapping with its 'type'"),
        ("extends: {base}\nstages: []\n", "takes only"),
    ],
)
def test_extending_mistakes_are_explained(tmp_path: Path, in_repo: None, body: str, message: str) -> None:
    f = tmp_path / "self.yaml"
    f.write_text(body.format(base=KGQA))
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_yaml(f)
