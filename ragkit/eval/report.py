"""Evaluation reports: JSON, and one self-contained HTML page with inline SVG plots (no script, no CDN).

The page shows several pipelines side by side: quality metrics with 95% intervals, accuracy against
cost, latency distributions, tokens per stage, what prompts are made of (the hidden costs), and cost
and CO2 per thousand questions, each energy figure marked ``measured`` or ``estimated``.

Example:
    >>> from ragkit.eval.report import primary_metric
    >>> primary_metric({"kind": "kgqa"})
    'execution_accuracy'
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from ragkit.errors import MissingDependencyError

__all__ = ["write_json", "render_html", "write_html", "primary_metric"]

_PRIMARY = {"kgqa": "execution_accuracy", "textqa": "f1"}


def primary_metric(report: dict[str, Any]) -> str:
    """The headline metric of a report: execution accuracy (KGQA) or token F1 (text QA)."""
    return _PRIMARY.get(report.get("kind", "kgqa"), "execution_accuracy")


def write_json(reports: list[dict[str, Any]], path: str | Path) -> None:
    """Write the reports as a JSON list (one object per pipeline)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(reports, indent=2, default=str) + "\n", encoding="utf-8")


# ---- plots ------------------------------------------------------------------------------------
def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("matplotlib", "eval", "the HTML report's plots") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    text = re.sub(r"(?s)<metadata>.*?</metadata>", "", text)  # matplotlib's RDF block: dates and licence URIs
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG sits inline in HTML


def _cost_per_1k(tok: dict[str, Any]) -> tuple[float | None, str]:
    hw = tok.get("hardware")
    if hw and hw.get("per_1k_questions") is not None:
        return hw["per_1k_questions"], "USD per 1,000 questions (hardware)"
    n = tok.get("questions") or 0
    mean = tok.get("latency_mean")
    return (mean * 1000 / 3600 if mean is not None and n else None), "busy hours per 1,000 questions"


