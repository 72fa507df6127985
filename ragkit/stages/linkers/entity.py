"""Entity linking: which values stored in the graph does the question mention?

Small query-writing models copy entity names from the examples they are shown instead of the ones
in the question. Showing them, next to the question, the exact values the graph stores for its
mentions (and, next to each example, the values its query uses) turns the task into copying the
right string.

Example:
    >>> from ragkit.stages.linkers.entity import EntityLinker
    >>> from ragkit.testing import TinyGraphStore
    >>> EntityLinker(store=TinyGraphStore()).run(question="Where does ann live?").entities.values
    []
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Output, Stage
from ragkit.errors import InputError
from ragkit.stores.base import GraphStore, GraphValue

__all__ = ["EntityLinker", "LinkedEntities", "EntityMention", "query_values"]

_STOP = {
    "the", "a", "an", "of", "in", "on", "by", "for", "and", "or", "to", "is", "are", "was", "were", "which", "who",
    "what", "when", "where", "how", "many", "much", "did", "does", "do", "has", "have", "with", "from", "that", "this",
    "all", "each", "name", "names", "list", "show", "give", "than", "more", "less", "most", "least", "number",
}  # fmt: skip
_TOKEN = re.compile(r"\w[\w'’.-]*\w|\w")


class EntityMention(BaseModel):
    """A span of the question and the graph value it matches."""

    model_config = ConfigDict(frozen=True)
    span: str
    value: str
    property: str
    cls: str | None = None


class LinkedEntities(BaseModel):
    """The mentions found, best (longest) first."""

    model_config = ConfigDict(frozen=True)
    mentions: list[EntityMention] = []

    @property
    def values(self) -> list[str]:
        return list(dict.fromkeys(m.value for m in self.mentions))


class LinkerOutput(Output):
    entities: LinkedEntities


def query_values(query: str) -> list[str]:
    """The string literals a query uses (what an example's hint shows), in order, without repeats."""
    found = re.findall(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'', query)
    return list(dict.fromkeys(a or b for a, b in found if (a or b)))


@register_stage("entity_linker")
class EntityLinker(Stage):
    """Finds the graph's stored string values that the question mentions (exact, case-insensitive).

    Every span of up to ``max_words`` words is looked up in an index of the store's short string
    values; longer spans win and mentions do not overlap. A one-word match must not be a common
    function word.

    Args:
        store: the graph store resource.
        max_words: longest span looked up.
        max_mentions: mentions returned at most.
    """

    thread_safe: ClassVar[bool] = True  # run() keeps its state in locals

    def __init__(self, store: GraphStore, max_words: int = 8, max_mentions: int = 4) -> None:
        if max_words < 1 or max_mentions < 1:
            raise ValueError("max_words and max_mentions must be at least 1")
        self.store = store
        self.max_words = max_words
        self.max_mentions = max_mentions
        self._index: tuple[str, dict[str, list[GraphValue]]] | None = None

    def _lookup(self) -> dict[str, list[GraphValue]]:
        fp = self.store.fingerprint()
        if self._index is None or self._index[0] != fp:
            index: dict[str, list[GraphValue]] = defaultdict(list)
            for v in self.store.values():
                index[" ".join(_TOKEN.findall(v.text.lower()))].append(v)
            self._index = (fp, dict(index))
        return self._index[1]

    def run(self, question: str) -> LinkerOutput:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty (ask something)")
        index = self._lookup()
        spans = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(question)]
        taken = [False] * len(spans)
        mentions: list[EntityMention] = []
        for n in range(min(self.max_words, len(spans)), 0, -1):
            for i in range(len(spans) - n + 1):
                if any(taken[i : i + n]):
                    continue
                words = [w for _, _, w in spans[i : i + n]]
                # a lone lower-case word ("city") is a common noun, not a name
                if n == 1 and (words[0].lower() in _STOP or len(words[0]) < 3 or not (words[0][0].isupper() or words[0][0].isdigit())):
                    continue
                hits = index.get(" ".join(words).lower())
                if not hits:
                    continue
                text = question[spans[i][0] : spans[i + n - 1][1]]
                for h in hits[:2]:
                    mentions.append(EntityMention(span=text, value=h.text, property=h.property, cls=h.cls))
                taken[i : i + n] = [True] * n
        mentions.sort(key=lambda m: question.find(m.span))
        mentions = mentions[: self.max_mentions]
        rec = current_recorder()
        if rec is not None:
            rec.note("mentions", len(mentions))
        return LinkerOutput(entities=LinkedEntities(mentions=mentions))
