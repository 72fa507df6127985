"""Text retrieval on a text QA folder (default ../shared/data/hotpotqa): recall@k of supporting passages.

Compares, on the same MiniLM FAISS index:

* dense (MiniLM cosine), BM25 (bm25s), hybrid (reciprocal-rank fusion of both),
* hybrid + the confidence reranker (bi-encoder backend: calibrated probabilities, coverage-aware
  selection with bridge links), and its ablations,
* optionally hybrid + the query-likelihood backend with the bundled SmolLM2 (``--ql``, slow on CPU).

Calibration is measured honestly: a Platt calibration is fitted on one half of the questions and
evaluated (Brier score, ECE) on the other half, and vice versa; the reported numbers are the pooled
out-of-fold ones. No parameter is fitted on the retrieval figures.

Usage::

    python benchmarks/text_retrieval.py                       # ~3-4 min on 2 CPU cores (first run embeds the corpus)
    python benchmarks/text_retrieval.py --ql --limit 40       # adds query likelihood (about 15 s a question on CPU)

Writes ``benchmarks/results/text_retrieval.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def doc_ids(passages: list[Any]) -> list[str]:
    out: list[str] = []
    for p in passages:
        if p.doc_id not in out:
            out.append(p.doc_id)
    return out


def _memo(fn: Any) -> Any:
    cache: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    def wrapped(question: str, passages: list[Any]) -> list[float]:
        key = (question, tuple(p.id for p in passages))
        if key not in cache:
            cache[key] = fn(question, passages)
        return cache[key]

    return wrapped


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hotpotqa"), help="a text QA folder (corpus.jsonl + questions.jsonl)")
    ap.add_argument("--limit", type=int, default=None, help="first N questions only")
    ap.add_argument("--candidates", type=int, default=20, help="hybrid passages given to the reranker")
    ap.add_argument("--ql", action="store_true", help="also rerank with query likelihood under the bundled SmolLM2")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_retrieval.json"))
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from ragkit.eval.textqa import ndcg_at_k, read_textqa, recall_at_k, reciprocal_rank
    from ragkit.models.embedder import SentenceEmbedder
    from ragkit.stages.rerankers.calibration import (
        brier_score,
        expected_calibration_error,
    )
    from ragkit.stages.rerankers.confidence import ConfidenceReranker, fit_calibration
    from ragkit.stages.retrievers.text import (
        BM25Retriever,
        DenseRetriever,
        HybridRetriever,
    )
    from ragkit.stores.vector import VectorIndex

    data = Path(args.data)
    items = [q for q in read_textqa(data) if q.get("supporting")][: args.limit]
    emb = SentenceEmbedder()
    t0 = time.perf_counter()
    index = VectorIndex(embedder=emb, corpus=str(data / "corpus.jsonl"))
    index.warm_up()
    index_s = time.perf_counter() - t0
    print(f"index: {len(index)} chunks, {index.kind_used}, ready in {index_s:.1f} s", file=sys.stderr)

    dense = DenseRetriever(index=index, top_k=50)
    bm25 = BM25Retriever(index=index, top_k=50)
    hybrid = HybridRetriever(index=index, top_k=args.candidates, fetch_k=50)
    rerankers: dict[str, ConfidenceReranker] = {
        "hybrid + rerank (bi-encoder)": ConfidenceReranker(embedder=emb, index=index, top_k=10, candidates=args.candidates),
        "  without coverage/bridge": ConfidenceReranker(
            embedder=emb, index=index, top_k=10, candidates=args.candidates, coverage_weight=0, redundancy_weight=0, bridge_weight=0
        ),
        "  without bridge links": ConfidenceReranker(embedder=emb, index=index, top_k=10, candidates=args.candidates, bridge_weight=0),
        "  + retrieval prior 0.5": ConfidenceReranker(embedder=emb, index=index, top_k=10, candidates=args.candidates, retrieval_weight=0.5),
    }
    if args.ql:
        from ragkit.models.llm import LocalLLM

        rerankers["hybrid + rerank (query likelihood)"] = ConfidenceReranker(backend="query_likelihood", llm=LocalLLM(), top_k=10, candidates=args.candidates)

    for rr in rerankers.values():  # score each (question, pool) once: the calibration below reuses the scores
        rr.raw_scores = _memo(rr.raw_scores)  # type: ignore[method-assign]
    runs: dict[str, list[list[str]]] = {name: [] for name in ["dense (MiniLM)", "BM25", "hybrid (RRF)", *rerankers]}
    seconds: dict[str, float] = dict.fromkeys(runs, 0.0)
    pools = []
    for n, q in enumerate(items):
        for name, stage in (("dense (MiniLM)", dense), ("BM25", bm25), ("hybrid (RRF)", hybrid)):
            t = time.perf_counter()
            got = stage.run(question=q["question"]).passages
            seconds[name] += time.perf_counter() - t
            runs[name].append(doc_ids(got))
            if stage is hybrid:
                pool = got
        pools.append((q["question"], pool, q["supporting"]))
        for name, rr in rerankers.items():
            t = time.perf_counter()
            out = rr.run(question=q["question"], passages=pool)
            seconds[name] += time.perf_counter() - t
            runs[name].append(doc_ids(out.passages))
        if (n + 1) % 20 == 0:
            print(f"{n + 1}/{len(items)} questions", file=sys.stderr)

    rows = {}
    for name, lists in runs.items():
        sup = [q["supporting"] for q in items]
        rows[name] = {
            "recall@2": round(sum(recall_at_k(r, s, 2) for r, s in zip(lists, sup)) / len(items), 4),
            "recall@5": round(sum(recall_at_k(r, s, 5) for r, s in zip(lists, sup)) / len(items), 4),
            "recall@10": round(sum(recall_at_k(r, s, 10) for r, s in zip(lists, sup)) / len(items), 4),
            "mrr": round(sum(reciprocal_rank(r, s) for r, s in zip(lists, sup)) / len(items), 4),
            "ndcg@10": round(sum(ndcg_at_k(r, s, 10) for r, s in zip(lists, sup)) / len(items), 4),
            "ms_per_question": round(1000 * seconds[name] / len(items), 1),
        }

    # Calibration, out of fold: fit on one half, measure on the other.
    calib: dict[str, Any] = {}
    for bname, rr in [(k, v) for k, v in rerankers.items() if not k.startswith("  ")]:
        halves = [pools[0::2], pools[1::2]]
        probs, labels, default_probs = [], [], []
        for fit_on, test_on in ((halves[0], halves[1]), (halves[1], halves[0])):
            cal = fit_calibration(rr, fit_on, method="platt")
            for question, pool, sup in test_on:
                raw = rr.raw_scores(question, pool[: rr.candidates])
                probs.extend(cal.predict(raw).tolist())
                default_probs.extend(rr.calibrator.predict(raw).tolist())
                labels.extend(int(p.doc_id in sup) for p in pool[: rr.candidates])
        full = fit_calibration(rr, pools, method="platt", note=f"{data.name}: all {len(pools)} questions, hybrid top-{args.candidates}")
        path = Path(args.out).with_name(f"calibration_{rr.backend}_{data.name}.json")
        full.save(path)
        calib[bname] = {
            "uncalibrated_default": {"brier": round(brier_score(default_probs, labels), 4), "ece": round(expected_calibration_error(default_probs, labels), 4)},
            "platt_out_of_fold": {"brier": round(brier_score(probs, labels), 4), "ece": round(expected_calibration_error(probs, labels), 4)},
            "pairs": len(labels),
            "positives": int(sum(labels)),
            "artifact": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        }

    result = {
        "benchmark": "text_retrieval",
        "dataset": data.name,
        "questions": len(items),
        "index": {"chunks": len(index), "kind": index.kind_used, "seconds_to_ready": round(index_s, 1)},
        "candidates": args.candidates,
        "results": rows,
        "calibration": calib,
        "command": "python benchmarks/text_retrieval.py" + (" --ql" if args.ql else "") + (f" --limit {args.limit}" if args.limit else ""),
        "machine": {"python": platform.python_version(), "torch_threads": torch.get_num_threads(), "cpu": platform.machine()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    width = max(len(k) for k in rows) + 2
    print(f"\n{'retriever':<{width}}{'R@2':>7}{'R@5':>7}{'R@10':>7}{'MRR':>7}{'nDCG@10':>9}{'ms/q':>8}")
    for name, r in rows.items():
        print(
            f"{name:<{width}}{r['recall@2']:>7.3f}{r['recall@5']:>7.3f}{r['recall@10']:>7.3f}{r['mrr']:>7.3f}{r['ndcg@10']:>9.3f}{r['ms_per_question']:>8.1f}"
        )
    for name, c in calib.items():
        print(
            f"calibration {name.strip()}: Brier {c['uncalibrated_default']['brier']} -> {c['platt_out_of_fold']['brier']} (out of fold), ECE {c['uncalibrated_default']['ece']} -> {c['platt_out_of_fold']['ece']}"
        )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
