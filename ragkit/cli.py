"""The ``ragkit`` command: run, validate, list, evaluate and serve pipelines; fine-tune adapters.

User mistakes (a bad pipeline file, a missing input, a missing package) print one clear message per
problem and exit with code 2, without a traceback; ``--debug`` (or ``RAGKIT_DEBUG=1``) shows it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ragkit.errors import ConfigError, RagkitError, StageFailedError, UserError

__all__ = ["main", "cli"]

EXIT_USER_ERROR = 2


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().params.get("debug"):
        return True
    return os.environ.get("RAGKIT_DEBUG", "") not in ("", "0")


def _fail(e: BaseException) -> None:
    """Print an error the way a user needs it and exit: 2 for their mistakes, 1 otherwise."""
    if _debug():
        raise e
    err = sys.stderr
    if isinstance(e, ConfigError):
        for issue in e.issues:
            click.echo(f"error: {issue}", file=err)
        sys.exit(EXIT_USER_ERROR)
    cause = e.__cause__ if isinstance(e, StageFailedError) else None
    if isinstance(e, UserError) or isinstance(cause, UserError):
        click.echo(f"error: {e}", file=err)
        sys.exit(EXIT_USER_ERROR)
    click.echo(f"error: {e}", file=err)
    if cause is not None and not isinstance(cause, RagkitError):
        click.echo(f"  caused by {type(cause).__name__}: {cause} (rerun with --debug for the traceback)", file=err)
    sys.exit(1)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RagkitError as e:
            _fail(e)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@contextlib.contextmanager
def _stop_on_terminate() -> Iterator[None]:
    """While a long command runs, ``kill`` (SIGTERM) stops it as Ctrl-C does, so what it finished is kept.

    A job started in the background by a shell script ignores Ctrl-C's SIGINT, and schedulers and
    ``timeout`` send SIGTERM: without this, ``ragkit eval`` would die on the spot and lose the energy
    reading of its session (its finished predictions are on disk either way).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ragkit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def cli(debug: bool, verbose: int) -> None:
    """ragkit: retrieval-augmented generation over knowledge graphs, on local models."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:
        _quiet_third_parties()


def _quiet_third_parties() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "sentence_transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def print_trace(trace: Any, file: Any = None) -> None:
    """The per-stage table: time, tokens in/out, TTFT, TPOT, tokens/s, errors."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="per-stage trace", title_justify="left")
    for col in ("stage", "type", "time", "tokens in", "tokens out", "TTFT", "TPOT", "tok/s", "notes"):
        table.add_column(col, justify="right" if col not in ("stage", "type", "notes") else "left")
    for s in trace.stages:
        parts = {k[7:-7]: v for k, v in s.extra.items() if k.startswith("prompt_") and k.endswith("_tokens") and k != "prompt_tokens"}
        notes = ", ".join(
            f"{k}={v}" + (" (" + ", ".join(f"{p} {n}" for p, n in parts.items()) + ")" if k == "prompt_tokens" and parts else "")
            for k, v in s.extra.items()
            if k[7:-7] not in parts or not k.startswith("prompt_")
        )
        if s.error:
            notes = f"[red]{s.error}[/red]"
        tps = s.tokens_per_second
        table.add_row(
            s.name,
            s.type,
            _fmt_s(s.seconds),
            str(s.tokens_in or "-"),
            str(s.tokens_out or "-"),
            _fmt_s(s.ttft),
            _fmt_s(s.tpot),
            f"{tps:.1f}" if tps and s.ttft is not None else "-",
            notes,
        )
    table.add_row("total", "", _fmt_s(trace.seconds), str(trace.tokens_in), str(trace.tokens_out), _fmt_s(trace.ttft), "", "", "time to first answer token", style="bold")
    Console(file=file or sys.stdout, soft_wrap=False, width=140).print(table)


