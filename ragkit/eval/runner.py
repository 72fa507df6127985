"""One evaluation of a pipeline file on a dataset folder of either layout, with its tokenomics.

:func:`evaluate_pipeline` picks the scorer from the folder (``corpus.jsonl``: text QA, else KGQA),
runs it inside an :class:`~ragkit.tokenomics.carbon.EnergyMeter` when asked, keeps each session's
energy reading beside the predictions (``<predictions>.energy.jsonl``, so a resumed run adds its
sessions up), and returns one JSON-able report: the scorer's own figures, ``metrics`` (every quality
metric as ``{"value", "ci"}``) and ``tokenomics`` (see :func:`ragkit.tokenomics.costs.tokenomics`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragkit.errors import InputError, UserError

logger = logging.getLogger(__name__)

__all__ = ["EvalSettings", "dataset_kind", "evaluate_pipeline", "textqa_pipeline"]


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how to cost it (the ``ragkit eval`` options)."""

    limit: int | None = None
    per_graph: int | None = None
    graphs: list[str] | None = None
    ids: list[str] | None = None
    """KGQA: only these question ids."""
    skip_answer: bool = False
    price_per_hour: float | None = None
    api_prices: dict[str, dict[str, float]] | None = None
    carbon: bool = True
    country_iso_code: str | None = None
    region: str | None = None
    grid_g_per_kwh: float | None = None
    engine: str = "local"
    """KGQA items run ``local``-ly or on ``ray`` (:mod:`ragkit.eval.engines`)."""
    concurrency: int = 1
    """KGQA items of a graph run at once, in threads, their generations batched."""


def dataset_kind(dataset: Path) -> str:
    """``textqa`` for a folder with ``corpus.jsonl``, ``kgqa`` for one with ``graphs/``."""
    if not dataset.is_dir():
        raise InputError(f"dataset folder {dataset} does not exist")
    if (dataset / "corpus.jsonl").is_file():
        return "textqa"
    if (dataset / "graphs").is_dir():
        return "kgqa"
    raise InputError(f"{dataset} is neither a text QA folder (questions.jsonl + corpus.jsonl) nor a KGQA folder (questions.jsonl + graphs/)")


def textqa_pipeline(pipeline_file: Path, dataset: Path) -> Any:
    """The pipeline of ``pipeline_file`` with every corpus-backed resource pointed at the dataset's corpus."""
    from ragkit.core.pipeline import Pipeline

    spec = Pipeline.from_yaml(pipeline_file).to_dict()
    corpus_users = [n for n, r in spec.get("resources", {}).items() if "corpus" in r]
    if not corpus_users:
        raise UserError(
            f"{pipeline_file}: ragkit eval indexes the dataset's corpus.jsonl, but the pipeline has no resource with a 'corpus' "
            "(use a text pipeline, e.g. one with a faiss_index resource)"
        )
    for n in corpus_users:
        spec["resources"][n]["corpus"] = str(dataset / "corpus.jsonl")
        spec["resources"][n].pop("path", None)  # an index built from another corpus must not be reused
    return Pipeline.from_dict(spec, source=str(pipeline_file))


def _metric(value: Any, ci: Any) -> dict[str, Any]:
    return {"value": value, "ci": list(ci) if ci is not None else None}


