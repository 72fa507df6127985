"""Evaluating a KGQA pipeline file on a dataset folder (the layout of ``shared/data/README.md``).

The pipeline file is run as it is; for each graph of the dataset, the evaluator swaps in

* the graph: the pipeline's file-backed graph store resources get ``path`` = that graph's file;
* the few-shot examples: every example bank resource is rebuilt from the *other* questions of the
  same graph, and, for each test question, examples are hidden when their gold query equals the
  question's (whitespace and case folded) or their gold rows equal its gold rows. Copying the
  nearest example therefore scores zero: the system has to adapt what it retrieves.

* a k-fold adapter set (``local_llm: {adapter: FOLDER}`` where FOLDER holds ``ragkit_folds.json``,
  written by ``ragkit finetune --bank ... --folds K``): each question is answered with the fold's
  adapter that never trained on it nor on its equivalents.

Metrics: execution accuracy (rows equal as multisets of sorted string tuples), answer-set F1 (over
all values), valid-query rate; with bootstrap 95% intervals. Predictions are one JSON line per
question; an interrupted run resumes from its predictions file without recomputing finished items.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragkit.core.pipeline import Pipeline
from ragkit.errors import InputError, QueryError, RagkitError, UserError
from ragkit.eval.engines import Engine, GraphJob, get_engine
from ragkit.query.cypher import cypher_terms, unknown_cypher_terms
from ragkit.query.sparql import named_and_unknown_terms
from ragkit.stages.querygen.base import QueryGenOutput
from ragkit.stages.retrievers.graph import GraphQueryRetriever
from ragkit.stores.base import GraphSchema
from ragkit.tokenomics.costs import percentile, stage_records

logger = logging.getLogger(__name__)

__all__ = ["KgqaItem", "load_kgqa", "canonical", "execution_match", "answer_f1", "evaluate_kgqa", "KgqaReport", "bootstrap_ci", "schema_term_check", "finished_predictions"]

FILE_STORES = {"oxigraph_store", "rdflib_store", "embedded_cypher_store"}
GRAPH_SUFFIXES = {"sparql": (".nt", ".ttl", ".rdf"), "cypher": (".cypher",)}


@dataclass(frozen=True)
class KgqaItem:
    id: str
    graph: str
    question: str
    query: str
    language: str
    answers: list[list[Any]]


def select_items(
    items: list[KgqaItem],
    *,
    ids: Iterable[str] | None = None,
    graphs: Iterable[str] | None = None,
    per_graph: int | None = None,
    limit: int | None = None,
) -> list[KgqaItem]:
    """The items an evaluation runs, in file order: those of ``ids`` and ``graphs``, then the first
    ``per_graph`` of each graph, then the first ``limit``.

    Raises:
        InputError: an id of ``ids`` is not in ``items``.
    """
    if ids is not None:
        wanted = set(ids)
        unknown = sorted(wanted - {it.id for it in items})
        if unknown:
            more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
            raise InputError(f"--ids names {unknown[0]!r}{more}, not in the dataset: list ids of its questions.jsonl")
        items = [it for it in items if it.id in wanted]
    if graphs:
        keep = set(graphs)
        items = [it for it in items if it.graph in keep]
    if per_graph:
        seen: Counter[str] = Counter()
        kept = []
        for it in items:
            if seen[it.graph] < per_graph:
                kept.append(it)
                seen[it.graph] += 1
        items = kept
    return items[:limit] if limit else items


def read_ids(path: str | Path) -> list[str]:
    """Question ids from a text file, one a line (blank lines and ``#`` comments skipped), or from a
    k-fold adapter set's ``ragkit_folds.json``: the ids its finished folds held out."""
    from ragkit.models.adapters import FOLDS_META, read_fold_set

    p = Path(path)
    if p.name == FOLDS_META and p.is_file():
        ids = [i for fold in read_fold_set(p.parent)["folds"] for i in fold.get("held_out", [])]
        if not ids:
            raise InputError(f"{p} has no finished fold yet: nothing it held out can be evaluated")
        return ids
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"cannot read the ids file {p} ({e.strerror or e})") from None
    ids = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not ids:
        raise InputError(f"{p} lists no question id (write one id a line)")
    return ids


