"""Sizing a model deployment: weight and KV-cache memory, accelerator cards, training compute and days,
and the operational + embodied carbon of the plan.

The arithmetic (decimal units: 1 GB = 10^9 bytes):

* weights = parameters x bytes per parameter (fp32 4, fp16/bf16 2, int8 1, int4 0.5);
  65 B parameters in fp16 = 130 GB, in int8 = 65 GB;
* KV cache = 2 (keys and values) x layers x KV heads x head size x context x batch x bytes per value;
* cards = ceil((weights + KV cache) / memory of one card): 65 GB of int8 weights on 230 MB cards = 283;
* training compute = 6 x parameters x training tokens (FLOPs), and
  days = compute / (devices x peak FLOP/s x utilisation) / 86,400;
* carbon = operational (devices x power x hours x PUE x grid intensity) + embodied (devices x kgCO2e
  per device x the share of the devices' lifetime the plan uses).

Example:
    >>> from ragkit.tokenomics.plan import make_plan
    >>> p = make_plan(params="65B", dtype="int8", card_memory="230MB")
    >>> p.weights_bytes / 1e9, p.cards
    (65.0, 283)
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragkit.errors import InputError

__all__ = [
    "DTYPE_BYTES",
    "ModelShape",
    "Plan",
    "parse_quantity",
    "read_model_shape",
    "weights_bytes",
    "kv_cache_bytes",
    "training_flops",
    "make_plan",
]

DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}

# Assumptions used when the caller states none; every one is printed with the plan and can be overridden.
DEFAULT_UTILISATION = 0.4
DEFAULT_POWER_W = 300.0
DEFAULT_GRID_G_PER_KWH = 400.0
DEFAULT_EMBODIED_KG = 150.0
DEFAULT_LIFETIME_YEARS = 5.0

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}
_BYTES = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_quantity(value: str | float | int, what: str, *, kind: str = "count") -> float:
    """A positive number from ``65B``, ``1.4T``, ``7e9``, ``312T`` or, with ``kind="bytes"``, ``230MB``/``80GiB``.

    Raises:
        InputError: naming ``what`` and the accepted forms.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        x = float(value)
    else:
        s = str(value).strip().replace("_", "").replace(",", "")
        if kind == "bytes":
            m = re.fullmatch(r"(?i)([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmgt]i?b|b)?", s)
            if not m:
                raise InputError(f"{what}: {value!r} is not a size (write e.g. 230MB, 80GB or 24GiB)")
            x = float(m.group(1)) * _BYTES[(m.group(2) or "b").lower()]
        else:
            m = re.fullmatch(r"(?i)([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmbgtp]?)", s)
            if not m:
                raise InputError(f"{what}: {value!r} is not a number (write e.g. 65B, 1.4T or 7e9)")
            x = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(x) or x <= 0:
        raise InputError(f"{what} must be a positive number, not {value!r}")
    return x


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs to know about a model. Any field may be unknown (None)."""

    params: float | None = None
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    source: str = "flags"

    @property
    def kv_width(self) -> int | None:
        """KV heads x head size: the values one token stores per layer, for keys (and again for values)."""
        heads = self.heads
        kv = self.kv_heads or heads
        dim = self.head_dim or (self.hidden // heads if self.hidden and heads else None)
        return kv * dim if kv and dim else None


def _safetensors_params(folder: Path) -> int | None:
    """Parameters counted from the headers of the folder's ``*.safetensors`` files (no weights are read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                total += math.prod(t["shape"])
    return total


