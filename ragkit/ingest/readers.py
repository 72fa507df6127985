"""Reading corpora: JSON Lines files and folders of text or Markdown files, as :class:`Document` objects.

A JSONL corpus has one ``{"id", "title", "text"}`` object a line; any other scalar keys become the
document's metadata (usable in retrieval filters). A folder yields one document per ``.txt``/``.md``
file (searched recursively, in sorted order, so ids are stable): the id is the path relative to the
folder, the title the first Markdown heading (or the file name), and the metadata carries ``source``
(the relative path) and ``format``.

Example:
    >>> from ragkit.ingest.readers import read_corpus
    >>> docs = read_corpus("fixtures/text/library_corpus.jsonl")
    >>> docs[0].id, bool(docs[0].text)
    ('lib-p01', True)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ragkit.core.jsonl import json_lines
from ragkit.errors import InputError

__all__ = ["Document", "read_corpus", "read_jsonl", "read_folder", "FOLDER_SUFFIXES"]

FOLDER_SUFFIXES = (".txt", ".md", ".markdown")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n---\s*\n", re.S)
Scalar = str | int | float | bool


class Document(BaseModel):
    """One document of a corpus, before chunking."""

    model_config = ConfigDict(frozen=True)

    id: str
    title: str = ""
    text: str
    metadata: dict[str, Scalar] = Field(default_factory=dict)


def read_corpus(path: str | Path) -> list[Document]:
    """Read a ``.jsonl`` file or a folder of ``.txt``/``.md`` files. Raises :class:`InputError` if unusable."""
    p = Path(path).expanduser()
    if p.is_dir():
        docs = list(read_folder(p))
    elif p.is_file():
        if p.suffix not in (".jsonl", ".ndjson"):
            raise InputError(f"corpus {p}: expected a .jsonl file or a folder of .txt/.md files")
        docs = list(read_jsonl(p))
    else:
        raise InputError(f"corpus {p} does not exist (check the 'corpus' path of the index resource)")
    if not docs:
        raise InputError(f"corpus {p} has no documents")
    seen: set[str] = set()
    for d in docs:
        if d.id in seen:
            raise InputError(f"corpus {p}: document id {d.id!r} occurs twice (ids must be unique)")
        seen.add(d.id)
    return docs


def read_jsonl(path: str | Path) -> Iterator[Document]:
    """Documents from a JSON Lines file; a bad line raises :class:`InputError` naming ``file:line``."""
    p = Path(path)
    for n, row in json_lines(p):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InputError(f"{p}:{n}: each line needs a 'text' string (and an 'id'; 'title' is optional)")
        doc_id = row.get("id", f"{p.stem}-{n}")
        meta = {k: v for k, v in row.items() if k not in ("id", "title", "text") and isinstance(v, Scalar)}
        yield Document(id=str(doc_id), title=str(row.get("title") or ""), text=row["text"], metadata=meta)


def read_folder(folder: str | Path, suffixes: tuple[str, ...] = FOLDER_SUFFIXES) -> Iterator[Document]:
    """One document per text or Markdown file under ``folder`` (recursively, hidden files skipped)."""
    root = Path(folder)
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if not f.is_file() or f.suffix.lower() not in suffixes or any(part.startswith(".") for part in rel.parts):
            continue
        try:
            raw = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{f}: not UTF-8 text (convert it, or move it out of the corpus folder)") from None
        is_md = f.suffix.lower() != ".txt"
        text, title = _markdown(raw) if is_md else (raw.strip(), "")
        if not text:
            continue
        meta: dict[str, Any] = {"source": rel.as_posix(), "format": "markdown" if is_md else "text"}
        yield Document(id=rel.as_posix(), title=title or f.stem.replace("_", " ").replace("-", " "), text=text, metadata=meta)


def _markdown(raw: str) -> tuple[str, str]:
    """Markdown to (plain-ish text, title): front matter dropped, the first heading taken as the title."""
    body = _FRONT_MATTER.sub("", raw, count=1)
    m = _HEADING.search(body)
    title = m.group(1).strip() if m else ""
    # Headings stay in the text as plain lines: they carry words retrieval should see.
    text = _HEADING.sub(lambda h: h.group(1), body)
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images -> alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links -> link text
    text = re.sub(r"^\s*(```|~~~).*$", "", text, flags=re.M)  # fences go, the code they hold stays
    text = re.sub(r"[*_`]{1,3}(\S[^*_`]*?)[*_`]{1,3}", r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip(), title
