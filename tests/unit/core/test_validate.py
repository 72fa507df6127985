"""`ragkit validate` on malformed pipeline files: one located line per mistake, exit 2, no traceback.

Each file in ``tests/bad_pipelines/`` is a valid fake pipeline (``echo -> upper``, or a KGQA pipeline on
``tiny_graph_store``/``scripted_llm``/``hashing_embedder``) with one mistake. Its first line says what
``ragkit validate`` must report::

    # expect: LINE:COL message fragment

and :data:`TOKENS` says which token of the file must start at that line and column, so a message
pointing at the right line but the wrong place fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BAD = ROOT / "tests" / "bad_pipelines"
FILES = sorted(BAD.glob("*.yaml"))
UNSET_VAR = "RAGKIT_TEST_SURELY_UNSET"

# file -> the text that must begin at the reported LINE:COL (the offending key, value, or connection)
TOKENS = {
    "bad_connection_syntax.yaml": "echo.text => upper.text",
    "bad_constructor_value.yaml": "0",
    "bad_stage_name.yaml": "my stage",
    "broken_yaml.yaml": ": upper",  # the ':' the unclosed '[' cannot hold; the message names line 5 too
    "broken_yaml_colon.yaml": ": shout",
    "cycle.yaml": "upper.text -> echo.text",
    "dotted_type.yaml": "ragkit.testing.fakes.EchoStage",
    "duplicate_stage_name.yaml": "echo",
    "duplicate_yaml_key.yaml": "type: echo",
    "empty_file.yaml": "#",
    "empty_stages.yaml": "[]",
    "input_and_connection.yaml": "upper.text]",
    "input_twice.yaml": "echo.text",
    "malformed_env.yaml": "${env:my-suffix}",
    "missing_required_param.yaml": "name: retrieve",
    "missing_resource.yaml": "grpah",
    "missing_version.yaml": "name: echo_upper",
    "misspelt_field.yaml": "top_kk:",
    "not_a_mapping.yaml": "- name: echo",
    "python_tag.yaml": "!!python/object/apply:os.system",
    "type_mismatch.yaml": "schema.text -> querygen.graph_schema",
    "unconnected_input.yaml": "querygen",
    "unknown_field.yaml": "colour:",
    "unknown_output.yaml": "generate.answer",
    "unknown_resource_type.yaml": "scripted_lm",
    "unknown_socket.yaml": "echo.text -> upper.txt",
    "unknown_stage_type.yaml": "ecko",
    "unknown_top_level_key.yaml": "connection:",
    "unset_env.yaml": "${env:RAGKIT_TEST_SURELY_UNSET}",
    "wrong_resource_kind.yaml": "embedder",
    "wrong_value_type.yaml": "five",
    "wrong_version.yaml": "2",
}

# The kinds of mistake this suite must cover, each by at least one file.
REQUIRED = {
    "unknown stage type": "unknown_stage_type.yaml",
    "unknown field": "unknown_field.yaml",
    "misspelt field": "misspelt_field.yaml",
    "mismatched connection": "type_mismatch.yaml",
    "cycle": "cycle.yaml",
    "missing resource": "missing_resource.yaml",
    "unset env var": "unset_env.yaml",
    "broken YAML": "broken_yaml.yaml",
    "wrong version": "wrong_version.yaml",
    "duplicate stage name": "duplicate_stage_name.yaml",
    "wrong value type": "wrong_value_type.yaml",
    "nonexistent socket": "unknown_socket.yaml",
    "unconnected required input": "unconnected_input.yaml",
    "resource of the wrong kind": "wrong_resource_kind.yaml",
    "duplicate YAML key": "duplicate_yaml_key.yaml",
}

_EXPECT = re.compile(r"#\s*expect:\s*(\d+):(\d+)\s+(.+?)\s*$")


def _expectation(path: Path) -> tuple[int, int, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = _EXPECT.fullmatch(first)
    assert m, f"{path.name}: first line must be '# expect: LINE:COL fragment', got {first!r}"
    return int(m.group(1)), int(m.group(2)), m.group(3)


def _validate(*files: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != UNSET_VAR}
    return subprocess.run(
        [sys.executable, "-m", "ragkit.cli", "validate", *map(str, files)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def reports() -> dict[str, subprocess.CompletedProcess[str]]:
    """`ragkit validate FILE` for every bad file, one process each, run side by side to save time."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip((f.name for f in FILES), pool.map(_validate, FILES)))


def test_the_suite_covers_every_kind_of_mistake() -> None:
    names = {f.name for f in FILES}
    assert len(FILES) >= 12
    missing = {kind: f for kind, f in REQUIRED.items() if f not in names}
    assert not missing
    assert set(TOKENS) == names, "every bad pipeline needs its token in TOKENS (and no stale entries)"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_validate_reports_one_located_line(path: Path, reports: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line, col, fragment = _expectation(path)
    proc = reports[path.name]

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    m = re.fullmatch(r"(.+?):(\d+):(\d+): (.+)", lines[0])
    assert m, lines[0]
    assert Path(m.group(1)).resolve() == path.resolve()
    assert (int(m.group(2)), int(m.group(3))) == (line, col), lines[0]
    assert fragment in m.group(4)
    # a message says how to fix it: a hint in parentheses
    assert "(" in m.group(4) and m.group(4).rstrip().endswith(")"), m.group(4)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_location_points_at_the_offending_token(path: Path) -> None:
    line, col, _ = _expectation(path)
    text = path.read_text(encoding="utf-8").splitlines()[line - 1]
    assert text[col - 1 :].startswith(TOKENS[path.name]), f"{path.name}:{line}:{col} is {text[col - 1 :]!r}"


def test_several_files_are_reported_each_and_good_ones_pass() -> None:
    good = ROOT / "pipelines" / "kgqa_sparql.yaml"
    bad = [BAD / "cycle.yaml", BAD / "misspelt_field.yaml"]
    proc = _validate(good, *bad)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [ln.split(":", 1)[0] for ln in proc.stderr.splitlines()] == [str(b) for b in bad]
    assert proc.stdout.startswith(f"{good}: ok")


def test_missing_file_is_one_line() -> None:
    proc = _validate(BAD / "no_such_pipeline.yaml")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"{BAD / 'no_such_pipeline.yaml'}: no such file (check the path)"]
