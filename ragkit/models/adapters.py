"""LoRA adapters as artifacts: their metadata, the base model they belong to, and loading them.

An adapter folder written by ``ragkit finetune`` holds the peft files (``adapter_config.json``,
``adapter_model.safetensors``) and ``ragkit_adapter.json``: the base model's identity (name and a
fingerprint of its files), the query language, the training files with their hashes, the options,
the steps run, the final loss and, for a k-fold adapter, the ids of the items it never saw.

A k-fold run writes a *fold set*: ``ragkit_folds.json`` and one adapter per fold (``fold-0/``...).
``ragkit eval`` picks, for each test item, the fold whose adapter held that item out.

Example:
    >>> from ragkit.models.llm import LocalLLM
    >>> llm = LocalLLM(adapter="adapters/spider-sparql")   # doctest: +SKIP
    >>> llm.warm_up()  # refuses an adapter of another base model  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

from ragkit.errors import MissingDependencyError, ModelError

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_META",
    "FOLDS_META",
    "FINGERPRINT_FORMAT",
    "model_fingerprint",
    "base_model_matches",
    "file_sha256",
    "read_adapter_meta",
    "read_fold_set",
    "is_fold_set",
    "fold_for_item",
    "adapter_key",
    "apply_adapter",
    "quiet_peft_noise",
]

ADAPTER_META = "ragkit_adapter.json"
"""Metadata file ragkit writes beside the peft files of an adapter."""
FOLDS_META = "ragkit_folds.json"
"""Index of a k-fold adapter set: which ids each fold's adapter held out."""

_SAMPLE = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a whole file (training data files are hashed in full)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


FINGERPRINT_FORMAT = 2
"""Version of :func:`model_fingerprint` that adapters record (``base_model.fingerprint_format``)."""

# Adapters written before the fingerprint format was recorded hashed config.json as it was, so the
# transformers release that wrote the model folder (its "transformers_version") was part of it: a
# GGUF model converted again by another release no longer matched. Those records are recognized by
# trying the releases ragkit supported then.
_LEGACY_TRANSFORMERS = [f"4.{m}.{p}" for m in range(46, 58) for p in range(10)] + [f"5.{m}.{p}" for m in range(25) for p in range(10)]
_VERSION_FIELD = re.compile(rb'("transformers_version"\s*:\s*")([^"]*)(")')


def model_fingerprint(folder: str | Path) -> str:
    """A fingerprint of a Hugging Face model folder, independent of where the folder lives and of the
    transformers release that wrote it.

    It covers ``config.json`` (parsed, without ``transformers_version``) and, for every weights file,
    its name, size and the first and last MiB: enough to tell two models apart, and fast for multi-GB
    checkpoints (hashing them in full on every load would take longer than loading them).
    """
    folder = Path(folder)
    return _hash(_canonical_config(_config_bytes(folder)), _weight_samples(folder))


def base_model_matches(record: dict[str, Any], folder: str | Path) -> bool:
    """Whether an adapter's ``base_model`` record names the model in ``folder``.

    A record without ``fingerprint`` cannot be checked and matches. One from before
    :data:`FINGERPRINT_FORMAT` was recorded matches when the folder, as written by one of the
    transformers releases ragkit supported then, has that fingerprint.
    """
    want = record.get("fingerprint")
    if not want:
        return True
    raw, samples = _config_bytes(Path(folder)), _weight_samples(Path(folder))  # read once for every hash below
    if want == _hash(_canonical_config(raw), samples):
        return True
    if record.get("fingerprint_format"):
        return False
    if _hash(raw, samples) == want:
        return True
    if raw is None or not _VERSION_FIELD.search(raw):
        return False
    return any(_hash(_VERSION_FIELD.sub(rb"\g<1>" + v.encode() + rb"\g<3>", raw, count=1), samples) == want for v in _LEGACY_TRANSFORMERS)


def _config_bytes(folder: Path) -> bytes | None:
    config = folder / "config.json"
    return config.read_bytes() if config.is_file() else None


def _canonical_config(raw: bytes | None) -> bytes | None:
    """``config.json`` without ``transformers_version``, keys sorted (as it was when it does not parse)."""
    if raw is None:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(parsed, dict):
        return raw
    parsed.pop("transformers_version", None)
    return json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()


def _weight_samples(folder: Path) -> list[bytes]:
    parts = []
    for p in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")):
        size = p.stat().st_size
        parts.append(f"{p.name}:{size}".encode())
        with p.open("rb") as f:
            parts.append(f.read(_SAMPLE))
            if size > 2 * _SAMPLE:
                f.seek(size - _SAMPLE)
                parts.append(f.read(_SAMPLE))
    return parts


def _hash(config: bytes | None, samples: list[bytes]) -> str:
    h = hashlib.sha256()
    if config is not None:
        h.update(config)
    for part in samples:
        h.update(part)
    return h.hexdigest()[:16]