def read_model_shape(model: str) -> ModelShape:
    """The shape of a local model: a Hugging Face folder (``config.json``), its ``config.json`` itself,
    or ``smollm2`` (ragkit's bundled model, converted on first use). Parameters are counted from the
    folder's safetensors headers when present.

    Raises:
        InputError: when ``model`` is none of these, or its config lacks the sizes.
    """
    p = Path(model).expanduser()
    if model == "smollm2":
        from ragkit.models.llm import resolve_model_path

        p = resolve_model_path(None)
    if p.is_file() and p.name.endswith(".json"):
        cfg_file, folder = p, p.parent
    elif p.is_dir() and (p / "config.json").is_file():
        cfg_file, folder = p / "config.json", p
    else:
        raise InputError(
            f"--model {model!r}: not a local Hugging Face folder with config.json, a config.json file, or 'smollm2' "
            "(ragkit plan reads local files only; or give --params and the --layers/--heads/--hidden flags)"
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{cfg_file}: cannot read it as JSON ({e})") from None
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model's
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers")
    hidden = cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    if not (layers and hidden and heads):
        raise InputError(f"{cfg_file}: no num_hidden_layers/hidden_size/num_attention_heads (give --layers, --hidden and --heads)")
    return ModelShape(
        params=_safetensors_params(folder),
        layers=int(layers),
        hidden=int(hidden),
        heads=int(heads),
        kv_heads=cfg.get("num_key_value_heads"),
        head_dim=cfg.get("head_dim"),
        source=str(cfg_file),
    )


def _dtype(name: str, what: str) -> float:
    try:
        return DTYPE_BYTES[name.lower()]
    except KeyError:
        raise InputError(f"{what} {name!r} is not one of {', '.join(DTYPE_BYTES)}") from None


def weights_bytes(params: float, dtype: str) -> float:
    """Bytes of the weights: 65e9 parameters in fp16 = 130e9 bytes."""
    return params * _dtype(dtype, "dtype")


def kv_cache_bytes(shape: ModelShape, context: int, batch: int, kv_dtype: str) -> float:
    """Bytes of the key/value cache for ``batch`` sequences of ``context`` tokens."""
    if shape.layers is None or shape.kv_width is None:
        raise InputError("the KV cache needs the layers, heads and hidden size (give --model or --layers, --heads and --hidden)")
    return 2.0 * shape.layers * shape.kv_width * context * batch * _dtype(kv_dtype, "--kv-dtype")


def training_flops(params: float, tokens: float) -> float:
    """Training compute in FLOPs: about 6 x parameters x tokens (forward 2, backward 4)."""
    return 6.0 * params * tokens


@dataclass
class Plan:
    """A sizing plan; ``to_dict`` gives every figure and the assumptions behind it."""

    params: float
    dtype: str
    weights_bytes: float
    kv_dtype: str
    context: int
    batch: int
    kv_cache_bytes: float | None
    card_memory_bytes: float | None
    cards_for_weights: int | None
    cards: int | None
    shape: ModelShape
    training: dict[str, Any] | None = None
    carbon: dict[str, Any] | None = None
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + (self.kv_cache_bytes or 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        return d


def make_plan(
    *,
    params: str | float | None = None,
    model: str | None = None,
    dtype: str = "fp16",
    kv_dtype: str | None = None,
    context: int = 0,
    batch: int = 1,
    layers: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    hidden: int | None = None,
    card_memory: str | float | None = None,
    train_tokens: str | float | None = None,
    devices: int | None = None,
    peak_flops: str | float | None = None,
    utilisation: float = DEFAULT_UTILISATION,
    power_w: float = DEFAULT_POWER_W,
    pue: float = 1.0,
    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH,
    embodied_kg: float = DEFAULT_EMBODIED_KG,
    lifetime_years: float = DEFAULT_LIFETIME_YEARS,
) -> Plan:
    """Size a model: memory, cards, and (with ``train_tokens`` and ``peak_flops``) training time and carbon.

    Args:
        params: parameter count (``65B``, ``7e9``); read from the model's safetensors when ``model`` is given.
        model: a local Hugging Face folder, its ``config.json``, or ``smollm2``; flags override its values.
        dtype: weight type: fp32, fp16, bf16, int8 or int4.
        kv_dtype: KV cache type (default: ``dtype`` for float weights, fp16 for integer ones).
        context: tokens per sequence held in the KV cache (0: weights only).
        batch: sequences served at once.
        layers, heads, kv_heads, hidden: the architecture, when there is no config to read it from.
        card_memory: memory of one accelerator card (``80GB``, ``230MB``).
        train_tokens: training tokens (``1.4T``): adds compute, days and carbon.
        devices: devices for training (default: the cards the memory needs, at least 1).
        peak_flops: peak FLOP/s of one device (``312T``).
        utilisation: share of the peak reached (model FLOPs utilisation), in (0, 1].
        power_w: average draw of one device in watts, for operational carbon.
        pue: data-centre power usage effectiveness (>= 1).
        grid_g_per_kwh: grid carbon intensity, gCO2e per kWh.
        embodied_kg: embodied (manufacturing) kgCO2e of one device.
        lifetime_years: the devices' service life over which embodied carbon is spread.
    """
    shape = read_model_shape(model) if model else ModelShape()
    overrides = {"layers": layers, "heads": heads, "kv_heads": kv_heads, "hidden": hidden}
    for name, v in overrides.items():
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, not {v}")
    shape = ModelShape(
        params=parse_quantity(params, "--params") if params is not None else shape.params,
        layers=layers or shape.layers,
        hidden=hidden or shape.hidden,
        heads=heads or shape.heads,
        kv_heads=kv_heads or shape.kv_heads,
        head_dim=shape.head_dim if not (hidden or heads) else None,
        source=shape.source if model else "flags",
    )
    if shape.params is None:
        hint = f" ({shape.source} has no safetensors weights to count)" if model else ""
        raise InputError(f"the parameter count is unknown{hint}: give --params (e.g. --params 65B)")
    if context < 0 or batch < 1:
        raise InputError(f"--context must be 0 or more and --batch at least 1 (got {context} and {batch})")
    if not 0 < utilisation <= 1:
        raise InputError(f"--utilisation must be in (0, 1], not {utilisation} (0.4 means 40% of the peak)")
    if pue < 1 or power_w <= 0 or grid_g_per_kwh < 0 or embodied_kg < 0 or lifetime_years <= 0:
        raise InputError("--pue must be >= 1, --power-w and --lifetime-years positive, --grid-intensity and --embodied-kg 0 or more")
    w = weights_bytes(shape.params, dtype)
    kv_dtype = kv_dtype or (dtype if dtype.lower() in ("fp32", "fp16", "bf16") else "fp16")
    kv = kv_cache_bytes(shape, context, batch, kv_dtype) if context else None
    card = parse_quantity(card_memory, "--card-memory", kind="bytes") if card_memory is not None else None
    plan = Plan(
        params=shape.params,
        dtype=dtype.lower(),
        weights_bytes=w,
        kv_dtype=kv_dtype.lower(),
        context=context,
        batch=batch,
        kv_cache_bytes=kv,
        card_memory_bytes=card,
        cards_for_weights=math.ceil(w / card) if card else None,
        cards=math.ceil((w + (kv or 0.0)) / card) if card else None,
        shape=shape,
    )
    if train_tokens is None:
        return plan
    if peak_flops is None:
        raise InputError("training days need the devices' peak speed: give --peak-flops (e.g. 312T for 312 TFLOP/s)")
    if devices is not None and devices < 1:
        raise InputError(f"--devices must be at least 1, not {devices}")
    tokens = parse_quantity(train_tokens, "--train-tokens")
    peak = parse_quantity(peak_flops, "--peak-flops")
    n = devices or max(1, plan.cards or 1)
    flops = training_flops(shape.params, tokens)
    seconds = flops / (n * peak * utilisation)
    hours = seconds / 3600
    kwh = n * power_w * hours / 1000 * pue
    operational = kwh * grid_g_per_kwh / 1000
    embodied = n * embodied_kg * min(1.0, hours / (lifetime_years * 365 * 24))
    plan.training = {"tokens": tokens, "flops": flops, "devices": n, "peak_flops": peak, "utilisation": utilisation, "days": seconds / 86400}
    plan.carbon = {
        "energy_kwh": kwh,
        "operational_kg": operational,
        "embodied_kg": embodied,
        "total_kg": operational + embodied,
        "basis": "estimated",
    }
    plan.assumptions = {
        "power_w_per_device": power_w,
        "pue": pue,
        "grid_g_per_kwh": grid_g_per_kwh,
        "embodied_kg_per_device": embodied_kg,
        "lifetime_years": lifetime_years,
    }
    return plan