def _plot_accuracy_vs_cost(reports: list[dict[str, Any]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    label = ""
    for r in reports:
        m = r["metrics"].get(primary_metric(r)) or {}
        x, label = _cost_per_1k(r["tokenomics"])
        if m.get("value") is None or x is None:
            continue
        y = m["value"]
        lo, hi = m.get("ci") or (y, y)
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=4, label=r["name"])
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel(label or "cost per 1,000 questions")
    ax.set_ylabel(f"{primary_metric(reports[0]).replace('_', ' ')} (95% CI)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Accuracy against cost")
    ax.grid(alpha=0.3)
    return _svg(fig)


def _plot_latency(reports: list[dict[str, Any]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.7 * len(reports) + 1.5))
    data = [r["tokenomics"].get("latency_values") or [0.0] for r in reports]
    ax.boxplot(data, orientation="horizontal", showmeans=True)
    ax.set_yticks(range(1, len(reports) + 1), [r["name"] for r in reports])
    ax.set_xlabel("seconds per question")
    ax.set_title("Latency distribution (box: quartiles; whiskers 1.5 IQR; triangle: mean)")
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def _plot_tokens_per_stage(reports: list[dict[str, Any]]) -> str:
    plt = _pyplot()
    labels, t_in, t_out = [], [], []
    for r in reports:
        for name, st in r["tokenomics"]["stages"].items():
            if st.get("tokens_in") or st.get("tokens_out"):
                labels.append(f"{r['name']} / {name}")
                t_in.append(st.get("tokens_in_per_question") or 0.0)
                t_out.append(st.get("tokens_out_per_question") or 0.0)
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.4 * max(1, len(labels))))
    ys = range(len(labels))
    ax.barh(ys, t_in, label="tokens in")
    ax.barh(ys, t_out, left=t_in, label="tokens out")
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlabel("tokens per question")
    ax.set_title("Tokens per stage")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def _plot_prompt_parts(reports: list[dict[str, Any]]) -> str | None:
    plt = _pyplot()
    rows = []
    for r in reports:
        for name, st in r["tokenomics"]["stages"].items():
            pr = st.get("prompt")
            if pr and pr.get("parts_mean"):
                rows.append((f"{r['name']} / {name}", pr["tokens_mean"], pr["parts_mean"]))
    if not rows:
        return None
    parts = sorted({k for _, _, p in rows for k in p})
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.45 * len(rows)))
    left = [0.0] * len(rows)
    for part in parts:
        vals = [p.get(part, 0.0) for _, _, p in rows]
        ax.barh(range(len(rows)), vals, left=left, label=part)
        left = [a + b for a, b in zip(left, vals)]
    other = [max(0.0, total - used) for (_, total, _), used in zip(rows, left)]
    ax.barh(range(len(rows)), other, left=left, label="template/other", color="#cccccc")
    ax.set_yticks(range(len(rows)), [lab for lab, _, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("prompt tokens (mean per question, first call)")
    ax.set_title("What the prompts are made of")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def _plot_cost_co2(reports: list[dict[str, Any]]) -> str:
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 0.8 + 0.6 * len(reports) + 1.6))
    names = [r["name"] for r in reports]
    ys = list(range(len(reports)))
    hw = [((r["tokenomics"].get("hardware") or {}).get("per_1k_questions") or 0.0) for r in reports]
    apis = [r["tokenomics"].get("api") or {} for r in reports]
    cheapest = [min((v["per_1k_questions"] or 0.0 for v in a.values()), default=0.0) for a in apis]
    a1.barh([y - 0.2 for y in ys], hw, height=0.4, label="self-hosted (hardware price)")
    a1.barh([y + 0.2 for y in ys], cheapest, height=0.4, label="cheapest API price in table")
    a1.set_yticks(ys, names)
    a1.invert_yaxis()
    a1.set_xlabel("USD per 1,000 questions")
    a1.set_title("Cost per 1,000 questions")
    a1.legend(fontsize=7, loc="lower right")
    co2 = [((r["tokenomics"].get("energy") or {}).get("kg_co2e_per_1k_questions") or 0.0) * 1000 for r in reports]
    basis = [(r["tokenomics"].get("energy") or {}).get("basis", "not measured") for r in reports]
    bars = a2.barh(ys, co2, color=["#2a9d8f" if b == "measured" else "#e9c46a" for b in basis])
    for bar, b in zip(bars, basis):
        a2.annotate(b, (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    a2.set_yticks(ys, names)
    a2.invert_yaxis()
    a2.set_xlabel("gCO2e per 1,000 questions")
    a2.set_title("CO2 per 1,000 questions")
    for ax in (a1, a2):
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _svg(fig)


# ---- HTML -------------------------------------------------------------------------------------
def _f(x: Any, fmt: str = "{:.3f}") -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, float)):
        return fmt.format(x)
    return html.escape(str(x))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_table(reports: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(k for r in reports for k in r["metrics"]))
    rows = []
    for r in reports:
        row = [html.escape(r["name"]), str(r.get("n", ""))]
        for k in names:
            m = r["metrics"].get(k)
            if not m or m.get("value") is None:
                row.append("–")
                continue
            ci = m.get("ci")
            row.append(f"{m['value']:.3f}" + (f" <small>[{ci[0]:.3f}, {ci[1]:.3f}]</small>" if ci else ""))
        rows.append(row)
    return _table(["pipeline", "n", *[k.replace("_", " ") for k in names]], rows)


def _tokenomics_table(reports: list[dict[str, Any]]) -> str:
    rows = []
    for r in reports:
        t = r["tokenomics"]
        hw = t.get("hardware") or {}
        en = t.get("energy") or {}
        rows.append(
            [
                html.escape(r["name"]),
                _f(t.get("latency_p50"), "{:.2f} s"),
                _f(t.get("latency_p95"), "{:.2f} s"),
                _f(t.get("ttft_p50"), "{:.3f} s"),
                _f(t.get("tpot_p50"), "{:.4f} s"),
                _f(t.get("throughput_tokens_per_s"), "{:.1f}"),
                f"{_f(t.get('tokens_in_per_question'), '{:.0f}')} / {_f(t.get('tokens_out_per_question'), '{:.0f}')}",
                _f(hw.get("per_million_tokens"), "${:.4f}"),
                _f(hw.get("per_1k_questions"), "${:.4f}"),
                _f(en.get("kwh_per_1k_questions"), "{:.4f}"),
                _f((en.get("kg_co2e_per_1k_questions") or 0) * 1000 if en else None, "{:.2f} g") + (f" <small>({html.escape(en['basis'])})</small>" if en else ""),
            ]
        )
    return _table(
        ["pipeline", "latency p50", "p95", "TTFT p50", "TPOT p50", "out tok/s", "tokens in/out per q", "$ / M tokens", "$ / 1k q", "kWh / 1k q", "CO2e / 1k q"],
        rows,
    )


