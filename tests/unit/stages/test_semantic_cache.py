"""The semantic cache and the pipeline's ``cache:`` block: hits, misses, the meaning guard, persistence,
invalidation when the data changes, query-level hits that skip stages, and clear errors.

Everything runs on :mod:`ragkit.testing` fakes: the scripted LLM records each prompt, so
``len(llm.prompts)`` is the number of model calls a run made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ragkit import Pipeline
from ragkit.core.cache import pipeline_namespace
from ragkit.errors import ConfigError
from ragkit.stages.cache.guard import meaning_differences, meaning_signature
from ragkit.stages.cache.semantic import SemanticCache
from ragkit.testing import HashingEmbedder, ScriptedLLM, TinyGraphStore

TINY = "http://example.org/tiny/"
ANN = f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}"
BOB = f"SELECT ?c WHERE {{ <{TINY}bob> <{TINY}livesIn> ?c }}"
PAIRS = Path(__file__).parents[2] / "data" / "semantic_cache_pairs.jsonl"


def spec(tmp_path: Path, cache: dict[str, Any] | None = None, **cache_res: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "version": 1,
        "name": "cached_kgqa",
        "resources": {
            "llm": {
                "type": "scripted_llm",
                "responses": [ANN],
                "rules": {"tiny/rome": "Ann lives in Rome.", "tiny/oslo": "Bob lives in Oslo.", "Bob live?\n<|assistant|>": BOB},
            },
            "embedder": {"type": "hashing_embedder", "dimension": 128},
            "graph": {"type": "tiny_graph_store"},
            "qa_cache": {"type": "semantic_cache", "embedder": "embedder", "store": "graph", "path": str(tmp_path / "c.sqlite"), "threshold": 0.8, **cache_res},
        },
        "stages": [
            {"name": "schema", "type": "graph_schema_reader", "store": "graph"},
            {"name": "querygen", "type": "sparql_generator", "llm": "llm", "num_candidates": 1},
            {"name": "retrieve", "type": "graph_query_retriever", "store": "graph"},
            {"name": "prompt", "type": "prompt_builder", "llm": "llm"},
            {"name": "generate", "type": "answer_generator", "llm": "llm"},
        ],
        "connections": [
            "schema.graph_schema -> querygen.graph_schema",
            "schema.text -> querygen.schema_text",
            "querygen.generated -> retrieve.generated",
            "retrieve.context -> prompt.graph",
            "prompt.prompt -> generate.prompt",
        ],
        "inputs": {"question": ["schema.question", "querygen.question", "prompt.question"]},
        "outputs": {"answer": "generate.text", "query": "retrieve.query", "rows": "retrieve.rows", "error": "retrieve.error"},
        "cache": cache if cache is not None else {"resource": "qa_cache"},
    }
    return d


def llm_calls(pipe: Pipeline) -> int:
    llm = pipe.resources["llm"]
    assert isinstance(llm, ScriptedLLM)
    return len(llm.prompts)


# ---- the meaning guard ------------------------------------------------------------------------------
def load_pairs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_corpus_covers_every_kind_of_difference() -> None:
    kinds = {p["differs_in"] for p in load_pairs() if not p["same_meaning"]}
    assert {"negation", "entity", "quoted", "number", "date", "comparison", "answer_type"} <= kinds
    assert sum(p["same_meaning"] for p in load_pairs()) >= 20


@pytest.mark.parametrize("pair", [p for p in load_pairs() if not p["same_meaning"]], ids=lambda p: f"{p['differs_in']}:{p['b']}")
def test_the_guard_refuses_every_near_duplicate_with_another_meaning(pair: dict[str, Any]) -> None:
    assert meaning_differences(pair["a"], pair["b"]), f"{pair['a']!r} and {pair['b']!r} look alike to the guard"
    assert meaning_differences(pair["b"], pair["a"])


def test_the_guard_accepts_most_paraphrases() -> None:
    same = [p for p in load_pairs() if p["same_meaning"]]
    accepted = [p for p in same if not meaning_differences(p["a"], p["b"])]
    assert len(accepted) >= len(same) - 2  # the known misses: population/how many, and one more at most


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("Who wrote three novels?", "numbers", {"3"}),
        ("Who wrote 3 novels?", "numbers", {"3"}),
        ("Which apartments have twenty five rooms?", "numbers", {"25"}),
        ("Who came 2nd?", "numbers", {"ord:2"}),
        ("Who came second?", "numbers", {"ord:2"}),
        ("Films of the 1980s released in May", "dates", {"decade:1980", "month:may"}),
        ("Which films were released last year?", "dates", {"last year"}),
        ("Books over 300 pages published before 1990", "comparisons", {"more", "before"}),
        ("What is the longest river?", "comparisons", {"longest"}),
        ('Who wrote "The Glass Orchard"?', "mentions", {"glass orchard"}),
        ("Who wrote The Glass Orchard?", "mentions", {"glass orchard"}),
        ("What was Ada Kern's 2nd book?", "mentions", {"ada kern"}),
        ("Did the Bank of England raise rates?", "mentions", {"bank of england"}),
    ],
)
def test_signature_parts(text: str, field: str, expected: set[str]) -> None:
    assert set(getattr(meaning_signature(text), field)) == expected


def test_negations_count_contractions_and_never() -> None:
    assert meaning_signature("Which rivers don't flow north?").negations == 1
    assert meaning_signature("Who has never won?").negations == 1
    assert meaning_signature("Who won?").negations == 0


# ---- the resource -----------------------------------------------------------------------------------
def test_defaults_and_bad_parameters() -> None:
    c = SemanticCache(embedder=HashingEmbedder())
    assert (c.threshold, c.top_k, c.guard, c.path, c.store, c.ttl_seconds) == (0.9, 5, True, None, None, None)
    with pytest.raises(ValueError, match="threshold"):
        SemanticCache(embedder=HashingEmbedder(), threshold=1.5)
    with pytest.raises(ValueError, match="top_k"):
        SemanticCache(embedder=HashingEmbedder(), top_k=0)
    with pytest.raises(ValueError, match="ttl_seconds"):
        SemanticCache(embedder=HashingEmbedder(), ttl_seconds=0)


def test_put_lookup_and_stats() -> None:
    c = SemanticCache(embedder=HashingEmbedder(), threshold=0.8)
    assert not c.lookup("Where does Ann live?", kind="answer", namespace="n").hit
    c.put("Where does Ann live?", {"outputs": {"answer": "Rome"}}, kind="answer", namespace="n")
    hit = c.lookup("where does Ann live", kind="answer", namespace="n")
    assert hit.hit and hit.payload == {"outputs": {"answer": "Rome"}} and hit.similarity is not None and hit.similarity >= 0.8
    assert not c.lookup("Where does Ann live?", kind="query", namespace="n").hit  # another kind
    assert not c.lookup("Where does Ann live?", kind="answer", namespace="other").hit  # another namespace
    refused = c.lookup("Where does Bob live?", kind="answer", namespace="n")
    assert not refused.hit
    r = 1 if refused.refused else 0  # refused by the guard when the fake embedding is close enough
    assert c.stats("n") == {"hits": 1, "misses": 3 - r, "refusals": r, "invalidations": 0, "stores": 1, "entries": 1}
    assert c.hit_rate("n") == pytest.approx(1 / 4)  # 1 hit in 4 lookups


def test_a_near_duplicate_above_the_threshold_is_refused_by_the_guard() -> None:
    c = SemanticCache(embedder=HashingEmbedder(), threshold=-1.0)  # every stored question is a candidate
    c.put("Which books were published before 1990?", {"a": 1}, kind="answer", namespace="n")
    found = c.lookup("Which books were published after 1990?", kind="answer", namespace="n")
    assert not found.hit and found.refused and "comparisons differ" in found.refused[0]
    assert c.stats("n")["refusals"] == 1
    unguarded = SemanticCache(embedder=HashingEmbedder(), threshold=-1.0, guard=False)
    unguarded.put("Which books were published before 1990?", {"a": 1}, kind="answer", namespace="n")
    assert unguarded.lookup("Which books were published after 1990?", kind="answer", namespace="n").hit


def test_no_near_duplicate_of_the_corpus_ever_gets_a_cached_answer() -> None:
    c = SemanticCache(embedder=HashingEmbedder(), threshold=-1.0)
    for i, p in enumerate(q for q in load_pairs() if not q["same_meaning"]):
        ns = f"pair{i}"
        c.put(p["a"], {"answer": p["a"]}, kind="answer", namespace=ns)
        assert not c.lookup(p["b"], kind="answer", namespace=ns).hit, p


def test_entries_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "cache.sqlite")
    c = SemanticCache(embedder=HashingEmbedder(), path=path, threshold=0.8)
    c.put("Where does Ann live?", {"answer": "Rome"}, kind="answer", namespace="n")
    c.close()
    again = SemanticCache(embedder=HashingEmbedder(), path=path, threshold=0.8)
    assert again.lookup("Where does Ann live?", kind="answer", namespace="n").payload == {"answer": "Rome"}
    assert again.stats()["stores"] == 1 and len(again) == 1


def test_a_second_process_sees_new_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.sqlite")
    reader = SemanticCache(embedder=HashingEmbedder(), path=path, threshold=0.8)
    assert not reader.lookup("Where does Ann live?", kind="answer", namespace="n").hit  # index built, empty
    writer = SemanticCache(embedder=HashingEmbedder(), path=path, threshold=0.8)
    writer.put("Where does Ann live?", {"answer": "Rome"}, kind="answer", namespace="n")
    assert reader.lookup("Where does Ann live?", kind="answer", namespace="n").hit


def test_replacing_an_entry_keeps_one_row() -> None:
    c = SemanticCache(embedder=HashingEmbedder(), threshold=0.8)
    c.put("Where does Ann live?", {"answer": "Rome"}, kind="answer", namespace="n")
    c.put("Where does Ann live?", {"answer": "Milan"}, kind="answer", namespace="n")
    assert len(c) == 1
    assert c.lookup("Where does Ann live?", kind="answer", namespace="n").payload == {"answer": "Milan"}


class ChangingStore(TinyGraphStore):
    version = "v1"

    def fingerprint(self) -> str:
        return self.version


def test_a_data_change_invalidates_entries() -> None:
    store = ChangingStore()
    c = SemanticCache(embedder=HashingEmbedder(), store=store, threshold=0.8)
    c.put("Where does Ann live?", {"answer": "Rome"}, kind="answer", namespace="n")
    assert c.lookup("Where does Ann live?", kind="answer", namespace="n").hit
    store.version = "v2"
    found = c.lookup("Where does Ann live?", kind="answer", namespace="n")
    assert not found.hit and found.invalidated == 1
    assert c.stats("n")["invalidations"] == 1 and len(c) == 0


def test_ttl_expires_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    import ragkit.stages.cache.semantic as mod

    c = SemanticCache(embedder=HashingEmbedder(), threshold=0.8, ttl_seconds=60)
    c.put("Where does Ann live?", {"answer": "Rome"}, kind="answer", namespace="n")
    assert c.lookup("Where does Ann live?", kind="answer", namespace="n").hit
    real = mod.time.time
    monkeypatch.setattr(mod.time, "time", lambda: real() + 120)
    assert not c.lookup("Where does Ann live?", kind="answer", namespace="n").hit


def test_clear() -> None:
    c = SemanticCache(embedder=HashingEmbedder(), threshold=0.8)
    c.put("a question", {"x": 1}, kind="answer", namespace="n")
    c.put("another question", {"x": 1}, kind="answer", namespace="m")
    assert c.clear("n") == 1 and len(c) == 1
    assert c.clear() == 1 and len(c) == 0


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    c = SemanticCache(embedder=HashingEmbedder(), path=str(bad))
    from ragkit.errors import StoreError

    with pytest.raises(StoreError, match="delete a damaged file"):
        c.warm_up()


# ---- the pipeline's cache: block --------------------------------------------------------------------
def test_yaml_round_trip_keeps_the_cache_block(tmp_path: Path) -> None:
    pipe = Pipeline.from_dict(spec(tmp_path, {"resource": "qa_cache", "query_stage": "querygen"}))
    path = tmp_path / "p.yaml"
    pipe.to_yaml(path)
    again = Pipeline.from_yaml(path)
    assert again == pipe
    assert again.cache is not None and again.cache.query_stage == "querygen" and again.cache.answer
    assert again.to_dict()["cache"] == {"resource": "qa_cache", "query_stage": "querygen"}


def test_miss_then_hit_runs_no_stage_and_calls_no_model(tmp_path: Path) -> None:
    pipe = Pipeline.from_dict(spec(tmp_path))
    first = pipe.run(question="Where does Ann live?")
    assert first["answer"] == "Ann lives in Rome." and llm_calls(pipe) == 2
    line = first.trace.stages[0]
    assert line.name == "cache:qa_cache" and line.extra["answer_cache"] == "miss"
    assert [s.name for s in first.trace.stages[1:]] == ["schema", "querygen", "retrieve", "prompt", "generate"]

    tokens: list[str] = []
    second = pipe.run(question="where does Ann live", on_token=tokens.append)
    assert llm_calls(pipe) == 2  # no model call
    assert second.outputs == {"answer": "Ann lives in Rome.", "query": ANN, "rows": [[f"{TINY}rome"]], "error": None}
    assert [s.name for s in second.trace.stages] == ["cache:qa_cache"]
    assert second.trace.stages[0].extra["answer_cache"] == "hit" and second.trace.stages[0].extra["served"] == "answer"
    assert tokens == ["Ann lives in Rome."] and second.trace.ttft is not None
    cache = pipe.resources["qa_cache"]
    assert isinstance(cache, SemanticCache)
    assert cache.stats() == {"hits": 1, "misses": 1, "refusals": 0, "invalidations": 0, "stores": 1, "entries": 1}
    assert pipe.resources["embedder"].setup_calls == 1  # type: ignore[attr-defined]


def test_a_question_about_someone_else_is_not_served_from_the_cache(tmp_path: Path) -> None:
    pipe = Pipeline.from_dict(spec(tmp_path, threshold=-1.0))  # similarity alone would always hit
    pipe.run(question="Where does Ann live?")
    out = pipe.run(question="Where does Bob live?")
    assert out["answer"] == "Bob lives in Oslo." and llm_calls(pipe) == 4
    line = out.trace.stages[0]
    assert line.extra["answer_cache"] == "refused" and "named entities" in line.extra["answer_refused"][0]


def test_the_cache_survives_a_new_pipeline_object(tmp_path: Path) -> None:
    Pipeline.from_dict(spec(tmp_path)).run(question="Where does Ann live?")
    fresh = Pipeline.from_dict(spec(tmp_path))
    out = fresh.run(question="Where does Ann live?")
    assert out["answer"] == "Ann lives in Rome." and llm_calls(fresh) == 0


def test_a_changed_pipeline_does_not_share_entries(tmp_path: Path) -> None:
    a = Pipeline.from_dict(spec(tmp_path))
    changed = spec(tmp_path)
    changed["stages"][4]["max_new_tokens"] = 12
    b = Pipeline.from_dict(changed)
    assert pipeline_namespace(a) != pipeline_namespace(b)
    a.run(question="Where does Ann live?")
    b.run(question="Where does Ann live?")
    assert llm_calls(b) == 2
    # the cache's own settings are not part of the namespace
    c = Pipeline.from_dict(spec(tmp_path, threshold=0.95))
    assert pipeline_namespace(c) == pipeline_namespace(a)


def test_query_level_hit_skips_query_generation_and_what_only_feeds_it(tmp_path: Path) -> None:
    pipe = Pipeline.from_dict(spec(tmp_path, {"resource": "qa_cache", "answer": False, "query_stage": "querygen"}))
    pipe.run(question="Where does Ann live?")
    assert llm_calls(pipe) == 2
    out = pipe.run(question="Where does Ann live?")
    assert llm_calls(pipe) == 3  # only the answer was generated
    assert out["answer"] == "Ann lives in Rome." and out["rows"] == [[f"{TINY}rome"]]
    names = [s.name for s in out.trace.stages]
    assert names == ["cache:qa_cache", "querygen", "retrieve", "prompt", "generate"]  # schema skipped
    assert out.trace.stage("querygen").extra == {"precomputed": True}
    assert out.trace.stages[0].extra["query_cache"] == "hit" and out.trace.stages[0].extra["served"] == "query"


def test_runs_with_an_error_output_are_not_cached(tmp_path: Path) -> None:
    d = spec(tmp_path)
    d["resources"]["llm"]["responses"] = ["SELECT ?c WHERE { ?c ?p }"]  # does not parse
    pipe = Pipeline.from_dict(d)
    out = pipe.run(question="Where does Carl live?")
    assert out["error"]
    cache = pipe.resources["qa_cache"]
    assert isinstance(cache, SemanticCache) and len(cache) == 0


def test_a_broken_cache_never_stops_an_answer(tmp_path: Path) -> None:
    d = spec(tmp_path)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 200)
    d["resources"]["qa_cache"]["path"] = str(bad)
    pipe = Pipeline.from_dict(d)
    out = pipe.run(question="Where does Ann live?")
    assert out["answer"] == "Ann lives in Rome."
    assert "cache_error" in out.trace.stages[0].extra


def test_use_cache_false_runs_every_stage(tmp_path: Path) -> None:
    pipe = Pipeline.from_dict(spec(tmp_path))
    pipe.run(question="Where does Ann live?")
    out = pipe.run(question="Where does Ann live?", use_cache=False)
    assert llm_calls(pipe) == 4 and out.trace.stages[0].name == "schema"


def test_set_cache_from_python(tmp_path: Path) -> None:
    d = spec(tmp_path)
    del d["cache"]
    pipe = Pipeline.from_dict(d)
    assert pipe.cache is None
    pipe.set_cache(SemanticCache(embedder=HashingEmbedder(), threshold=0.8), query_stage="querygen")
    assert pipe.cache is not None and pipe.cache.resource == "cache"
    pipe.run(question="Where does Ann live?")
    assert pipe.run(question="Where does Ann live?").trace.stages[0].extra["answer_cache"] == "hit"
    with pytest.raises(ConfigError, match="no stage named 'nope'"):
        pipe.set_cache("cache", query_stage="nope")
    pipe.set_cache(None)
    assert pipe.cache is None


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"resource": "nope"}, "resource 'nope' is not declared"),
        ({"resource": "graph"}, "is a tiny_graph_store, not a cache"),
        ({"resource": "qa_cache", "query_stage": "qgen"}, "no stage named 'qgen'"),
        ({"resource": "qa_cache", "question": "q"}, "no input 'q'"),
        ({"resource": "qa_cache", "answer": False}, "caches nothing"),
        ({"resource": "qa_cache", "levels": 2}, "unknown field 'levels'"),
        ({}, "missing required field 'resource'"),
    ],
)
def test_a_bad_cache_block_is_a_located_error(tmp_path: Path, cache: dict[str, Any], message: str) -> None:
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path, cache), sort_keys=False))
    with pytest.raises(ConfigError) as e:
        Pipeline.from_yaml(path)
    assert message in str(e.value)
    issue = e.value.issues[0]
    assert issue.file == str(path) and issue.line > 0


# ---- the command line -------------------------------------------------------------------------------
def test_cli_cache_stats_and_clear(tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from ragkit.cli import cli

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path), sort_keys=False))
    pipe = Pipeline.from_yaml(path)
    pipe.run(question="Where does Ann live?")
    pipe.run(question="Where does Ann live?")
    pipe.close()
    runner = CliRunner()
    res = runner.invoke(cli, ["cache", "stats", str(path)])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert (stats["hits"], stats["misses"], stats["entries"], stats["hit_rate"]) == (1, 1, 1, 0.5)
    res = runner.invoke(cli, ["cache", "clear", str(path)])
    assert res.exit_code == 0 and "removed 1 entry" in res.output
    assert json.loads(runner.invoke(cli, ["cache", "stats", str(path)]).output)["entries"] == 0


def test_cli_cache_on_a_pipeline_without_one_exits_2(tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from ragkit.cli import cli

    d = spec(tmp_path)
    del d["cache"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    res = CliRunner().invoke(cli, ["cache", "stats", str(path)])
    assert res.exit_code == 2 and "has no cache: block" in res.output and "Traceback" not in res.output
