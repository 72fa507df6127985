"""The semantic cache on the demo pipeline (pipelines/kgqa_sparql.yaml, real SmolLM2 and MiniLM).

    python benchmarks/cache_bench.py

* uncached: each easy fixture question run with the cache bypassed (``use_cache=False``), warm.
* miss: the same question through the cache the first time (lookup + full run + store).
* answer hit: a paraphrase of it, served from the cache (no stage runs). Target: < 5% of uncached.
* query hit: the paraphrase through a query-level cache (``answer: false, query_stage: querygen``):
  query generation and what feeds it are skipped, the query runs and the answer is generated.
* guard: tests/data/semantic_cache_pairs.jsonl with MiniLM at the default threshold: near-duplicates
  with another meaning served (must be 0), paraphrase hit rate, and how many near-duplicates the
  embedding alone would have served.

Writes benchmarks/results/cache.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Paraphrases of the easy fixture questions (written for this benchmark).
PARAPHRASES = {
    "Who wrote Cold Water Gospel?": "Who is the author of Cold Water Gospel?",
    "Who wrote Ember and Ivy?": "Who was Ember and Ivy written by?",
    "In which city was Osric Penhallow born?": "Which city was Osric Penhallow born in?",
    "In which city was Tamsin Greel born?": "What city was Tamsin Greel born in?",
    "Which publisher published The Ninth Cipher?": "Who was the publisher of The Ninth Cipher?",
    "Which publisher published What the Tide Kept?": "What publisher published What the Tide Kept?",
    "In which country is Lirria?": "Which country is Lirria in?",
}


def _spec(cache_path: Path, cache: dict[str, Any]) -> dict[str, Any]:
    spec = yaml.safe_load((ROOT / "pipelines/kgqa_sparql.yaml").read_text())
    spec["resources"]["qa_cache"] = {"type": "semantic_cache", "embedder": "embedder", "store": "graph", "path": str(cache_path)}
    spec["cache"] = {"resource": "qa_cache", **cache}
    return spec


def _ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 2)


def guard_figures() -> dict[str, Any]:
    from ragkit.models.embedder import SentenceEmbedder
    from ragkit.stages.cache.semantic import SemanticCache

    pairs = [json.loads(x) for x in (ROOT / "tests/data/semantic_cache_pairs.jsonl").read_text().splitlines() if x.strip()]
    emb = SentenceEmbedder(device="cpu")
    guarded = SemanticCache(embedder=emb)
    bare = SemanticCache(embedder=emb, guard=False)
    served = would_serve = hits = 0
    same = [p for p in pairs if p["same_meaning"]]
    for i, p in enumerate(pairs):
        for c in (guarded, bare):
            c.put(p["a"], {"a": p["a"]}, kind="answer", namespace=f"p{i}")
        hit = guarded.lookup(p["b"], kind="answer", namespace=f"p{i}").hit
        if p["same_meaning"]:
            hits += hit
        else:
            served += hit
            would_serve += bare.lookup(p["b"], kind="answer", namespace=f"p{i}").hit
    diff = len(pairs) - len(same)
    return {
        "threshold": guarded.threshold,
        "near_duplicates": diff,
        "near_duplicates_served": served,
        "near_duplicates_served_without_guard": would_serve,
        "paraphrases": len(same),
        "paraphrase_hits": hits,
        "paraphrase_hit_rate": round(hits / len(same), 4),
    }


def main() -> None:
    from ragkit import Pipeline

    questions = list(PARAPHRASES)
    with tempfile.TemporaryDirectory(prefix="ragkit-cache-bench-") as tmp:
        pipe = Pipeline.from_dict(_spec(Path(tmp) / "answers.sqlite", {"query_stage": "querygen"}))
        pipe.warm_up()
        pipe.run({"question": questions[0]}, use_cache=False)  # one-off costs (kernel selection, caches)
        uncached, miss, hit, hit_kinds, first_errors = [], [], [], [], 0
        answers_equal = 0
        for q in questions:
            t = time.perf_counter()
            base = pipe.run({"question": q}, use_cache=False)
            uncached.append(time.perf_counter() - t)
            t = time.perf_counter()
            first = pipe.run({"question": q})
            miss.append(time.perf_counter() - t)
            first_errors += bool(first.outputs.get("error"))  # runs with an error output are not cached
            t = time.perf_counter()
            again = pipe.run({"question": PARAPHRASES[q]})
            hit.append(time.perf_counter() - t)
            hit_kinds.append(again.trace.stages[0].extra.get("served", "none"))
            answers_equal += again.outputs.get("answer") == first.outputs.get("answer")
            del base
        stats = pipe.resources["qa_cache"].stats()  # type: ignore[attr-defined]
        pipe.close()

        qpipe = Pipeline.from_dict(_spec(Path(tmp) / "queries.sqlite", {"answer": False, "query_stage": "querygen"}))
        qpipe.warm_up()
        qhit, qkinds = [], []
        for q in questions:
            qpipe.run({"question": q})
            t = time.perf_counter()
            r = qpipe.run({"question": PARAPHRASES[q]})
            qhit.append(time.perf_counter() - t)
            qkinds.append(r.trace.stages[0].extra.get("served", "none"))
        qpipe.close()

    ratio = statistics.median(hit) / statistics.median(uncached)
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), "load_average_at_end": os.getloadavg()},
        "pipeline": "pipelines/kgqa_sparql.yaml + semantic_cache (SmolLM2-135M, all-MiniLM-L6-v2)",
        "questions": len(questions),
        "uncached_p50_ms": _ms(uncached),
        "miss_p50_ms": _ms(miss),
        "answer_hit_p50_ms": _ms(hit),
        "answer_hits": hit_kinds.count("answer"),
        "first_runs_with_error": first_errors,
        "answer_hit_equals_first_answer": answers_equal,
        "hit_over_uncached": round(ratio, 4),
        "hit_under_5_percent": ratio < 0.05,
        "query_hit_p50_ms": _ms(qhit),
        "query_hits": qkinds.count("query"),
        "cache_stats": stats,
        "guard": guard_figures(),
    }
    (ROOT / "benchmarks/results").mkdir(exist_ok=True)
    (ROOT / "benchmarks/results/cache.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
