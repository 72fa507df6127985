"""The notebooks in notebooks/ run top to bottom on their small CI slices, with nbclient.

A copy of each notebook is executed (the committed notebook, with its outputs, is never rewritten); the
kernel's working directory is notebooks/, as in Jupyter, and its outputs go to a temporary folder
(``RAGKIT_NB_OUT``). The slice sizes are the notebooks' defaults. The notebooks run one after the other in one test
so that they never run at the same time as each other (each one loads models and keeps both cores busy).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
DATA = ROOT.parent / "shared" / "data"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.xdist_group("notebooks"),
    # jupyter_client/zmq deprecations raised in this process while it drives the kernel
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:zmq.*"),
]

# notebook -> (dataset folder it reads, strings its outputs must contain)
CASES = {
    "text_rag.ipynb": ("hotpotqa", ["recall@5", "nDCG@10", "abstention precision", "exact match", "$ / M tokens"]),
    "tokenomics.ipynb": ("", ["TTFT s", "TPOT ms", "$ / M tokens", "g CO2e / M tokens"]),
    "rag_vs_finetuning.ipynb": ("spider4sparql", ["execution accuracy", "zero-shot", "fixed few-shot", "retrieved few-shot (RAG)"]),
}


def _text(nb: object) -> str:
    parts = []
    for cell in nb.cells:  # type: ignore[attr-defined]
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(data.get("text/plain", ""))
            parts.append(data.get("text/html", ""))
    return "\n".join(parts)


def _env(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    # The kernel inherits this process's environment: make it import this checkout and write to tmp.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("RAGKIT_NB_OUT", str(out))
    monkeypatch.setenv("RAGKIT_NUM_THREADS", os.environ.get("RAGKIT_NUM_THREADS", "1"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("RAGKIT_NB_SLICE", "RAGKIT_NB_RETRIEVAL_SLICE", "RAGKIT_NB_PER_GRAPH", "RAGKIT_ADAPTER", "RAGKIT_NB_SECOND_MODEL"):
        monkeypatch.delenv(var, raising=False)  # the CI slice is each notebook's default


def _execute(nb: object) -> None:
    client = nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()


def test_the_kernel_is_this_interpreter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _env(monkeypatch, tmp_path)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys, ragkit; print(sys.executable); print(ragkit.__file__)")])
    _execute(nb)
    exe, mod = nb.cells[0].outputs[0]["text"].split()
    assert Path(exe).resolve() == Path(sys.executable).resolve()
    assert Path(mod).resolve().is_relative_to(ROOT)


def _run_one(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str | None:
    """Execute a copy of one notebook and check it; the reason it was skipped, or None."""
    dataset, expected = CASES[name]
    if dataset and not (DATA / dataset).is_dir():
        return f"{DATA / dataset} is not there (the shared evaluation data sits beside the checkout)"
    path = NOTEBOOKS / name
    committed = hashlib.sha256(path.read_bytes()).hexdigest()
    nb = nbformat.read(path, as_version=4)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is committed without outputs"
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    out = tmp_path / name.removesuffix(".ipynb")
    _env(monkeypatch, out)
    _execute(nb)  # raises CellExecutionError, naming the cell, on any error
    text = _text(nb)
    assert "Traceback" not in text, name
    for s in expected:
        assert s in text, f"{name}: no {s!r} in its outputs"
    assert f"ragkit from {ROOT / 'ragkit'}" in text, f"{name}: the kernel imported another ragkit"
    nbformat.write(nb, tmp_path / name)  # the executed copy, for inspection
    assert hashlib.sha256(path.read_bytes()).hexdigest() == committed, f"{name} was rewritten"
    if dataset:  # its predictions went to the temporary folder, not into the checkout
        assert any(out.rglob("*.jsonl")), f"{name}: no predictions under {out}"
    return None


def test_notebooks_run_on_their_ci_slices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # One test, the notebooks one after the other: each loads models and keeps both cores busy, and
    # xdist_group alone does not keep parametrised cases on one worker with every pytest/xdist pairing.
    skipped = {name: why for name in sorted(CASES) if (why := _run_one(name, monkeypatch, tmp_path))}
    if len(skipped) == len(CASES):
        pytest.skip("; ".join(skipped.values()))
