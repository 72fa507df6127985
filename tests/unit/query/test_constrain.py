"""Constrained decoding: where names go, which ones are allowed, and the logits processor's masks."""

from __future__ import annotations

import pytest
import torch

from ragkit.query.constrain import TermConstraint, TermLogitsProcessor
from ragkit.stores.base import GraphSchema, SchemaClass, SchemaProperty

NS = "http://example.org/music/"


def _constraint(schema: GraphSchema) -> TermConstraint:
    c = TermConstraint.for_schema(schema)
    assert c is not None
    return c


@pytest.fixture
def sparql() -> TermConstraint:
    schema = GraphSchema(
        language="sparql",
        prefixes={"": NS, "rdfs": "http://www.w3.org/2000/01/rdf-schema#"},
        classes=(SchemaClass(name=NS + "band"), SchemaClass(name=NS + "song")),
        properties=tuple(SchemaProperty(name=NS + p) for p in ("band#name", "band#formed", "song#title", "song#ref-band_id")),
    )
    return _constraint(schema)


@pytest.fixture
def cypher() -> TermConstraint:
    schema = GraphSchema(
        language="cypher",
        classes=(SchemaClass(name="Person"), SchemaClass(name="Movie")),
        properties=(
            SchemaProperty(name="ACTED_IN", kind="relationship"),
            SchemaProperty(name="DIRECTED", kind="relationship"),
            SchemaProperty(name="name", kind="node_property"),
            SchemaProperty(name="title", kind="node_property"),
        ),
    )
    return _constraint(schema)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("SELECT ?n WHERE { ?b a :band . ?b :band\\#name ?n }", True),
        ("SELECT ?n WHERE { ?b a :ban", True),  # unfinished, and some name starts so
        ("SELECT ?n WHERE { ?b a :bands . }", False),
        ("SELECT ?n WHERE { ?b :band\\#nam ?n }", False),
        ("SELECT ?n WHERE { ?b :band\\#height ?n }", False),
        ("SELECT ?n WHERE { ?b :song\\#ref-band_id ?x }", True),
        ("PREFIX : <http://example.org/music/>\nSELECT ?n WHERE { ?b rdfs:label ?n }", True),  # declaration; standard vocabulary
        ('SELECT ?n WHERE { ?b rdfs:label "a :nonsense title" . }', True),  # inside a literal
        ("SELECT ?n WHERE { ?b <http://example.org/music/other> ?n }", True),  # full IRIs are not prefixed names
        ("SELECT ?n WHERE { :the_band :band\\#name ?n . ?s :song\\#ref-band_id :the_band , :other }", True),  # instances
        ("SELECT ?n WHERE { ?b :band\\#name ?n ; :band\\#nope ?t }", False),  # after ';' a predicate
        ("SELECT ?n WHERE { ?s :song\\#ref-band_id/:nope ?n }", False),  # a property path's member
        ("SELECT ?n WHERE { ?b :band\\#name ?n FILTER(?n != :some_instance) }", True),
        ("SELECT ?n WHERE { ?b a :band\\#name }", False),  # a property where a class goes
        ("SELECT ?n WHERE { ?b :band ?n }", False),  # a class where a property goes
        ("SELECT ?n WHERE { ?b rdf:type :song }", True),
        ("SELECT ?n WHERE { ?b rdf:type :band\\#name }", False),
    ],
)
def test_sparql_names(sparql: TermConstraint, text: str, ok: bool) -> None:
    assert sparql.accepts(text) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("MATCH (p:Person)-[:ACTED_IN|DIRECTED]->(m:Movie {title: 'x'}) WHERE m.title > 'a' RETURN p.name", True),
        ("MATCH (p:Actor) RETURN p", False),
        ("MATCH (p:Person)-[r:WROTE]->(m) RETURN m", False),
        ("MATCH (p:Person) RETURN p.born", False),
        ("MATCH (p:Person) RETURN date.truncate('day', datetime())", True),  # not a bound variable: a function
        ("MATCH (p:Person) WHERE p.name = 'a.b:Actor' RETURN p", True),
        ("MATCH (p:Pers", True),
    ],
)
def test_cypher_names(cypher: TermConstraint, text: str, ok: bool) -> None:
    assert cypher.accepts(text) is ok


