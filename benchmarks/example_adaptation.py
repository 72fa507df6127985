"""How far would adapting a retrieved example's values go, under the evaluation protocol?

For each dev question, the examples the protocol allows (other questions of its graph, without the
ones whose gold query or gold answers equal its own) whose question differs from it only by words
replaced, not added or dropped (word-level similarity at least 0.6). In the example's gold query,
every literal that is one of the replaced words is swapped for the question's word, and the query
is run on the graph. This is an upper bound for "adapt the nearest example's query to the new
question's values": it uses the gold queries of the examples and no model.

Usage::

    python benchmarks/example_adaptation.py movies          # seconds
    python benchmarks/example_adaptation.py spider4sparql

Prints, per dataset, how many questions have such an example and how often the adapted query of the
most similar one (or any of the three most similar) returns the gold rows.
"""

from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path
from typing import Any

from ragkit.eval.kgqa import KgqaItem, execution_match, load_kgqa
from ragkit.stores.base import GraphStore

WORD = re.compile(r"\"[^\"]+\"|'[^']+'|[\w.-]+|[^\w\s]")
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'')
NUMBER = re.compile(r"(?<![\w.?$#])\d+(?:\.\d+)?(?!\w)")


def fold(q: str) -> str:
    return " ".join(q.lower().split())


def literals(query: str) -> set[str]:
    """The string and number literals of a query."""
    return {a or b for a, b in STRING.findall(query)} | set(NUMBER.findall(STRING.sub('""', query)))


def adapt(example: KgqaItem, question: str) -> tuple[str, float] | None:
    """The example's query with its literals swapped for the question's words, and the questions'
    similarity; None when the questions differ by more than replaced words, or no literal changes."""
    a, b = WORD.findall(example.question), WORD.findall(question)
    sm = difflib.SequenceMatcher(a=[w.lower() for w in a], b=[w.lower() for w in b], autojunk=False)
    if sm.ratio() < 0.6:
        return None
    swaps = {}
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            continue
        old, new = " ".join(a[i1:i2]).strip("\"'“”"), " ".join(b[j1:j2]).strip("\"'“”")
        if op != "replace" or not old or not new:
            return None  # words added or dropped: another question, not other values
        swaps[old.lower()] = new
    query = example.query
    for lit in literals(example.query):
        if lit.lower() in swaps:
            query = re.sub(rf"(?<!\w){re.escape(lit)}(?!\w)", swaps[lit.lower()].replace("\\", "\\\\"), query)
    return (query, sm.ratio()) if query != example.query else None


def open_store(dataset: Path, graph: str, language: str) -> GraphStore:
    if language == "cypher":
        from ragkit.stores.cypher import KgliteStore

        return KgliteStore(path=str(dataset / "graphs" / f"{graph}.cypher"))
    from ragkit.stores.rdf import OxigraphStore

    return OxigraphStore(path=str(next((dataset / "graphs").glob(f"{graph}.*"))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="a KGQA folder name under --data (movies, spider4sparql)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    args = ap.parse_args()
    folder = Path(args.data) / args.dataset
    items = load_kgqa(folder)
    stores: dict[str, Any] = {}
    adaptable = top = any3 = 0
    for it in items:
        pool = [e for e in items if e.graph == it.graph and e.id != it.id and fold(e.query) != fold(it.query) and e.answers != it.answers]
        found = sorted((r for e in pool if (r := adapt(e, it.question))), key=lambda r: -r[1])[:3]
        if not found:
            continue
        adaptable += 1
        store = stores.setdefault(it.graph, open_store(folder, it.graph, it.language))
        hits = []
        for query, _ in found:
            try:
                hits.append(execution_match([list(r) for r in store.query(query, limit=1000).rows], it.answers))
            except Exception:  # noqa: BLE001 - an adapted query that does not run is a miss
                hits.append(False)
        top += hits[0]
        any3 += any(hits)
    n = len(items)
    print(f"{args.dataset}: {n} questions; an adaptable example for {adaptable}; "
          f"the most similar one's adapted query correct for {top} ({top / n:.1%}); one of the three most similar for {any3} ({any3 / n:.1%})")


if __name__ == "__main__":
    main()
