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


def test_an_unmerged_adapter_keeps_only_the_last_positions_logits(adapter: tuple[Path, list[dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept apart (``merge_adapter: false``), the adapter wraps the model in peft, whose forward pass
    takes anything: the prompt's pass must still ask for the last position's logits only."""
    from ragkit.models.llm import LocalLLM

    out, _ = adapter
    llm = LocalLLM(device="cpu", dtype="float32", adapter=str(out), merge_adapter=False)
    llm.warm_up()
    model = llm.hf_model
    assert hasattr(model, "get_base_model")  # the peft wrapper, not merged weights
    forward, positions = model.forward, []

    def spy(*args: object, **kwargs: object) -> object:
        result = forward(*args, **kwargs)
        positions.append(result.logits.shape[1])
        return result

    monkeypatch.setattr(model, "forward", spy)
    llm.generate("Write a SPARQL query that lists every band and its name.", max_new_tokens=4)
    assert positions and max(positions) == 1


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


@pytest.mark.parametrize("name", ["spider4sparql-sparql-noex", "spider4sparql-sparql-long-s361", "spider4sparql-sparql-noex-long"])
def test_the_committed_adapter_fits_the_bundled_model(name: str) -> None:
    """The adapters the README's figures come from load on the bundled model and change its output."""
    from ragkit.models.adapters import base_model_matches, read_adapter_meta
    from ragkit.models.llm import LocalLLM, resolve_model_path

    folder = Path(__file__).resolve().parents[2] / "adapters" / name
    meta = read_adapter_meta(folder)
    assert meta is not None and meta["language"] == "sparql"
    assert base_model_matches(meta["base_model"], resolve_model_path(None))
    prompt = "PREFIX : <http://example.org/>\nSELECT"
    plain = LocalLLM(dtype="float32").generate(prompt, max_new_tokens=12).text
    tuned = LocalLLM(dtype="float32", adapter=str(folder)).generate(prompt, max_new_tokens=12).text
    assert tuned != plain


def _tiny_llama(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg)


def test_bf16_mixed_precision_trains_float32_lora_weights(tmp_path: Path) -> None:
    """``--mixed-precision bf16``: the forward runs under autocast (its losses differ from float32's, a
    little), the adapter's weights stay float32, and it learns as the float32 run does."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from ragkit.finetune.data import encode
    from ragkit.finetune.trainer import FinetuneOptions, train_adapter

    base = tmp_path / "tiny"
    _tiny_llama().save_pretrained(base)
    seqs = [encode(str(i), "p", "t", lambda s, i=i: list(range(3 + i, 9 + 2 * i)) if s == "p" else list(range(40 + i, 46 + i))) for i in range(4)]
    runs = {}
    for mp in ("none", "bf16"):
        opts = FinetuneOptions(
            language="sparql", output=str(tmp_path / mp), model=str(base), device="cpu", mixed_precision=mp,
            max_steps=6, batch_size=2, grad_accum=1, lr=5e-3, warmup=1, probe=4, rank=4, alpha=8, dropout=0.0,
        )  # fmt: skip
        runs[mp] = train_adapter(seqs, opts, tmp_path / mp, {}, pad_id=0)
    plain, mixed = runs["none"], runs["bf16"]
    assert mixed["throughput"]["mixed_precision"] == "bf16" and mixed["throughput"]["dtype"] == "float32"
    assert mixed["losses"] != plain["losses"]  # bf16 products round differently
    assert mixed["losses"] == pytest.approx(plain["losses"], rel=0.05)
    assert mixed["loss_after"] < mixed["loss_before"]
    weights = load_file(str(tmp_path / "bf16" / "adapter_model.safetensors"))
    assert weights and all(w.dtype == torch.float32 for w in weights.values())


@pytest.mark.parametrize("keeps_logits", [True, False])
def test_the_target_loss_equals_the_models_own_loss(monkeypatch: pytest.MonkeyPatch, keeps_logits: bool) -> None:
    """Logits only from the first target position on: the same loss and gradients as transformers' own loss.

    A tiny random Llama with LoRA; a batch whose prompts differ in length, so rows are padded and
    one row's prompt positions fall inside the kept window. ``keeps_logits=False`` is the path of a
    model whose forward has no ``logits_to_keep``.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from ragkit.finetune import trainer
    from ragkit.finetune.data import Encoded, encode

    monkeypatch.setattr(trainer, "_keeps_logits", lambda model: keeps_logits)
    model = get_peft_model(_tiny_llama(), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False))
    tok = {"a": [5, 6, 7, 8, 9, 10, 11, 12, 13], "b": [14, 15, 16], "x": [20, 21, 22], "y": [23, 24, 25, 26, 27]}
    batch = [encode("1", "a", "x", tok.__getitem__), encode("2", "b", "y", tok.__getitem__)]
    assert [e.prompt_tokens for e in batch] == [9, 3]

    def grads(loss_of):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    ours, g_ours = grads(lambda: trainer.target_loss(model, batch, pad_id=0))
    theirs, g_theirs = grads(lambda: model(**trainer._collate(batch, 0, "cpu")).loss)
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_ours, g_theirs))
    lone: Encoded = batch[0]
    assert trainer.sequence_loss(model, [lone], 0) == pytest.approx(float(model(**trainer._collate([lone], 0, "cpu")).loss.detach()), rel=1e-5)