@pytest.fixture
def directed() -> TermConstraint:
    """A Cypher schema that records each relationship's start and end labels."""
    schema = GraphSchema(
        language="cypher",
        classes=(SchemaClass(name="Person"), SchemaClass(name="Movie"), SchemaClass(name="Genre")),
        properties=(
            SchemaProperty(name="ACTED_IN", kind="relationship", domains=("Person",), ranges=("Movie",)),
            SchemaProperty(name="IN_GENRE", kind="relationship", domains=("Movie",), ranges=("Genre",)),
            SchemaProperty(name="FOLLOWS", kind="relationship", domains=("Person",), ranges=("Person",)),
            SchemaProperty(name="SIMILAR", kind="relationship"),  # ends not recorded
            SchemaProperty(name="title", kind="node_property"),
        ),
    )
    return _constraint(schema)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("MATCH (p:Person)-[:ACTED_IN]->(m:Movie) RETURN m.title", True),
        ("MATCH (m:Movie)-[:ACTED_IN]->", False),  # a Movie is never where ACTED_IN starts
        ("MATCH (m:Movie)-[r:ACTED_IN]-(p:Person) RETURN p", True),  # undirected: fine
        ("MATCH (m:Movie)<-[:ACTED_IN]-(p:Person) RETURN p", True),
        ("MATCH (m:Movie)<-[:ACTED_IN]-(p:Pe", True),  # the far label begun
        ("MATCH (m:Movie)<-[:ACTED_IN]-(p:Movie", False),  # ACTED_IN starts at a Person
        ("MATCH (m:Movie)-[:ACTED_IN]-(p:Genre", False),
        ("MATCH (m:Movie)-[:ACTED_IN|IN_GENRE]->(x) RETURN x", True),  # one of the types leaves a Movie
        ("MATCH (p:Person)<-[:AC", False),  # nothing ACTED_IN ends at a Person
        ("MATCH (p:Person)<-[:FOLLOWS]-(q:Person) RETURN q", True),
        ("MATCH (m:Movie) MATCH (m)-[:ACTED_IN]->(x) RETURN x", False),  # labels from where m was bound
        ("MATCH (x)-[:ACTED_IN]->(y:Person", False),  # an unlabelled start: the end still is a Movie
        ("MATCH (x)-[:ACTED_IN]->(y:Movie) WHERE y.title > 'A' RETURN y", True),  # ">" in a comparison
        ("MATCH (m:Movie)-[:SIMILAR]->(g:Genre) RETURN g", True),  # ends not recorded: left free
        ("MATCH (m:Movie)-[:ACTED_IN*1..2]->(x) RETURN x", True),  # variable length: ends are hops apart
        ("MATCH (m:Movie)-[:ACTED_IN]->(p:Person {title: '(:Movie)-[:ACTED_IN]->'}) RETURN p", False),
        ("MATCH (m:Movie {title: '(:Movie)-[:ACTED_IN]->'}) RETURN m", True),  # inside a string
    ],
)
def test_cypher_hops_follow_the_schema_directions(directed: TermConstraint, text: str, ok: bool) -> None:
    assert directed.accepts(text) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("MATCH (m:Movie) RETURN m.title", True),
        ("MATCH (m:Movie) RETURN m.name", False),  # a Person's key
        ("MATCH (m:Movie) RETURN m.na", False),  # no key of a Movie starts so
        ("MATCH (m:Movie)<-[r:REVIEWED]-(p:Person) WHERE r.rating > 5 RETURN p.name", True),  # a relationship's key
        ("MATCH (m:Movie)<-[r:REVIEWED]-(p:Person) RETURN p.rating", False),
        ("MATCH (m) RETURN m.name", True),  # no labels: any key of the schema
    ],
)
def test_cypher_keys_are_those_of_the_variables_label(keyed_schema: GraphSchema, text: str, ok: bool) -> None:
    assert _constraint(keyed_schema).accepts(text) is ok


def test_open_name(sparql: TermConstraint) -> None:
    place, partial = sparql.open_name("SELECT ?n WHERE { ?b :band\\#na")
    assert partial == "band\\#na" and place.complete("band\\#name")
    assert sparql.open_name("SELECT ?n WHERE { ?b :band ") is None
    assert sparql.inside_literal('FILTER(?n = "The :') and not sparql.inside_literal('FILTER(?n = "x") ')


