"""LoRA training of a local causal LM on query-writing sequences, resumable, written as an artifact.

:func:`finetune` reads the corpora, builds inference-identical sequences
(:mod:`ragkit.finetune.data`), trains a peft LoRA adapter with AdamW (linear warm-up, then linear
decay), and writes the adapter folder with ``ragkit_adapter.json``. Every ``save_every`` steps a
checkpoint (adapter weights, optimizer moments as safetensors, step) goes to ``OUTPUT/checkpoint``;
a rerun of the same command continues from it. With a bank and ``folds``, one adapter per fold is
trained into ``OUTPUT/fold-<i>`` and ``OUTPUT/ragkit_folds.json`` says which ids each held out.

Example:
    >>> from ragkit.finetune.trainer import FinetuneOptions, finetune
    >>> opts = FinetuneOptions(language="sparql", output="adapters/spider", max_steps=10)
    >>> finetune(["../shared/data/spider4sparql/train.jsonl"], opts)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragkit.errors import InputError, MissingDependencyError, UserError
from ragkit.finetune.data import (
    IGNORE,
    BuildStats,
    Encoded,
    PromptBuilder,
    SchemaBook,
    TrainPair,
    build_sequences,
    make_folds,
    read_cypher_schemas,
    read_pairs,
)
from ragkit.models.adapters import ADAPTER_META, FINGERPRINT_FORMAT, FOLDS_META, base_model_matches, file_sha256, model_fingerprint, quiet_peft_noise
from ragkit.models.llm import (
    LocalLLM,
    _common_prefix,
    cache_keyword,
    choose_device,
    forward_parameters,
    quiet_progress_bars,
    resolve_model_path,
    returned_cache,
)
from ragkit.stores.base import GraphSchema

logger = logging.getLogger(__name__)

__all__ = ["FinetuneOptions", "TrainingStopped", "finetune", "train_adapter", "sequence_loss", "fold_summary"]

Progress = Callable[[int, int, float | None], None]
"""Called with (step, total steps, last loss) after each optimizer step."""


class TrainingStopped(UserError):
    """Training was asked to stop (``stop`` was set): it stopped at a step boundary and saved a checkpoint
    there, so the same command resumes from that step."""

    def __init__(self, output: Path, step: int, total: int) -> None:
        self.output, self.step, self.total = output, step, total
        super().__init__(f"stopped at step {step} of {total}; the checkpoint in {output / 'checkpoint'} is kept: run the same command again to resume")


@dataclass
class FinetuneOptions:
    """Everything ``ragkit finetune`` can set (the CLI options of the same names)."""

    language: str
    output: str
    model: str | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str = "all-linear"
    batch_size: int = 4
    grad_accum: int = 2
    max_length: int = 1024
    examples: int = 2
    schema_tokens: int | None = 900
    limit: int | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    mixed_precision: str = "none"
    keep_failing: bool = False
    save_every: int = 50
    warmup: int = 10
    probe: int = 8
    schemas: str | None = None
    graph: str | None = None
    instructions: str | None = None
    init_adapter: str | None = None
    share_prefix: bool = True
    """Batch sequences whose prompts start alike (one graph's instructions and schema) and compute that
    start once per batch (:func:`target_loss`). Runs from before the option trained without it; a run
    resumed with the other setting batches the rest of its epoch the new way (:func:`_micro_batches`)."""
    resume: bool = True

    def check(self) -> None:
        if self.language not in ("sparql", "cypher"):
            raise UserError(f"unknown query language {self.language!r} (use --language sparql or cypher)")
        for name in ("rank", "alpha", "batch_size", "grad_accum", "max_length", "save_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.epochs <= 0 or self.lr <= 0:
            raise UserError("--epochs and --lr must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("--max-steps must be at least 1")
        if self.examples < 0:
            raise UserError("--examples must be 0 or more")
        if self.mixed_precision not in ("none", "bf16"):
            raise UserError(f"unknown --mixed-precision {self.mixed_precision!r} (use none or bf16)")


def _check_init_adapter(folder: str, language: str) -> tuple[dict[str, Any], Path]:
    """The metadata and weights file of the adapter ``--init-adapter`` names, after checking it can seed this run."""
    from ragkit.errors import ModelError
    from ragkit.models.adapters import is_fold_set, read_adapter_meta

    p = Path(folder).expanduser()
    if not p.is_dir():
        raise UserError(f"--init-adapter {folder} is not a folder (name an adapter folder that `ragkit finetune` wrote)")
    if is_fold_set(p):
        raise UserError(f"--init-adapter {folder} is a fold set: name one adapter (a fold-<i> folder, or an adapter trained without --folds)")
    try:
        meta = read_adapter_meta(p) or {}
    except ModelError as e:
        raise UserError(str(e)) from None
    if meta.get("language") and meta["language"] != language:
        raise UserError(f"--init-adapter {folder} writes {meta['language']}, but this run trains {language}: start from an adapter of the same language")
    weights = next((p / f for f in ("adapter_model.safetensors", "adapter_model.bin") if (p / f).is_file()), None)
    if weights is None:
        raise UserError(f"--init-adapter {folder} has no adapter_model.safetensors: name a folder `ragkit finetune` wrote")
    return meta, weights


class _TokenizerLLM(LocalLLM):
    """:class:`LocalLLM` with only its tokenizer loaded: ``render`` and ``count_tokens`` are LocalLLM's
    own, so training prompts are rendered by the very code inference uses."""

    def setup(self) -> None:
        from transformers import AutoTokenizer

        self.path = resolve_model_path(self.model_name)
        quiet_progress_bars()
        self._tok = AutoTokenizer.from_pretrained(self.path)
        if self._tok.pad_token_id is None:
            self._tok.pad_token = self._tok.eos_token


# ---- data -----------------------------------------------------------------------------------
def _graph_schemas(opts: FinetuneOptions, pairs: Sequence[TrainPair], train_files: Sequence[str]) -> dict[str, GraphSchema]:
    """Schemas given for graphs: a text2cypher schema file (next to the data or --schemas), or the
    schema a store reads from --graph (one file for every graph, or a folder of <graph>.<ext>)."""
    given: dict[str, GraphSchema] = {}
    if opts.language == "cypher":
        files = [Path(opts.schemas)] if opts.schemas else [Path(f).parent / "train_schemas.jsonl" for f in train_files]
        for f in dict.fromkeys(files):
            if f.is_file():
                given.update(read_cypher_schemas(f))
            elif opts.schemas:
                raise InputError(f"schema file {f} does not exist")
    if opts.graph:
        g = Path(opts.graph)
        if not g.exists():
            raise InputError(f"graph {g} does not exist (give a graph file, or a folder of <graph>.nt/.ttl/.cypher files)")
        suffixes = (".nt", ".ttl", ".rdf") if opts.language == "sparql" else (".cypher", ".ttl")
        for name in dict.fromkeys(p.graph for p in pairs):
            path = g if g.is_file() else next((g / f"{name}{s}" for s in suffixes if (g / f"{name}{s}").is_file()), None)
            if path is None:
                continue
            if opts.language == "sparql":
                from ragkit.stores.rdf import OxigraphStore

                store: Any = OxigraphStore(path=str(path))
            else:
                from ragkit.stores.cypher import EmbeddedCypherStore

                store = EmbeddedCypherStore(path=str(path))
            try:
                given[name] = store.schema()
            finally:
                store.close()
    return given


def _subsample(pairs: list[TrainPair], limit: int | None, seed: int) -> list[TrainPair]:
    if not limit or limit >= len(pairs):
        return pairs
    keep = set(random.Random(seed).sample(range(len(pairs)), limit))
    return [p for i, p in enumerate(pairs) if i in keep]


# ---- training -------------------------------------------------------------------------------
def _batches(seqs: Sequence[Encoded], batch_size: int, seed: int, epoch: int, share_prefix: bool = False) -> list[list[Encoded]]:
    """This epoch's batches: shuffled, then grouped by length within windows so padding stays small.

    With ``share_prefix``, sequences whose prompts share a start (those of one graph: instructions and
    schema) are batched together, in a random order within each group, so :func:`target_loss` computes
    that start once per batch; what is left of each group after its full batches is batched at the end."""
    order = list(seqs)
    random.Random(seed * 1000 + epoch).shuffle(order)
    groups = [order]
    if share_prefix:
        groups, rest = [], []
        for g in _prefix_groups(order, random.Random(seed * 1000 + epoch + 2)):
            cut = len(g) - len(g) % batch_size
            groups.append(g[:cut])
            rest += g[cut:]
        groups.append(rest)
    window = batch_size * 16
    batches = []
    for group in groups:
        for i in range(0, len(group), window):
            chunk = sorted(group[i : i + window], key=lambda e: len(e.input_ids))
            batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    random.Random(seed * 1000 + epoch + 1).shuffle(batches)
    return batches


def _micro_batches(seqs: Sequence[Encoded], batch_size: int, seed: int, batching: Sequence[Sequence[Any]]) -> Any:
    """Every micro-batch of a run from its start, epoch after epoch. ``batching`` lists
    ``[micro-batch, share_prefix]``: from that micro-batch on, batches are made with or without shared
    prompt starts. A switch within an epoch batches the sequences the epoch has not used yet the new way,
    so each epoch still uses every sequence once; a resumed run skips what it did and goes on identically."""
    switches = [(int(at), bool(share)) for at, share in batching]
    made, epoch, k = 0, 0, 0
    while True:
        batches = _batches(seqs, batch_size, seed, epoch, switches[k][1])
        i = 0
        while i < len(batches):
            if k + 1 < len(switches) and made >= switches[k + 1][0]:
                k += 1
                used = {id(e) for b in batches[:i] for e in b}
                batches = batches[:i] + _batches([e for e in seqs if id(e) not in used], batch_size, seed, epoch, switches[k][1])
                continue
            yield batches[i]
            i += 1
            made += 1
        epoch += 1


_SHARED_MIN = 32
"""Fewest shared leading tokens worth computing once for a whole batch (as at inference)."""


def _prefix_groups(order: list[Encoded], rng: random.Random) -> list[list[Encoded]]:
    """``order`` cut into groups whose prompts share at least half of the shorter prompt's tokens with the
    group's first (a graph's instructions and schema), each group in a random order."""
    ordered = sorted(order, key=lambda e: e.input_ids[: e.prompt_tokens])  # stable: ties keep the shuffle
    groups: list[list[Encoded]] = []
    for e in ordered:
        if groups:
            head = groups[-1][0]
            need = max(_SHARED_MIN, min(head.prompt_tokens, e.prompt_tokens) // 2)
            if _common_prefix([head.input_ids, e.input_ids]) >= need:
                groups[-1].append(e)
                continue
        groups.append([e])
    for g in groups:
        rng.shuffle(g)
    return groups


def _collate(batch: Sequence[Encoded], pad_id: int, device: str) -> dict[str, Any]:
    import torch

    n = max(len(e.input_ids) for e in batch)
    ids = [e.input_ids + [pad_id] * (n - len(e.input_ids)) for e in batch]
    labels = [e.labels + [IGNORE] * (n - len(e.labels)) for e in batch]
    mask = [[1] * len(e.input_ids) + [0] * (n - len(e.input_ids)) for e in batch]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def target_loss(model: Any, batch: Sequence[Encoded], pad_id: int, device: str = "cpu", share_prefix: bool = False) -> Any:
    """Mean cross-entropy over the target tokens of ``batch``, as the model's own loss, with logits
    computed only from the first position that predicts a target.

    The prompt (instructions, schema, examples) is most of a sequence and needs no logits: its
    projection onto the vocabulary is work and memory spent on nothing. With ``share_prefix``, the
    prompt tokens every row of the batch starts with are run once, and the rows go on from that
    start's keys and values: the same loss and gradients (the start's gradient is the sum over the
    rows, as when each row computes it; under dropout the rows share the start's mask), for a
    fraction of the work when the rows share a schema.
    """
    import torch

    n = max(len(e.input_ids) for e in batch)
    first = min(next((i for i, x in enumerate(e.labels) if x != IGNORE), n) for e in batch)
    start = min(max(first - 1, 0), n - 1)  # the position whose logits predict the first target
    shared = min(_common_prefix([e.input_ids for e in batch]), start) if share_prefix and len(batch) > 1 else 0
    inputs = _collate(batch, pad_id, device)
    labels = inputs.pop("labels")
    if _keeps_logits(model):
        inputs["logits_to_keep"] = n - start
    if shared >= _SHARED_MIN:
        head = model(input_ids=inputs["input_ids"][:1, :shared], use_cache=True, **({"logits_to_keep": 1} if "logits_to_keep" in inputs else {}))
        cache = returned_cache(head)
        cache.batch_repeat_interleave(len(batch))
        inputs["input_ids"] = inputs["input_ids"][:, shared:]
        inputs["position_ids"] = torch.arange(shared, n, device=device).unsqueeze(0).expand(len(batch), -1)
        inputs.update({cache_keyword(model): cache, "use_cache": True})
    logits = model(**inputs).logits[:, -(n - start) :][:, :-1].float()  # positions start .. n-2
    target = labels[:, start + 1 :]  # the tokens they predict
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


def _keeps_logits(model: Any) -> bool:
    return "logits_to_keep" in forward_parameters(model)


def sequence_loss(model: Any, seqs: Sequence[Encoded], pad_id: int, device: str = "cpu") -> float:
    """Mean loss per target token over ``seqs`` (no gradient): how well the model writes their queries."""
    import torch

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for e in seqs:
            loss = target_loss(model, [e], pad_id, device)
            n = sum(1 for x in e.labels[1:] if x != IGNORE)  # the loss is over shifted labels
            total += float(loss) * n
            count += n
    if was_training:
        model.train()
    return total / max(count, 1)


def _save_checkpoint(folder: Path, model: Any, optimizer: Any, state: dict[str, Any], meta: dict[str, Any], total: int) -> None:
    """Write a checkpoint that resumes the run and is also an adapter a pipeline can name: its
    ``ragkit_adapter.json`` is the run's metadata with ``checkpoint: true`` and the steps done so far."""
    import torch
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    step = state["step"]
    partial = {**meta, "checkpoint": True, "steps": step, "total_steps": total, "final_loss": state["losses"][-1] if state["losses"] else None}
    (tmp / ADAPTER_META).write_text(json.dumps(partial, indent=1), encoding="utf-8")
    sd = optimizer.state_dict()
    tensors = {f"{idx}/{k}": v.contiguous() for idx, st in sd["state"].items() for k, v in st.items()}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))  # dropout masks go on as uninterrupted
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "param_groups": sd["param_groups"]}, indent=1), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # a checkpoint is complete or absent, never half-written