def load_kgqa(folder: str | Path) -> list[KgqaItem]:
    """Read ``questions.jsonl`` of a KGQA dataset folder, with errors that name the line."""
    path = Path(folder) / "questions.jsonl"
    if not path.is_file():
        raise InputError(f"{path} not found (a KGQA dataset folder has questions.jsonl and graphs/)")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            lang = "sparql" if "sparql" in row else "cypher"
            items.append(KgqaItem(row["id"], row["graph"], row["question"], row[lang], lang, row.get("answers", [])))
        except (json.JSONDecodeError, KeyError) as e:
            raise InputError(f"{path}:{n}: not a KGQA item ({e}); see shared/data/README.md for the layout") from None
    return items


# ---- comparison -------------------------------------------------------------------------------
def canonical(v: Any) -> str:
    """A value's canonical string: numbers by value (5.0 == 5), booleans lower-case, lists sorted."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _num(float(v))
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(sorted(canonical(x) for x in v)) + "]"
    if isinstance(v, dict):
        return json.dumps({k: canonical(x) for k, x in sorted(v.items())})
    s = str(v)
    if s in ("true", "false", "True", "False"):
        return s.lower()
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s.strip()):
        return _num(float(s))
    return s


def _num(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.10g}"


def _row_key(row: Iterable[Any]) -> tuple[str, ...]:
    return tuple(sorted(canonical(v) for v in row))


def execution_match(predicted: list[list[Any]], gold: list[list[Any]]) -> bool:
    """Rows equal as multisets of sorted canonical tuples (column order and row order ignored)."""
    return Counter(_row_key(r) for r in predicted) == Counter(_row_key(r) for r in gold)


def answer_f1(predicted: list[list[Any]], gold: list[list[Any]]) -> float:
    """F1 between the sets of all values in predicted and gold rows."""
    p = {canonical(v) for r in predicted for v in r}
    g = {canonical(v) for r in gold for v in r}
    if not p and not g:
        return 1.0
    if not p or not g:
        return 0.0
    tp = len(p & g)
    if tp == 0:
        return 0.0
    prec, rec = tp / len(p), tp / len(g)
    return 2 * prec * rec / (prec + rec)


def bootstrap_ci(values: list[float], *, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the mean of ``values``."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return (means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))])


def _fold(q: str) -> str:
    return " ".join(q.lower().split())


# ---- running ----------------------------------------------------------------------------------
@dataclass
class KgqaReport:
    """Aggregate figures of one evaluation run."""

    pipeline: str
    dataset: str
    n: int
    execution_accuracy: float
    execution_accuracy_ci: tuple[float, float]
    answer_f1: float
    answer_f1_ci: tuple[float, float]
    valid_query_rate: float
    valid_query_rate_ci: tuple[float, float]
    unknown_term_rate: float | None
    """Mean, over queries that name schema terms, of the share of those terms the schema does not have."""
    unknown_term_rate_ci: tuple[float, float] | None
    queries_with_unknown_terms: float | None
    """Share of checked queries that name at least one term the schema does not have."""
    latency_p50: float
    latency_p95: float
    tokens_in: int
    tokens_out: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _graph_file(dataset: Path, graph: str, language: str) -> Path:
    for suf in GRAPH_SUFFIXES[language]:
        p = dataset / "graphs" / f"{graph}{suf}"
        if p.is_file():
            return p
    raise InputError(f"no graph file for '{graph}' under {dataset / 'graphs'} (expected one of {GRAPH_SUFFIXES[language]})")


def _fold_sets(spec: dict[str, Any]) -> list[str]:
    """Names of the local_llm resources whose adapter is a k-fold set (chosen per question)."""
    from ragkit.models.adapters import is_fold_set

    return [n for n, r in spec.get("resources", {}).items() if r.get("type") == "local_llm" and r.get("adapter") and is_fold_set(r["adapter"])]


def _fold_of(spec: dict[str, Any], fold_sets: list[str], item_id: str) -> tuple[str, ...]:
    from ragkit.models.adapters import fold_for_item

    return tuple(str(fold_for_item(spec["resources"][n]["adapter"], item_id)) for n in fold_sets)


def _pipeline_for_graph(spec: dict[str, Any], graph_file: Path, bank_file: Path, source: str, adapters: dict[str, str] | None = None) -> Pipeline:
    d = json.loads(json.dumps(spec))
    for n, path in (adapters or {}).items():
        d["resources"][n]["adapter"] = path
    stores = [n for n, r in d.get("resources", {}).items() if r.get("type") in FILE_STORES]
    remote = [n for n, r in d.get("resources", {}).items() if r.get("type") in ("sparql_endpoint", "neo4j_store")]
    if not stores:
        hint = f" ('{remote[0]}' is remote)" if remote else ""
        raise UserError(
            f"{source}: ragkit eval loads each question's graph from a file, but the pipeline has no file-backed graph store{hint} "
            f"(use one of: {', '.join(sorted(FILE_STORES))})"
        )
    for n in stores:
        d["resources"][n]["path"] = str(graph_file)
    for r in d.get("resources", {}).values():
        if r.get("type") == "example_bank":
            r["path"] = str(bank_file)
            r["persist"] = False  # a per-run temporary file: nothing to reuse later
    return Pipeline.from_dict(d, source=source)


def _done_ids(predictions: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if predictions.is_file():
        for line in predictions.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done[row["id"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by an interrupt: that item runs again
    return done


def finished_predictions(predictions: Path) -> dict[str, dict[str, Any]]:
    """The finished items of a predictions file, by id; a last line cut by an interrupt is removed so
    that lines appended next start on a line of their own."""
    if predictions.is_file():
        data = predictions.read_bytes()
        if data and not data.endswith(b"\n"):
            with predictions.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return _done_ids(predictions)


def evaluate_kgqa(
    pipeline_file: str | Path,
    dataset: str | Path,
    predictions: str | Path,
    *,
    limit: int | None = None,
    per_graph: int | None = None,
    graphs: list[str] | None = None,
    ids: list[str] | None = None,
    skip_answer: bool = False,
    progress: Callable[[int, int], None] | None = None,
    engine: str | Engine = "local",
    concurrency: int = 1,
) -> KgqaReport:
    """Run ``pipeline_file`` on every question of ``dataset`` and score it.

    Args:
        pipeline_file: a KGQA pipeline file (with a file-backed graph store and an example bank).
        dataset: a KGQA dataset folder.
        predictions: the JSON Lines file to write; finished items in it are not run again.
        limit: evaluate only the first ``limit`` questions (in file order, after ``graphs``).
        per_graph: evaluate only the first ``per_graph`` questions of each graph (a stratified slice).
        graphs: evaluate only these graphs.
        ids: evaluate only these question ids (e.g. the items the finished folds of a k-fold
            adapter set held out); every id must be in the dataset.
        skip_answer: run only the stages the ``rows`` output depends on (no answer generation).
        progress: called with (done, total) after each item.
        engine: ``local``, ``ray`` (items spread over a Ray cluster; same rows), or an
            :class:`~ragkit.eval.engines.Engine`.
        concurrency: items of a graph run at once in threads, so that the local model decodes them
            in batches (every component must be thread-safe). Greedy rows can differ from a run at
            1 by floating-point rounding: a padded batch adds numbers in another order.
    """
    if concurrency < 1:
        raise InputError("concurrency must be at least 1")
    dataset = Path(dataset)
    predictions = Path(predictions)
    spec = Pipeline.from_yaml(pipeline_file).to_dict()
    all_items = load_kgqa(dataset)
    selected = select_items(all_items, ids=ids, graphs=graphs, per_graph=per_graph, limit=limit)
    if not selected:
        raise InputError("no questions selected (check --ids / --graphs / --limit)")
    by_graph: dict[str, list[KgqaItem]] = defaultdict(list)
    for it in all_items:
        by_graph[it.graph].append(it)
    done = finished_predictions(predictions)
    predictions.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    count = sum(1 for it in selected if it.id in done)
    if progress is not None:
        progress(count, len(selected))
    fold_sets = _fold_sets(spec)
    runner = get_engine(engine)
    with contextlib.closing(runner), predictions.open("a", encoding="utf-8") as out:
        groups: dict[tuple[str, tuple[str, ...]], list[KgqaItem]] = defaultdict(list)
        for it in selected:
            if it.id not in done:
                groups[(it.graph, _fold_of(spec, fold_sets, it.id) if fold_sets else ())].append(it)
        for (graph, fold_adapters), todo in groups.items():
            pool = by_graph[graph]
            bank_text = "".join(json.dumps({"question": e.question, "query": e.query}) + "\n" for e in pool)
            gold_rows = {(e.question, e.query): Counter(_row_key(r) for r in e.answers) for e in pool}
            graph_file = _graph_file(dataset, graph, todo[0].language).resolve()
            job = GraphJob(
                spec,
                str(pipeline_file),
                str(graph_file),
                bank_text,
                todo,
                gold_rows,
                skip_answer,
                str(Path.cwd()),
                dict(zip(fold_sets, fold_adapters)),
                concurrency,
            )
            for row in runner.run(job):  # the engine builds the pipeline and runs the items (ragkit/eval/engines.py)
                out.write(json.dumps(row, default=str) + "\n")
                out.flush()
                done[row["id"]] = row
                count += 1
                if progress is not None:
                    progress(count, len(selected))
    rows = [done[it.id] for it in selected]
    return _report(str(pipeline_file), str(dataset), selected, rows, time.perf_counter() - start)


def _store_schema(pipe: Pipeline) -> GraphSchema | None:
    """The schema of the pipeline's file-backed graph store, to check generated queries against."""
    for r in pipe.resources.values():
        if type(r).type_name in FILE_STORES:
            try:
                return r.schema()  # type: ignore[attr-defined, no-any-return]
            except RagkitError as e:
                logger.warning("cannot read the graph schema (%s): schema terms are not checked", e)
                return None
    return None


