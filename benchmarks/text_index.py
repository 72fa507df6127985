"""ragkit's FAISS index and embedding against the raw libraries, on the same data, in one run.

* search: ``VectorIndex.search_vectors`` (FAISS + typed Passage objects) against ``faiss_index.search``
  on the very same FAISS index, for already-embedded queries; reported as ragkit's overhead.
* embedding: ``embed_texts`` (ragkit's batched embedding through ``SentenceEmbedder``) against
  ``SentenceTransformer.encode`` with the same batch size; reported as ragkit's share of the raw
  throughput.

Usage::

    python benchmarks/text_index.py                  # HotpotQA corpus + a synthetic 100k-vector index
    python benchmarks/text_index.py --synthetic 0    # the corpus only

Writes ``benchmarks/results/text_index.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best_of(fn: Any, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hotpotqa"))
    ap.add_argument("--synthetic", type=int, default=100_000, help="vectors in the synthetic index (0: skip)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--embed-texts", type=int, default=512, help="texts embedded in the throughput comparison")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_index.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ragkit.ingest import embed_texts, read_corpus
    from ragkit.ingest.chunking import embedding_text
    from ragkit.models.embedder import SentenceEmbedder
    from ragkit.stores.vector import VectorIndex
    from ragkit.testing import HashingEmbedder

    result: dict[str, Any] = {"benchmark": "text_index", "search": {}, "command": "python benchmarks/text_index.py"}
    emb = SentenceEmbedder()
    index = VectorIndex(embedder=emb, corpus=str(Path(args.data) / "corpus.jsonl"))
    index.warm_up()
    docs = read_corpus(Path(args.data) / "corpus.jsonl")
    rng = np.random.default_rng(0)

    def compare(name: str, idx: VectorIndex, queries: Any) -> None:
        raw = idx.faiss_index
        t_raw = best_of(lambda: raw.search(queries, args.k))
        t_rk = best_of(lambda: idx.search_vectors(queries, args.k))
        result["search"][name] = {
            "vectors": int(raw.ntotal),
            "queries": len(queries),
            "raw_faiss_ms_per_query": round(1000 * t_raw / len(queries), 4),
            "ragkit_ms_per_query": round(1000 * t_rk / len(queries), 4),
            "overhead": round(t_rk / t_raw - 1, 4),
        }

    q = emb.embed([d.title for d in docs[: args.queries]])
    compare(f"{Path(args.data).name} ({index.kind_used})", index, q)
    if args.synthetic:
        d = 384
        syn = VectorIndex(embedder=HashingEmbedder(dimension=d), kind="flat")
        vecs = rng.standard_normal((args.synthetic, d)).astype("float32")
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        syn.warm_up()
        from ragkit.ingest.chunking import Chunk

        with syn._lock:  # bulk-load precomputed vectors: embedding 100k texts is not what is measured
            syn._add_vectors([Chunk(id=f"s{i}", doc_id=f"s{i}", text="") for i in range(args.synthetic)], vecs)
        compare(f"synthetic {args.synthetic} (flat)", syn, vecs[: args.queries])

    texts = [embedding_text(doc.title, doc.text) for doc in docs[: args.embed_texts]]
    st = emb.st_model
    emb.embed(texts[:32])  # warm the model
    t_raw = best_of(lambda: st.encode(texts, batch_size=emb.batch_size, normalize_embeddings=True, convert_to_numpy=True), repeat=2)
    t_rk = best_of(lambda: embed_texts(emb, texts, batch_size=emb.batch_size, progress=False), repeat=2)
    result["embedding"] = {
        "texts": len(texts),
        "raw_sentence_transformers_texts_per_s": round(len(texts) / t_raw, 1),
        "ragkit_texts_per_s": round(len(texts) / t_rk, 1),
        "ragkit_share_of_raw": round(t_raw / t_rk, 4),
    }
    result["machine"] = {"torch_threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, r in result["search"].items():
        print(f"search {name}: raw {r['raw_faiss_ms_per_query']} ms/q, ragkit {r['ragkit_ms_per_query']} ms/q, overhead {r['overhead']:+.1%}")
    e = result["embedding"]
    print(
        f"embedding: raw {e['raw_sentence_transformers_texts_per_s']} texts/s, ragkit {e['ragkit_texts_per_s']} texts/s ({e['ragkit_share_of_raw']:.1%} of raw)"
    )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
