"""Helpers shared by the text unit tests: fake corpora."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
FIXTURE_CORPUS = ROOT / "fixtures" / "text" / "library_corpus.jsonl"
FIXTURE_QUESTIONS = ROOT / "fixtures" / "text"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TOPICS = ["river", "mountain", "castle", "forest", "harbour", "desert", "glacier", "meadow", "volcano", "island"]


def synthetic_docs(n: int, prefix: str = "d") -> list[dict[str, Any]]:
    """``n`` short documents on ten topics, each with a 'topic' metadata field."""
    return [
        {
            "id": f"{prefix}{i}",
            "title": f"{TOPICS[i % 10].title()} note {i}",
            "text": f"Note {i} describes the {TOPICS[i % 10]} number {i // 10} in detail.",
            "topic": TOPICS[i % 10],
        }
        for i in range(n)
    ]
