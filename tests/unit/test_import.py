"""`import ragkit` stays light: heavy packages load only when a stage that needs them warms up."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "sentence_transformers", "faiss", "rdflib", "pyoxigraph", "neo4j")


def _loaded_after(code: str) -> list[str]:
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_ragkit_loads_no_heavy_package() -> None:
    assert _loaded_after("import ragkit") == []


def test_registering_every_builtin_loads_no_heavy_package() -> None:
    code = """
        import ragkit
        stages, resources = ragkit.stage_types(), ragkit.resource_types()
        assert {"sparql_generator", "graph_query_retriever", "answer_generator"} <= set(stages), stages
        assert {"local_llm", "sentence_embedder", "oxigraph_store", "scripted_llm"} <= set(resources), resources
        """
    assert _loaded_after(code) == []


@pytest.mark.parametrize("module", ["ragkit.cli", "ragkit.testing", "ragkit.core.config"])
def test_other_entry_modules_stay_light(module: str) -> None:
    assert _loaded_after(f"import {module}") == []


def test_public_api_is_what_all_lists() -> None:
    import ragkit

    missing = [name for name in ragkit.__all__ if not hasattr(ragkit, name)]
    assert missing == []
    assert (Path(ragkit.__file__).parent / "py.typed").is_file()