def read_adapter_meta(adapter: str | Path) -> dict[str, Any] | None:
    """The ``ragkit_adapter.json`` of an adapter folder, or None for a plain peft adapter.

    Raises:
        ModelError: the folder is missing, is a fold set, or holds no adapter.
    """
    p = Path(adapter).expanduser()
    if not p.is_dir():
        raise ModelError(f"adapter folder {p} does not exist (train one with: ragkit finetune --output {p} ...)")
    if is_fold_set(p):
        raise ModelError(
            f"{p} is a k-fold adapter set, not one adapter: name one fold ({p}/fold-0) or let `ragkit eval` "
            "choose, for each question, the fold that never saw it"
        )
    if not (p / "adapter_config.json").is_file():
        raise ModelError(f"{p} has no adapter_config.json: it is not a LoRA adapter folder (train one with `ragkit finetune`)")
    meta = p / ADAPTER_META
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except json.JSONDecodeError as e:
        raise ModelError(f"{meta} is not valid JSON ({e.msg}); retrain the adapter or fix the file") from None


def is_fold_set(folder: str | Path) -> bool:
    return (Path(folder) / FOLDS_META).is_file()


def read_fold_set(folder: str | Path) -> dict[str, Any]:
    """The index of a k-fold adapter set: ``{"folds": [{"adapter": "fold-0", "held_out": [ids]}, ...]}``."""
    p = Path(folder) / FOLDS_META
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read the fold index {p} ({e}); retrain with `ragkit finetune --bank ... --folds K`") from None
    if not isinstance(data, dict) or not isinstance(data.get("folds"), list):
        raise ModelError(f"{p} has no 'folds' list; retrain with `ragkit finetune --bank ... --folds K`")
    return data


def fold_for_item(folder: str | Path, item_id: str) -> Path:
    """The adapter of a fold set that held ``item_id`` out (never trained on it nor its equivalents).

    Raises:
        ModelError: no fold held the item out: every adapter of the set may have seen it.
    """
    folder = Path(folder)
    index = read_fold_set(folder)
    for fold in index["folds"]:
        if item_id in set(fold.get("held_out", [])):
            return folder / fold["adapter"]
    planned = index.get("fold_count")
    if isinstance(planned, int) and len(index["folds"]) < planned:
        raise ModelError(
            f"{folder} has {len(index['folds'])} of its {planned} folds trained, and none held out item {item_id!r}: "
            "finish the training (rerun the same `ragkit finetune` command; finished folds are kept), or evaluate only "
            f"the items the finished folds held out (`ragkit eval --ids FILE`, the `held_out` ids of {folder / FOLDS_META})"
        )
    raise ModelError(
        f"no fold of {folder} held out item {item_id!r}: every adapter may have trained on it "
        "(evaluate only items of the bank the fold set was trained on)"
    )


def adapter_key(adapter: str | Path | None, merge: bool) -> str:
    """The part of the loaded-model cache key an adapter adds (empty without one)."""
    if not adapter:
        return ""
    return f"{Path(adapter).expanduser().resolve()}|{'merged' if merge else 'peft'}"


def apply_adapter(model: Any, adapter: str | Path, base_path: str | Path, *, merge: bool = True) -> Any:
    """Load a LoRA adapter onto ``model`` (loaded from ``base_path``), merged into its weights or not.

    Merged, generation runs at the base model's speed; unmerged keeps the adapter separate (the base
    weights untouched). An adapter ragkit trained records its base model's fingerprint and is refused
    on another base model.

    Raises:
        ModelError: the adapter is missing, malformed, or was trained for a different base model.
        MissingDependencyError: peft is not installed.
    """
    meta = read_adapter_meta(adapter)
    if meta is None:
        logger.warning("%s has no %s: cannot check it was trained for %s", adapter, ADAPTER_META, base_path)
    else:
        record = meta.get("base_model") or {}
        if not base_model_matches(record, base_path):
            raise ModelError(
                f"adapter {adapter} was trained for base model {record.get('name', '?')} (fingerprint {record['fingerprint']}), "
                f"but the model loaded from {base_path} has fingerprint {model_fingerprint(base_path)}: set the local_llm's "
                "'model:' to the adapter's base model"
            )
        if meta.get("checkpoint"):
            logger.info("%s is the checkpoint of an unfinished run: step %s of %s", adapter, meta.get("steps"), meta.get("total_steps"))
    try:
        from peft import PeftModel
    except ImportError:
        raise MissingDependencyError("peft", "finetune", "loading a LoRA adapter") from None
    quiet_peft_noise()
    try:
        wrapped = PeftModel.from_pretrained(model, str(Path(adapter).expanduser()), is_trainable=False)
    except Exception as e:
        raise ModelError(f"could not load the adapter in {adapter} onto {base_path}: {e}") from e
    if merge:
        return wrapped.merge_and_unload()
    return wrapped


def quiet_peft_noise() -> None:
    """Silence messages that adapter loads and training runs printed, none about the user's input: peft
    reading a deprecated transformers property; huggingface_hub finding no model card when an adapter is
    saved; and peft, saving an adapter trained on from another machine's adapter (``--init-adapter``),
    not finding the base model folder that adapter names (the base is checked by fingerprint instead)."""
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Could not find a config file in .* will assume that the vocabulary was not modified", category=UserWarning)
    logging.getLogger("huggingface_hub.repocard").setLevel(logging.ERROR)
