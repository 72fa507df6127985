"""Text QA evaluation: retrieval recall@k, MRR and nDCG of supporting passages; answer exact match and
token F1 (SQuAD normalisation); abstention rate, precision and recall on unanswerable questions.

The dataset folder has the text QA layout of ``../shared/data/README.md``: ``questions.jsonl`` with
``{"id", "question", "answers": [str, ...], "supporting": [corpus id, ...]}``; an empty ``answers``
list marks a question the corpus does not answer.

The pipeline must take a ``question`` input and give an ``answer`` output; it may also give
``passages`` (or ``retrieved``: a list of :class:`~ragkit.stores.vector.Passage` or of ids) and
``abstained`` (bool). Retrieved chunk ids are mapped to their documents' ids, first occurrence first.

Example:
    >>> from ragkit.eval.textqa import exact_match, token_f1, recall_at_k
    >>> exact_match("The Eiffel Tower!", ["eiffel tower"]), round(token_f1("in Paris, France", ["Paris"]), 2)
    (1.0, 0.5)
    >>> recall_at_k(["d3", "d1", "d9"], ["d1", "d2"], k=2)
    0.5
"""

from __future__ import annotations

import json
import logging
import math
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragkit.core.jsonl import json_lines
from ragkit.errors import InputError, RagkitError

logger = logging.getLogger(__name__)

__all__ = [
    "normalize_answer",
    "exact_match",
    "token_f1",
    "recall_at_k",
    "reciprocal_rank",
    "ndcg_at_k",
    "abstention_metrics",
    "read_textqa",
    "evaluate_textqa",
    "summarize",
    "withhold_evidence",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best token-overlap F1 between the prediction and any gold answer (SQuAD's definition)."""
    best = 0.0
    pt = normalize_answer(prediction).split()
    for g in golds:
        gt = normalize_answer(g).split()
        if not pt or not gt:
            best = max(best, float(pt == gt))
            continue
        common = sum((Counter(pt) & Counter(gt)).values())
        if common:
            prec, rec = common / len(pt), common / len(gt)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def recall_at_k(retrieved: Sequence[str], supporting: Sequence[str], k: int) -> float:
    """Share of the supporting ids found in the first ``k`` retrieved ids (nan with no supporting ids)."""
    if not supporting:
        return math.nan
    return len(set(retrieved[:k]) & set(supporting)) / len(set(supporting))


def reciprocal_rank(retrieved: Sequence[str], supporting: Sequence[str]) -> float:
    """1 / rank of the first supporting id retrieved (0 when none is; nan with no supporting ids)."""
    if not supporting:
        return math.nan
    sup = set(supporting)
    return next((1.0 / r for r, i in enumerate(retrieved, 1) if i in sup), 0.0)


def ndcg_at_k(retrieved: Sequence[str], supporting: Sequence[str], k: int) -> float:
    """Binary-relevance nDCG of the first ``k`` retrieved ids (nan with no supporting ids)."""
    if not supporting:
        return math.nan
    sup = set(supporting)
    dcg = sum(1.0 / math.log2(r + 1) for r, i in enumerate(retrieved[:k], 1) if i in sup)
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(k, len(sup)) + 1))
    return dcg / ideal


def abstention_metrics(abstained: Sequence[bool], answerable: Sequence[bool]) -> dict[str, float]:
    """Abstention on unanswerable questions: rate (= recall), precision, and the rate on answerable ones."""
    pairs = list(zip(abstained, answerable))
    n_un = sum(1 for _, a in pairs if not a)
    n_abs = sum(1 for ab, _ in pairs if ab)
    hit = sum(1 for ab, a in pairs if ab and not a)
    n_ans = len(pairs) - n_un
    return {
        "rate": hit / n_un if n_un else math.nan,
        "precision": hit / n_abs if n_abs else math.nan,
        "recall": hit / n_un if n_un else math.nan,
        "rate_on_answerable": sum(1 for ab, a in pairs if ab and a) / n_ans if n_ans else math.nan,
    }