def schema_term_check(query: str, schema: GraphSchema | None) -> dict[str, Any] | None:
    """``{"named": n, "unknown": [terms]}``: the classes/properties (labels/relationship types) the
    query names and those the store's schema does not have; None without a query, schema or parse."""
    if not query or schema is None:
        return None
    try:
        if schema.language == "sparql":
            named, unknown = named_and_unknown_terms(query, schema.terms())
        else:
            named = cypher_terms(query)
            unknown = unknown_cypher_terms(query, schema)
    except QueryError:
        return None
    return {"named": len(named), "unknown": unknown}


def _run_one(
    pipe: Pipeline, banks: list[Any], it: KgqaItem, gold_rows: dict[tuple[str, str], Counter], schema: GraphSchema | None = None
) -> dict[str, Any]:
    mine = Counter(_row_key(r) for r in it.answers)

    def forbidden(ex: Any) -> bool:
        return _fold(ex.query) == _fold(it.query) or gold_rows.get((ex.question, ex.query)) == mine

    started = time.time()
    t0 = time.perf_counter()
    error = None
    outputs: dict[str, Any] = {}
    stage_outputs: dict[str, Any] = {}
    trace = None
    try:
        with contextlib.ExitStack() as stack:
            for b in banks:
                stack.enter_context(b.excluding(forbidden))
            res = pipe.run(question=it.question)
        outputs, stage_outputs, trace = res.outputs, res.stage_outputs, res.trace
    except RagkitError as e:  # one failing item must not end the run
        error = f"{type(e).__name__}: {e}"
        trace = getattr(e, "trace", None)
    rows = outputs.get("rows") or []
    query = outputs.get("query") or ""
    error = error or outputs.get("error")
    return {
        "id": it.id,
        "query": query,
        "rows": rows,
        "answer": outputs.get("answer"),
        "error": error,
        "confidence": outputs.get("confidence"),
        "correct": execution_match(rows, it.answers),
        "f1": answer_f1(rows, it.answers),
        "valid": bool(query) and error is None,  # the chosen query ran without an error
        "timings": {
            "start": round(started, 4),  # wall clock: concurrent items' spans overlap (see tokenomics.costs.busy_seconds)
            "total": round(time.perf_counter() - t0, 4),  # before the candidates are executed again below
            "ttft": trace.ttft if trace else None,
            "stages": {s.name: round(s.seconds, 4) for s in trace.stages} if trace else {},
        },
        "tokens": {"in": trace.tokens_in if trace else 0, "out": trace.tokens_out if trace else 0},
        "schema_terms": schema_term_check(query, schema),
        "stages": stage_records(trace),
        "candidates": _candidates(pipe, stage_outputs, it.answers),
    }