def _kgqa(pipeline_file: Path, dataset: Path, predictions: Path, s: EvalSettings, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    from ragkit.eval.kgqa import evaluate_kgqa

    rep = evaluate_kgqa(
        pipeline_file,
        dataset,
        predictions,
        limit=s.limit,
        per_graph=s.per_graph,
        graphs=s.graphs,
        ids=s.ids,
        skip_answer=s.skip_answer,
        progress=progress,
        engine=s.engine,
        concurrency=s.concurrency,
    )
    out = rep.to_dict()
    out["metrics"] = {
        "execution_accuracy": _metric(rep.execution_accuracy, rep.execution_accuracy_ci),
        "answer_f1": _metric(rep.answer_f1, rep.answer_f1_ci),
        "valid_query_rate": _metric(rep.valid_query_rate, rep.valid_query_rate_ci),
        "unknown_term_rate": _metric(rep.unknown_term_rate, rep.unknown_term_rate_ci),
    }
    return out


def _textqa(pipeline_file: Path, dataset: Path, predictions: Path, s: EvalSettings, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    from ragkit.eval.textqa import evaluate_textqa

    pipe = textqa_pipeline(pipeline_file, dataset)
    start = time.perf_counter()
    try:
        summary = evaluate_textqa(pipe, dataset, predictions, limit=s.limit, progress=progress)
    finally:
        pipe.close()
    out = {"pipeline": str(pipeline_file), "dataset": str(dataset), "seconds": time.perf_counter() - start, **summary}
    ci = summary.get("ci") or {}
    names = [k for k in summary if k.startswith(("recall@", "ndcg@"))] + ["mrr", "exact_match", "f1"]
    out["metrics"] = {k: _metric(summary.get(k), ci.get(k)) for k in names}
    ab = summary.get("abstention") or {}
    out["metrics"]["abstention_precision"] = _metric(ab.get("precision"), ci.get("abstention_precision"))
    out["metrics"]["abstention_recall"] = _metric(ab.get("recall"), ci.get("abstention_recall"))
    return out


def _rows(predictions: Path, ids: list[str]) -> list[dict[str, Any]]:
    from ragkit.eval.kgqa import finished_predictions

    done = finished_predictions(predictions)
    return [done[i] for i in ids if i in done]


def _selected_ids(kind: str, dataset: Path, s: EvalSettings, predictions: Path) -> list[str]:
    # The ids the scorer evaluated: every finished line of this run's selection.
    if kind == "textqa":
        from ragkit.eval.textqa import read_textqa

        return [it["id"] for it in read_textqa(dataset)][: s.limit]
    from ragkit.eval.kgqa import load_kgqa, select_items

    return [i.id for i in select_items(load_kgqa(dataset), ids=s.ids, graphs=s.graphs, per_graph=s.per_graph, limit=s.limit)]


def evaluate_pipeline(
    pipeline_file: str | Path,
    dataset: str | Path,
    predictions: str | Path,
    settings: EvalSettings | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate one pipeline file on one dataset folder; resume from ``predictions``; cost the run.

    Returns:
        The report: the scorer's figures, ``kind``, ``metrics``, ``tokenomics``, ``predictions``.
    """
    from ragkit.eval.kgqa import finished_predictions
    from ragkit.tokenomics.carbon import EnergyMeter, combine_readings
    from ragkit.tokenomics.costs import read_energy_log, tokenomics

    s = settings or EvalSettings()
    pipeline_file, dataset, predictions = Path(pipeline_file), Path(dataset), Path(predictions)
    kind = dataset_kind(dataset)
    if not pipeline_file.is_file():
        raise InputError(f"pipeline file {pipeline_file} does not exist")
    energy_log = predictions.with_name(predictions.name + ".energy.jsonl")
    before = len(finished_predictions(predictions))
    score = _textqa if kind == "textqa" else _kgqa
    meter = EnergyMeter(s.country_iso_code, s.region, s.grid_g_per_kwh) if s.carbon else None
    if meter is not None:
        try:
            with meter:
                report = score(pipeline_file, dataset, predictions, s, progress)
        finally:
            # An interrupted session keeps its reading too, for the items it wrote before it stopped.
            ran = len(finished_predictions(predictions)) - before
            if ran > 0 and meter.reading is not None:
                meter.reading.items = ran
                energy_log.parent.mkdir(parents=True, exist_ok=True)
                with energy_log.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(meter.reading.to_dict()) + "\n")
    else:
        report = score(pipeline_file, dataset, predictions, s, progress)
    rows = _rows(predictions, _selected_ids(kind, dataset, s, predictions))
    energy = combine_readings(read_energy_log(energy_log)) if s.carbon else None
    report["kind"] = kind
    report["name"] = pipeline_file.stem
    report["predictions"] = str(predictions)
    report["tokenomics"] = tokenomics(rows, price_per_hour=s.price_per_hour, api_prices=s.api_prices, energy=energy)
    return report
