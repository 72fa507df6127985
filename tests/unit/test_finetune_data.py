"""Fine-tuning data: inference-identical prompts, loss masks, protocol-safe folds, schemas from queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragkit.errors import InputError, ModelError
from ragkit.finetune.data import (
    IGNORE,
    PromptBuilder,
    SchemaBook,
    TrainPair,
    build_sequences,
    cypher_schema_from_structured,
    encode,
    equivalent,
    make_folds,
    nearest_examples,
    read_cypher_schemas,
    read_pairs,
    sparql_schema_from_queries,
)
from ragkit.models.adapters import ADAPTER_META, FOLDS_META, adapter_key, base_model_matches, fold_for_item, model_fingerprint, read_adapter_meta
from ragkit.stages.querygen.cypher import CypherQueryGenerator
from ragkit.stages.querygen.sparql import SparqlQueryGenerator
from ragkit.stages.schema.reader import GraphSchemaReader, adopt_prefixes, render_schema
from ragkit.stores.examples import QueryExample
from ragkit.testing import ScriptedLLM, TinyGraphStore

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "finetune" / "library_sparql.jsonl"
P = "PREFIX : <http://x.org/g/>\n"


def pair(i: int, q: str, query: str, graph: str = "g", answers: tuple[tuple[str, ...], ...] | None = None) -> TrainPair:
    return TrainPair(id=f"i{i}", graph=graph, question=q, query=query, language="sparql", answers=answers)


def words_tokenize(text: str) -> list[int]:
    # a deterministic fake tokenizer: one id per character
    return [ord(c) for c in text]


# ---- reading --------------------------------------------------------------------------------
def test_read_pairs_spider_layout() -> None:
    pairs = read_pairs(FIXTURE, "sparql")
    assert len(pairs) == 8
    assert pairs[0].id == "ft-lib-0" and pairs[0].graph == "library" and pairs[0].answers is None


def test_read_pairs_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl", "sparql")
    with pytest.raises(InputError, match="unknown query language"):
        read_pairs(FIXTURE, "sql")
    with pytest.raises(InputError, match="pass --language sparql"):
        read_pairs(FIXTURE, "cypher")  # the file holds SPARQL
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(InputError, match="bad.jsonl:1"):
        read_pairs(bad, "sparql")


# ---- schemas ----------------------------------------------------------------------------------
def test_sparql_schema_from_queries_classes_properties_domains() -> None:
    qs = [
        P + "SELECT ?n WHERE { ?s a :singer . ?s :singer\\#name ?n }",
        P + "SELECT (COUNT(*) AS ?c) WHERE { ?c a :concert . ?c :concert\\#year ?y FILTER(?y > 2014) }",
        "not a query {",
    ]
    schema = sparql_schema_from_queries(qs)
    assert {c.name for c in schema.classes} == {"http://x.org/g/singer", "http://x.org/g/concert"}
    props = {p.name: p for p in schema.properties}
    assert set(props) == {"http://x.org/g/singer#name", "http://x.org/g/concert#year"}
    assert props["http://x.org/g/singer#name"].domains == ("http://x.org/g/singer",)
    text = render_schema(schema)
    assert "Classes:" in text and "singer" in text


def test_cypher_schema_from_structured_matches_store_shape() -> None:
    struct = {
        "node_props": {"User": [{"property": "name", "type": "STRING", "values": ["ann", "bob"]}]},
        "rel_props": {},
        "relationships": [{"start": "User", "type": "FOLLOWS", "end": "User"}],
    }
    schema = cypher_schema_from_structured(struct)
    assert [c.name for c in schema.classes] == ["User"]
    rel = next(p for p in schema.properties if p.kind == "relationship")
    assert (rel.name, rel.domains, rel.ranges) == ("FOLLOWS", ("User",), ("User",))
    text = render_schema(schema)
    assert "(:User)-[:FOLLOWS]->(:User)" in text and 'User.name: STRING  e.g. "ann"' in text


def test_read_cypher_schemas_python_repr(tmp_path: Path) -> None:
    f = tmp_path / "train_schemas.jsonl"
    struct = "{'node_props': {'A': []}, 'rel_props': {}, 'relationships': [], 'metadata': {}}"
    f.write_text(json.dumps({"database": "db", "schema": "", "structured_schema": struct}) + "\n")
    assert [c.name for c in read_cypher_schemas(f)["db"].classes] == ["A"]
    f.write_text('{"database": "db"}\n')
    with pytest.raises(InputError, match="structured_schema"):
        read_cypher_schemas(f)


# ---- prompts ----------------------------------------------------------------------------------
def test_prompt_is_the_inference_prompt_without_examples() -> None:
    store = TinyGraphStore()
    llm = ScriptedLLM()
    q = "Where does Ann live?"
    target = 'SELECT ?c WHERE { ?p rdfs:label "Ann" . ?p tiny:livesIn ?c }'
    p = TrainPair(id="a", graph="tiny", question=q, query=target, language="sparql")
    builder = PromptBuilder(llm, "sparql", lambda g: store.schema(), schema_tokens=900)
    # what the pipeline does: the schema reader, then the generator's prompt
    read = GraphSchemaReader(store=store, max_tokens=900).run(question=q)
    gen = SparqlQueryGenerator(llm=llm)
    from ragkit.stages.linkers.entity import EntityMention, LinkedEntities

    ents = LinkedEntities(mentions=[EntityMention(span="Ann", value="Ann", property="x")])
    expected = llm.render(gen.messages(q, read.text, [], ents))
    assert llm.render(builder.messages(p, [])) == expected


def test_prompt_is_the_inference_prompt_with_examples_and_adopted_prefixes() -> None:
    q1 = P + "SELECT ?n WHERE { ?s a :singer . ?s :singer\\#name ?n }"
    q2 = P + "SELECT ?a WHERE { ?s a :singer . ?s :singer\\#age ?a }"
    q3 = P + "SELECT (COUNT(*) AS ?c) WHERE { ?s a :singer }"
    pairs = [pair(1, "Names of singers?", q1), pair(2, "Ages of singers?", q2), pair(3, "How many singers?", q3)]
    book = SchemaBook(pairs, "sparql")
    llm = ScriptedLLM()
    builder = PromptBuilder(llm, "sparql", book, schema_tokens=900)
    exs = nearest_examples(pairs[0], pairs, 2)
    assert [e.id for e in exs] == ["i3", "i2"]  # most words shared (Jaccard) first; never the item itself
    schema = book("g")
    schema = schema.model_copy(update={"prefixes": adopt_prefixes(schema.prefixes, [e.query for e in exs])})
    text = render_schema(schema, pairs[0].question, max_tokens=900)
    gen = SparqlQueryGenerator(llm=llm)
    expected = gen.messages(pairs[0].question, text, [QueryExample(question=e.question, query=e.query) for e in exs])
    assert builder.messages(pairs[0], exs) == expected
    assert ":singer\\#name" in text  # the schema is written in the examples' notation


def test_cypher_prompt_uses_the_cypher_generator() -> None:
    llm = ScriptedLLM()
    schema = cypher_schema_from_structured({"node_props": {"User": []}, "relationships": []})
    p = TrainPair(id="c", graph="g", question="How many users?", query="MATCH (u:User) RETURN count(u)", language="cypher")
    msgs = PromptBuilder(llm, "cypher", lambda g: schema).messages(p, [])
    assert msgs == CypherQueryGenerator(llm=llm).messages(p.question, render_schema(schema, p.question, max_tokens=900), [])


def test_examples_follow_the_protocol() -> None:
    same = P + "SELECT ?n WHERE { ?s a :singer . ?s :singer\\#name ?n }"
    item = pair(1, "Names of singers", same, answers=(("a",),))
    pool = [
        item,
        pair(2, "Names of singers please", "  " + same.upper() + " "),  # same query, folded
        pair(3, "Names of singers again", P + "SELECT ?x WHERE { ?x a :singer }", answers=(("a",),)),  # same rows
        pair(4, "Names of singers", P + "SELECT ?x WHERE { ?x a :singer }", graph="other"),  # another graph
        pair(5, "Ages of singers", P + "SELECT ?a WHERE { ?s :singer\\#age ?a }"),
    ]
    assert [e.id for e in nearest_examples(item, pool, 3)] == ["i5"]


# ---- encoding -------------------------------------------------------------------------------
def test_loss_mask_covers_only_the_query() -> None:
    prompt, target = "<|user|>\nq?\n<|assistant|>\n", "SELECT ?x WHERE { ?x ?p ?o }<eos>"
    e = encode("a", prompt, target, words_tokenize)
    assert e.input_ids == words_tokenize(prompt + target)
    assert e.labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert "".join(chr(t) for t in e.labels if t != IGNORE) == target


def test_build_sequences_drops_examples_then_skips_what_does_not_fit() -> None:
    pairs = read_pairs(FIXTURE, "sparql")
    llm = ScriptedLLM()
    builder = PromptBuilder(llm, "sparql", SchemaBook(pairs, "sparql"))
    full, stats = build_sequences(pairs[:2], pairs, builder, words_tokenize, examples=2, max_length=100_000)
    assert stats.kept == 2 and all(e.examples == 2 for e in full)
    assert all(chr(e.labels[-1]) == "}" for e in full)  # the target ends with the query (no eos in a fake)
    shortest_noex = min(len(e.input_ids) for e in build_sequences(pairs[:2], pairs, builder, words_tokenize, examples=0)[0])
    cut, stats = build_sequences(pairs[:2], pairs, builder, words_tokenize, examples=2, max_length=shortest_noex + 5)
    assert all(e.examples < 2 for e in cut) and stats.fewer_examples >= 1
    none, stats = build_sequences(pairs[:2], pairs, builder, words_tokenize, examples=2, max_length=10)
    assert none == [] and stats.too_long == 2


def test_pairs_whose_query_fails_the_generators_checks_are_left_out() -> None:
    good = [pair(i, f"Which things have value {i}?", P + f"SELECT ?x WHERE {{ ?x :value {i} . }}") for i in range(3)]
    unbound = pair(7, "Which names?", P + "SELECT ?name WHERE { ?x :value 1 . }")  # ?name is never bound
    broken = pair(8, "Order them?", P + "SELECT ?x WHERE { ?x :value ?v . } ORDER BY ASC((count(*) as ?n))")
    pairs = [*good, unbound, broken]
    builder = PromptBuilder(ScriptedLLM(), "sparql", SchemaBook(pairs, "sparql"))
    seqs, stats = build_sequences(pairs, pairs, builder, words_tokenize, examples=2, max_length=100_000)
    assert [e.id for e in seqs] == ["i0", "i1", "i2"]
    assert stats.failing_checks == 2 and stats.failing_ids == ["i7", "i8"] and stats.kept == 3
    shown = "".join(chr(t) for e in seqs for t in e.input_ids)
    assert "?name" not in shown and "count(*)" not in shown  # nor shown as an example
    kept, stats = build_sequences(pairs, pairs, builder, words_tokenize, examples=2, max_length=100_000, drop_failing=False)
    assert len(kept) == 5 and stats.failing_checks == 0


def test_cypher_pairs_against_their_relationship_directions_are_left_out() -> None:
    structured = {
        "node_props": {"Person": [{"property": "name", "type": "STRING"}], "Movie": [{"property": "title", "type": "STRING"}]},
        "rel_props": {},
        "relationships": [{"start": "Person", "type": "ACTED_IN", "end": "Movie"}],
    }
    schema = cypher_schema_from_structured(structured)
    right = TrainPair(id="c0", graph="m", question="Who acted?", query="MATCH (p:Person)-[:ACTED_IN]->(m:Movie) RETURN p.name", language="cypher")
    wrong = TrainPair(id="c1", graph="m", question="Who acted?", query="MATCH (m:Movie)-[:ACTED_IN]->(p:Person) RETURN p.name", language="cypher")
    builder = PromptBuilder(ScriptedLLM(), "cypher", SchemaBook([right, wrong], "cypher", {"m": schema}))
    seqs, stats = build_sequences([right, wrong], [right, wrong], builder, words_tokenize, examples=0, max_length=100_000)
    assert [e.id for e in seqs] == ["c0"] and stats.failing_ids == ["c1"]


# ---- folds ------------------------------------------------------------------------------------
def _bank() -> list[TrainPair]:
    items = []
    for i in range(30):
        q = P + f"SELECT ?x WHERE {{ ?x :p{i % 12} ?y }}"  # repeated queries: equivalents across items
        items.append(pair(i, f"question {i}", q if i % 3 else q.upper(), answers=((str(i % 20),),)))
    return items


@pytest.mark.parametrize("k", [2, 3, 4])
def test_fold_training_never_holds_an_equivalent_of_a_held_out_item(k: int) -> None:
    items = _bank()
    folds = make_folds(items, k, seed=1)
    held = [i.id for f in folds for i in f.held_out]
    assert sorted(held) == sorted(i.id for i in items)  # every item is held out exactly once
    for f in folds:
        train_ids = {t.id for t in f.train}
        assert not train_ids & {h.id for h in f.held_out}
        for t in f.train:
            assert not any(equivalent(t, h) for h in f.held_out)


def test_folds_errors() -> None:
    with pytest.raises(InputError, match="--folds"):
        make_folds(_bank(), 1)
    dup = [pair(1, "a", P + "ASK {}"), pair(1, "b", P + "ASK { ?s ?p ?o }")]
    with pytest.raises(InputError, match="duplicate ids"):
        make_folds(dup, 2)


# ---- adapter artifacts --------------------------------------------------------------------------
def test_adapter_meta_and_fold_selection(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        read_adapter_meta(tmp_path / "none")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModelError, match="adapter_config.json"):
        read_adapter_meta(tmp_path / "plain")
    a = tmp_path / "set" / "fold-0"
    a.mkdir(parents=True)
    (a / "adapter_config.json").write_text("{}")
    (a / ADAPTER_META).write_text(json.dumps({"language": "sparql"}))
    assert read_adapter_meta(a) == {"language": "sparql"}
    (tmp_path / "set" / FOLDS_META).write_text(json.dumps({"folds": [{"adapter": "fold-0", "held_out": ["q1"]}, {"adapter": "fold-1", "held_out": ["q2"]}]}))
    assert fold_for_item(tmp_path / "set", "q2") == tmp_path / "set" / "fold-1"
    with pytest.raises(ModelError, match="no fold"):
        fold_for_item(tmp_path / "set", "q3")
    with pytest.raises(ModelError, match="k-fold adapter set"):
        read_adapter_meta(tmp_path / "set")
    assert adapter_key(None, True) == "" and adapter_key(a, True) != adapter_key(a, False)


def test_model_fingerprint_tells_models_apart(tmp_path: Path) -> None:
    for name, payload in (("m1", b"\x00" * 10), ("m2", b"\x01" * 10)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "model.safetensors").write_bytes(payload)
    assert model_fingerprint(tmp_path / "m1") != model_fingerprint(tmp_path / "m2")
    (tmp_path / "m3").mkdir()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / "m3" / f).write_bytes((tmp_path / "m1" / f).read_bytes())
    assert model_fingerprint(tmp_path / "m1") == model_fingerprint(tmp_path / "m3")  # where it lives does not matter


def _legacy_fingerprint(folder: Path) -> str:
    """The fingerprint adapters recorded before the format was: config.json hashed as it was."""
    import hashlib

    h = hashlib.sha256((folder / "config.json").read_bytes())
    for p in sorted(folder.glob("*.safetensors")):
        h.update(f"{p.name}:{p.stat().st_size}".encode() + p.read_bytes())
    return h.hexdigest()[:16]


def _model(folder: Path, version: str, weights: bytes = b"\x00" * 10) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "transformers_version": version}, indent=2))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_the_fingerprint_leaves_out_the_transformers_release_that_wrote_the_folder(tmp_path: Path) -> None:
    """The same model converted again by another transformers release keeps its fingerprint; another
    config value or other weights change it."""
    old, new = _model(tmp_path / "old", "5.23.0"), _model(tmp_path / "new", "5.24.0")
    assert model_fingerprint(old) == model_fingerprint(new)
    (new / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16, "transformers_version": "5.24.0"}))
    assert model_fingerprint(old) != model_fingerprint(new)
    assert model_fingerprint(old) != model_fingerprint(_model(tmp_path / "other", "5.23.0", b"\x01" * 10))


def test_an_adapter_record_matches_its_base_model_in_either_fingerprint_format(tmp_path: Path) -> None:
    old, new = _model(tmp_path / "old", "5.23.0"), _model(tmp_path / "new", "5.24.0")
    other = _model(tmp_path / "other", "5.23.0", b"\x01" * 10)
    current = {"name": "m", "fingerprint": model_fingerprint(old), "fingerprint_format": 2}
    assert base_model_matches(current, new) and not base_model_matches(current, other)
    # a record from before the format was kept: the folder as another release wrote it still matches
    legacy = {"name": "m", "fingerprint": _legacy_fingerprint(old)}
    assert _legacy_fingerprint(old) != _legacy_fingerprint(new)
    assert base_model_matches(legacy, old) and base_model_matches(legacy, new)
    assert not base_model_matches(legacy, other)
    # a current-format record is not read as a legacy one, and a record without a fingerprint can't be checked
    assert not base_model_matches({"fingerprint": _legacy_fingerprint(old), "fingerprint_format": 2}, old)
    assert base_model_matches({"name": "m"}, other)


def test_a_resumed_run_keeps_the_base_record_its_checkpoint_was_keyed_with(tmp_path: Path) -> None:
    """A checkpoint written under the legacy fingerprint resumes: the run's key is computed from the
    record it started with, when that record names the same model."""
    from ragkit.finetune.trainer import _resumed_base_record

    old, new = _model(tmp_path / "old", "5.23.0"), _model(tmp_path / "new", "5.24.0")
    other = _model(tmp_path / "other", "5.23.0", b"\x01" * 10)
    legacy = {"name": "m", "fingerprint": _legacy_fingerprint(old)}
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint" / ADAPTER_META).write_text(json.dumps({"base_model": legacy, "checkpoint": True}))
    meta = {"base_model": {"name": "m", "fingerprint": model_fingerprint(new), "fingerprint_format": 2}, "data": []}
    assert _resumed_base_record(meta, tmp_path / "run", new) == {**meta, "base_model": legacy}
    assert _resumed_base_record(meta, tmp_path / "run", other) == meta  # another model's checkpoint: not taken
    assert _resumed_base_record(meta, tmp_path / "none", new) == meta and _resumed_base_record({}, tmp_path / "run", new) == {}


# ---- CLI --------------------------------------------------------------------------------------
def test_cli_finetune_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ragkit.cli import main

    cases = [
        (["--train", str(tmp_path / "missing.jsonl"), "--language", "sparql"], "does not exist"),
        (["--train", str(FIXTURE), "--language", "sql"], "unknown query language"),
        (["--language", "sparql"], "nothing to train on"),
        (["--train", str(FIXTURE), "--language", "sparql", "--folds", "3"], "--folds needs --bank"),
        (["--train", str(FIXTURE), "--language", "sparql", "--init-adapter", str(tmp_path / "none")], "is not a folder"),
        (["--train", str(FIXTURE), "--language", "sparql", "--init-adapter", str(tmp_path / "set")], "is a fold set"),
        (["--train", str(FIXTURE), "--language", "sparql", "--init-adapter", str(tmp_path / "plain")], "adapter_config.json"),
        (["--train", str(FIXTURE), "--language", "sparql", "--init-adapter", str(tmp_path / "cypher")], "writes cypher"),
        (["--train", str(FIXTURE), "--language", "cypher", "--init-adapter", str(tmp_path / "cypher")], "has no adapter_model.safetensors"),
    ]
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / FOLDS_META).write_text(json.dumps({"folds": []}))
    (tmp_path / "plain").mkdir()
    (tmp_path / "cypher").mkdir()
    (tmp_path / "cypher" / "adapter_config.json").write_text("{}")
    (tmp_path / "cypher" / ADAPTER_META).write_text(json.dumps({"language": "cypher"}))
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            main(["finetune", *args, "--output", str(tmp_path / "out")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_options_recorded_are_json_and_leave_out_an_unset_init_adapter() -> None:
    """A run without ``--init-adapter`` records the options it did before the option existed, so the run
    key of a checkpoint written then still matches and the run resumes."""
    from ragkit.finetune.trainer import FinetuneOptions, _options_meta

    plain = _options_meta(FinetuneOptions(language="sparql", output="out"))
    assert "init_adapter" not in plain and "output" not in plain and plain["rank"] == 8
    assert _options_meta(FinetuneOptions(language="sparql", output="out", init_adapter="a"))["init_adapter"] == "a"
    # `--graph` and `--schemas` arrive as paths: the adapter's metadata must still be written as JSON
    given = _options_meta(FinetuneOptions(language="cypher", output="out", graph=Path("g/movies.cypher"), schemas=Path("s.jsonl")))  # type: ignore[arg-type]
    assert json.loads(json.dumps(given))["graph"] == str(Path("g/movies.cypher"))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux: the peak is reset through /proc/self/clear_refs")
def test_each_adapter_records_its_own_peak_memory_not_the_process_peak() -> None:
    """A k-fold run trains its folds in one process: a fold's peak must not include the folds before it.
    Measured in a fresh interpreter: a test worker's own memory (models other tests loaded) would hide it."""
    import subprocess
    import sys

    code = (
        "from ragkit.finetune.trainer import _peak_rss_mb, _reset_peak_rss\n"
        "big = bytearray(300 * 1024 * 1024)\n"  # written (zeroed), so resident
        "with_it = _peak_rss_mb()\n"
        "del big\n"
        "_reset_peak_rss()\n"
        "print(with_it, _peak_rss_mb())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    with_it, after = float(out[0]), float(out[1])
    assert after < with_it - 200
