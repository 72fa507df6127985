"""Decoding constrained to the schema: where a query names a class, property, label, relationship
type or property key, the model may only write one the schema has.

A :class:`TermConstraint` knows, for a query language, where names start (``lib:`` in SPARQL,
``(n:`` / ``[r:`` / ``n.`` in Cypher) and which names each place accepts. :class:`TermLogitsProcessor`
applies it to a ``transformers`` generation: at every step it masks the tokens that would spell a
name the schema lacks, over the model's own tokenizer, so a token that carries a name's end and the
next character, or a whole ``:name``, is judged as a whole.

Only the schema's own names are constrained: standard vocabularies (``rdf:``, ``rdfs:``, ``xsd:``),
variables, numbers and keywords are left to the model. String literals are left free too, unless the
constraint is :meth:`~TermConstraint.grounded_in` the question and the graph values linked in it: a
quoted literal may then only spell a piece of one of those texts (letter case aside), so the model
cannot write a name the question never mentions, such as an example's value or a frequent one from
its training.

Example:
    >>> from ragkit.stores.base import GraphSchema, SchemaClass, SchemaProperty
    >>> schema = GraphSchema(language="sparql", prefixes={"lib": "http://example.org/lib/"},
    ...     classes=(SchemaClass(name="http://example.org/lib/Book"),),
    ...     properties=(SchemaProperty(name="http://example.org/lib/author"),))
    >>> c = TermConstraint.for_schema(schema)
    >>> c.accepts("SELECT ?b WHERE { ?b a lib:Bo"), c.accepts("SELECT ?b WHERE { ?b lib:writer ?a }")
    (True, False)
"""

from __future__ import annotations

import bisect
import copy
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragkit.query.cypher import (
    _NODE,
    _REL,
    RelationshipEnds,
    _label_names,
    _type_names,
    far_labels,
    past_final_return,
    property_owners,
    relationship_ends,
    reply_may_end,
    variable_owners,
)
from ragkit.query.sparql import _STANDARD_NS
from ragkit.stores.base import GraphSchema, _local_name

__all__ = ["TermConstraint", "TermLogitsProcessor", "token_strings"]

_SPARQL_NAME = re.compile(r"(?:[\w\-]|\\.?)*")
_WINDOW = 96
"""Characters of already generated text a name check looks back over (names are shorter)."""


@dataclass
class _Place:
    """One kind of place where a name goes: a regex whose group ``name`` is the name written so far
    (it must match at the end of the text for an open name), and the names allowed there."""

    kind: str
    pattern: re.Pattern[str]
    names: list[str]  # sorted
    name_chars: re.Pattern[str]
    position: Callable[[str, int], str | None] | None = None
    """Which kind of name stands at an offset of the text (SPARQL: ``property`` in a predicate's
    place, ``class`` after ``a``, None for subjects and objects, which may name instances): the
    place applies only where it gives this place's ``kind``."""
    needle: str = ""
    """Text every match contains (SPARQL: ``pfx:``): a text without it has no name of this place."""
    _set: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._set = set(self.names)

    def complete(self, name: str) -> bool:
        return name in self._set

    def prefix(self, partial: str) -> bool:
        """Some allowed name starts with ``partial``."""
        i = bisect.bisect_left(self.names, partial)
        return i < len(self.names) and self.names[i].startswith(partial)

    def next_chars(self, partial: str) -> set[str]:
        """Characters that may follow ``partial`` inside an allowed name."""
        out = set()
        i = bisect.bisect_left(self.names, partial)
        while i < len(self.names) and self.names[i].startswith(partial):
            if len(self.names[i]) > len(partial):
                out.add(self.names[i][len(partial)])
            i += 1
        return out


@dataclass
class _Context:
    """What the whole query written so far says that a look at its end cannot: the Cypher variables
    it binds and the labels (or relationship types) it gives them, the SPARQL prefixes it declares."""

    bound: set[str] = field(default_factory=set)
    prefixes: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)


