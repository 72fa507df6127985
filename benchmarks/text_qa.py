"""End-to-end text QA: ``pipelines/text_rag.yaml`` on a text QA folder, scored by ``evaluate_textqa``.

Reports recall@k of the passages put in the prompt, answer exact match and token F1 (SQuAD
normalisation) with the bundled SmolLM2-135M-Instruct, abstention figures, latency and TTFT.

Usage::

    python benchmarks/text_qa.py --limit 30          # about 5 s a question on 2 CPU cores
    python benchmarks/text_qa.py --data fixtures/text
    python benchmarks/text_qa.py --withhold-every 2  # abstention: every 2nd question loses its evidence
    python benchmarks/text_qa.py --set rerank.abstain_threshold=0.3 --set rerank.confidence_method=best_item

``--withhold-every N`` evaluates on a copy of the folder (under ``$RAGKIT_CACHE_DIR/datasets``) in
which every N-th question's supporting passages are removed from the corpus and its answers emptied
(:func:`ragkit.eval.textqa.withhold_evidence`): unanswerable questions that still name entities the
corpus knows. ``--set STAGE.PARAM=VALUE`` overrides a stage parameter (VALUE is read as YAML).

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
    ap.add_argument("--withhold-every", type=int, default=0, help="make every N-th question unanswerable (0: off)")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE.PARAM=VALUE", help="override a stage parameter")
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    args = ap.parse_args(argv)

    import yaml

    import ragkit.stages.rerankers.confidence  # noqa: F401  (registers the stage types until they are built-ins)
    import ragkit.stages.retrievers.text  # noqa: F401
    from ragkit import Pipeline
    from ragkit.eval.textqa import evaluate_textqa, withhold_evidence
    from ragkit.models.llm import cache_dir

    data = Path(args.data)
    if args.withhold_every:
        data = withhold_evidence(data, cache_dir() / "datasets" / f"{data.name}-withheld-{args.withhold_every}", every=args.withhold_every)
    spec = yaml.safe_load(Path(args.pipeline).read_text(encoding="utf-8"))
    stages = {st["name"]: st for st in spec["stages"]}
    for item in args.set:
        key, sep, value = item.partition("=")
        stage, dot, param = key.partition(".")
        if not sep or not dot or stage not in stages:
            ap.error(f"--set {item!r}: write STAGE.PARAM=VALUE with a stage of the pipeline ({', '.join(stages)})")
        stages[stage][param] = yaml.safe_load(value)
    corpus = data / "corpus.jsonl" if (data / "corpus.jsonl").is_file() else next(data.glob("*corpus*.jsonl"))
    spec["resources"]["index"]["corpus"] = str(corpus)
    if args.threads:
        spec["resources"]["llm"]["threads"] = args.threads
    pipe = Pipeline.from_dict(spec, source=args.pipeline)
    out_dir = ROOT / "benchmarks" / "results"
    name = data.name + (f"_{args.tag}" if args.tag else "")
    preds = out_dir / f"text_qa_{name}_predictions.jsonl"
    summary = evaluate_textqa(pipe, data, preds, limit=args.limit)
    summary.update(
        dataset=data.name, pipeline=str(Path(args.pipeline).name), overrides=args.set, command="python benchmarks/text_qa.py " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    (out_dir / f"text_qa_{name}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
