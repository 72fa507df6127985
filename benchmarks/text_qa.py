"""End-to-end text QA: ``pipelines/text_rag.yaml`` on a text QA folder, scored by ``evaluate_textqa``.

Reports recall@k of the passages put in the prompt, answer exact match and token F1 (SQuAD
normalisation) with the bundled SmolLM2-135M-Instruct, abstention figures, latency and TTFT.

Usage::

    python benchmarks/text_qa.py --limit 30          # about 5 s a question on 2 CPU cores
    python benchmarks/text_qa.py --data fixtures/text

Writes ``benchmarks/results/text_qa_<dataset>.json`` and the predictions next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hotpotqa"))
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines" / "text_rag.yaml"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    import yaml

    import ragkit.stages.rerankers.confidence  # noqa: F401  (registers the stage types until they are built-ins)
    import ragkit.stages.retrievers.text  # noqa: F401
    from ragkit import Pipeline
    from ragkit.eval.textqa import evaluate_textqa

    data = Path(args.data)
    spec = yaml.safe_load(Path(args.pipeline).read_text(encoding="utf-8"))
    corpus = data / "corpus.jsonl" if (data / "corpus.jsonl").is_file() else next(data.glob("*corpus*.jsonl"))
    spec["resources"]["index"]["corpus"] = str(corpus)
    if args.threads:
        spec["resources"]["llm"]["threads"] = args.threads
    pipe = Pipeline.from_dict(spec, source=args.pipeline)
    out_dir = ROOT / "benchmarks" / "results"
    preds = out_dir / f"text_qa_{data.name}_predictions.jsonl"
    summary = evaluate_textqa(pipe, data, preds, limit=args.limit)
    summary.update(
        dataset=data.name, pipeline=str(Path(args.pipeline).name), command="python benchmarks/text_qa.py" + (f" --limit {args.limit}" if args.limit else "")
    )
    (out_dir / f"text_qa_{data.name}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