@cli.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("question_arg", metavar="[QUESTION]", required=False)
@click.option("-q", "--question", help="The question to ask (the pipeline's 'question' input), as an option.")
@click.option("-i", "--input", "extra", multiple=True, metavar="NAME=VALUE", help="Set another pipeline input (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with outputs and trace instead of streaming.")
@_guard
def run(pipeline_file: Path, question_arg: str | None, question: str | None, extra: tuple[str, ...], as_json: bool) -> None:
    """Run PIPELINE_FILE on QUESTION (or -q): stream the answer, then print the per-stage table."""
    from ragkit.core.pipeline import Pipeline

    if question_arg is not None and question is not None and question_arg != question:
        raise UserError(f"two questions given ({question_arg!r} and -q {question!r}): pass one")
    question = question if question is not None else question_arg
    pipe = Pipeline.from_yaml(pipeline_file)
    inputs: dict[str, Any] = {}
    if question is not None:
        inputs["question"] = question
    for item in extra:
        if "=" not in item:
            raise UserError(f"--input {item!r} is not NAME=VALUE")
        k, v = item.split("=", 1)
        inputs[k] = v
    for name in pipe.inputs:
        if name not in inputs:
            hint = "it after the file, or -q/--question" if name == "question" else f"-i {name}=VALUE"
            if any(type(pipe.stages[s]).input_sockets()[f].required for s, f in pipe.inputs[name]):
                raise UserError(f"{pipeline_file}: the pipeline needs its input '{name}' (pass {hint})")
    try:
        if as_json:
            result = pipe.run(inputs)
            click.echo(json.dumps({"outputs": _jsonable(result.outputs), "trace": result.trace.to_dict()}, indent=2, default=str))
        else:
            _run_streaming(pipe, inputs)
    finally:
        pipe.close()


def _run_streaming(pipe: Any, inputs: dict[str, Any]) -> None:
    out = sys.stdout
    started = {"answer": False}

    def on_stage(name: str, output: Any) -> None:
        query = getattr(output, "query", None)
        if isinstance(query, str) and "generated" in type(output).model_fields:
            click.secho(f"-- generated {getattr(output.generated, 'language', 'query').upper()} ({name}) --", fg="cyan", err=False)
            click.echo(query)
        ctx = getattr(output, "context", None)
        if ctx is not None and hasattr(ctx, "rows"):
            status = f"error: {ctx.error}" if ctx.error else f"{len(ctx.rows)} row(s){' (truncated)' if ctx.truncated else ''}"
            click.secho(f"-- graph result ({name}): {status}, confidence {ctx.confidence:.2f} --", fg="cyan")
            for line in ctx.as_text(5):
                click.echo(f"   {line}")

    def on_token(piece: str) -> None:
        if not started["answer"]:
            click.secho("-- answer --", fg="green")
            started["answer"] = True
        out.write(piece)
        out.flush()

    result = pipe.run(inputs, on_token=on_token, on_stage=on_stage)
    if not started["answer"]:
        answer = result.outputs.get("answer")
        if answer is not None:
            click.secho("-- answer --", fg="green")
            out.write(str(answer))
    out.write("\n\n")
    out.flush()
    print_trace(result.trace)


