"""The routed LLM (small first, large on low confidence or a failed check) and per-request cost
accounting, on :mod:`ragkit.testing`'s scripted LLMs (``len(llm.prompts)`` counts each model's calls)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragkit import Pipeline
from ragkit.core.cost import Price, record_cost, trace_cost
from ragkit.core.metrics import GenerationStats, StageTrace, Trace, recording
from ragkit.errors import ConfigError
from ragkit.models.router import RoutedLLM
from ragkit.testing import ScriptedLLM

TINY = "http://example.org/tiny/"
GOOD = f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}"
BROKEN = "SELECT ?c WHERE { ?c ?p }"


def routed(small: list[str], large: list[str], **kw: Any) -> tuple[RoutedLLM, ScriptedLLM, ScriptedLLM]:
    s, l = ScriptedLLM(responses=small), ScriptedLLM(responses=large)
    return RoutedLLM(small=s, large=l, **kw), s, l


def test_defaults_and_bad_parameters() -> None:
    r, _, _ = routed(["a"], ["b"])
    assert (r.min_score, r.check, r.small_price, r.large_price) == (None, "nonempty", Price(), Price())
    with pytest.raises(ValueError, match="check"):
        RoutedLLM(small=ScriptedLLM(), large=ScriptedLLM(), check="json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_score"):
        RoutedLLM(small=ScriptedLLM(), large=ScriptedLLM(), min_score=0.5)
    with pytest.raises(ValueError):
        Price(input_per_million=-1)


def test_a_good_small_reply_stays_small() -> None:
    r, s, l = routed(["Paris."], ["Large says Paris."])
    assert r.generate("Capital of France?").text == "Paris."
    assert (len(s.prompts), len(l.prompts)) == (1, 0)


def test_an_empty_reply_escalates() -> None:
    r, s, l = routed([""], ["Paris."])
    assert r.generate("Capital of France?").text == "Paris."
    assert (len(s.prompts), len(l.prompts)) == (1, 1)


def test_low_confidence_escalates() -> None:
    # ScriptedLLM scores its first sequence -0.1
    r, _, l = routed(["maybe"], ["sure"], min_score=-0.05)
    assert r.generate("q").text == "sure" and len(l.prompts) == 1
    r2, _, l2 = routed(["maybe"], ["sure"], min_score=-0.5)
    assert r2.generate("q").text == "maybe" and len(l2.prompts) == 0


@pytest.mark.parametrize(
    ("reply", "escalates"),
    [(GOOD, False), ("SELECT ?c WHERE { tiny:ann tiny:livesIn ?c }", False), (BROKEN, True), ("I do not know.", True)],
)
def test_sparql_validation(reply: str, escalates: bool) -> None:
    r, _, l = routed([reply], [GOOD], check="sparql")
    r.generate("Where does Ann live?")
    assert len(l.prompts) == int(escalates)


@pytest.mark.parametrize(
    ("reply", "escalates"),
    [("MATCH (p:Person) RETURN p.name", False), ("MATCH (p:Person) DETACH DELETE p RETURN 1", True), ("MATCH (p:Person)", True)],
)
def test_cypher_validation(reply: str, escalates: bool) -> None:
    r, _, l = routed([reply], ["MATCH (n) RETURN n"], check="cypher")
    r.generate("q")
    assert len(l.prompts) == int(escalates)


def test_costs_and_routes_go_to_the_trace() -> None:
    small_price = Price(input_per_million=1.0, output_per_million=2.0)
    large_price = Price(input_per_million=10.0, output_per_million=20.0, per_hour=3600.0)
    r, _, _ = routed(["", "ok"], ["Paris is the capital."], small_price=small_price, large_price=large_price)
    st = StageTrace(name="generate", type="answer_generator")
    with recording(st):
        big = r.generate("Capital of France?")
        small = r.generate("Capital of Italy?")
    cost = st.extra["cost"]
    assert st.extra["routes"] == ["large (empty reply)", "small"]
    assert cost["models"]["small"]["calls"] == 2 and cost["models"]["large"]["calls"] == 1
    s_in = cost["models"]["small"]["tokens_in"]
    assert s_in == 2 * 4 and cost["models"]["small"]["tokens_out"] == small.stats.tokens_out == 1  # "Capital of France ?"
    expected_small = small_price.cost(s_in, 1)
    expected_large = large_price.cost(big.stats.tokens_in, big.stats.tokens_out, big.stats.seconds)
    assert cost["models"]["small"]["cost"] == pytest.approx(expected_small)
    assert cost["models"]["large"]["cost"] == pytest.approx(expected_large, abs=1e-6)
    assert cost["total"] == pytest.approx(expected_small + expected_large, abs=1e-6) and st.extra["cost_total"] == cost["total"]
    assert st.tokens_in == 3 * 4  # every underlying call is in the stage's token counts
    total = trace_cost(Trace(stages=[st, StageTrace(name="other", type="x")]))
    assert total["total"] == pytest.approx(cost["total"]) and total["models"]["large"]["calls"] == 1


def test_price_arithmetic() -> None:
    assert Price(input_per_million=0.25, output_per_million=1.0).cost(tokens_in=1_000_000, tokens_out=500_000) == pytest.approx(0.75)
    assert Price(per_hour=36.0).cost(seconds=100) == pytest.approx(1.0)
    assert record_cost("m", GenerationStats(tokens_in=10), Price(input_per_million=1e6)) == pytest.approx(10.0)  # no recorder: just the amount


def test_streaming_never_shows_a_replaced_reply() -> None:
    from ragkit.core.metrics import streaming_to

    r, _, _ = routed(["", "small reply"], ["large reply"])
    got: list[str] = []
    st = StageTrace(name="g", type="t")
    with streaming_to(got.append), recording(st):
        r.generate("a", stream=True)
        first = "".join(got)
        got.clear()
        r.generate("b", stream=True)
    assert first == "large reply" and "".join(got) == "small reply"


def spec(**router: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "resources": {
            "small": {"type": "scripted_llm", "responses": [BROKEN]},
            "large": {"type": "scripted_llm", "responses": [GOOD]},
            "llm": {"type": "routed_llm", "small": "small", "large": "large", **router},
            "graph": {"type": "tiny_graph_store"},
        },
        "stages": [
            {"name": "schema", "type": "graph_schema_reader", "store": "graph"},
            {"name": "querygen", "type": "sparql_generator", "llm": "llm", "num_candidates": 1, "repair_rounds": 0},
            {"name": "retrieve", "type": "graph_query_retriever", "store": "graph"},
        ],
        "connections": ["schema.graph_schema -> querygen.graph_schema", "schema.text -> querygen.schema_text", "querygen.generated -> retrieve.generated"],
        "inputs": {"question": ["schema.question", "querygen.question"]},
        "outputs": {"query": "retrieve.query", "rows": "retrieve.rows"},
    }


def test_yaml_round_trip_and_a_routed_pipeline(tmp_path: Path) -> None:
    pipe = Pipeline.from_dict(spec(check="sparql", min_score=-1.5, large_price={"input_per_million": 0.2, "output_per_million": 0.6}))
    path = tmp_path / "p.yaml"
    pipe.to_yaml(path)
    again = Pipeline.from_yaml(path)
    assert again == pipe
    llm = again.resources["llm"]
    assert isinstance(llm, RoutedLLM) and llm.large_price == Price(input_per_million=0.2, output_per_million=0.6)
    out = again.run(question="Where does Ann live?")
    assert out["rows"] == [[f"{TINY}rome"]]
    qg = out.trace.stage("querygen")
    assert qg.extra["routes"][0].startswith("large (invalid SPARQL")
    assert trace_cost(out.trace)["models"]["large"]["cost"] > 0
    assert trace_cost(out.trace)["models"]["small"]["cost"] == 0
    assert again.resources["small"].setup_calls == 1  # type: ignore[attr-defined]


def test_a_bad_price_is_a_located_error(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec(large_price={"per_million": 1.0})))
    with pytest.raises(ConfigError, match="large_price") as e:
        Pipeline.from_yaml(path)
    assert e.value.issues[0].line > 0