def _candidates(pipe: Pipeline, stage_outputs: dict[str, Any], gold: list[list[Any]]) -> list[dict[str, Any]] | None:
    """Every candidate query the generators made, each executed again to tell whether its rows match
    the gold rows: how often the right query was among them and the selection missed it (the
    ``oracle`` of ``benchmarks/candidates.py``). None when no generator ran.

    A candidate is executed as the graph retriever executes the chosen one (its store, row limit and
    time-out), so a candidate counts as right exactly when choosing it would have scored."""
    made = [o.generated for o in stage_outputs.values() if isinstance(o, QueryGenOutput)]
    retriever = next((st for st in pipe.stages.values() if isinstance(st, GraphQueryRetriever)), None)
    if not made or retriever is None:
        return None
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for generated in made:
        for c in generated.candidates:
            if c.query in seen:  # a fallback generator ranks the previous one's candidates with its own
                continue
            seen.add(c.query)
            correct = False
            if c.error is None and c.query:
                try:
                    res = retriever.store.query(c.query, timeout=retriever.timeout, limit=retriever.row_limit)
                    correct = execution_match([list(r) for r in res.rows], gold)
                except RagkitError:
                    pass
            out.append(
                {
                    "query": c.query,
                    "origin": c.origin,
                    "score": round(c.score, 4),
                    "review": None if c.review is None else round(c.review, 4),
                    "rows": c.rows,
                    "votes": c.votes,
                    "error": c.error,
                    "correct": correct,
                }
            )
    return out