def _load_checkpoint(folder: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    flat = load_file(str(folder / "optimizer.safetensors"))
    per: dict[int, dict[str, Any]] = {}
    for key, v in flat.items():
        idx, name = key.split("/", 1)
        per.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": per, "param_groups": state["param_groups"]})
    if (folder / "rng.safetensors").is_file():  # absent from checkpoints of earlier versions
        import torch

        torch.set_rng_state(load_file(str(folder / "rng.safetensors"))["torch"])
    return state  # type: ignore[no-any-return]


def _run_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resumed_base_record(meta: dict[str, Any], output: Path, base: str | Path) -> dict[str, Any]:
    """``meta`` with the base-model record of the run already in ``output`` (its checkpoint, or the
    finished adapter), when that record names the same model in an older fingerprint format: the
    run's key, and so resuming it, does not depend on how the fingerprint is computed."""
    if "base_model" not in meta:
        return meta
    for f in (output / "checkpoint" / ADAPTER_META, output / ADAPTER_META):
        try:
            record = json.loads(f.read_text(encoding="utf-8")).get("base_model")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(record, dict) and record != meta.get("base_model") and base_model_matches(record, base):
            return {**meta, "base_model": record}
    return meta


def train_adapter(
    seqs: list[Encoded],
    opts: FinetuneOptions,
    output: Path,
    meta: dict[str, Any],
    pad_id: int,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Train one LoRA adapter on ``seqs`` and write it, with ``meta`` completed, to ``output``.

    When ``stop`` is set, training ends after the step under way, saves a checkpoint and raises
    :class:`TrainingStopped` (a step is never cut in half, so the checkpoint is consistent)."""
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise MissingDependencyError(e.name or "peft", "finetune", "ragkit finetune") from None
    if not seqs:
        raise InputError("no training sequence fits --max-length (raise it, or lower --examples)")
    base = resolve_model_path(opts.model)
    if opts.resume:
        meta = _resumed_base_record(meta, output, base)
    keyed = {k: meta[k] for k in ("base_model", "data", "options", "init_adapter") if k in meta}
    if "options" in keyed:  # how batches are computed, not what is trained on: a run may switch it when it resumes
        keyed["options"] = {k: v for k, v in keyed["options"].items() if k != "share_prefix"}
    run_key = _run_key({"meta": keyed, "ids": [s.id for s in seqs]})
    done = _finished(output, run_key) if opts.resume else None
    if done is not None:  # e.g. the folds an interrupted k-fold run had finished
        logger.info("%s was already trained by this run: kept", output)
        if progress is not None:
            progress(done["steps"], done["steps"], done.get("final_loss"))
        return done
    quiet_peft_noise()
    _reset_peak_rss()  # each adapter records its own peak, not the process's so far (a k-fold run trains several)
    random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    device, dtype = choose_device(opts.device, "float32" if opts.device in ("auto", "cpu") else "auto")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype)).to(device)
    if opts.init_adapter:  # go on training an adapter (its rank, alpha and modules), e.g. a general one on a graph's own bank
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(opts.init_adapter).expanduser()), is_trainable=True)
    else:
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=opts.rank,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules=opts.target_modules if opts.target_modules == "all-linear" else opts.target_modules.split(","),
        )
        model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = model.peft_config["default"]  # with init_adapter, that adapter's shape, not --rank/--alpha
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(seqs) / opts.batch_size)
    total = opts.max_steps or max(1, math.ceil(opts.epochs * per_epoch / opts.grad_accum))
    probe = seqs[: opts.probe]
    ckpt = output / "checkpoint"
    step, losses, tokens, seconds = 0, [], 0, 0.0
    loss_before = None
    if opts.resume and (ckpt / "trainer_state.json").is_file():
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        if state.get("run_key") == run_key:
            state = _load_checkpoint(ckpt, model, optimizer)
            step, losses, tokens, seconds = state["step"], state["losses"], state["tokens"], state["seconds"]
            loss_before = state.get("loss_before")
            logger.info("resuming %s from step %d", output, step)
        else:
            logger.warning("%s holds a checkpoint of another run (other data or options): starting afresh", ckpt)
    if loss_before is None:
        loss_before = sequence_loss(model, probe, pad_id, device)
    model.train()

    # how the batches were made so far: [micro-batch, share_prefix] from which on; a checkpoint of a run
    # from before --share-prefix existed trained without it
    batching = [[0, opts.share_prefix]] if not step else [list(b) for b in state.get("batching", [[0, False]])]
    if batching[-1][1] != opts.share_prefix:
        logger.info("from step %d the rest of the epoch is batched %s shared prompt starts", step, "with" if opts.share_prefix else "without")
        batching.append([step * opts.grad_accum, opts.share_prefix])
    stream = _micro_batches(seqs, opts.batch_size, opts.seed, batching)

    def checkpoint() -> None:
        state = {"run_key": run_key, "step": step, "losses": losses, "tokens": tokens, "seconds": seconds, "loss_before": loss_before, "batching": batching}
        _save_checkpoint(ckpt, model, optimizer, state, {**meta, "run_key": run_key}, total)

    # bf16: the forward's matrix products in bfloat16, the LoRA weights, optimizer and loss in float32
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if opts.mixed_precision == "bf16" else contextlib.nullcontext()
    for _ in range(step * opts.grad_accum):  # a resumed run continues where the data order was
        next(stream)
    if progress is not None:
        progress(step, total, losses[-1] if losses else None)
    while step < total:
        if stop is not None and stop.is_set():
            if step:
                checkpoint()
            raise TrainingStopped(output, step, total)
        t0 = time.perf_counter()
        lr = opts.lr * min(1.0, (step + 1) / max(1, opts.warmup)) * max(0.0, 1.0 - step / total) if total > opts.warmup else opts.lr
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(opts.grad_accum):
            batch = next(stream)
            with autocast:
                loss = target_loss(model, batch, pad_id, device, opts.share_prefix)
            (loss / opts.grad_accum).backward()
            step_loss += float(loss.detach()) / opts.grad_accum
            tokens += sum(len(e.input_ids) for e in batch)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        step += 1
        seconds += time.perf_counter() - t0
        losses.append(round(step_loss, 5))
        if progress is not None:
            progress(step, total, step_loss)
        if step % opts.save_every == 0 and step < total:
            checkpoint()
    loss_after = sequence_loss(model, probe, pad_id, device)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    meta.update(
        run_key=run_key,
        steps=step,
        epochs_done=round(step * opts.grad_accum * opts.batch_size / len(seqs), 3),
        final_loss=losses[-1] if losses else None,
        losses=losses,
        batching=[{"from_step": at // opts.grad_accum, "share_prefix": share} for at, share in batching],
        loss_before=round(loss_before, 5),
        loss_after=round(loss_after, 5),
        probe_ids=[s.id for s in probe],
        trainable_parameters=trainable,
        lora={
            "rank": lora.r,
            "alpha": lora.lora_alpha,
            "target_modules": sorted(lora.target_modules) if isinstance(lora.target_modules, (set, list)) else lora.target_modules,
        },
        throughput={
            "seconds": round(seconds, 2),
            "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "seconds_per_step": round(seconds / step, 3) if step else None,
            "peak_rss_mb": _peak_rss_mb(),
            "device": device,
            "dtype": dtype,
            "mixed_precision": opts.mixed_precision,
            "threads": _threads(),
        },
    )
    (output / ADAPTER_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    shutil.rmtree(ckpt, ignore_errors=True)
    return meta


def _finished(output: Path, run_key: str) -> dict[str, Any] | None:
    """The metadata of the adapter in ``output`` when this very run (same data, options, sequences) wrote it."""
    path = output / ADAPTER_META
    if not path.is_file() or not (output / "adapter_model.safetensors").is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("checkpoint"):  # a checkpoint's copy is not a finished adapter
        return None
    return meta if meta.get("run_key") == run_key else None


def _reset_peak_rss() -> None:
    """Start a new peak-RSS measurement (Linux: VmHWM; elsewhere the process's peak stays)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def _peak_rss_mb() -> float | None:
    """Peak resident memory since the last :func:`_reset_peak_rss` (Linux), else since the process started."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return None


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


# ---- the command ----------------------------------------------------------------------------
def finetune(
    train_files: Sequence[str],
    opts: FinetuneOptions,
    *,
    bank: str | None = None,
    folds: int | None = None,
    progress: Callable[[str], Progress] | None = None,
    log: Callable[[str], None] = logger.info,
    stop: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Train the adapter(s) ``ragkit finetune`` names; returns the metadata written for each.

    Args:
        train_files: general corpora (pairs over other graphs).
        opts: the options.
        bank: a graph's own example bank; with ``folds``, one adapter per fold, each without that
            fold's items and their equivalents (the evaluation protocol), the general corpora added.
        folds: number of folds for ``bank`` (without it the whole bank is training data).
        progress: given an adapter's name, returns its per-step callback.
        stop: set it (from a signal handler, another thread) to end training after the step under way
            with a checkpoint; :class:`TrainingStopped` is raised and the same call resumes.
        log: where to report what the data became.
    """
    opts.check()
    init = _check_init_adapter(opts.init_adapter, opts.language) if opts.init_adapter else None
    if not train_files and not bank:
        raise UserError("nothing to train on: give --train FILE (repeatable) and/or --bank FILE")
    if folds is not None and not bank:
        raise UserError("--folds needs --bank FILE (the example bank to split)")
    if folds is not None and folds < 2:
        raise UserError("--folds must be at least 2")
    threads = opts.threads or int(os.environ.get("RAGKIT_NUM_THREADS", "0") or 0)
    general: list[TrainPair] = []
    for f in train_files:
        general += read_pairs(f, opts.language)
    bank_pairs = read_pairs(bank, opts.language) if bank else []
    # a graph's schema comes from all its pairs; --limit subsamples what is trained on
    book_pairs = general + bank_pairs
    general_full = general  # every pair may serve as a retrieved example
    general = _subsample(general, opts.limit, opts.seed)
    all_pairs = general + bank_pairs
    tok_llm = _TokenizerLLM(model=opts.model)
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "models", "ragkit finetune (install the CPU build first: pip install torch==2.13.0)") from None
    if threads:
        torch.set_num_threads(threads)
    tok_llm.warm_up()
    tok = tok_llm.tokenizer

    def tokenize(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    book = SchemaBook(book_pairs, opts.language, _graph_schemas(opts, book_pairs, [*train_files, *([bank] if bank else [])]))
    builder = PromptBuilder(tok_llm, opts.language, book, opts.schema_tokens, opts.instructions)
    assert tok_llm.path is not None
    base_meta = {
        "format": 1,
        "language": opts.language,
        "base_model": {"name": opts.model or "smollm2", "fingerprint": model_fingerprint(tok_llm.path), "fingerprint_format": FINGERPRINT_FORMAT},
        "data": [{"path": str(f), "sha256": file_sha256(f)} for f in train_files],
        "options": _options_meta(opts),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if bank:
        base_meta["bank"] = {"path": str(bank), "sha256": file_sha256(bank), "items": len(bank_pairs)}
    if init is not None:
        init_meta, weights = init
        record = init_meta.get("base_model") or {}
        if not base_model_matches(record, tok_llm.path):
            raise UserError(
                f"--init-adapter {opts.init_adapter} was trained for another base model (fingerprint {record['fingerprint']}, "
                f"this one is {base_meta['base_model']['fingerprint']}): start from an adapter of the same --model"
            )
        base_meta["init_adapter"] = {"path": str(weights.parent), "sha256": file_sha256(weights)}
    out = Path(opts.output)
    pad_id = int(tok.pad_token_id)
    build_opts: dict[str, Any] = {"examples": opts.examples, "max_length": opts.max_length, "drop_failing": not opts.keep_failing}
    results = []
    if folds is None:
        seqs, stats = build_sequences(all_pairs, book_pairs, builder, tokenize, **build_opts)
        log(_build_line(stats, opts))
        meta = {**base_meta, "sequences": stats.kept, "build": _build_meta(stats)}
        results.append(train_adapter(seqs, opts, out, meta, pad_id, progress(out.name) if progress else None, stop))
        return results
    splits = make_folds(bank_pairs, folds, opts.seed)
    # the index lists the folds finished so far: a stopped run's adapters can be evaluated on what they held out
    index = {"bank": base_meta["bank"], "language": opts.language, "base_model": base_meta["base_model"], "fold_count": folds, "folds": []}
    for fold in splits:
        name = f"fold-{fold.index}"
        # examples come only from what this fold may see
        seqs, stats = build_sequences(general + fold.train, general_full + fold.train, builder, tokenize, **build_opts)
        log(f"{name}: {_build_line(stats, opts)}; {len(fold.held_out)} items held out, {len(fold.dropped)} equivalents dropped")
        meta = {
            **base_meta,
            "fold": fold.index,
            "folds": folds,
            "held_out_ids": [p.id for p in fold.held_out],
            "dropped_ids": fold.dropped,
            "sequences": stats.kept,
            "build": _build_meta(stats),
        }
        results.append(train_adapter(seqs, opts, out / name, meta, pad_id, progress(name) if progress else None, stop))
        gc.collect()  # the fold's model and optimizer, before the next fold loads its own
        index["folds"].append({"adapter": name, "held_out": meta["held_out_ids"], "dropped": fold.dropped})
        tmp = out / (FOLDS_META + ".tmp")
        tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
        tmp.replace(out / FOLDS_META)  # an evaluation reading it meanwhile sees the old index or the new one
    return results


def _options_meta(opts: FinetuneOptions) -> dict[str, Any]:
    """The options an adapter records (and its checkpoint's run key hashes), as JSON values; an unset
    ``init_adapter`` is left out, so a run's key is the same as before the option existed and its
    checkpoint resumes (the key leaves out ``share_prefix`` too)."""
    skip = ("output", "resume", "threads", "device") + (("init_adapter",) if opts.init_adapter is None else ())
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(opts).items() if k not in skip}  # the CLI gives paths


def _build_line(stats: BuildStats, opts: FinetuneOptions) -> str:
    line = f"{stats.kept} sequences from {stats.pairs} pairs ({stats.too_long} too long for --max-length {opts.max_length}, {stats.fewer_examples} with fewer examples"
    if not opts.keep_failing:
        line += f", {stats.failing_checks} whose query fails the generator's checks"
    return line + ")"


def _build_meta(stats: BuildStats) -> dict[str, Any]:
    return dataclasses.asdict(stats) | {"skipped_ids": stats.skipped_ids[:100], "failing_ids": stats.failing_ids[:100]}


def fold_summary(folder: str | Path) -> list[dict[str, Any]]:
    """Per fold of a fold set: its adapter folder and how many items it held out (for the CLI)."""
    data = json.loads((Path(folder) / FOLDS_META).read_text(encoding="utf-8"))
    return [{"adapter": f["adapter"], "held_out": len(f["held_out"])} for f in data["folds"]]