def _api_table(reports: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(k for r in reports for k in (r["tokenomics"].get("api") or {})))
    rows = [[html.escape(r["name"])] + [_f((r["tokenomics"]["api"].get(k) or {}).get("per_1k_questions"), "${:.4f}") for k in names] for r in reports]
    first = reports[0]["tokenomics"]
    prices = ", ".join(f"{html.escape(k)}: ${v['input']}/${v['output']} per M in/out" for k, v in (first.get("api") or {}).items())
    return _table(["pipeline", *[f"{k} $ / 1k q" for k in names]], rows) + f"<p class=note>Prices ({html.escape(str(first.get('api_prices_as_of')))}): {prices}.</p>"


def _hidden_table(reports: list[dict[str, Any]]) -> str:
    rows = []
    for r in reports:
        for name, st in r["tokenomics"]["stages"].items():
            pr, ex = st.get("prompt"), st.get("extra_calls")
            if not pr and not ex:
                continue
            shares = ", ".join(f"{k} {v:.0%}" for k, v in (pr or {}).get("shares", {}).items() if v is not None)
            rows.append(
                [
                    html.escape(f"{r['name']} / {name}"),
                    _f((pr or {}).get("tokens_mean"), "{:.0f}"),
                    html.escape(shares) or "–",
                    _f((ex or {}).get("model_calls_beyond_first"), "{:d}"),
                    _f((ex or {}).get("repair_rounds"), "{:d}"),
                    _f((ex or {}).get("extra_candidates"), "{:d}"),
                    _f((ex or {}).get("tokens_in_of_extra_calls"), "{:d}"),
                ]
            )
    if not rows:
        return "<p>No stage recorded its prompt's parts.</p>"
    return _table(["stage", "prompt tokens (mean)", "share of prompt", "extra model calls", "repair rounds", "extra candidates", "tokens in of extra calls"], rows)


def _energy_note(reports: list[dict[str, Any]]) -> str:
    lines = []
    for r in reports:
        en = r["tokenomics"].get("energy")
        if not en:
            lines.append(f"<li>{html.escape(r['name'])}: energy not measured.</li>")
            continue
        grid = en.get("grid_g_per_kwh")
        lines.append(
            f"<li>{html.escape(r['name'])}: <b>{html.escape(en['basis'])}</b> "
            f"(CPU: {html.escape(en.get('cpu_method', '?'))}; RAM: {html.escape(en.get('ram_method', '?'))}); "
            f"{en['kwh']:.3g} kWh, {en['kg_co2e'] * 1000:.3g} gCO2e over {en.get('items', 0)} questions run in "
            f"{en.get('sessions', 1)} session(s), grid {_f(grid, '{:.0f}')} gCO2e/kWh "
            f"({html.escape(str(en.get('country_iso_code') or 'world average'))}). Includes model loading and indexing.</li>"
        )
    return "<ul>" + "".join(lines) + "</ul>"


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left} small{color:#666} .note{font-size:12px;color:#555}
.plots{display:flex;flex-wrap:wrap;gap:16px} .plots svg{max-width:100%;height:auto}
"""


def render_html(reports: list[dict[str, Any]], *, title: str = "ragkit evaluation") -> str:
    """The report page: tables and plots for every pipeline, all inline (no network needed to view it)."""
    if not reports:
        raise ValueError("no reports to render")
    datasets = ", ".join(sorted({str(r.get("dataset")) for r in reports}))
    plots = [_plot_accuracy_vs_cost(reports), _plot_cost_co2(reports), _plot_latency(reports), _plot_tokens_per_stage(reports)]
    parts = _plot_prompt_parts(reports)
    if parts:
        plots.append(parts)
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=note>Dataset: {html.escape(datasets)}. Generated {when}. Intervals are 95% percentile bootstrap.</p>",
        "<h2>Quality</h2>",
        _metrics_table(reports),
        "<h2>Tokenomics</h2>",
        _tokenomics_table(reports),
        "<h2>Per-token API prices, for comparison</h2>",
        _api_table(reports),
        "<h2>Hidden costs</h2>",
        _hidden_table(reports),
        "<h2>Energy and CO2</h2>",
        _energy_note(reports),
        "<h2>Plots</h2>",
        '<div class="plots">' + "".join(f"<figure>{svg}</figure>" for svg in plots) + "</div>",
    ]
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def write_html(reports: list[dict[str, Any]], path: str | Path) -> None:
    """Write :func:`render_html`'s page to ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(reports), encoding="utf-8")