def _report(pipeline: str, dataset: str, items: list[KgqaItem], rows: list[dict[str, Any]], seconds: float) -> KgqaReport:
    acc = [1.0 if r["correct"] else 0.0 for r in rows]
    f1 = [float(r["f1"]) for r in rows]
    valid = [1.0 if r.get("valid") else 0.0 for r in rows]
    lat = [float(r["timings"]["total"]) for r in rows]
    checked = [r["schema_terms"] for r in rows if r.get("schema_terms")]
    unknown = [len(c["unknown"]) / c["named"] for c in checked if c["named"]]
    n = len(rows)
    return KgqaReport(
        pipeline=pipeline,
        dataset=dataset,
        n=n,
        execution_accuracy=sum(acc) / n,
        execution_accuracy_ci=bootstrap_ci(acc),
        answer_f1=sum(f1) / n,
        answer_f1_ci=bootstrap_ci(f1),
        valid_query_rate=sum(valid) / n,
        valid_query_rate_ci=bootstrap_ci(valid),
        unknown_term_rate=sum(unknown) / len(unknown) if unknown else None,
        unknown_term_rate_ci=bootstrap_ci(unknown) if unknown else None,
        queries_with_unknown_terms=sum(1 for c in checked if c["unknown"]) / len(checked) if checked else None,
        latency_p50=percentile(lat, 0.5) or 0.0,
        latency_p95=percentile(lat, 0.95) or 0.0,
        tokens_in=sum(r["tokens"]["in"] for r in rows),
        tokens_out=sum(r["tokens"]["out"] for r in rows),
        seconds=seconds,
    )
