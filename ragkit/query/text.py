"""Question skeletons: questions with their entity mentions and values masked.

Two questions that ask the same thing about different entities ("Who wrote The Iron Choir?",
"Who wrote Cold Water Gospel?") should look alike to example retrieval, and two that share an
entity but ask different things should not. Masking the mentions before embedding does that.

Example:
    >>> question_skeleton("Who wrote The Glass Orchard in 1998?")
    'Who wrote <E> in <N>?'
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["question_skeleton", "reply_body"]

# Capitalised words that start questions or are function words, not names.
_NOT_NAMES = {
    "who", "what", "which", "when", "where", "why", "how", "whose", "whom", "is", "are", "was", "were", "do", "does",
    "did", "has", "have", "had", "can", "could", "list", "show", "give", "name", "find", "return", "count", "tell",
    "in", "on", "of", "for", "the", "a", "an", "and", "or", "by", "to", "from", "with", "at", "i", "please",
}  # fmt: skip
_QUOTED = re.compile(r"\"[^\"]+\"|'[^']{2,}'|“[^”]+”")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
_WORD = re.compile(r"<[EN]>|[\w'’-]+|[^\w\s]")


def _joins_name(tokens: list[str], j: int) -> bool:
    """Whether ``tokens[j:]`` is lower-case joiners ("of", "of the") followed by a capitalised word."""
    k = j
    while k < len(tokens) and tokens[k] in ("of", "the", "and", "de", "von"):
        k += 1
    return j < k < len(tokens) and tokens[k][:1].isupper()


def question_skeleton(question: str, names: Iterable[str] = ()) -> str:
    """``question`` with quoted strings, known ``names``, capitalised name spans and numbers masked.

    Args:
        question: the question.
        names: entity labels known to occur (e.g. from the graph); matched case-insensitively,
            longest first, before the capitalisation heuristic.
    """
    text = _QUOTED.sub("<E>", question)
    for name in sorted({n for n in names if len(n) > 2}, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", "<E>", text, flags=re.I)
    text = _NUMBER.sub("<N>", text)
    tokens = _WORD.findall(text)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        is_cap = t == "<E>" or (t[:1].isupper() and t.lower() not in _NOT_NAMES)
        # inside a name, lower-case joiners ("of", "the") and a leading "The" stay part of it
        if is_cap or (t in ("The", "A") and i + 1 < len(tokens) and tokens[i + 1][:1].isupper() and tokens[i + 1].lower() not in _NOT_NAMES):
            j = i + 1
            while j < len(tokens) and (
                (tokens[j][:1].isupper() and tokens[j].lower() not in _NOT_NAMES - {"the", "of", "and", "a"})
                or _joins_name(tokens, j)
            ):
                j += 1
            out.append("<E>")
            i = j
            continue
        out.append(t)
        i += 1
    text = " ".join(out)
    text = re.sub(r"(<E>\s*)+", "<E> ", text)
    text = re.sub(r"(<N>\s*)+", "<N> ", text)
    text = re.sub(r"\s+([?.,!;:])", r"\1", text).strip()
    return re.sub(r"<([EN])> ([?.,!;:])", r"<\1>\2", text)


def reply_body(text: str, fence: re.Pattern[str], start: re.Pattern[str], turns: tuple[str, ...]) -> str:
    """The query part of a model's reply: inside a code fence if there is one, from the first match
    of ``start`` on, and before the first line that opens another turn (``Question:`` and the like)."""
    m = fence.search(text)
    if m:
        text = m.group(1)
    m = start.search(text)
    if m:
        text = text[m.start() :]
    cut = re.search(rf"(?im)^\s*({'|'.join(turns)})\s*:", text)
    if cut and cut.start() > 0:
        text = text[: cut.start()]
    return text