def _jsonable(v: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


@cli.command()
@click.argument("pipeline_files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def validate(pipeline_files: tuple[Path, ...]) -> None:
    """Check pipeline files without loading any model, index or store.

    Prints one line per problem as FILE:LINE:COL: message (hint). Exits 2 if any file has a problem.
    """
    from ragkit.core.pipeline import Pipeline

    bad = False
    for f in pipeline_files:
        try:
            pipe = Pipeline.from_yaml(f)
        except ConfigError as e:
            bad = True
            for issue in e.issues:
                click.echo(f"{issue}" if issue.file != "<python>" else f"{f}: {issue.message}", err=True)
            continue
        except RagkitError as e:
            bad = True
            click.echo(f"{f}: {e}", err=True)
            continue
        click.echo(f"{f}: ok ({len(pipe.stages)} stages, {len(pipe.resources)} resources, {len(pipe.connections)} connections)")
    if bad:
        sys.exit(EXIT_USER_ERROR)


@cli.command()
@click.option("--resources", "show_resources", is_flag=True, help="List resource types instead of stage types.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guard
def stages(show_resources: bool, as_json: bool) -> None:
    """List registered stage types with their inputs, outputs and parameters."""
    from ragkit.core.component import Param, resource_types, stage_types, type_name

    def params(cls: Any) -> list[str]:
        out = []
        for p in cls.params().values():
            p: Param
            kind = f"resource {p.resource_kind.__name__}" if p.resource_kind else type_name(p.annotation)
            out.append(f"{p.name}: {kind}" + ("" if p.required else f" = {p.default!r}"))
        return out

    table = resource_types() if show_resources else stage_types()
    rows = []
    for name, cls in table.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        row: dict[str, Any] = {"type": name, "class": f"{cls.__module__}.{cls.__qualname__}", "summary": doc, "params": params(cls)}
        if not show_resources:
            row["inputs"] = [str(s) for s in cls.input_sockets().values()]
            row["outputs"] = [str(s) for s in cls.output_sockets().values()]
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.secho(row["type"], bold=True, nl=False)
        click.echo(f"  ({row['class']})")
        if row["summary"]:
            click.echo(f"    {row['summary']}")
        for key in ("inputs", "outputs", "params"):
            if key in row:
                click.echo(f"    {key}: {', '.join(row[key]) or '-'}")


@cli.command("eval")
@click.argument("pipeline_files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dataset", required=True, type=click.Path(file_okay=False, path_type=Path), help="A dataset folder (KGQA or text QA layout).")
@click.option(
    "--predictions",
    type=click.Path(path_type=Path),
    help="Predictions JSONL (one pipeline) or a folder (several). Default: eval-out/<dataset>/<pipeline>.jsonl. Reused to resume.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N questions.")
@click.option("--per-graph", type=click.IntRange(min=1), help="KGQA: only the first N questions of each graph (a stratified slice).")
@click.option("--graphs", help="Comma-separated graph names to evaluate (KGQA).")
@click.option(
    "--ids", "ids_file", type=click.Path(dir_okay=False, path_type=Path),
    help="KGQA: evaluate only these question ids: a file of ids, one a line, or a k-fold adapter set's ragkit_folds.json (what its finished folds held out).",
)
@click.option("--skip-answer", is_flag=True, help="KGQA: stop after the query's rows (no answer generation).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures as JSON here.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a self-contained HTML report with plots here.")
@click.option(
    "--price-per-hour", type=click.FloatRange(min=0), envvar="RAGKIT_PRICE_PER_HOUR", help="USD per hour of the hardware, for cost per million tokens."
)
@click.option("--api-prices", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="JSON/YAML {name: {input, output}} USD per million tokens.")
@click.option("--carbon/--no-carbon", default=True, help="Measure energy and CO2 with codecarbon (offline).")
@click.option("--country", envvar="RAGKIT_COUNTRY", help="Grid country, ISO 3166 alpha-3 (e.g. FRA). Default: world average.")
@click.option("--region", envvar="RAGKIT_REGION", help="Grid region within USA/CAN/CHN/Nordics (e.g. california).")
@click.option("--grid-intensity", type=click.FloatRange(min=0), help="Force the grid intensity, gCO2e per kWh.")
@click.option(
    "--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help="KGQA: where items run: this process, or a Ray cluster ($RAY_ADDRESS, else a local one); same results.",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
    help="KGQA: items of a graph run at once in threads; the local model decodes their queries together in batches.",
)
@_guard
def eval_cmd(
    pipeline_files: tuple[Path, ...],
    dataset: Path,
    predictions: Path | None,
    limit: int | None,
    per_graph: int | None,
    graphs: str | None,
    ids_file: Path | None,
    skip_answer: bool,
    report_path: Path | None,
    html_path: Path | None,
    price_per_hour: float | None,
    api_prices: Path | None,
    carbon: bool,
    country: str | None,
    region: str | None,
    grid_intensity: float | None,
    engine: str = "local",
    concurrency: int = 1,
) -> None:
    """Evaluate one or more pipeline files on a dataset and print their figures side by side.

    KGQA folders (questions.jsonl + graphs/) are scored by execution accuracy, answer-set F1, valid
    queries and unknown schema terms under the query-disjoint few-shot protocol; text QA folders
    (questions.jsonl + corpus.jsonl) by recall@k, MRR, nDCG, EM, token F1 and abstention. An
    interrupted run resumes from its predictions. Tokenomics (latency, TTFT, TPOT, tokens, cost,
    energy and CO2 per 1,000 questions) are printed for every pipeline.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ragkit.eval.kgqa import read_ids
    from ragkit.eval.runner import EvalSettings, dataset_kind, evaluate_pipeline
    from ragkit.tokenomics.costs import load_api_prices

    kind = dataset_kind(dataset)
    if len(pipeline_files) > 1 and predictions is not None and predictions.suffix == ".jsonl":
        raise UserError("with several pipelines, --predictions must be a folder")
    if kind == "textqa" and (per_graph or graphs or ids_file or skip_answer or engine != "local" or concurrency > 1):
        raise UserError(
            f"{dataset} is a text QA folder: --per-graph, --graphs, --ids, --skip-answer, --engine and --concurrency apply to KGQA folders only"
        )
    for pf in pipeline_files:
        if not pf.is_file():
            raise UserError(f"pipeline file {pf} does not exist")
    settings = EvalSettings(
        limit=limit,
        per_graph=per_graph,
        graphs=graphs.split(",") if graphs else None,
        ids=read_ids(ids_file) if ids_file else None,
        skip_answer=skip_answer,
        price_per_hour=price_per_hour,
        api_prices=load_api_prices(api_prices) if api_prices else None,
        carbon=carbon,
        country_iso_code=country,
        region=region,
        grid_g_per_kwh=grid_intensity,
        engine=engine,
        concurrency=concurrency,
    )
    reports = []
    console = Console(stderr=True)
    for pf in pipeline_files:
        if predictions is None:
            pred = Path("eval-out") / dataset.name / f"{pf.stem}.jsonl"
        elif len(pipeline_files) > 1 or predictions.is_dir():
            pred = predictions / f"{pf.stem}.jsonl"
        else:
            pred = predictions
        with Progress(
            TextColumn(f"[bold]{pf.stem}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as bar:
            task = bar.add_task("eval", total=None)
            lines = None if console.is_terminal else _plain_progress(f"{pf.stem} questions")

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)
                if lines is not None:
                    lines(done, total)

            try:
                with _stop_on_terminate():
                    reports.append(evaluate_pipeline(pf, dataset, pred, settings, progress=progress))
            except KeyboardInterrupt:
                bar.stop()
                click.echo(f"interrupted: the finished items are kept in {pred}; run the same command again to resume", err=True)
                sys.exit(130)
    if kind == "kgqa":
        _print_kgqa_reports(reports)
    else:
        _print_textqa_reports(reports)
    _print_tokenomics(reports)
    if report_path is not None:
        from ragkit.eval.report import write_json

        write_json(reports, report_path)
    if html_path is not None:
        from ragkit.eval.report import write_html

        write_html(reports, html_path)
        click.echo(f"HTML report: {html_path}")


def _ci(m: dict[str, Any] | None, pct: bool = True, with_ci: bool = True) -> str:
    if not m or m.get("value") is None:
        return "-"
    v, ci = m["value"], m.get("ci") if with_ci else None
    if pct:
        return f"{v:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _print_kgqa_reports(reports: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"KGQA evaluation on {reports[0]['dataset']}", title_justify="left")
    for col in ("pipeline", "n", "exec. accuracy [95% CI]", "answer F1", "valid queries", "unknown terms", "latency p50", "p95", "tokens in/out", "predictions"):
        t.add_column(col)
    for r in reports:
        m = r["metrics"]
        t.add_row(
            r["name"],
            str(r["n"]),
            _ci(m["execution_accuracy"]),
            _ci(m["answer_f1"], pct=False),
            _ci(m["valid_query_rate"]),
            _ci(m["unknown_term_rate"]),
            _fmt_s(r["latency_p50"]),
            _fmt_s(r["latency_p95"]),
            f"{r['tokens_in']}/{r['tokens_out']}",
            r["predictions"],
        )
    Console(soft_wrap=False, width=200).print(t)


def _print_textqa_reports(reports: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Text QA evaluation on {reports[0]['dataset']}", title_justify="left")
    names = [k for k in reports[0]["metrics"] if k.startswith("recall@") and k in ("recall@2", "recall@5")]
    cols = ["pipeline", "n", *names, "MRR", "nDCG", "EM [95% CI]", "token F1 [95% CI]", "abstention P", "abstention R", "predictions"]  # CIs in --report
    for col in cols:
        t.add_column(col)
    for r in reports:
        m = r["metrics"]
        ndcg = next((v for k, v in m.items() if k.startswith("ndcg@")), None)
        t.add_row(
            r["name"],
            str(r["n"]),
            *[_ci(m[k], pct=False, with_ci=False) for k in names],
            _ci(m["mrr"], pct=False, with_ci=False),
            _ci(ndcg, pct=False, with_ci=False),
            _ci(m["exact_match"], pct=False),
            _ci(m["f1"], pct=False),
            _ci(m["abstention_precision"], pct=False, with_ci=False),
            _ci(m["abstention_recall"], pct=False, with_ci=False),
            r["predictions"],
        )
    Console(soft_wrap=False, width=200).print(t)


def _print_tokenomics(reports: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Tokenomics (per question unless stated)", title_justify="left")
    cols = ["pipeline", "latency p50", "p95", "TTFT p50", "TPOT p50", "out tok/s", "tokens in/out", "$/M tokens", "$/1k q", "API $/1k q", "kWh/1k q", "gCO2e/1k q", "prompt share of question"]
    for col in cols:
        t.add_column(col)
    for r in reports:
        tk = r["tokenomics"]
        hw, en = tk.get("hardware") or {}, tk.get("energy") or {}
        api = tk.get("api") or {}
        api_range = [v["per_1k_questions"] for v in api.values() if v["per_1k_questions"] is not None]
        shares = [st["prompt"]["question_share"] for st in tk["stages"].values() if st.get("prompt") and st["prompt"].get("question_share") is not None]
        t.add_row(
            r["name"],
            _fmt_s(tk.get("latency_p50")),
            _fmt_s(tk.get("latency_p95")),
            _fmt_s(tk.get("ttft_p50")),
            _fmt_s(tk.get("tpot_p50")),
            f"{tk['throughput_tokens_per_s']:.1f}" if tk.get("throughput_tokens_per_s") else "-",
            f"{tk.get('tokens_in_per_question') or 0:.0f}/{tk.get('tokens_out_per_question') or 0:.0f}",
            f"${hw['per_million_tokens']:.4f}" if hw.get("per_million_tokens") is not None else "-",
            f"${hw['per_1k_questions']:.4f}" if hw.get("per_1k_questions") is not None else "-",
            f"${min(api_range):.4f}-${max(api_range):.4f}" if api_range else "-",
            f"{en['kwh_per_1k_questions']:.4f}" if en.get("kwh_per_1k_questions") is not None else "-",
            f"{en['kg_co2e_per_1k_questions'] * 1000:.2f} ({en['basis']})" if en.get("kg_co2e_per_1k_questions") is not None else "-",
            ", ".join(f"{x:.0%}" for x in shares) or "-",
        )
    Console(soft_wrap=False, width=200).print(t)


@cli.command("finetune")
@click.option("--train", "train_files", multiple=True, type=click.Path(path_type=Path), help="A JSONL of question/query pairs over other graphs (repeatable).")
@click.option("--bank", type=click.Path(path_type=Path), help="A graph's own example bank (KGQA layout with ids); with --folds, one adapter per fold.")
@click.option("--folds", type=int, help="Train one adapter per fold of --bank, each without that fold's items nor their equivalents.")
@click.option("--language", required=True, type=str, help="sparql or cypher.")
@click.option("--model", help="Base model: a Hugging Face folder or .gguf file (default: the bundled SmolLM2-135M-Instruct).")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Adapter folder to write (a rerun resumes its checkpoint).")
@click.option("--epochs", default=1.0, show_default=True, type=float, help="Passes over the data (when --max-steps is not given).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Optimizer steps to run (overrides --epochs).")
@click.option("--lr", default=2e-4, show_default=True, type=float, help="Peak learning rate.")
@click.option("--rank", default=8, show_default=True, type=int, help="LoRA rank.")
@click.option("--alpha", default=16, show_default=True, type=int, help="LoRA alpha (scale = alpha / rank).")
@click.option("--batch-size", default=4, show_default=True, type=int, help="Sequences per forward pass.")
@click.option("--grad-accum", default=2, show_default=True, type=int, help="Forward passes per optimizer step.")
@click.option("--max-length", default=1024, show_default=True, type=int, help="Longest sequence in tokens (examples, then schema, are cut to fit).")
@click.option("--examples", default=2, show_default=True, type=click.IntRange(min=0), help="Retrieved few-shot examples in each training prompt.")
@click.option("--schema-tokens", default=900, show_default=True, type=int, help="Schema budget, as the pipeline's graph_schema_reader max_tokens.")
@click.option("--schemas", type=click.Path(path_type=Path), help="Cypher: a train_schemas.jsonl (default: the one next to --train).")
@click.option("--graph", type=click.Path(path_type=Path), help="Read schemas from this graph file (or folder of <graph>.nt/.ttl/.cypher).")
@click.option("--limit", type=click.IntRange(min=1), help="Train on a random subsample of N pairs of --train.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for subsampling, folds, order and initialisation.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch (default: $RAGKIT_NUM_THREADS or torch's).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--mixed-precision",
    default="none",
    show_default=True,
    type=click.Choice(["none", "bf16"]),
    help="bf16: forward passes in bfloat16 under autocast (LoRA weights and optimizer stay float32).",
)
@click.option(
    "--keep-failing",
    is_flag=True,
    help="Train also on pairs whose query fails the query generator's checks against its schema (left out by default).",
)
@click.option(
    "--init-adapter",
    type=click.Path(file_okay=False, path_type=str),
    help="Go on training this adapter (its rank, alpha and modules) instead of a new one, e.g. a general adapter on a graph's own --bank.",
)
@click.option(
    "--share-prefix/--no-share-prefix",
    default=True,
    show_default=True,
    help="Batch sequences whose prompts start alike (one graph's schema) and compute that start once per batch. "
    "A run resumed with the other setting batches the rest of its epoch the new way.",
)
@click.option("--save-every", default=50, show_default=True, type=int, help="Checkpoint every N steps.")
@click.option("--resume/--no-resume", default=True, help="Continue from OUTPUT/checkpoint when it is of the same run.")
@_guard
def finetune_cmd(train_files: tuple[Path, ...], bank: Path | None, folds: int | None, output: Path, **kw: Any) -> None:
    """Fine-tune a LoRA adapter for text-to-SPARQL or text-to-Cypher on the prompts the pipeline uses.

    The adapter folder (peft files + ragkit_adapter.json) is what a pipeline names with
    `local_llm: {adapter: FOLDER}`. See docs/finetuning.md.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ragkit.finetune.trainer import FinetuneOptions, TrainingStopped, finetune

    for f in [*train_files, *([bank] if bank else [])]:
        if not f.is_file():
            raise UserError(f"training file {f} does not exist")
    opts = FinetuneOptions(output=str(output), **kw)
    console = Console(stderr=True)
    with (
        Progress(
            TextColumn("[bold]{task.description}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        ) as bar,
        _stop_after_step() as stop,
    ):

        def progress(name: str) -> Callable[[int, int, float | None], None]:
            task = bar.add_task(name, total=None, loss="-")
            lines = None if console.is_terminal else _plain_progress(f"{name} step")

            def update(step: int, total: int, loss: float | None) -> None:
                shown = "-" if loss is None else f"{loss:.4f}"
                bar.update(task, completed=step, total=total, loss=shown)
                if lines is not None:
                    lines(step, total, loss=shown)

            return update

        try:
            metas = finetune(
                [str(f) for f in train_files], opts, bank=str(bank) if bank else None, folds=folds, progress=progress, log=lambda m: console.print(m), stop=stop
            )
        except TrainingStopped as e:
            bar.stop()
            click.echo(str(e), err=True)
            sys.exit(130)
    for m in metas:
        tp = m["throughput"]
        where = output / f"fold-{m['fold']}" if "fold" in m else output
        click.echo(
            f"{where}: {m['steps']} steps, loss {m['loss_before']:.4f} -> {m['loss_after']:.4f} on {len(m['probe_ids'])} training sequences; "
            f"{tp['tokens_per_second']} tokens/s, {tp['seconds_per_step']} s/step, peak RSS {tp['peak_rss_mb']} MB"
        )


@contextlib.contextmanager
def _stop_after_step() -> Iterator[Any]:
    """A :class:`threading.Event` that the first Ctrl-C or ``kill`` (SIGTERM) sets, so a training run ends
    at its next step boundary with a checkpoint; a second one stops at once."""
    import signal
    import threading

    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield stop
        return

    def request(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the step under way, with a checkpoint (again to stop at once, losing the step)", err=True)

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _plain_progress(name: str, every: float = 60.0) -> Callable[..., None]:
    """For a log file instead of a terminal (where a progress bar shows nothing until the end): a line on
    stderr at most every ``every`` seconds, and at the last step."""
    import time

    start = time.monotonic()
    last = [start - every]
    first: list[int] = []  # where this session started: a resumed run's earlier steps took no time here

    def update(done: int, total: int | None, **fields: Any) -> None:
        now = time.monotonic()
        if not first:
            first.append(done)
        if now - last[0] < every and done != total:
            return
        last[0] = now
        elapsed = now - start
        line = f"{name}: {done}" + (f"/{total}" if total else "")
        line += "".join(f", {k} {v}" for k, v in fields.items())
        line += f", {_clock(elapsed)} elapsed"
        if total and first[0] < done < total and elapsed > 0:
            line += f", about {_clock(elapsed / (done - first[0]) * (total - done))} left"
        click.echo(line, err=True)

    return update


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@cli.command("plan")
@click.option("--params", help="Parameter count: 65B, 7e9, 135M (read from --model's safetensors when omitted).")
@click.option("--model", help="A local Hugging Face folder, its config.json, or 'smollm2' (the bundled model).")
@click.option("--dtype", default="fp16", show_default=True, type=click.Choice(["fp32", "fp16", "bf16", "int8", "int4"], case_sensitive=False))
@click.option("--kv-dtype", type=click.Choice(["fp32", "fp16", "bf16", "int8", "int4"], case_sensitive=False), help="KV cache type (default: dtype; fp16 for int weights).")
@click.option("--context", default=0, show_default=True, type=int, help="Tokens per sequence in the KV cache (0: weights only).")
@click.option("--batch", default=1, show_default=True, type=int, help="Sequences served at once.")
@click.option("--layers", type=int, help="Transformer layers (overrides the model's config).")
@click.option("--heads", type=int, help="Attention heads.")
@click.option("--kv-heads", type=int, help="Key/value heads (grouped-query attention; default: --heads).")
@click.option("--hidden", type=int, help="Hidden size.")
@click.option("--card-memory", help="Memory of one accelerator card: 80GB, 24GiB, 230MB.")
@click.option("--train-tokens", help="Training tokens (e.g. 1.4T): adds compute, days and carbon.")
@click.option("--devices", type=int, help="Devices for training (default: the cards the memory needs).")
@click.option("--peak-flops", help="Peak FLOP/s of one device, e.g. 312T.")
@click.option("--utilisation", default=0.4, show_default=True, type=float, help="Share of the peak reached.")
@click.option("--power-w", default=300.0, show_default=True, type=float, help="Average watts per device (assumption).")
@click.option("--pue", default=1.0, show_default=True, type=float, help="Data-centre power usage effectiveness.")
@click.option("--grid-intensity", default=400.0, show_default=True, type=float, help="gCO2e per kWh (assumption).")
@click.option("--embodied-kg", default=150.0, show_default=True, type=float, help="Embodied kgCO2e per device (assumption).")
@click.option("--lifetime-years", default=5.0, show_default=True, type=float, help="Service life the embodied carbon is spread over.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@_guard
def plan_cmd(as_json: bool, **kw: Any) -> None:
    """Size a model: weights and KV-cache memory, accelerator cards, training compute and days, carbon.

    \b
    Examples:
      ragkit plan --params 65B --dtype fp16                       # 130 GB of weights
      ragkit plan --params 65B --dtype int8 --card-memory 230MB   # 283 cards
      ragkit plan --model smollm2 --context 8192 --batch 4 --card-memory 24GB
      ragkit plan --params 7B --train-tokens 1T --devices 64 --peak-flops 312T
    """
    from ragkit.tokenomics.plan import make_plan

    kw["grid_g_per_kwh"] = kw.pop("grid_intensity")
    p = make_plan(**kw)
    if as_json:
        click.echo(json.dumps(p.to_dict(), indent=2, default=str))
        return
    for line in plan_lines(p):
        click.echo(line)


def _bytes(x: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if x >= f:
            return f"{x / f:,.2f} {unit}"
    return f"{x:.0f} B"


def plan_lines(p: Any) -> list[str]:
    """The plan as the lines ``ragkit plan`` prints."""
    sh = p.shape
    lines = [f"model: {p.params / 1e9:,.3f} B parameters ({sh.source})"]
    if sh.layers:
        lines.append(f"  layers {sh.layers}, hidden {sh.hidden}, heads {sh.heads}, KV heads {sh.kv_heads or sh.heads}")
    lines.append(f"weights ({p.dtype}): {_bytes(p.weights_bytes)}  = {p.params:,.0f} x {p.weights_bytes / p.params:g} bytes")
    if p.kv_cache_bytes is not None:
        lines.append(f"KV cache ({p.kv_dtype}, context {p.context}, batch {p.batch}): {_bytes(p.kv_cache_bytes)}")
        lines.append(f"total memory: {_bytes(p.total_bytes)}")
    if p.cards is not None:
        lines.append(f"cards of {_bytes(p.card_memory_bytes)}: {p.cards} (weights alone: {p.cards_for_weights})")
    if p.training:
        tr = p.training
        lines.append(
            f"training: 6 x {p.params:.3g} params x {tr['tokens']:.3g} tokens = {tr['flops']:.3g} FLOPs; "
            f"{tr['devices']} devices x {tr['peak_flops']:.3g} FLOP/s x {tr['utilisation']:.0%} = {tr['days']:,.2f} days"
        )
    if p.carbon:
        c, a = p.carbon, p.assumptions
        lines.append(
            f"carbon (estimated): operational {c['operational_kg']:,.1f} kgCO2e ({c['energy_kwh']:,.0f} kWh at {a['power_w_per_device']:g} W/device, "
            f"PUE {a['pue']:g}, {a['grid_g_per_kwh']:g} g/kWh) + embodied {c['embodied_kg']:,.1f} kgCO2e "
            f"({a['embodied_kg_per_device']:g} kg/device over {a['lifetime_years']:g} years) = {c['total_kg']:,.1f} kgCO2e"
        )
    return lines


@cli.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--max-queue", default=16, show_default=True, type=click.IntRange(min=1), help="Requests admitted at once (running + waiting); more get 429.")
@click.option("--max-body-bytes", default=1_000_000, show_default=True, type=click.IntRange(min=1024), help="Largest request body; larger get 413.")
@click.option("--api-key", "api_keys", multiple=True, help="Accept this key as 'Authorization: Bearer KEY' (repeatable; also RAGKIT_API_KEYS=k1,k2).")
@click.option("--concurrency", type=click.IntRange(min=1), help="Pipeline runs at once (default 1; 4 when every component is thread-safe).")
@click.option("--model-name", help="Model id in the OpenAI API (default: the pipeline's name).")
@_guard
def serve(
    pipeline_file: Path,
    host: str,
    port: int,
    max_queue: int,
    max_body_bytes: int,
    api_keys: tuple[str, ...],
    concurrency: int | None,
    model_name: str | None,
) -> None:
    """Serve PIPELINE_FILE over HTTP: an OpenAI-compatible API, /query, /metrics and /health."""
    from ragkit.core.pipeline import Pipeline
    from ragkit.serve import require_server_packages

    require_server_packages()
    import uvicorn

    from ragkit.serve.app import ServeConfig, create_app

    keys = tuple(api_keys) + tuple(k.strip() for k in os.environ.get("RAGKIT_API_KEYS", "").split(",") if k.strip())
    pipe = Pipeline.from_yaml(pipeline_file)
    pipe.validate()
    config = ServeConfig(max_queue=max_queue, max_body_bytes=max_body_bytes, api_keys=keys, concurrency=concurrency, model_name=model_name)
    app = create_app(pipe, config)
    state = app.state.ragkit
    try:
        click.echo(f"warming up {pipeline_file} ...", err=True)
        state.warm_up()
        if state.unavailable:
            click.echo(f"warning: {state.unavailable} (serving anyway: requests get 503 until it is back)", err=True)
        auth = f"{len(keys)} API key(s)" if keys else "no API key"
        click.echo(
            f"serving '{state.model}' on http://{host}:{port} (OpenAI API at /v1; {auth}; "
            f"max queue {max_queue}, {state.runner.concurrency} run(s) at a time)",
            err=True,
        )
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
    finally:
        state.close()


@cli.group("cache")
def cache_cmd() -> None:
    """Inspect or empty the cache a pipeline file declares (its cache: block)."""


def _pipeline_cache(pipeline_file: Path) -> tuple[Any, Any, str]:
    from ragkit.core.cache import pipeline_namespace
    from ragkit.core.pipeline import Pipeline

    pipe = Pipeline.from_yaml(pipeline_file)
    if pipe.cache is None:
        raise UserError(f"{pipeline_file} has no cache: block (add one naming a semantic_cache resource; see docs/finops.md)")
    return pipe, pipe.resources[pipe.cache.resource], pipeline_namespace(pipe)


@cache_cmd.command("stats")
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--all", "all_namespaces", is_flag=True, help="Count every pipeline sharing the cache file, not only this one.")
@_guard
def cache_stats(pipeline_file: Path, all_namespaces: bool) -> None:
    """Print the cache's counters (hits, misses, refusals, invalidations, stores, entries) as JSON."""
    pipe, cache, ns = _pipeline_cache(pipeline_file)
    try:
        stats = cache.stats(None if all_namespaces else ns)
        lookups = stats["hits"] + stats["misses"] + stats["refusals"]
        stats["hit_rate"] = round(stats["hits"] / lookups, 4) if lookups else 0.0
        click.echo(json.dumps({"pipeline": str(pipeline_file), "namespace": None if all_namespaces else ns, **stats}, indent=2))
    finally:
        pipe.close()


@cache_cmd.command("clear")
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--all", "all_namespaces", is_flag=True, help="Empty the whole cache file, not only this pipeline's entries.")
@_guard
def cache_clear(pipeline_file: Path, all_namespaces: bool) -> None:
    """Drop the cached entries (and counters) of PIPELINE_FILE."""
    pipe, cache, ns = _pipeline_cache(pipeline_file)
    try:
        n = cache.clear(None if all_namespaces else ns)
        click.echo(f"removed {n} entr{'y' if n == 1 else 'ies'}")
    finally:
        pipe.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ragkit`` console script."""
    cli.main(args=argv, prog_name="ragkit", standalone_mode=True)


if __name__ == "__main__":
    main()