@pytest.mark.parametrize("keeps_logits", [True, False])
def test_a_batchs_shared_prompt_start_run_once_gives_the_same_loss_and_gradients(monkeypatch: pytest.MonkeyPatch, keeps_logits: bool) -> None:
    """``share_prefix``: the prompt tokens all rows start with run once, the rows go on from their keys
    and values, and the loss and LoRA gradients are those of the whole batch run row by row.

    Three rows share a 40-token start, then differ in prompt and target lengths (so rows are padded);
    a batch whose shared start is too short, or a single row, takes the plain path."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from ragkit.finetune import trainer
    from ragkit.finetune.data import encode

    monkeypatch.setattr(trainer, "_keeps_logits", lambda model: keeps_logits)
    model = get_peft_model(_tiny_llama(), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False))
    start = [(7 * i) % 90 + 3 for i in range(40)]
    tok = {"a": start + [5, 6, 7], "b": start + [8], "c": start + [9, 10, 11, 12, 13], "x": [20, 21, 22], "y": [23, 24, 25, 26, 27], "z": [28, 29]}
    batch = [encode("1", "a", "x", tok.__getitem__), encode("2", "b", "y", tok.__getitem__), encode("3", "c", "z", tok.__getitem__)]
    calls: list[int] = []
    model.get_base_model().register_forward_pre_hook(lambda mod, args, kw: calls.append(kw["input_ids"].shape[1]), with_kwargs=True)

    def grads(share: bool) -> tuple[float, list]:
        model.zero_grad()
        loss = trainer.target_loss(model, batch, pad_id=0, share_prefix=share)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    plain, g_plain = grads(False)
    assert calls == [47]  # the longest row; the others padded
    calls.clear()
    shared, g_shared = grads(True)
    assert calls == [40, 7]  # the start once, then each row from position 40
    assert shared == pytest.approx(plain, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_shared, g_plain))
    calls.clear()
    short = [encode("4", "p", "x", lambda s: [1, 2, 3] if s == "p" else [4, 5]), encode("5", "q", "y", lambda s: [1, 2, 9] if s == "q" else [4])]
    trainer.target_loss(model, short, pad_id=0, share_prefix=True)
    trainer.target_loss(model, batch[:1], pad_id=0, share_prefix=True)
    assert calls == [5, 46]  # a 2-token start and a lone row: one forward pass each


def test_batches_that_share_prefixes_keep_one_graph_to_a_batch() -> None:
    """``share_prefix`` batches: each sequence once per epoch; full batches hold one graph's sequences
    (their prompts share the graph's start); only the leftovers of each graph mix graphs; the order
    changes with the epoch."""
    from ragkit.finetune.data import encode
    from ragkit.finetune.trainer import _batches

    graphs = {g: [100 * g + k for k in range(60)] for g in range(3)}
    sizes = {0: 10, 1: 7, 2: 5}

    def tokens(s: str) -> list[int]:
        if s == "t":
            return [9, 9]
        g, i = map(int, s.split("-"))
        return graphs[g] + [i + 1]

    seqs = [encode(f"{g}-{i}", f"{g}-{i}", "t", tokens) for g, n in sizes.items() for i in range(n)]
    batches = _batches(seqs, 4, seed=0, epoch=0, share_prefix=True)
    assert sorted(e.id for b in batches for e in b) == sorted(e.id for e in seqs)
    full = [b for b in batches if len(b) == 4 and len({e.id.split("-")[0] for e in b}) == 1]
    assert len(full) == 2 + 1 + 1  # 10 // 4, 7 // 4, 5 // 4
    assert sum(len(b) for b in batches) - 4 * len(full) == 2 + 3 + 1
    assert [[e.id for e in b] for b in _batches(seqs, 4, seed=0, epoch=1, share_prefix=True)] != [[e.id for e in b] for b in batches]

    # a run that switches to shared starts after 2 micro-batches: those 2 as before, then the rest of
    # the epoch's sequences (each once) in one-graph batches; the next epoch is batched the new way
    from ragkit.finetune.trainer import _micro_batches

    plain = _batches(seqs, 4, seed=0, epoch=0)
    stream = _micro_batches(seqs, 4, 0, [[0, False], [2, True]])
    epoch0: list = []
    while sum(len(b) for b in epoch0) < len(seqs):
        epoch0.append(next(stream))
    assert epoch0[:2] == plain[:2]
    assert sorted(e.id for b in epoch0 for e in b) == sorted(e.id for e in seqs)
    assert any(len(b) == 4 and len({e.id.split("-")[0] for e in b}) == 1 for b in epoch0[2:])
    assert next(stream) == _batches(seqs, 4, seed=0, epoch=1, share_prefix=True)[0]
    same = _micro_batches(seqs, 4, 0, [[0, False]])
    assert [next(same) for _ in range(len(plain))] == plain


def test_a_stopped_run_saves_a_checkpoint_at_its_step_and_resumes_to_the_same_losses(tmp_path: Path) -> None:
    """``stop`` ends training at a step boundary with a checkpoint; running again continues from it and
    ends where an uninterrupted run ends, step for step (the checkpoint keeps the dropout RNG too)."""
    import threading

    pytest.importorskip("peft")
    from ragkit.finetune.data import encode
    from ragkit.finetune.trainer import FinetuneOptions, TrainingStopped, train_adapter

    base = tmp_path / "tiny"
    _tiny_llama().save_pretrained(base)
    seqs = [encode(str(i), "p", "t", lambda s, i=i: list(range(3 + i, 9 + 2 * i)) if s == "p" else list(range(40 + i, 46 + i))) for i in range(6)]

    def options(out: Path, share: bool = True) -> FinetuneOptions:
        return FinetuneOptions(
            language="sparql", output=str(out), model=str(base), device="cpu", max_steps=6, batch_size=2, grad_accum=1,
            lr=5e-3, warmup=1, probe=4, rank=4, alpha=8, dropout=0.3, save_every=100, share_prefix=share,
        )  # fmt: skip

    whole = train_adapter(seqs, options(tmp_path / "whole"), tmp_path / "whole", {}, pad_id=0)
    stop = threading.Event()

    def progress(step: int, total: int, loss: float | None) -> None:
        if step == 3:
            stop.set()  # as the first Ctrl-C or SIGTERM does during step 3

    out = tmp_path / "stopped"
    with pytest.raises(TrainingStopped, match="stopped at step 3 of 6") as e:
        train_adapter(seqs, options(out), out, {}, pad_id=0, progress=progress, stop=stop)
    assert e.value.step == 3 and not (out / "adapter_model.safetensors").exists()
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["losses"] == whole["losses"][:3]
    # the checkpoint is also an adapter a pipeline can name while the run is unfinished
    from ragkit.models.adapters import apply_adapter, read_adapter_meta

    partial = read_adapter_meta(out / "checkpoint")
    assert partial is not None and partial["checkpoint"] is True
    assert (partial["steps"], partial["total_steps"], partial["final_loss"]) == (3, 6, whole["losses"][2])
    from transformers import AutoModelForCausalLM

    loaded = apply_adapter(AutoModelForCausalLM.from_pretrained(base), out / "checkpoint", base, merge=False)
    assert loaded.peft_config["default"].r == 4
    import shutil

    from ragkit.finetune import trainer

    shutil.copytree(out / "checkpoint", tmp_path / "copy")  # a copy is not taken for the finished run
    assert partial["run_key"] and trainer._finished(tmp_path / "copy", partial["run_key"]) is None
    resumed = train_adapter(seqs, options(out), out, {}, pad_id=0)
    assert resumed["steps"] == 6 and resumed["losses"] == pytest.approx(whole["losses"], rel=1e-5)
    assert resumed["loss_after"] == pytest.approx(whole["loss_after"], rel=1e-5)
    assert not (out / "checkpoint").exists()
    # once finished, the same run again keeps the adapter (an interrupted k-fold run skips its finished folds)
    weights = (out / "adapter_model.safetensors").stat().st_mtime_ns
    steps: list[int] = []
    again = train_adapter(seqs, options(out), out, {}, pad_id=0, progress=lambda step, total, loss: steps.append(step))
    assert again == resumed and steps == [6] and (out / "adapter_model.safetensors").stat().st_mtime_ns == weights
    # the same run resumed with the other batching: it goes on (the run key leaves --share-prefix out)
    # and records from which step its batches shared prompt starts
    switched = tmp_path / "switched"
    stop.clear()
    with pytest.raises(TrainingStopped):
        train_adapter(seqs, options(switched, share=False), switched, {"options": {"share_prefix": False}}, pad_id=0, progress=progress, stop=stop)
    done = train_adapter(seqs, options(switched), switched, {"options": {"share_prefix": True}}, pad_id=0)
    assert done["losses"][:3] == pytest.approx(whole["losses"][:3], rel=1e-5) and done["steps"] == 6
    assert done["batching"] == [{"from_step": 0, "share_prefix": False}, {"from_step": 3, "share_prefix": True}]
    other = options(out)
    other.lr = 1e-3  # another run: trained afresh
    assert train_adapter(seqs, other, out, {"options": {"lr": 1e-3}}, pad_id=0)["run_key"] != resumed["run_key"]


def test_init_adapter_goes_on_from_the_adapters_weights_and_shape(tmp_path: Path) -> None:
    """``init_adapter``: training starts from that adapter (its probe loss is where the first run ended)
    and keeps its rank whatever ``rank`` says; without it, a new adapter starts from the base model."""
    pytest.importorskip("peft")
    from ragkit.finetune.data import encode
    from ragkit.finetune.trainer import FinetuneOptions, train_adapter

    base = tmp_path / "tiny"
    _tiny_llama().save_pretrained(base)
    seqs = [encode(str(i), "p", "t", lambda s, i=i: list(range(3 + i, 9 + 2 * i)) if s == "p" else list(range(40 + i, 46 + i))) for i in range(4)]

    def options(out: Path, rank: int = 4, init_adapter: str | None = None) -> FinetuneOptions:
        return FinetuneOptions(
            language="sparql", output=str(out), model=str(base), device="cpu", max_steps=4, batch_size=2, grad_accum=1,
            lr=5e-3, warmup=1, probe=4, rank=rank, alpha=2 * rank, dropout=0.0, save_every=100, init_adapter=init_adapter,
        )  # fmt: skip

    first = train_adapter(seqs, options(tmp_path / "first"), tmp_path / "first", {}, pad_id=0)
    again = train_adapter(seqs, options(tmp_path / "again", rank=8, init_adapter=str(tmp_path / "first")), tmp_path / "again", {}, pad_id=0)
    fresh = train_adapter(seqs, options(tmp_path / "fresh", rank=8), tmp_path / "fresh", {}, pad_id=0)
    assert again["loss_before"] == pytest.approx(first["loss_after"], rel=1e-4)
    assert fresh["loss_before"] != pytest.approx(first["loss_after"], rel=1e-2)  # a new adapter starts from the base model
    assert again["loss_after"] < again["loss_before"]
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((tmp_path / "fresh" / "adapter_config.json").read_text())["r"] == 8
    assert (again["lora"]["rank"], again["lora"]["alpha"]) == (4, 8)  # the metadata records the shape trained, not the options
    assert (fresh["lora"]["rank"], fresh["lora"]["alpha"]) == (8, 16)


def test_a_k_fold_run_indexes_each_fold_as_it_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ragkit_folds.json`` lists the folds finished so far, so a run stopped in fold 1 leaves fold 0
    usable (``ragkit eval --ids`` on what it held out), and ``fold_count`` says the set is incomplete."""
    from ragkit.finetune import trainer
    from ragkit.models.adapters import FOLDS_META, fold_for_item

    def train(seqs: list, opts: trainer.FinetuneOptions, output: Path, meta: dict, pad_id: int, *a: object, **k: object) -> dict:
        if meta["fold"] == 1:
            raise trainer.TrainingStopped(output, 3, 10)
        output.mkdir(parents=True)
        return meta

    monkeypatch.setattr(trainer, "train_adapter", train)
    out = tmp_path / "set"
    opts = trainer.FinetuneOptions(language="sparql", output=str(out), examples=0, max_length=512)
    with pytest.raises(trainer.TrainingStopped):
        trainer.finetune([], opts, bank=str(FIXTURE), folds=2)
    index = json.loads((out / FOLDS_META).read_text())
    assert index["fold_count"] == 2 and [f["adapter"] for f in index["folds"]] == ["fold-0"]
    held = index["folds"][0]["held_out"]
    assert held and fold_for_item(out, held[0]) == out / "fold-0"
    other = next(p["id"] for p in map(json.loads, FIXTURE.read_text().splitlines()) if p["id"] not in held)
    with pytest.raises(ModelError, match="has 1 of its 2 folds trained"):
        fold_for_item(out, other)