def read_textqa(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """The questions of a text QA folder, checked (a bad line raises :class:`InputError` naming it)."""
    path = Path(dataset_dir) / "questions.jsonl"
    if not path.is_file():
        raise InputError(f"{path} does not exist (a text QA folder holds questions.jsonl and corpus.jsonl)")
    out = []
    for n, row in json_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answers", []), list):
            raise InputError(f"{path}:{n}: needs 'id', 'question', 'answers' (a list) and 'supporting' (a list)")
        row.setdefault("id", f"q{n}")
        row.setdefault("supporting", [])
        out.append(row)
    return out


def withhold_evidence(dataset_dir: str | Path, out_dir: str | Path, every: int = 2) -> Path:
    """Make an abstention test set: every ``every``-th question loses its supporting passages.

    Writes ``corpus.jsonl`` without the supporting documents of questions ``every - 1``,
    ``2 * every - 1``... (0-based), and ``questions.jsonl`` in which those questions have
    ``answers: []`` and no supporting ids: the corpus no longer answers them, though it still names
    their entities in other passages. Documents that also support a kept question stay, and a
    question keeping any of its documents is left answerable. Returns ``out_dir``.
    """
    if every < 2:
        raise InputError("every must be at least 2 (every question unanswerable leaves nothing to answer)")
    src, out = Path(dataset_dir), Path(out_dir)
    items = read_textqa(src)
    corpus = src / "corpus.jsonl"
    if not corpus.is_file():
        raise InputError(f"{corpus} does not exist (a text QA folder holds questions.jsonl and corpus.jsonl)")
    chosen = {i for i in range(every - 1, len(items), every) if items[i].get("supporting")}
    kept_support = {d for i, it in enumerate(items) if i not in chosen for d in it.get("supporting", [])}
    removed = {d for i in chosen for d in items[i]["supporting"] if d not in kept_support}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for line in corpus.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line).get("id") not in removed:
                f.write(line + "\n")
    with (out / "questions.jsonl").open("w", encoding="utf-8") as f:
        for i, it in enumerate(items):
            if i in chosen and set(it["supporting"]) <= removed:
                it = {**it, "answers": [], "supporting": []}
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    return out


def _doc_ids(retrieved: Any) -> list[str]:
    ids: list[str] = []
    for r in retrieved or []:
        i = getattr(r, "doc_id", None) or getattr(r, "id", None) or (r if isinstance(r, str) else None)
        if i is not None and i not in ids:
            ids.append(str(i))
    return ids


def _retrieved(result: Any) -> list[str]:
    for key in ("retrieved", "passages"):
        if key in result.outputs:
            return _doc_ids(result.outputs[key])
    for out in reversed(list(result.stage_outputs.values())):  # the last stage that produced passages
        if hasattr(out, "passages"):
            return _doc_ids(out.passages)
    return []