def test_nothing_to_constrain() -> None:
    schema = GraphSchema(
        language="sparql",
        prefixes={"rdfs": "http://www.w3.org/2000/01/rdf-schema#"},
        properties=(SchemaProperty(name="http://www.w3.org/2000/01/rdf-schema#label"),),
    )
    assert TermConstraint.for_schema(schema) is None


class _Tokenizer:
    """Just enough of a tokenizer: fixed pieces, joined by decode."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = ["<eos>", *pieces]
        self.all_special_ids = [0]

    def __len__(self) -> int:
        return len(self.pieces)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.pieces.index(text)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join("" if (i == 0 and skip_special_tokens) else self.pieces[i] for i in ids)

    def batch_decode(self, batch: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]


PIECES = ["a", " ", "?b", " :", ":", "band", "ban", "d", "song", "s", "\\#", "name", "nam", "height", " .", " }", " :band", " :bands", "\\#name ?n", "e"]


def _allowed(proc: TermLogitsProcessor, tok: _Tokenizer, text: str) -> set[str]:
    ids = [tok.pieces.index(p) for p in _split(text, tok)]
    scores = torch.zeros(1, len(tok))
    out = proc(torch.tensor([[*ids]]), scores)
    return {tok.pieces[i] for i in range(len(tok)) if out[0, i] > float("-inf")}


def _split(text: str, tok: _Tokenizer) -> list[str]:
    out, i = [], 0
    while i < len(text):
        p = max((p for p in tok.pieces[1:] if text.startswith(p, i)), key=len)
        out.append(p)
        i += len(p)
    return out


def test_processor_masks_tokens_that_misspell_a_name(sparql: TermConstraint) -> None:
    tok = _Tokenizer(PIECES)
    proc = TermLogitsProcessor(sparql, tok, prompt_length=0, eos_ids=[0])
    # outside a name: anything, except a token that opens a name the schema lacks
    allowed = _allowed(proc, tok, "?b a")
    assert {" :band", " :", "band", " }"} <= allowed and " :bands" not in allowed
    # inside a name: only continuations of a known name
    allowed = _allowed(proc, tok, "?b a :ban")
    assert "d" in allowed and not {"s", "e", " .", "<eos>"} & allowed
    # a complete name may end (and an ending token is judged whole)
    allowed = _allowed(proc, tok, "?b a :band")
    assert {" .", " }", "<eos>"} <= allowed
    assert not {"s", "height", "\\#", "\\#name ?n"} & allowed  # after 'a' only classes
    allowed = _allowed(proc, tok, "?b :band")  # a predicate: only properties
    assert {"\\#", "\\#name ?n"} <= allowed and not {" .", " }", "<eos>"} & allowed
    allowed = _allowed(proc, tok, "?b :band\\#")
    assert {"name", "nam"} <= allowed and "height" not in allowed and " ." not in allowed
    assert proc.masked_steps >= 3


def test_processor_turns_a_misdirected_hop_undirected(directed: TermConstraint) -> None:
    tok = _Tokenizer(["a", "MATCH ", "(m:Movie)", "(m:Person)", "-[:ACTED_IN]", "-", ">", "->", "(", "p", ":", "Person", "Movie", ")"])
    proc = TermLogitsProcessor(directed, tok, prompt_length=0, eos_ids=[0])
    allowed = _allowed(proc, tok, "MATCH (m:Movie)-[:ACTED_IN]-")
    assert "(" in allowed and ">" not in allowed  # ACTED_IN does not leave a Movie: no arrow
    assert "->" not in _allowed(proc, tok, "MATCH (m:Movie)-[:ACTED_IN]")
    allowed = _allowed(proc, tok, "MATCH (m:Movie)-[:ACTED_IN]-(p:")
    assert "Person" in allowed and "Movie" not in allowed  # the other end of ACTED_IN
    assert ">" in _allowed(proc, tok, "MATCH (m:Person)-[:ACTED_IN]-")  # the right way round


def test_processor_ends_a_cypher_query_that_goes_on_after_its_final_return(cypher: TermConstraint) -> None:
    tok = _Tokenizer(["a", "MATCH", " (", "m", ":", "Movie", ")", " RETURN", " m", ".", "title", "\n", "ed", " WITH"])
    proc = TermLogitsProcessor(cypher, tok, prompt_length=0, eos_ids=[0])
    assert _allowed(proc, tok, "MATCH (m:Movie) RETURN m.title\nMATCH (") == {"<eos>"}
    assert _allowed(proc, tok, "MATCH (m:Movie) RETURN m.title WITH (") == {"<eos>"}
    assert proc.ended == 2 and proc.forced == 0  # ending is not overruling the model
    assert len(_allowed(proc, tok, "MATCH (m:Movie) RETURN m.title\nMATCH")) > 1  # "MATCHed" is still possible
    assert len(_allowed(proc, tok, "MATCH (m:Movie) RETURN m.title")) > 1
    scores = proc(torch.tensor([[tok.pieces.index(p) for p in _split("MATCH (m:Movie) RETURN m.title\nMATCH (", tok)]]), torch.randn(1, len(tok)))
    assert scores[0, 0] == 0.0  # the end token at probability 1: a beam's score is not changed by it


def test_processor_lets_a_cypher_query_end_only_after_a_return(cypher: TermConstraint) -> None:
    tok = _Tokenizer(["a", "MATCH", " (", "p", ":", "Person", ")", " WITH", " p", " RETURN", " LIMIT", " 1", "\n"])
    proc = TermLogitsProcessor(cypher, tok, prompt_length=0, eos_ids=[0])
    allowed = _allowed(proc, tok, "MATCH (p:Person) WITH p LIMIT 1")
    assert "<eos>" not in allowed and {" RETURN", "\n"} <= allowed  # a query that ends in WITH goes on
    assert "<eos>" not in _allowed(proc, tok, "MATCH (p:Person) RETURN")  # nothing returned yet
    assert "<eos>" in _allowed(proc, tok, "MATCH (p:Person) WITH p LIMIT 1 RETURN p")
    assert "<eos>" in _allowed(proc, tok, "a")  # no query begun: prose may end (the check refuses it)
    proc = TermLogitsProcessor(cypher, tok, prompt_length=0, eos_ids=[0])
    scores = torch.zeros(1, len(tok))
    scores[0, 0] = 5.0  # the model would end
    proc(torch.tensor([[tok.pieces.index(x) for x in _split("MATCH (p:Person) WITH p", tok)]]), scores)
    assert proc.forced == 1  # ruling out the end overrules the model (beams follow in the generator)


def test_processor_reads_only_the_generated_part(sparql: TermConstraint) -> None:
    tok = _Tokenizer(PIECES)
    prompt = [tok.pieces.index(" :bands")]  # a wrong name in the prompt is not the model's
    proc = TermLogitsProcessor(sparql, tok, prompt_length=1, eos_ids=[0])
    scores = proc(torch.tensor([[*prompt, tok.pieces.index("?b")]]), torch.zeros(1, len(tok)))
    banned = {tok.pieces[i] for i in range(len(tok)) if scores[0, i] == float("-inf")}
    assert banned == {" :bands"}  # only what would misspell a name next, not the prompt's own text


def test_rows_of_a_batch_are_constrained_each_and_ended_rows_left_alone(sparql: TermConstraint) -> None:
    tok = _Tokenizer(PIECES)
    proc = TermLogitsProcessor(sparql, tok, prompt_length=0, eos_ids=[0])
    ids = [tok.pieces.index(p) for p in _split("?b a :ban", tok)]
    ended = [tok.pieces.index(p) for p in _split("?b a", tok)] + [0, 0]  # finished, padded while the batch goes on
    scores = proc(torch.tensor([ids, ended + [0] * (len(ids) - len(ended))]), torch.zeros(2, len(tok)))
    assert bool((scores[0] == float("-inf")).any())  # mid-name: constrained
    assert not bool((scores[1] == float("-inf")).any())  # ended: its next token is padding whatever the scores
    assert proc.masked_steps == 1


def test_sparql_names_are_read_with_the_prefixes_the_query_declares() -> None:
    # the schema is rendered with per-class prefixes; a model trained on another style declares its own
    schema = GraphSchema(
        language="sparql",
        prefixes={"ontop": NS, "band": NS + "band#"},
        classes=(SchemaClass(name=NS + "band"),),
        properties=(SchemaProperty(name=NS + "band#name"), SchemaProperty(name=NS + "band#formed")),
    )
    c = TermConstraint.for_schema(schema)
    assert c is not None
    assert c.accepts("SELECT ?n WHERE { ?b a ontop:band . ?b band:name ?n }")
    assert not c.accepts("SELECT ?n WHERE { ?b band:nam ?n }")
    declared = f"PREFIX : <{NS}>\nSELECT ?n WHERE {{ ?b a :band . ?b :band\\#formed ?n"
    assert c.accepts(declared) and c.accepts(declared + "}")
    assert not c.accepts(declared.replace("formed", "founded"))
    assert c.accepts("PREFIX x: <http://elsewhere.org/>\nSELECT ?n WHERE { ?b x:anything ?n }")  # no schema term there


def test_the_processor_leaves_the_scores_it_is_given_as_they_are(sparql: TermConstraint) -> None:
    # transformers keeps the tensor it hands a processor as the model's own logits (output_logits), which
    # score a constrained query by what the model gave each token, forced or not
    tok = _Tokenizer(PIECES)
    proc = TermLogitsProcessor(sparql, tok, prompt_length=0, eos_ids=[0])
    given = torch.zeros(1, len(tok))
    out = proc(torch.tensor([[tok.pieces.index(p) for p in _split("?b a :ban", tok)]]), given)
    assert bool((out == float("-inf")).any())
    assert not bool((given == float("-inf")).any())


def test_open_literal_says_which_quote_and_what_is_written(sparql: TermConstraint, cypher: TermConstraint) -> None:
    assert sparql.open_literal("FILTER(?n = 'Ben J") == ("'", "Ben J")
    assert sparql.open_literal('FILTER(?n = "') == ('"', "")
    assert sparql.open_literal("FILTER(?n = 'Ben') ") is None and sparql.open_literal("FILTER(?n = 'Ben'") is None
    assert sparql.open_literal("FILTER(?n = 'it\\'s") == ("'", "it\\'s")  # an escaped quote does not close it
    assert sparql.open_literal("PREFIX : <http://exa") is None  # an IRI
    assert sparql.open_literal("?b :band\\#name ?n # a com") is None  # a comment
    assert cypher.open_literal("MATCH (p:Person {name: 'Tom") == ("'", "Tom")
    assert cypher.open_literal("RETURN p.name AS `the na") is None  # a backquoted name


LITERAL_PIECES = ["a", "FILTER(?n = ", "'", "')", "Ben", " Jones", " Smith", "ben", "B", "rady", "en", " J", "ones", " .", "\n", "Bob", "jones", "'Br", "'Ben"]


def test_grounded_literals_spell_only_pieces_of_the_question_and_linked_values(sparql: TermConstraint) -> None:
    tok = _Tokenizer(LITERAL_PIECES)
    grounded = sparql.grounded_in(["List the cartoons directed by Ben Jones.", "Bob Burgers"])
    proc = TermLogitsProcessor(grounded, tok, prompt_length=0, eos_ids=[0])
    allowed = _allowed(proc, tok, "FILTER(?n = '")
    assert {"Ben", "ben", "B", "'", "')", " J", "Bob"} <= allowed  # a piece of either text, any letter case
    assert not {"rady", " Smith", "<eos>", "\n"} & allowed  # 'rady' is no piece of either; a query cannot end inside a literal
    allowed = _allowed(proc, tok, "FILTER(?n = 'Ben")
    assert {" Jones", " J", "')", "'"} <= allowed and not {" Smith", "en", "jones"} & allowed
    assert _allowed(proc, tok, "FILTER(?n = 'B") >= {"en"} and "rady" not in _allowed(proc, tok, "FILTER(?n = 'B")
    # a token that opens a literal and writes into it is judged by what it writes
    allowed = _allowed(proc, tok, "FILTER(?n = ")
    assert "'Ben" in allowed and "'Br" not in allowed and {"'", "rady"} <= allowed
    assert "rady" in _allowed(proc, tok, "FILTER(?n = 'Ben')")  # outside the literal: free
    free = TermLogitsProcessor(sparql, tok, prompt_length=0, eos_ids=[0])
    assert {"rady", " Smith", "<eos>"} <= _allowed(free, tok, "FILTER(?n = 'B")  # without sources (the default) literals are free


def test_a_literal_the_sources_do_not_hold_may_still_end(sparql: TermConstraint) -> None:
    # a literal that is already no piece of any source (a step where the constraint had to leave the text free) may only close
    tok = _Tokenizer([p for p in LITERAL_PIECES if not p.startswith("'B")])
    proc = TermLogitsProcessor(sparql.grounded_in(["nothing here"]), tok, prompt_length=0, eos_ids=[0])
    assert _allowed(proc, tok, "FILTER(?n = 'Brady") == {"'", "')"}