# Cypher hops, for the relationship directions: a hop up to the node it leads to, a node up to a
# relationship's ``[``, and a hop as far as its closing arrow
_HOP_TO_NODE = re.compile(rf"{_NODE}\s*{_REL}\s*\Z")
_NODE_TO_REL = re.compile(rf"{_NODE}\s*(<?)-\s*\Z")
_HOP_ARROW = re.compile(rf"{_NODE}\s*{_REL}")


_PREFIX_DECL = re.compile(r"(?i)\bPREFIX\s+([A-Za-z][\w\-.]*)?:\s*<([^>\s]*)>")
_QUOTED = re.compile(r"'((?:[^'\\\n]|\\.)*)'?|\"((?:[^\"\\\n]|\\.)*)\"?")
"""A string literal in either quote, closed or not, its text in a group."""
_CLOSED = {q: re.compile(rf"{q}(?:[^{q}\\\n]|\\.)*{q}") for q in "'\""}
"""A finished string literal in either quote (what :attr:`TermConstraint.blank_literals` finds open or closed)."""


class TermConstraint:
    """Where a query's names go and which ones are allowed, for one schema.

    Build it with :meth:`for_schema`. ``accepts(text)`` says whether a partial query names only
    allowed terms (its last name may be unfinished); the logits processor uses the same rule.
    SPARQL names are read with the prefixes the query declares (then the schema's), so
    ``PREFIX : <http://x/>`` followed by ``:a\\#b`` is checked as ``<http://x/a#b>``.
    """

    def __init__(
        self,
        places: Sequence[_Place],
        triggers: str,
        strings: re.Pattern[str],
        classes: Iterable[str] = (),
        properties: Iterable[str] = (),
        prefixes: dict[str, str] | None = None,
        ends: RelationshipEnds | None = None,
        keys: dict[str, set[str]] | None = None,
        over: Callable[[str], bool] | None = None,
        whole: Callable[[str], bool] | None = None,
    ) -> None:
        self.places = list(places)
        self.triggers = triggers
        """Characters that can open a name: a token without one cannot start a new name."""
        self._strings = strings
        self._iris = {"class": sorted(set(classes)), "property": sorted(set(properties))}
        self._prefixes = dict(prefixes or {})
        self._sparql_places: dict[tuple[str, str, str], _Place | None] = {}
        self._places_for: dict[tuple[tuple[str, str], ...], list[_Place]] = {}
        self._ends = dict(ends or {})
        """Cypher: each relationship type's start and end labels, where the schema records them. A
        hop must then follow the type's direction: an arrow the type cannot take, a type the node
        cannot take after ``<-``, or a far node's label the type cannot reach is ruled out, so a
        model that meant ``(:Movie)<-[:REVIEWED]-(:Person)`` but began ``(m:Movie)-[:REVIEWED]``
        finishes it undirected, ``-(p:Person)``, rather than ``->(p:Movie)``."""
        self._keys = dict(keys or {})
        """Cypher: the property keys of each label and relationship type. ``m.`` after ``(m:Movie)``
        may then name only a key a Movie has."""
        self._over = over
        """Whether a partial query is over: whatever it writes next would be cut from it (Cypher: a
        read clause begun after the final ``RETURN``)."""
        self._whole = whole
        """Whether a partial query may end here (Cypher: its last clause returns something, so that
        ``... WITH p, count(m) AS n ORDER BY n DESC LIMIT 1`` goes on to a ``RETURN``)."""
        self.sources: tuple[str, ...] = ()
        """The texts (lower case) a quoted string literal must be a piece of; empty: literals are free."""

    def grounded_in(self, texts: Iterable[str]) -> TermConstraint:
        """This constraint, with every quoted string literal drawn from ``texts``: what the query
        writes between quotes must be a piece of one of them, letter case aside (``'ben jones'``
        fits "directed by Ben Jones"; ``'Brady'`` fits nothing there). Give the question and the graph
        values linked in it. IRIs, comments and Cypher's backquoted names stay free."""
        grounded = copy.copy(self)
        grounded.sources = tuple(dict.fromkeys(t.lower() for t in texts if t))
        return grounded

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def for_schema(cls, schema: GraphSchema) -> TermConstraint | None:
        """The constraint for ``schema``'s language, or None when the schema names nothing to constrain."""
        if schema.language == "sparql":
            return cls._sparql(schema)
        return cls._cypher(schema)

    @classmethod
    def _sparql(cls, schema: GraphSchema) -> TermConstraint | None:
        classes = [c.name for c in schema.classes if not c.name.startswith(_STANDARD_NS)]
        props = [p.name for p in schema.properties if not p.name.startswith(_STANDARD_NS)]
        if not classes and not props:
            return None
        strings = re.compile(r'"(?:[^"\\\n]|\\.)*"?|\'(?:[^\'\\\n]|\\.)*\'?|<[^>\s]*>?|(?<!\\)#[^\n]*')
        return cls([], ":", strings, classes, props, schema.prefixes)

    def _sparql_place(self, pfx: str, ns: str, kind: str) -> _Place | None:
        """The ``kind`` names (class or property) ``pfx:`` may spell when it stands for ``ns``: the
        schema's in ``ns``, as prefixed-name local parts (``singer\\#age``); None when ``ns``
        holds none of the schema's terms (another vocabulary: left free)."""
        key = (pfx, ns, kind)
        if key not in self._sparql_places:
            place = None
            iris = self._iris[kind]
            if ns and not ns.startswith(_STANDARD_NS) and any(_starts(v, ns) for v in self._iris.values()):
                i = bisect.bisect_left(iris, ns)
                names = set()
                while i < len(iris) and iris[i].startswith(ns):
                    local = _local_name(iris[i][len(ns) :])
                    if local is not None:
                        names.add(local)
                    i += 1
                # A name in the schema's namespace must be one of its terms of that kind. It starts after
                # a delimiter, never inside another name, IRI or variable; "PREFIX lib:" declares the
                # prefix and is no name.
                pattern = re.compile(r"(?<![\w\\:?$<@.\-])(?<!PREFIX )(?<!prefix )" + re.escape(pfx) + r":(?P<name>(?:[\w\-]|\\.?)*)")
                place = _Place(kind, pattern, sorted(names), _SPARQL_NAME, _sparql_term_position, needle=pfx + ":")
            self._sparql_places[key] = place
        return self._sparql_places[key]

    def _places(self, ctx: _Context) -> list[_Place]:
        if not any(self._iris.values()):
            return self.places
        key = tuple(ctx.prefixes.items())  # the same for every token a decoding step tries
        if key not in self._places_for:
            prefixes = {**self._prefixes, **ctx.prefixes}
            places = [p for p in (self._sparql_place(pfx, ns, kind) for pfx, ns in prefixes.items() for kind in self._iris) if p is not None]
            self._places_for[key] = places
        return self._places_for[key]

    @classmethod
    def _cypher(cls, schema: GraphSchema) -> TermConstraint | None:
        labels = sorted({c.name for c in schema.classes if re.fullmatch(r"\w+", c.name)})
        rels = sorted({p.name for p in schema.properties if p.kind == "relationship" and re.fullmatch(r"\w+", p.name)})
        keys = sorted({p.name for p in schema.properties if p.kind != "relationship" and re.fullmatch(r"\w+", p.name)})
        word = re.compile(r"\w*")
        places = []
        if labels:
            places.append(_Place("label", re.compile(r"\(\s*\w*\s*(?::\s*\w+\s*)*:\s*(?P<name>\w*)"), labels, word))
        if rels:
            places.append(_Place("relationship", re.compile(r"\[\s*\w*\s*:\s*(?:\w+\s*\|\s*:?\s*)*(?P<name>\w*)"), rels, word))
        if keys:
            # only after a variable the query bound in a pattern: ``date.truncate(`` is a function
            places.append(_Place("property", re.compile(r"(?<![\w.$])(?P<var>[A-Za-z_]\w*)\.(?P<name>\w*)"), keys, word))
        if not places:
            return None
        strings = re.compile(r'"(?:[^"\\\n]|\\.)*"?|\'(?:[^\'\\\n]|\\.)*\'?|`[^`]*`?|//[^\n]*')
        ends = relationship_ends(schema)
        return cls(places, ":.|>" if ends else ":.|", strings, ends=ends, keys=property_owners(schema), over=past_final_return, whole=reply_may_end)

    # -- checks -----------------------------------------------------------------------------------
    def blank_literals(self, text: str) -> str:
        """``text`` with string literals, IRIs and comments blanked (same length), so names inside
        them are not seen."""
        return self._strings.sub(lambda m: " " * len(m.group(0)), text)

    def over(self, text: str) -> bool:
        """Whether the query ``text`` begins is over: what it writes from here on would be cut from it."""
        return self._over is not None and not self.inside_literal(text) and self._over(text)

    def may_end(self, text: str) -> bool:
        """Whether the query ``text`` begins may end here, as far as its clauses go."""
        return self._whole is None or self._whole(text)

    def open_literal(self, text: str) -> tuple[str, str] | None:
        """``(quote, written so far)`` when ``text`` ends inside a quoted string literal, else None."""
        last = None
        for last in self._strings.finditer(text):
            pass
        if last is None or last.end() != len(text) or last.group(0)[0] not in _CLOSED:
            return None
        written = last.group(0)
        if _CLOSED[written[0]].fullmatch(written):
            return None
        return written[0], written[1:]

    def inside_literal(self, text: str) -> bool:
        """True when ``text`` ends inside a string literal, IRI or comment (no name can start there)."""
        return self.blank_literals(text + "\x00").endswith(" ")

    def context(self, text: str) -> _Context:
        """What the whole of ``text`` (a query so far) binds and declares."""
        plain = self.blank_literals(text)
        return _Context(
            bound=set(re.findall(r"[(\[]\s*([A-Za-z_]\w*)", plain)),
            prefixes={p or "": ns for p, ns in _PREFIX_DECL.findall(text)},
            labels=variable_owners(plain) if self._ends or self._keys else {},
        )

    def _names(self, plain: str, start: int, ctx: _Context) -> Iterable[tuple[_Place, str, bool]]:
        """Each name in ``plain`` (literals blanked) whose span ends at or after ``start``:
        (place, name, open)."""
        for place in self._places(ctx):
            if place.needle and place.needle not in plain:
                continue
            for m in place.pattern.finditer(plain):
                if m.end() < start or (m.end() == m.start("name") and m.end() < len(plain)):
                    continue
                if "var" in m.groupdict() and m.group("var") not in ctx.bound:
                    continue  # ``date.truncate(``: a function, not a variable's property
                if place.position is not None and place.position(plain, m.start()) != place.kind:
                    continue
                yield self._narrowed(place, plain, m, ctx), m.group("name"), m.end() == len(plain)

    def _narrowed(self, place: _Place, plain: str, m: re.Match[str], ctx: _Context) -> _Place:
        """``place`` (a Cypher name the match ``m`` found) narrowed to the names that fit where it
        stands: a variable's property keys to those of its labels or relationship types, a far
        node's labels to those its relationship reaches, and after ``(n:Label)<-[`` the types
        that end at ``Label``."""
        at = m.start()
        if place.kind == "property":
            if not self._keys:
                return place
            allowed = set().union(*(self._keys.get(n, set()) for n in ctx.labels.get(m.group("var"), set())))
            if not allowed:
                return place  # labels unknown (or without keys): any key of the schema
        elif not self._ends or place.kind not in ("label", "relationship"):
            return place
        elif place.kind == "label":
            hop = _HOP_TO_NODE.search(plain, 0, at)
            if hop is None:
                return place
            var, labels, left, types, hops, right = hop.groups()[:6]
            if not types or hops:
                return place
            near = set(_label_names(labels)) or ctx.labels.get(var, set())
            arrow = "-" if bool(left) == bool(right) else "<-" if left else "->"
            allowed = far_labels(self._ends, _type_names(types), near, arrow)
        else:
            node = _NODE_TO_REL.search(plain, 0, at)
            if node is None:
                return place
            near = set(_label_names(node.group(2))) or ctx.labels.get(node.group(1), set())
            if not near:
                return place
            sides = (1,) if node.group(3) else (0, 1)  # after ``<-[`` the node is the end; after ``-[`` either
            allowed = {t for t in place.names if t not in self._ends or any(near & self._ends[t][i] for i in sides)}
        if allowed is None or allowed >= place._set:
            return place
        return _Place(place.kind, place.pattern, sorted(allowed & place._set), place.name_chars)

    def _arrows_fit(self, plain: str, start: int, ctx: _Context) -> bool:
        """Every Cypher hop whose ``->`` ends at or after ``start`` leaves its node the way one of its types can."""
        if not self._ends or ">" not in plain[max(0, start - 1) :]:
            return True
        for hop in _HOP_ARROW.finditer(plain):
            var, labels, left, types, hops, right = hop.groups()[:6]
            if hop.end() < start or not right or left or not types or hops:
                continue
            near = set(_label_names(labels)) or ctx.labels.get(var, set())
            if far_labels(self._ends, _type_names(types), near, "->") == set():
                return False
        return True

    def accepts(self, text: str, start: int = 0, context: _Context | None = None) -> bool:
        """True when every name in ``text`` ending at or after ``start`` is allowed (the last one,
        if the text ends inside it, needs only to begin an allowed name). ``context``: from
        :meth:`context` of the whole query, when ``text`` is only its end."""
        plain = self.blank_literals(text)
        ctx = context if context is not None else self.context(text)
        for place, name, open_ in self._names(plain, start, ctx):
            if not (place.prefix(name) if open_ else place.complete(name)):
                return False
        return self._arrows_fit(plain, start, ctx)

    def open_name(self, text: str, context: _Context | None = None) -> tuple[_Place, str] | None:
        """The name ``text`` ends inside, as (place, written so far), or None."""
        plain = self.blank_literals(text)
        ctx = context if context is not None else self.context(text)
        for place, name, open_ in self._names(plain, max(0, len(plain) - 1), ctx):
            if open_:
                return place, name
        return None


