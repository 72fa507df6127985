"""A few LoRA steps on the real SmolLM2, the adapter artifact, and local_llm loading it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ragkit.errors import ModelError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "finetune" / "library_sparql.jsonl"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    pytest.importorskip("peft")
    from ragkit.finetune.trainer import FinetuneOptions, finetune

    out = tmp_path_factory.mktemp("ft") / "adapter"
    opts = FinetuneOptions(
        language="sparql", output=str(out), max_steps=4, batch_size=2, grad_accum=1, lr=2e-3, examples=1, max_length=512, warmup=1, seed=0
    )
    return out, finetune([str(FIXTURE)], opts)


def test_training_writes_the_adapter_and_its_metadata(adapter: tuple[Path, list[dict]]) -> None:
    out, metas = adapter
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    meta = json.loads((out / "ragkit_adapter.json").read_text())
    assert meta == metas[0]
    assert meta["language"] == "sparql" and meta["steps"] == 4 and meta["sequences"] == 8
    assert meta["base_model"]["fingerprint"] and meta["data"][0]["sha256"]
    assert all(math.isfinite(x) for x in meta["losses"])
    assert meta["loss_after"] < meta["loss_before"]  # it learned its training batch
    assert not (out / "checkpoint").exists()


def test_local_llm_with_the_adapter_writes_differently(adapter: tuple[Path, list[dict]]) -> None:
    from ragkit.finetune.data import PromptBuilder, SchemaBook, read_pairs
    from ragkit.models.llm import LocalLLM

    out, _ = adapter
    pairs = read_pairs(FIXTURE, "sparql")
    base = LocalLLM(device="cpu", dtype="float32")
    tuned = LocalLLM(device="cpu", dtype="float32", adapter=str(out))
    msgs = PromptBuilder(base, "sparql", SchemaBook(pairs, "sparql")).messages(pairs[0], [])
    a = base.generate(msgs, max_new_tokens=24).text
    b = tuned.generate(msgs, max_new_tokens=24).text
    assert a != b
    assert tuned.hf_model is not base.hf_model  # the shared base weights were not modified


def test_adapter_for_another_base_model_is_refused(adapter: tuple[Path, list[dict]], tmp_path: Path) -> None:
    from ragkit.models.llm import LocalLLM

    out, _ = adapter
    other = tmp_path / "other"
    other.mkdir()
    for f in out.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / "ragkit_adapter.json").read_text())
    meta["base_model"]["fingerprint"] = "0" * 16
    (other / "ragkit_adapter.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="trained for base model"):
        LocalLLM(device="cpu", dtype="float32", adapter=str(other)).warm_up()


def test_the_committed_adapter_fits_the_bundled_model() -> None:
    """The adapter the README's figures come from loads on the bundled model and changes its output."""
    from ragkit.models.adapters import model_fingerprint, read_adapter_meta
    from ragkit.models.llm import LocalLLM, resolve_model_path

    folder = Path(__file__).resolve().parents[2] / "adapters" / "spider4sparql-sparql-noex"
    meta = read_adapter_meta(folder)
    assert meta is not None and meta["language"] == "sparql"
    assert meta["base_model"]["fingerprint"] == model_fingerprint(resolve_model_path(None))
    prompt = "PREFIX : <http://example.org/>\nSELECT"
    plain = LocalLLM(dtype="float32").generate(prompt, max_new_tokens=12).text
    tuned = LocalLLM(dtype="float32", adapter=str(folder)).generate(prompt, max_new_tokens=12).text
    assert tuned != plain
