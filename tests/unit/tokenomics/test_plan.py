"""xPU sizing: the arithmetic of shared/CONTEXT.md, config reading, training days, carbon, and errors."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ragkit.errors import InputError
from ragkit.tokenomics.plan import ModelShape, kv_cache_bytes, make_plan, parse_quantity, read_model_shape, training_flops, weights_bytes


def test_context_figures() -> None:
    assert weights_bytes(65e9, "fp16") == 130e9  # 65 B parameters x 2 bytes = 130 GB
    assert weights_bytes(65e9, "int8") == 65e9  # int8 halves it
    p = make_plan(params="65B", dtype="int8", card_memory="230MB")
    assert p.weights_bytes == 65e9 and p.cards == 283 and p.cards_for_weights == 283  # 65e9 / 230e6 = 282.6
    assert make_plan(params="65B", dtype="fp16").cards is None


@pytest.mark.parametrize(("dtype", "gb"), [("fp32", 28.0), ("fp16", 14.0), ("bf16", 14.0), ("int8", 7.0), ("int4", 3.5)])
def test_bytes_per_dtype(dtype: str, gb: float) -> None:
    assert make_plan(params=7e9, dtype=dtype).weights_bytes == pytest.approx(gb * 1e9)


def test_quantities() -> None:
    assert parse_quantity("65B", "x") == 65e9 and parse_quantity("1.4T", "x") == 1.4e12 and parse_quantity("7e9", "x") == 7e9
    assert parse_quantity("135M", "x") == 135e6 and parse_quantity(3, "x") == 3.0
    assert parse_quantity("230MB", "x", kind="bytes") == 230e6 and parse_quantity("24GiB", "x", kind="bytes") == 24 * 2**30
    for bad in ("lots", "-5B", "0", "5 Q"):
        with pytest.raises(InputError, match="x"):
            parse_quantity(bad, "x")
    with pytest.raises(InputError, match="not a size"):
        parse_quantity("230XB", "--card-memory", kind="bytes")


def test_kv_cache_and_cards() -> None:
    shape = ModelShape(params=7e9, layers=32, hidden=4096, heads=32, kv_heads=8)
    # 2 x 32 layers x (8 x 128) x 4096 tokens x 2 sequences x 2 bytes
    assert kv_cache_bytes(shape, 4096, 2, "fp16") == 2 * 32 * 8 * 128 * 4096 * 2 * 2
    p = make_plan(params="7B", dtype="int8", layers=32, hidden=4096, heads=32, kv_heads=8, context=4096, batch=2, card_memory="8GB")
    assert p.kv_dtype == "fp16"  # integer weights keep a float cache
    assert p.total_bytes == 7e9 + 2 * 32 * 8 * 128 * 4096 * 2 * 2
    assert p.cards_for_weights == 1 and p.cards == math.ceil(p.total_bytes / 8e9) == 2
    with pytest.raises(InputError, match="KV cache needs the layers"):
        make_plan(params="7B", context=1024)


def _write_model(folder: Path, shapes: dict[str, list[int]]) -> Path:
    folder.mkdir()
    cfg = {"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1}
    (folder / "config.json").write_text(json.dumps(cfg))
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)
    return folder


def test_a_local_model_folder(tmp_path: Path) -> None:
    folder = _write_model(tmp_path / "m", {"embed": [10, 8], "layer0": [8, 8], "layer1": [8, 8]})
    shape = read_model_shape(str(folder))
    assert shape.params == 80 + 64 + 64 and (shape.layers, shape.hidden, shape.heads, shape.kv_heads) == (2, 8, 2, 1)
    p = make_plan(model=str(folder), dtype="fp32", context=10, batch=1)
    assert p.weights_bytes == 208 * 4 and p.kv_cache_bytes == 2 * 2 * (1 * 4) * 10 * 1 * 4
    assert make_plan(model=str(folder / "config.json"), params="1B").params == 1e9  # the flag wins
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no safetensors weights to count"):
        make_plan(model=str(folder))
    with pytest.raises(InputError, match="not a local Hugging Face folder"):
        make_plan(model=str(tmp_path / "nope"))


def test_training_days_and_carbon() -> None:
    assert training_flops(7e9, 1e12) == 4.2e22
    p = make_plan(params="7B", train_tokens="1T", devices=64, peak_flops="312T", utilisation=0.4, power_w=400, pue=1.2, grid_g_per_kwh=500, embodied_kg=100, lifetime_years=4)
    assert p.training is not None and p.carbon is not None
    seconds = 4.2e22 / (64 * 312e12 * 0.4)
    assert p.training["days"] == pytest.approx(seconds / 86400)
    hours = seconds / 3600
    assert p.carbon["energy_kwh"] == pytest.approx(64 * 400 * hours / 1000 * 1.2)
    assert p.carbon["operational_kg"] == pytest.approx(p.carbon["energy_kwh"] * 0.5)
    assert p.carbon["embodied_kg"] == pytest.approx(64 * 100 * hours / (4 * 365 * 24))
    assert p.carbon["total_kg"] == pytest.approx(p.carbon["operational_kg"] + p.carbon["embodied_kg"])
    # devices default to the cards the memory needs
    assert make_plan(params="65B", dtype="int8", card_memory="230MB", train_tokens="1T", peak_flops="1P").training["devices"] == 283  # type: ignore[index]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "parameter count is unknown"),
        ({"params": "7B", "dtype": "fp8"}, "dtype 'fp8' is not one of"),
        ({"params": "7B", "train_tokens": "1T"}, "give --peak-flops"),
        ({"params": "7B", "train_tokens": "1T", "peak_flops": "1P", "utilisation": 1.5}, "--utilisation must be in"),
        ({"params": "7B", "train_tokens": "1T", "peak_flops": "1P", "devices": 0}, "--devices must be at least 1"),
        ({"params": "7B", "batch": 0}, "--batch at least 1"),
        ({"params": "7B", "layers": 0}, "--layers must be at least 1"),
        ({"params": "7B", "pue": 0.5}, "--pue must be >= 1"),
    ],
)
def test_bad_input(kw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        make_plan(**kw)


def _ragkit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("RAGKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ragkit.cli", *args], check=False, env=env, capture_output=True, text=True, timeout=60)


def test_plan_command() -> None:
    out = _ragkit("plan", "--params", "65B", "--dtype", "fp16")
    assert out.returncode == 0 and "weights (fp16): 130.00 GB" in out.stdout
    out = _ragkit("plan", "--params", "65B", "--dtype", "int8", "--card-memory", "230MB")
    assert out.returncode == 0 and "cards of 230.00 MB: 283" in out.stdout
    js = json.loads(_ragkit("plan", "--params", "65B", "--dtype", "int8", "--card-memory", "230MB", "--json").stdout)
    assert js["cards"] == 283 and js["weights_bytes"] == 65e9
    bad = _ragkit("plan", "--params", "lots")
    assert bad.returncode == 2 and "--params: 'lots' is not a number" in bad.stderr and "Traceback" not in bad.stderr