def evaluate_textqa(
    pipeline: Any,
    dataset_dir: str | Path,
    predictions_path: str | Path,
    limit: int | None = None,
    *,
    ks: Sequence[int] = (1, 2, 5, 10),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run ``pipeline`` on every question of a text QA folder; write predictions; return the metrics.

    Each prediction line is ``{"id", "answer", "abstained", "retrieved": [ids], "timings", "tokens",
    "stages"}``. Items already in ``predictions_path`` are not run again: an interrupted run resumes
    where it stopped (a line cut by the interrupt is dropped and its item runs again).

    Args:
        pipeline: a :class:`~ragkit.core.pipeline.Pipeline` with a ``question`` input and an ``answer`` output.
        dataset_dir: the folder holding ``questions.jsonl``.
        predictions_path: the JSON Lines predictions file (appended to; finished items are kept).
        limit: evaluate only the first ``limit`` questions.
        ks: the cut-offs of recall@k and nDCG@k.
        progress: called with (done, total) before the first item and after each one.
    """
    from ragkit.eval.kgqa import finished_predictions
    from ragkit.tokenomics.costs import stage_records

    items = read_textqa(dataset_dir)[: limit if limit is not None else None]
    out_path = Path(predictions_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = finished_predictions(out_path)
    todo = [it for it in items if it["id"] not in done]
    count = len(items) - len(todo)
    if progress is not None:
        progress(count, len(items))
    if todo:
        pipeline.warm_up()
    with out_path.open("a", encoding="utf-8") as f:
        for item in todo:
            start = time.perf_counter()
            error = None
            try:
                result = pipeline.run(question=item["question"], on_token=lambda _t: None)
            except RagkitError as e:  # one failing item must not end the run
                error, result = f"{type(e).__name__}: {e}", None
            trace = result.trace if result is not None else None
            answer = result.outputs.get("answer", "") if result is not None else ""
            answer = getattr(answer, "text", answer)
            pred = {
                "id": item["id"],
                "answer": str(answer or ""),
                "abstained": bool(result.outputs.get("abstained", False)) if result is not None else False,
                "retrieved": _retrieved(result) if result is not None else [],
                "timings": {
                    "total": round(time.perf_counter() - start, 4),
                    "ttft": None if trace is None or trace.ttft is None else round(trace.ttft, 4),
                    "stages": {s.name: round(s.seconds, 4) for s in trace.stages} if trace is not None else {},
                },
                "tokens": {"in": trace.tokens_in if trace else 0, "out": trace.tokens_out if trace else 0},
                "stages": stage_records(trace),
            }
            if error:
                pred["error"] = error
            f.write(json.dumps(pred, ensure_ascii=False) + "\n")
            f.flush()
            done[item["id"]] = pred
            count += 1
            if progress is not None:
                progress(count, len(items))
    return summarize(items, [done[it["id"]] for it in items], ks)


def summarize(items: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]], ks: Sequence[int] = (1, 2, 5, 10)) -> dict[str, Any]:
    """Metrics of ``predictions`` against ``items`` (matched by id)."""
    import statistics

    by_id = {p["id"]: p for p in predictions}
    pairs = [(it, by_id[it["id"]]) for it in items if it["id"] in by_id]

    def mean(xs: list[float]) -> float:
        xs = [x for x in xs if not math.isnan(x)]
        return round(sum(xs) / len(xs), 4) if xs else math.nan

    from ragkit.eval.kgqa import bootstrap_ci

    answerable = [(it, p) for it, p in pairs if it["answers"]]
    with_support = [(it, p) for it, p in pairs if it.get("supporting")]
    out: dict[str, Any] = {"n": len(pairs), "answerable": len(answerable), "unanswerable": len(pairs) - len(answerable)}
    per_item: dict[str, list[float]] = {}
    for k in ks:
        per_item[f"recall@{k}"] = [recall_at_k(p["retrieved"], it["supporting"], k) for it, p in with_support]
    per_item["mrr"] = [reciprocal_rank(p["retrieved"], it["supporting"]) for it, p in with_support]
    per_item[f"ndcg@{max(ks)}"] = [ndcg_at_k(p["retrieved"], it["supporting"], max(ks)) for it, p in with_support]
    # An abstention on an answerable question scores 0: the user got no answer.
    per_item["exact_match"] = [0.0 if p["abstained"] else exact_match(p["answer"], it["answers"]) for it, p in answerable]
    per_item["f1"] = [0.0 if p["abstained"] else token_f1(p["answer"], it["answers"]) for it, p in answerable]
    for name, values in per_item.items():
        out[name] = mean(values)
    # abstention recall: over unanswerable items, did it abstain; precision: over abstentions, was it right to
    per_item["abstention_recall"] = [float(p["abstained"]) for it, p in pairs if not it["answers"]]
    per_item["abstention_precision"] = [float(not it["answers"]) for it, p in pairs if p["abstained"]]
    out["ci"] = {name: [round(x, 4) for x in bootstrap_ci(v)] if v else None for name, v in per_item.items()}
    out["abstention"] = {
        k: (round(v, 4) if not math.isnan(v) else None)
        for k, v in abstention_metrics([p["abstained"] for _, p in pairs], [bool(it["answers"]) for it, _ in pairs]).items()
    }
    totals = [p["timings"]["total"] for _, p in pairs]
    ttfts = [p["timings"]["ttft"] for _, p in pairs if p["timings"].get("ttft") is not None]
    if totals:
        out["latency_s"] = {"mean": round(statistics.fmean(totals), 4), "p50": round(statistics.median(totals), 4), "max": round(max(totals), 4)}
    if ttfts:
        out["ttft_s"] = {"mean": round(statistics.fmean(ttfts), 4), "p50": round(statistics.median(ttfts), 4)}
    out["tokens"] = {"in": sum(p["tokens"]["in"] for _, p in pairs), "out": sum(p["tokens"]["out"] for _, p in pairs)}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
