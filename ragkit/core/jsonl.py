"""JSON Lines input shared by every reader of user files (banks, datasets, corpora, training data)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragkit.errors import InputError

__all__ = ["json_lines"]


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of ``path``, read lazily.

    Raises:
        InputError: naming ``file:line`` for a line that is not JSON.
    """
    p = Path(path)
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{n}: not valid JSON ({e.msg})") from None
