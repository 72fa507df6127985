"""Entity linking on an embedded Oxigraph store: which stored values does the question mention?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragkit import Pipeline
from ragkit.errors import InputError
from ragkit.stages.linkers.entity import EntityLinker, EntityMention, LinkedEntities, query_values
from ragkit.stores.rdf import OxigraphStore
from ragkit.testing import TinyGraphStore

EX = "http://example.org/town/"
RDFS_LABEL = "http://www.w3.org/2000/01/rdf-schema#label"
TURTLE = """\
@prefix ex: <http://example.org/town/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
ex:nyc a ex:City ; rdfs:label "New York City" ; ex:population 8000000 .
ex:ny a ex:State ; rdfs:label "New York" .
ex:york a ex:City ; rdfs:label "York" .
ex:oslo a ex:City ; rdfs:label "Oslo" .
ex:rome a ex:City ; rdfs:label "Rome" .
ex:paris a ex:City ; rdfs:label "Paris" .
ex:ann a ex:Person ; rdfs:label "Ann Lee" ; ex:nickname "Annie" ; ex:livesIn ex:nyc .
ex:who a ex:Band ; rdfs:label "Who" .
ex:the a ex:Band ; rdfs:label "The" .
ex:al a ex:Person ; rdfs:label "Al" .
"""


@pytest.fixture
def ttl(tmp_path: Path) -> Path:
    p = tmp_path / "town.ttl"
    p.write_text(TURTLE, encoding="utf-8")
    return p


@pytest.fixture
def linker(ttl: Path) -> EntityLinker:
    return EntityLinker(store=OxigraphStore(path=str(ttl)))


def spans(linker: EntityLinker, question: str) -> list[tuple[str, str]]:
    return [(m.span, m.value) for m in linker.run(question=question).entities.mentions]


def test_defaults_and_validation() -> None:
    store = TinyGraphStore()
    link = EntityLinker(store=store)
    assert (link.max_words, link.max_mentions) == (8, 4)
    assert store.setup_calls == 0  # construction does no I/O
    with pytest.raises(ValueError, match="at least 1"):
        EntityLinker(store=store, max_words=0)
    with pytest.raises(ValueError, match="at least 1"):
        EntityLinker(store=store, max_mentions=0)


def test_longest_match_wins_case_insensitively(linker: EntityLinker) -> None:
    assert spans(linker, "Does ann lee live in new york city?") == [("ann lee", "Ann Lee"), ("new york city", "New York City")]
    m = linker.run(question="How big is NEW YORK CITY?").entities.mentions
    assert m == [EntityMention(span="NEW YORK CITY", value="New York City", property=RDFS_LABEL, cls=f"{EX}City")]


def test_mentions_do_not_overlap_and_keep_question_order(linker: EntityLinker) -> None:
    # "New York City" takes its words: "New York" and "York" inside it are not reported
    assert spans(linker, "Is York closer to New York City or to Rome?") == [("York", "York"), ("New York City", "New York City"), ("Rome", "Rome")]
    assert spans(linker, "Is York in New York?") == [("York", "York"), ("New York", "New York")]


def test_one_word_function_words_and_short_words_are_skipped(linker: EntityLinker) -> None:
    # the graph stores "Who", "The" and "Al", but as single words they are not mentions
    assert spans(linker, "Who is the singer? Al knows.") == []
    assert linker.run(question="Who lives in Oslo?").entities.values == ["Oslo"]


def test_max_mentions_keeps_the_first_ones(ttl: Path) -> None:
    link = EntityLinker(store=OxigraphStore(path=str(ttl)), max_mentions=2)
    assert spans(link, "Oslo, Rome, Paris or York?") == [("Oslo", "Oslo"), ("Rome", "Rome")]
    assert len(EntityLinker(store=OxigraphStore(path=str(ttl))).run(question="Oslo, Rome, Paris, York or New York City?").entities.mentions) == 4


def test_max_words_limits_span_length(ttl: Path) -> None:
    link = EntityLinker(store=OxigraphStore(path=str(ttl)), max_words=2)
    assert spans(link, "Where is New York City?") == [("New York", "New York")]


def test_values_are_unique_in_order() -> None:
    ents = LinkedEntities(mentions=[EntityMention(span="a", value="A", property="p"), EntityMention(span="a", value="A", property="q"), EntityMention(span="b", value="B", property="p")])
    assert ents.values == ["A", "B"]
    assert LinkedEntities().values == []


def test_a_store_without_values_links_nothing() -> None:
    assert EntityLinker(store=TinyGraphStore()).run(question="Where does Ann live?").entities.mentions == []


@pytest.mark.parametrize("question", ["", "  "])
def test_empty_question_is_an_input_error(linker: EntityLinker, question: str) -> None:
    with pytest.raises(InputError, match="the question is empty"):
        linker.run(question=question)


def test_index_is_built_once_and_rebuilt_when_the_data_changes(ttl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = OxigraphStore(path=str(ttl))
    link = EntityLinker(store=store)
    listed: list[int] = []
    real = store.values

    def values(**kw: Any) -> Any:
        listed.append(1)
        return real(**kw)

    monkeypatch.setattr(store, "values", values)
    assert link.run(question="Where is Zanzibar?").entities.mentions == []
    assert link.run(question="Where is Oslo?").entities.values == ["Oslo"]
    assert len(listed) == 1  # same fingerprint: the index is reused

    ttl.write_text(TURTLE + 'ex:zanzibar a ex:City ; rdfs:label "Zanzibar" .\n', encoding="utf-8")
    store.close()  # the next use loads the changed file: a new fingerprint
    assert link.run(question="Where is Zanzibar?").entities.values == ["Zanzibar"]
    assert len(listed) == 2


def test_query_values() -> None:
    assert query_values('SELECT ?x WHERE { ?x rdfs:label "Ann" . ?y ex:p \'Rome\' . ?z ex:q "Ann" }') == ["Ann", "Rome"]
    assert query_values('SELECT ?x WHERE { ?x ex:p "say \\"hi\\"" ; ex:q "" }') == ['say \\"hi\\"']
    assert query_values("MATCH (p:Person {name: 'Ann'}) RETURN p") == ["Ann"]
    assert query_values("SELECT ?x WHERE { ?x ?p ?o }") == []


def test_yaml_round_trip_and_warm_up(ttl: Path) -> None:
    spec = {
        "version": 1,
        "resources": {"graph": {"type": "oxigraph_store", "path": str(ttl)}},
        "stages": [{"name": "link", "type": "entity_linker", "store": "graph", "max_words": 4, "max_mentions": 3}],
        "inputs": {"question": "link.question"},
        "outputs": {"entities": "link.entities"},
    }
    pipe = Pipeline.from_dict(spec)
    assert Pipeline.from_dict(pipe.to_dict()) == pipe
    link = pipe.stages["link"]
    assert isinstance(link, EntityLinker) and (link.max_words, link.max_mentions) == (4, 3)
    pipe.warm_up()
    pipe.warm_up()
    assert pipe.resources["graph"].is_warm
    assert pipe.run(question="Who lives in new york city?")["entities"].values == ["New York City"]
