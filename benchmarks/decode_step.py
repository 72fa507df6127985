"""Time of one decoding step of ``local_llm`` by batch rows, with each attention implementation.

A step feeds one token to each of ``rows`` rows whose key/value cache holds ``--context`` positions
(about a Spider query prompt: instructions and schema). Two layouts: ``padded``, every other row
left-padded by 16 positions as in a continuous batch (an attention mask is passed), and ``aligned``, no
padding (one row alone, or rows of one length: transformers passes no mask). ``auto`` is ragkit's
decoding attention on a CPU in bf16 (:mod:`ragkit.models.attention`); ``sdpa`` is transformers' own.

Usage::

    python benchmarks/decode_step.py                       # bundled SmolLM2-135M, 2 threads, about 1 minute
    python benchmarks/decode_step.py --rows 1,8 --context 2000 --model path/to/hf-folder

Writes ``benchmarks/results/decode_step.json``: the median step time and the tokens a second, by
attention and rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_times(llm: Any, rows: int, context: int, steps: int, padded: bool) -> list[float]:
    """Seconds of each of ``steps`` forward passes of one token over ``rows`` rows."""
    import torch
    from transformers import DynamicCache

    from ragkit.models.llm import cache_keyword

    model = llm.hf_model
    ids = torch.randint(100, min(30000, model.config.vocab_size), (1, context), generator=torch.Generator().manual_seed(0))
    cache, kw = DynamicCache(config=model.config), cache_keyword(model)
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, **{kw: cache})
        cache.batch_repeat_interleave(rows)
        mask = torch.ones(rows, context, dtype=torch.long)
        if padded:
            mask[::2, :16] = 0  # left padding in every other row
        pos = torch.full((rows, 1), context - 1) - (1 - mask[:, :1]) * 16
        nxt = ids[:, -1:].repeat(rows, 1)
        out = []
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            pos = pos + 1
            start = time.perf_counter()
            logits = model(input_ids=nxt, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: cache}).logits
            nxt = logits[:, -1].float().argmax(-1, keepdim=True)
            out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a HF folder or .gguf file (default: the bundled SmolLM2-135M)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--context", type=int, default=1000, help="positions in each row's cache")
    p.add_argument("--rows", default="1,4,8,16", help="batch rows to time, comma-separated")
    p.add_argument("--steps", type=int, default=14, help="steps timed per setting (the first 2 are warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/decode_step.json"))
    args = p.parse_args(argv)

    from ragkit.models.llm import LocalLLM

    rows = [int(r) for r in args.rows.split(",")]
    results: list[dict[str, Any]] = []
    for attention in ("sdpa", "auto"):
        llm = LocalLLM(model=args.model, dtype=args.dtype, attention=attention, threads=args.threads)
        llm.warm_up()
        implementation = llm.hf_model.config._attn_implementation
        for layout in ("padded", "aligned"):
            for n in rows:
                if layout == "padded" and n == 1:
                    continue
                median = statistics.median(step_times(llm, n, args.context, args.steps, layout == "padded")[2:])
                results.append(
                    {
                        "attention": attention,
                        "implementation": implementation,
                        "layout": layout,
                        "rows": n,
                        "step_ms": round(median * 1000, 1),
                        "tokens_per_s": round(n / median, 1),
                    }
                )
                print(f"{attention:5s} ({implementation}) {layout:7s} rows {n:2d}: {median * 1000:6.1f} ms a step, {n / median:6.1f} tokens/s", flush=True)
    report = {"model": args.model or "bundled SmolLM2-135M-Instruct", "dtype": args.dtype, "context": args.context, "threads": args.threads, "results": results}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
