"""Coverage-aware selection: choose context items that together address every part of the question.

The question is split into *parts*: named entities (runs of capitalised words, quoted strings,
numbers; weight 2) and content words (weight 1). Items are then chosen greedily; each step takes
the candidate with the highest utility::

    utility = p + coverage_weight * (share of the question's weight it newly covers)
                - redundancy_weight * (its largest word overlap with an item already chosen)
                + bridge_weight * (1 if it is linked to a chosen item, else 0)

where ``p`` is the candidate's calibrated probability of relevance. A candidate is *linked* to a
chosen item when one's title is named in the other's text: the usual shape of a two-hop question,
whose second passage shares no words with the question but is named by the first. Five copies of
one fact lose to four facts and a different one.

Example:
    >>> from ragkit.stages.rerankers.selection import Candidate, select, question_parts
    >>> question_parts("Are Ann Lee and Bob Ray both directors?")
    {'ann lee': 2.0, 'bob ray': 2.0, 'director': 1.0}
    >>> cands = [Candidate("a1", "Ann Lee is a director.", p=0.9), Candidate("a2", "Ann Lee directs films.", p=0.8),
    ...          Candidate("b1", "Bob Ray is a director.", p=0.7)]
    >>> [c.key for c in select("Are Ann Lee and Bob Ray both directors?", cands, k=2)]
    ['a1', 'b1']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Candidate", "question_parts", "select", "coverage", "terms"]

_STOP = frozenset(
    "a about above after again against all also am an and any are as at be because been before being below between "
    "both but by can could did do does doing done down during each either few for from further had has have having he her "
    "here hers him his how i if in into is it its itself just me more most my neither no nor not of off on once only or "
    "other our out over own same she should so some such than that the their theirs them then there these they this "
    "those through to too under until up very was we were what when where which while who whom whose why will with "
    "would you your yes name named called many much one two first last same".split()
)
_ENTITY = re.compile(r"\"([^\"]+)\"|'([^']{3,})'|((?:[A-Z][\w'&.-]*|[0-9][\w.,-]*)(?:\s+(?:(?:of|the|de|van|von|for|&)\s+)*(?:[A-Z][\w'&.-]*|[0-9][\w.,-]*))*)")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _stem(w: str) -> str:
    """A very light English stemmer: enough to match 'directors' with 'director'."""
    w = w[:-2] if w.endswith("'s") else w
    for suf, keep in (("ies", "y"), ("sses", "ss"), ("es", "e"), ("s", ""), ("ing", ""), ("ed", "")):
        if w.endswith(suf) and len(w) - len(suf) >= 3 and not w.endswith("ss"):
            return w[: -len(suf)] + keep
    return w


def terms(text: str) -> set[str]:
    """Stemmed lower-case content words of ``text``."""
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP}


def question_parts(question: str) -> dict[str, float]:
    """The parts of ``question`` a good context covers, with weights (entities 2, content words 1)."""
    parts: dict[str, float] = {}
    covered_words: set[str] = set()
    for m in _ENTITY.finditer(question):
        span = next(g for g in m.groups() if g)
        words = [w for w in _WORD.findall(span.lower()) if w not in _STOP]
        # A capitalised question word at the start ("Who", "In") is not an entity.
        if not words or (m.start() == 0 and len(words) == 1 and m.group(3) and span.lower() in _STOP):
            continue
        if m.group(3) and m.start() == 0 and len(span.split()) == 1:
            continue  # one capitalised word opening the sentence is usually just the sentence start
        parts[" ".join(words)] = 2.0
        covered_words.update(words)
    for w in _WORD.findall(question.lower()):
        if w in _STOP or w in covered_words or len(w) < 3:
            continue
        parts.setdefault(_stem(w), 1.0)
    return parts


def coverage(parts: dict[str, float], item_terms: set[str]) -> set[str]:
    """The parts an item with ``item_terms`` covers (an entity needs all its words)."""
    out = set()
    for p in parts:
        words = [_stem(w) for w in p.split()]
        if all(w in item_terms for w in words):
            out.add(p)
    return out


@dataclass
class Candidate:
    """One context item offered to :func:`select`: ``p`` is its calibrated probability of relevance."""

    key: str
    text: str
    title: str = ""
    p: float = 0.0
    kind: str = "passage"
    _terms: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if not self._terms:
            self._terms = terms(f"{self.title} {self.text}")


def _norm(s: str) -> str:
    return " " + " ".join(_WORD.findall(s.lower())) + " "


def _linked(a: Candidate, b: Candidate) -> bool:
    for x, y in ((a, b), (b, a)):
        t = _norm(x.title).strip()
        if len(t) >= 4 and f" {t} " in _norm(y.text):
            return True
    return False


def select(
    question: str,
    candidates: Sequence[Candidate],
    k: int,
    *,
    coverage_weight: float = 0.2,
    redundancy_weight: float = 0.2,
    bridge_weight: float = 0.1,
) -> list[Candidate]:
    """Choose up to ``k`` candidates greedily by utility (see the module docstring), in choice order."""
    parts = question_parts(question)
    total = sum(parts.values()) or 1.0
    covers = {id(c): coverage(parts, c._terms) for c in candidates}
    left = list(candidates)
    chosen: list[Candidate] = []
    covered: set[str] = set()
    while left and len(chosen) < k:

        def utility(c: Candidate) -> float:
            gain = sum(parts[p] for p in covers[id(c)] - covered) / total
            red = max((_overlap(c, s) for s in chosen), default=0.0)
            bridge = 1.0 if bridge_weight and any(_linked(c, s) for s in chosen if s.title != c.title) else 0.0
            return c.p + coverage_weight * gain - redundancy_weight * red + bridge_weight * bridge

        best = max(left, key=utility)
        chosen.append(best)
        covered |= covers[id(best)]
        left.remove(best)
    return chosen


def _overlap(a: Candidate, b: Candidate) -> float:
    if not a._terms or not b._terms:
        return 0.0
    return len(a._terms & b._terms) / len(a._terms | b._terms)