def _sparql_term_position(plain: str, start: int) -> str | None:
    """``property`` when a prefixed name at ``start`` is a predicate (or a property path's member),
    ``class`` when it is the class after ``a`` or ``rdf:type``: the places where a query names the
    schema. None for subjects, objects and names in expressions, which may be instances."""
    cut = max(plain.rfind(ch, 0, start) for ch in "{}.;,")
    segment = plain[cut + 1 : start]
    if segment.count("(") > segment.count(")"):
        return None  # inside FILTER(...), BIND(...), a function call
    words = segment.split()
    if cut >= 0 and plain[cut] == ",":
        return None  # another object
    if cut >= 0 and plain[cut] == ";":
        return None if words else "property"  # the next predicate
    if segment[-1:] in ("/", "|", "^", "!"):
        return "property"  # a property path goes on
    # count the terms written right before: subject -> predicate -> object (text a small model
    # writes need not have its braces, so keywords before the run are skipped rather than trusted)
    run = _terms_before(words)
    if run == 0 and words and words[-1] == "a":
        return "class" if _terms_before(words[:-1]) % 3 == 1 else None  # ``?x a``
    if run % 3 == 2 and words[-1] == "rdf:type":
        return "class"
    return "property" if run % 3 == 1 else None


def _terms_before(words: list[str]) -> int:
    """How many of the last ``words`` are terms (variables, IRIs, prefixed names, numbers) in a row."""
    run = 0
    for w in reversed(words):
        if not _TERM_WORD.fullmatch(w):
            break
        run += 1
    return run


