"""The meaning guard of the semantic cache: refuse a near-duplicate question that asks something else.

Embeddings place "Who wrote Emma?" and "Who wrote Persuasion?", or "books published before 1990" and
"books published after 1990", very close together; a cache that trusted the similarity alone would
serve one question's answer to the other. After the embedding match, the two questions are compared
on the small words and names that flip a meaning, and the hit is refused when any of them differ:

* **negation**: how many negation cues each has (``not``, ``n't``, ``never``, ``no``, ``without``...);
* **mentions**: named entities as capitalised runs (``Cold Water Gospel``) and quoted strings;
* **numbers**: digits and number words (``3`` = ``three``), ordinals (``2nd`` = ``second``);
* **dates**: months, weekdays, seasons, decades and relative time (``last year``, ``recently``);
* **comparisons**: comparatives and superlatives, folded into classes where they mean the same
  (``more``/``over``/``above``; ``before``/``earlier``; ``most``/``maximum``), others kept as written
  (``oldest``, ``longer``);
* **answer type**: a count (``how many``), a yes/no question, a time, a place, a person, or open.

The guard is deliberately strict: a paraphrase that changes one of these (``"Emma"`` quoted in one
question and not in the other) is a miss, never a wrong answer.

Example:
    >>> from ragkit.stages.cache.guard import meaning_differences
    >>> meaning_differences("Who wrote Emma?", "Who is the author of Emma?")
    []
    >>> meaning_differences("Books published before 1990?", "Books published after 1990?")
    ["comparisons differ: {'before'} vs {'after'}"]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MeaningSignature", "meaning_signature", "meaning_differences"]

_NEGATIONS = frozenset(
    "not no never none nobody nothing neither nor without cannot nowhere except excluding excluded "
    "lacks lack lacking absent".split()
)

# Words that begin a question or an instruction with a capital letter without naming anything.
_STARTERS = frozenset(
    """
    who whom whose what which when where why how is are was were am be been being do does did done
    has have had can could will would shall should may might must list name give show tell find count
    return get display provide identify enumerate please the a an this that these those there here
    in on at for of from by with to into about and or but if i we you they he she it my our your
    their its me us them his her all any each every some many much most more few several
    """.split()
)

_CONNECTORS = frozenset("of the de del da di van von der la le and & y".split())

_MONTHS = {
    "january": "jan", "jan": "jan", "february": "feb", "feb": "feb", "march": "mar", "mar": "mar",
    "april": "apr", "apr": "apr", "may": "may", "june": "jun", "jun": "jun", "july": "jul", "jul": "jul",
    "august": "aug", "aug": "aug", "september": "sep", "sept": "sep", "sep": "sep", "october": "oct",
    "oct": "oct", "november": "nov", "nov": "nov", "december": "dec", "dec": "dec",
}  # fmt: skip
_WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
_SEASONS = frozenset("spring summer autumn fall winter".split())
_RELATIVE_TIME = frozenset("today yesterday tomorrow tonight now currently current recently recent ago nowadays".split())
_PERIODS = frozenset("year years month months week weeks decade decades century centuries day days".split())

# Comparatives and superlatives with the same meaning share a class; the rest stand for themselves.
_COMPARISON_CLASSES = {
    "more": "more", "over": "more", "above": "more", "greater": "more", "exceeding": "more", "exceeds": "more", "beyond": "more",
    "less": "less", "fewer": "less", "under": "less", "below": "less",
    "most": "most", "maximum": "most", "max": "most", "greatest": "most", "highest": "most", "top": "most",
    "least": "least", "fewest": "least", "minimum": "least", "min": "least", "lowest": "least",
    "before": "before", "earlier": "before", "prior": "before", "preceding": "before", "until": "before",
    "after": "after", "later": "after", "since": "after", "following": "after",
    "best": "best", "worst": "worst", "better": "better", "worse": "worse", "last": "last",
}  # fmt: skip
_COMPARATIVES = frozenset(
    "older younger newer larger smaller bigger higher lower longer shorter greater cheaper richer poorer "
    "heavier lighter faster slower taller wider narrower deeper closer farther further".split()
)
_NOT_SUPERLATIVE = frozenset(
    "interest forest request honest modest contest protest harvest suggest digest arrest invest manifest "
    "conquest guest quest west chest nest pest rest test priest everest budapest bucharest".split()
)

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000, "million": 10**6,
    "billion": 10**9, "dozen": 12, "single": 1, "once": 1, "twice": 2, "thrice": 3, "pair": 2, "couple": 2,
}  # fmt: skip
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "twentieth": 20, "hundredth": 100,
}  # fmt: skip
_AUXILIARIES = frozenset("is are was were am do does did has have had can could will would shall should may might must".split())

_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|‘([^’]+)’|(?<![\w'])'([^']+)'(?!\w)|«([^»]+)»")
_TOKEN = re.compile(r"\d+(?:[,.]\d+)*(?:st|nd|rd|th|s)?|[^\W\d_](?:[\w'’&-]*\w)?|[.?!;:,()]")
_DECADE = re.compile(r"^(\d{2,4})s$")
_ORDINAL_DIGITS = re.compile(r"^(\d+)(st|nd|rd|th)$")


@dataclass(frozen=True)
class MeaningSignature:
    """What a question says that an embedding may blur (see the module docstring)."""

    negations: int
    mentions: frozenset[str]
    numbers: frozenset[str]
    dates: frozenset[str]
    comparisons: frozenset[str]
    answer_type: str


def _norm_mention(s: str) -> str:
    s = " ".join(re.findall(r"\w+", re.sub(r"['’]s\b", "", s.lower())))
    return s[4:] if s.startswith("the ") else s


def meaning_signature(text: str) -> MeaningSignature:
    """The :class:`MeaningSignature` of ``text``."""
    mentions: set[str] = set()
    for m in _QUOTED.finditer(text):
        quoted = next(g for g in m.groups() if g is not None)
        if quoted.strip():
            mentions.add(_norm_mention(quoted))
    unquoted = _QUOTED.sub(" , ", text)  # a quoted title's words are one mention, not a capitalised run
    tokens = _TOKEN.findall(unquoted.replace("’", "'"))
    lower = [t.lower() for t in tokens]

    negations = 0
    numbers: set[str] = set()
    dates: set[str] = set()
    comparisons: set[str] = set()
    for i, (tok, low) in enumerate(zip(tokens, lower)):
        if low in _NEGATIONS or low.endswith("n't"):
            negations += 1
        if tok[0].isdigit():
            digits = tok.replace(",", "")
            dec = _DECADE.match(digits)
            ordinal = _ORDINAL_DIGITS.match(digits)
            if dec:
                dates.add(f"decade:{dec.group(1)}")
            elif ordinal:
                numbers.add(f"ord:{int(ordinal.group(1))}")
            else:
                try:
                    numbers.add(f"{float(digits):g}")
                except ValueError:
                    numbers.add(digits)
        elif low in _NUMBER_WORDS:
            value = _NUMBER_WORDS[low]
            nxt = lower[i + 1] if i + 1 < len(lower) else ""
            prev = lower[i - 1] if i else ""
            if prev in _NUMBER_WORDS and 20 <= _NUMBER_WORDS[prev] <= 90 and value < 10:
                continue  # "twenty five": counted with "twenty"
            if 20 <= value <= 90 and nxt in _NUMBER_WORDS and _NUMBER_WORDS[nxt] < 10:
                value += _NUMBER_WORDS[nxt]
            if low in ("hundred", "thousand", "million", "billion") and prev in _NUMBER_WORDS:
                continue  # "three hundred": a scaled figure; the leading number already counts
            numbers.add(f"{value:g}")
        elif low in _ORDINALS:
            numbers.add(f"ord:{_ORDINALS[low]}")
        if low in _MONTHS and (low != "may" or (tok[0].isupper() and i > 0 and lower[i - 1] not in (".", "?", "!"))):
            dates.add(f"month:{_MONTHS[low]}")
        elif low in _WEEKDAYS or low in _SEASONS or low in _RELATIVE_TIME:
            dates.add(low)
        elif low in ("last", "next", "this", "past", "coming") and i + 1 < len(lower) and lower[i + 1] in _PERIODS:
            dates.add(f"{low} {lower[i + 1].rstrip('s')}")
            continue
        if low in _COMPARISON_CLASSES:
            comparisons.add(_COMPARISON_CLASSES[low])
        elif low in _COMPARATIVES:
            comparisons.add(low)
        elif len(low) >= 5 and low.endswith("est") and low not in _NOT_SUPERLATIVE:
            comparisons.add(low)
        elif low.endswith("er") and i + 1 < len(lower) and lower[i + 1] == "than":
            comparisons.add(low)

    mentions |= _capitalised_runs(tokens)
    return MeaningSignature(
        negations=negations,
        mentions=frozenset(mentions),
        numbers=frozenset(numbers),
        dates=frozenset(dates),
        comparisons=frozenset(comparisons),
        answer_type=_answer_type(lower),
    )


def _capitalised_runs(tokens: list[str]) -> set[str]:
    runs: set[str] = set()
    run: list[str] = []
    sentence_start = True

    def close() -> None:
        while run and run[-1].lower() in _CONNECTORS:
            run.pop()
        if run:
            runs.add(_norm_mention(" ".join(run)))
        run.clear()

    for i, tok in enumerate(tokens):
        low = tok.lower()
        if tok in ".?!;:,()":
            close()
            sentence_start = tok in ".?!;:"
            continue
        capital = tok[0].isupper() or any(c.isupper() for c in tok[1:])
        is_date_word = low in _MONTHS or low in _WEEKDAYS
        starter = sentence_start and (low in _STARTERS or low.split("'")[0] in _STARTERS)
        if capital and not is_date_word and not starter and low != "i":
            run.append(tok)
        elif run and low in _CONNECTORS and i + 1 < len(tokens) and tokens[i + 1][:1].isupper():
            run.append(tok)  # "Bank of England", "The Lord of the Rings"
        else:
            close()
        sentence_start = False
    close()
    return runs


def _answer_type(lower: list[str]) -> str:
    words = [w for w in lower if w not in ".?!;:,()"]
    text = " ".join(words)
    if re.search(r"\bhow (many|much)\b|^(the )?(total )?number of\b|\b(is|was|what's|give|tell me) the (total )?number of\b|^count\b", text):
        return "count"
    if not words:
        return "open"
    if words[0] in _AUXILIARIES:
        return "yesno"
    if re.search(r"\bwhen\b|\b(what|which) (year|date|day|month|decade|century|time)\b", text):
        return "time"
    if re.search(r"\bwhere\b|\b(what|which) (city|country|place|town|region|location)\b", text):
        return "place"
    if re.search(r"\bwho\b|\bwhom\b|\bwhose\b", text):
        return "person"
    return "open"


def meaning_differences(a: str, b: str) -> list[str]:
    """Why ``a`` and ``b`` may mean different things; empty when the guard finds no difference."""
    sa, sb = meaning_signature(a), meaning_signature(b)
    out: list[str] = []
    if sa.negations != sb.negations:
        out.append(f"negation differs: {sa.negations} vs {sb.negations} negation word(s)")
    for name in ("mentions", "numbers", "dates", "comparisons"):
        va, vb = getattr(sa, name), getattr(sb, name)
        if va != vb:
            label = "named entities / quoted strings" if name == "mentions" else name
            out.append(f"{label} differ: {_show(va)} vs {_show(vb)}")
    if sa.answer_type != sb.answer_type and "open" not in (sa.answer_type, sb.answer_type):
        out.append(f"answer type differs: {sa.answer_type} vs {sb.answer_type}")
    elif sa.answer_type != sb.answer_type and {sa.answer_type, sb.answer_type} & {"count", "yesno"}:
        out.append(f"answer type differs: {sa.answer_type} vs {sb.answer_type}")
    return out


def _show(values: frozenset[str]) -> str:
    return "{" + ", ".join(repr(v) for v in sorted(values)) + "}" if values else "{}"
