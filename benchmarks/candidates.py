"""Where the right query was: the candidates `ragkit eval` recorded for each question of a KGQA run.

Every prediction row holds ``candidates``: each query the generators made (greedy, beams, repairs),
whether it ran, and whether its rows match the gold rows. From them:

- ``oracle``: questions where some candidate is right, the most a better selection could reach
  with these candidates;
- ``missed``: questions where a candidate is right but another was chosen, and where the right one
  stood in the ranking;
- by origin: how often greedy, beam and repair candidates are right.

Usage::

    python benchmarks/candidates.py benchmarks/results/predictions/movies-kfold-rag-vote [more files...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    with_candidates = [r for r in rows if r.get("candidates") is not None]
    oracle = [r for r in with_candidates if any(c["correct"] for c in r["candidates"])]
    missed = [r for r in oracle if not r["correct"]]
    made: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for r in with_candidates:
        for c in r["candidates"]:
            made[c["origin"]] += 1
            right[c["origin"]] += bool(c["correct"])
    rank_of_right = Counter(next(i for i, c in enumerate(r["candidates"]) if c["correct"]) for r in missed)
    n = len(rows)
    return {
        "questions": n,
        "with_candidates": len(with_candidates),
        "correct": sum(bool(r["correct"]) for r in rows),
        "oracle": len(oracle),
        "missed": len(missed),
        "missed_rank_of_first_right": dict(sorted(rank_of_right.items())),
        "candidates_per_question": round(sum(made.values()) / max(1, len(with_candidates)), 2),
        "by_origin": {o: {"made": made[o], "right": right[o]} for o in sorted(made)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("predictions", nargs="+", help="predictions files written by ragkit eval --predictions")
    args = ap.parse_args(argv)
    for name in args.predictions:
        path = Path(name)
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            return 2
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        s = summarize(rows)
        if not s["with_candidates"]:
            print(f"{path}: no candidates recorded (written before ragkit eval recorded them)", file=sys.stderr)
            return 2
        n = s["questions"]
        print(f"{path}: {n} questions, {s['candidates_per_question']} candidates each")
        print(f"  chosen right   {s['correct']:4d} ({100 * s['correct'] / n:.1f}%)")
        print(f"  some candidate {s['oracle']:4d} ({100 * s['oracle'] / n:.1f}%)  <- the most a better selection could reach")
        print(f"  right one not chosen {s['missed']} (rank of the first right one: {s['missed_rank_of_first_right']})")
        for origin, c in s["by_origin"].items():
            print(f"  {origin:7s} {c['right']:4d} right of {c['made']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