def _starts(sorted_iris: list[str], ns: str) -> bool:
    i = bisect.bisect_left(sorted_iris, ns)
    return i < len(sorted_iris) and sorted_iris[i].startswith(ns)


_TERM_WORD = re.compile(r"[?$]\w+|<[^>\s]*>|[\w\-]*:\S*|\[\]|[\d.]+")


def token_strings(tokenizer: Any) -> list[str]:
    """What each token id adds to a text when appended (leading spaces kept, for SentencePiece
    tokenizers too), as the generator's ``decode`` would show it."""
    anchor = tokenizer.encode("a", add_special_tokens=False)
    base = tokenizer.decode(anchor)
    size = len(tokenizer)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(size)], skip_special_tokens=False)
    return [t.removeprefix(base) for t in texts]


class _Vocab:
    """A tokenizer's token strings, indexed for the constraint (built once per tokenizer)."""

    def __init__(self, strings: list[str], special: set[int]) -> None:
        self.strings = strings
        self.special = special
        self.by_first: dict[str, list[int]] = {}
        for i, s in enumerate(strings):
            if s and i not in special:
                self.by_first.setdefault(s[0], []).append(i)
        self._triggered: dict[str, list[int]] = {}
        self._untriggered: dict[str, dict[str, list[int]]] = {}
        self._untriggered_arrays: dict[str, dict[str, Any]] = {}
        self._in_literal: dict[str, tuple[dict[str, list[int]], dict[str, list[int]], int]] = {}
        self._openers: list[tuple[int, list[str]]] | None = None

    def literal_openers(self) -> list[tuple[int, list[str]]]:
        """The tokens that open a quoted string literal (or hold one whole) when written outside one,
        each with the lower-case text its literals hold (``'The`` opens one with ``the``)."""
        if self._openers is None:
            self._openers = []
            for i, s in enumerate(self.strings):
                if i not in self.special and ("'" in s or '"' in s):
                    held = [(a or b).lower() for a, b in _QUOTED.findall(s)]
                    if any(held):
                        self._openers.append((i, held))
        return self._openers

    def in_literal(self, quote: str) -> tuple[dict[str, list[int]], dict[str, list[int]], int]:
        """For a literal opened with ``quote``: the tokens without that quote by their lower-case
        text, the tokens with it by their lower-case text before it, and the longest text of the first."""
        if quote not in self._in_literal:
            inside: dict[str, list[int]] = {}
            closing: dict[str, list[int]] = {}
            for i, s in enumerate(self.strings):
                if not s or i in self.special:
                    continue
                low = s.lower()
                cut = low.find(quote)
                if cut < 0:
                    inside.setdefault(low, []).append(i)
                else:
                    closing.setdefault(low[:cut], []).append(i)
            self._in_literal[quote] = (inside, closing, max(map(len, inside), default=0))
        return self._in_literal[quote]

    def grounded(self, quote: str, written: str, sources: Sequence[str]) -> set[int]:
        """Tokens that keep a literal opened with ``quote``, ``written`` so far, a piece of one of
        ``sources`` (lower case): the ones that go on with the text after an occurrence of
        ``written``, and the ones that close the literal there."""
        inside, closing, longest = self.in_literal(quote)
        low = written.lower()
        allowed = set(closing.get("", ()))  # the literal may always end
        for source in sources:
            at = source.find(low)
            while at >= 0:
                rest = source[at + len(low) :]
                for n in range(1, min(len(rest), longest) + 1):
                    allowed.update(inside.get(rest[:n], ()))
                    allowed.update(closing.get(rest[:n], ()))
                at = source.find(low, at + 1)
        return allowed

    def with_any(self, chars: str) -> list[int]:
        if chars not in self._triggered:
            self._triggered[chars] = [i for i, s in enumerate(self.strings) if i not in self.special and any(c in s for c in chars)]
        return self._triggered[chars]

    def by_first_without(self, chars: str) -> dict[str, list[int]]:
        """:attr:`by_first` less the tokens holding any of ``chars`` (those are judged one by one)."""
        if chars not in self._untriggered:
            self._untriggered[chars] = {f: [i for i in ids if not any(c in self.strings[i] for c in chars)] for f, ids in self.by_first.items()}
        return self._untriggered[chars]

    def by_first_without_arrays(self, chars: str) -> dict[str, Any]:
        """:meth:`by_first_without` as int64 arrays: a step bans whole groups of them at once."""
        if chars not in self._untriggered_arrays:
            self._untriggered_arrays[chars] = {f: np.asarray(ids, dtype=np.int64) for f, ids in self.by_first_without(chars).items()}
        return self._untriggered_arrays[chars]


_VOCABS: weakref.WeakKeyDictionary[Any, _Vocab] = weakref.WeakKeyDictionary()


def _vocab(tokenizer: Any) -> _Vocab:
    """The indexed vocabulary of ``tokenizer``, built once and dropped with the tokenizer."""
    vocab = _VOCABS.get(tokenizer)
    if vocab is None:
        vocab = _VOCABS[tokenizer] = _Vocab(token_strings(tokenizer), set(tokenizer.all_special_ids))
    return vocab


class TermLogitsProcessor:
    """A ``transformers`` logits processor that keeps generated queries within ``constraint``.

    Args:
        constraint: the names allowed, from :meth:`TermConstraint.for_schema`.
        tokenizer: the generating model's tokenizer.
        prompt_length: tokens of the prompt in ``input_ids`` (only what follows is the query).
        eos_ids: token ids that end the generation (allowed only outside an unfinished name, and where
            the constraint says the query may end).
    """

    def __init__(self, constraint: TermConstraint, tokenizer: Any, prompt_length: int, eos_ids: Iterable[int] = ()) -> None:
        self.constraint = constraint
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.eos_ids = [i for i in eos_ids if i is not None]
        self._ends = {*self.eos_ids, *([tokenizer.pad_token_id] if getattr(tokenizer, "pad_token_id", None) is not None else [])}
        self.vocab = _vocab(tokenizer)
        self.masked_steps = 0
        self.forced = 0
        """Steps where the model's first choice was ruled out (for beams: per beam)."""
        self.ended = 0
        """Rows ended because their query was over (:meth:`TermConstraint.over`): not counted as forced,
        as nothing the model wrote from there would have been kept."""
        self._ungrounded: list[int] | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """The scores with what the constraint rules out at -inf: a new tensor, ``scores`` is left as it
        is (transformers keeps the tensor it passes in as the model's own logits, ``output_logits``)."""
        import torch

        scores = scores.clone()
        width = scores.shape[-1]
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.prompt_length :].tolist()
            if generated and generated[-1] in self._ends:
                continue  # the row has ended (in a batch it waits for the others): its next token is padding anyway
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if self.eos_ids and self.constraint.over(text):
                # the end token at probability 1: the row's score (a sum of log-probabilities under
                # beam search) stays what the query itself earned
                eos = torch.tensor([i for i in self.eos_ids if i < width], dtype=torch.long, device=scores.device)
                scores[row].fill_(float("-inf"))
                scores[row].index_fill_(0, eos, 0.0)
                self.ended += 1
                continue
            grounded = self._grounded(text, width)
            if grounded is not None:
                self.masked_steps += 1
                keep = torch.tensor(grounded, dtype=torch.long, device=scores.device)
                if not bool((keep == int(scores[row].argmax())).any()):
                    self.forced += 1
                kept = scores[row].index_select(0, keep)
                scores[row].fill_(float("-inf"))
                scores[row].index_copy_(0, keep, kept)
                continue
            banned = self._banned(text, width)
            if len(banned):
                hit = np.zeros(width, dtype=bool)
                hit[banned] = True
                if hit.all():
                    continue  # nothing would be left: the text went somewhere the schema cannot follow; leave it free
                self.masked_steps += 1
                if hit[int(scores[row].argmax())]:
                    self.forced += 1
                scores[row].masked_fill_(torch.from_numpy(hit).to(scores.device), float("-inf"))
        return scores

    def _ungrounded_openers(self, width: int) -> list[int]:
        """Tokens that would open (or hold whole) a string literal that is no piece of the sources,
        such as ``'The`` when no source holds "the": the same at every step, so found once."""
        if self._ungrounded is None:
            sources = self.constraint.sources
            self._ungrounded = [i for i, held in self.vocab.literal_openers() if i < width and not all(any(h in s for s in sources) for h in held)]
        return self._ungrounded

    def _grounded(self, text: str, width: int) -> list[int] | None:
        """When ``text`` ends inside a string literal that must stay a piece of the constraint's
        sources: the token ids that keep it one (or close it); else None (also when no token would:
        a vocabulary without a bare closing quote leaves the literal free)."""
        c = self.constraint
        literal = c.open_literal(text) if c.sources else None
        if literal is None:
            return None
        return sorted(i for i in self.vocab.grounded(*literal, c.sources) if i < width) or None

    def _end_ids(self, width: int) -> list[int]:
        """The end tokens and the other special tokens: what would end the query here."""
        return [i for i in self.eos_ids if i < width] + [i for i in self.vocab.special if i < width and i not in self.eos_ids]

    def _banned(self, text: str, width: int) -> Any:
        """Token ids that would make ``text`` name something the schema lacks (an int64 array)."""
        c, v = self.constraint, self.vocab
        if c.inside_literal(text):
            return np.zeros(0, dtype=np.int64)  # an IRI, a comment, or a string literal (grounded ones: see _grounded)
        ctx = c.context(text)
        window = c.blank_literals(text)[-_WINDOW:]
        start = len(window)
        state = c.open_name(window, ctx)
        banned: list[int] = list(self._ungrounded_openers(width)) if c.sources else []
        may_end = c.may_end(text)
        # tokens that could open a name: judged by writing them out
        for i in v.with_any(c.triggers):
            if i < width and not c.accepts(window + v.strings[i], start, ctx):
                banned.append(i)
        if state is None:
            if not may_end:
                banned.extend(self._end_ids(width))
            return np.asarray(banned, dtype=np.int64)
        place, partial = state
        groups: list[Any] = []  # whole groups of tokens banned at once
        arrays = v.by_first_without_arrays(c.triggers)
        # inside a name: a token continues it, or ends it (only a complete name may end)
        complete = place.complete(partial)
        nexts = place.next_chars(partial)
        narrow = width < len(v.strings)  # a model with fewer logits than the tokenizer has tokens
        for first, ids in v.by_first_without(c.triggers).items():  # the trigger tokens were judged above
            continuing = first in nexts
            inside = place.name_chars.match(first).end() == len(first)  # type: ignore[union-attr]
            if not continuing and not (complete and not inside):
                group = arrays[first]
                groups.append(group[group < width] if narrow else group)
                continue
            if not continuing:
                continue  # ends a complete name; tokens that could open another were checked above
            for i in ids:
                if i >= width:
                    continue
                s = v.strings[i]
                whole = partial + s
                run = place.name_chars.match(whole).end()  # type: ignore[union-attr]
                ok = place.prefix(whole) if run == len(whole) else place.complete(whole[:run])
                if not ok:
                    banned.append(i)
        if not complete or not may_end:
            banned.extend(self._end_ids(width))
        return np.concatenate([np.asarray(banned, dtype=np.int64), *groups])
