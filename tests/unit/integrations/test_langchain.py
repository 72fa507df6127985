"""The LangChain bridge with langchain-core's own fakes: a pipeline as a Runnable (invoke, batch,
stream, inside a chain), a LangChain retriever as a stage, a LangChain chat model as an LLM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.runnables import RunnableLambda
from lc_helpers import KeywordRetriever

from ragkit import Pipeline
from ragkit.errors import ConfigError, InputError, MissingDependencyError
from ragkit.integrations.langchain import PipelineRunnable, as_runnable
from ragkit.models.langchain import LangChainChatModel, require_langchain
from ragkit.stages.retrievers.langchain import LangChainRetriever

TINY = "http://example.org/tiny/"
ANN = f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}"


def kgqa(**llm: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "resources": {
            "llm": llm or {"type": "scripted_llm", "responses": [ANN], "rules": {"tiny/rome": "Ann lives in Rome."}},
            "graph": {"type": "tiny_graph_store"},
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
        "outputs": {"answer": "generate.text", "query": "retrieve.query", "rows": "retrieve.rows"},
    }


def text_rag(retriever: dict[str, Any], llm: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "resources": {"llm": llm},
        "stages": [
            {"name": "retrieve", "type": "langchain_retriever", **retriever},
            {"name": "prompt", "type": "prompt_builder", "llm": "llm"},
            {"name": "generate", "type": "answer_generator", "llm": "llm"},
        ],
        "connections": ["retrieve.passages -> prompt.passages", "prompt.prompt -> generate.prompt"],
        "inputs": {"question": ["retrieve.question", "prompt.question"]},
        "outputs": {"answer": "generate.text", "passages": "retrieve.passages"},
    }


# ---- a pipeline as a Runnable -----------------------------------------------------------------------
def test_invoke_batch_and_stream_give_the_outputs_dict() -> None:
    chain = as_runnable(Pipeline.from_dict(kgqa()))
    out = chain.invoke("Where does Ann live?")
    assert out == {"answer": "Ann lives in Rome.", "query": ANN, "rows": [[f"{TINY}rome"]]}
    assert chain.invoke({"question": "Where does Ann live?"}) == out
    assert chain.batch(["Where does Ann live?", {"question": "Where does Ann live?"}]) == [out, out]
    chunks = list(chain.stream("Where does Ann live?"))
    assert len(chunks) > 2 and all(set(c) == {"answer"} for c in chunks[:-1])  # streamed word by word
    assert "".join(c["answer"] for c in chunks[:-1]) == "Ann lives in Rome."
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert dict(total) == out


def test_a_pipeline_inside_a_chain_and_with_its_trace() -> None:
    chain = RunnableLambda(lambda q: q.strip()) | PipelineRunnable(Pipeline.from_dict(kgqa()), with_trace=True) | RunnableLambda(lambda o: o)
    out = chain.invoke("  Where does Ann live?  ")
    assert out["answer"] == "Ann lives in Rome." and [s["name"] for s in out["trace"]["stages"]][0] == "schema"


def test_a_pipeline_file_path_works_too(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(kgqa()))
    assert as_runnable(str(path)).invoke("Where does Ann live?")["answer"] == "Ann lives in Rome."


def test_bad_inputs_are_clear_errors() -> None:
    chain = as_runnable(Pipeline.from_dict(kgqa()))
    with pytest.raises(InputError, match="question string or a dict"):
        chain.invoke(42)
    with pytest.raises(InputError, match="unknown pipeline input"):
        chain.invoke({"q": "x"})
    with pytest.raises(InputError, match="unknown pipeline input"):
        list(chain.stream({"q": "x"}))


def test_batch_returns_exceptions_when_asked() -> None:
    chain = as_runnable(Pipeline.from_dict(kgqa()))
    out = chain.batch(["Where does Ann live?", 42], return_exceptions=True)
    assert out[0]["answer"] == "Ann lives in Rome." and isinstance(out[1], InputError)


# ---- a LangChain chat model as the LLM --------------------------------------------------------------
def test_chat_model_resource_in_a_pipeline() -> None:
    pipe = Pipeline.from_dict(kgqa(type="langchain_chat_model", factory="lc_helpers:make_chat", kwargs={"responses": [ANN, "Ann lives in Rome."]}))
    streamed: list[str] = []
    res = pipe.run(question="Where does Ann live?", on_token=streamed.append)
    assert res["rows"] == [[f"{TINY}rome"]] and res["answer"] == "Ann lives in Rome."
    assert len(streamed) > 1 and "".join(streamed) == "Ann lives in Rome."  # the fake streams character by character
    gen = res.trace.stage("generate")
    assert gen.tokens_in > 0 and gen.tokens_out > 0 and gen.model_calls == 1
    chat = LangChainChatModel(model=FakeListChatModel(responses=[ANN]))
    assert chat.generate("hi").text == ANN and chat.count_tokens("a b, c") == 4  # estimated: no tokenizer download


def test_chat_model_stop_and_several_sequences() -> None:
    chat = LangChainChatModel(model=FakeListChatModel(responses=["one. two", "three. four"]))
    gen = chat.generate("x", stop=["."], num_return_sequences=2)
    assert gen.texts == ("one", "three")


def test_chat_model_yaml_round_trip(tmp_path: Path) -> None:
    spec = kgqa(type="langchain_chat_model", factory="lc_helpers:make_chat", kwargs={"responses": ["x"]}, context_window=4096)
    pipe = Pipeline.from_dict(spec)
    path = tmp_path / "p.yaml"
    pipe.to_yaml(path)
    again = Pipeline.from_yaml(path)
    assert again == pipe and again.resources["llm"].context_window == 4096


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "exactly one of 'model'"),
        ({"model": "gpt", "factory": None}, "takes a chat model object"),
        ({"factory": "not a path"}, "is not of the form"),
        ({"factory": "a:b", "context_window": 2}, "context_window"),
    ],
)
def test_chat_model_bad_parameters(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LangChainChatModel(**kw)


def test_chat_model_factory_errors() -> None:
    with pytest.raises(ConfigError, match="cannot import"):
        LangChainChatModel(factory="no_such_module_xyz:make").warm_up()
    with pytest.raises(ConfigError, match="has no attribute"):
        LangChainChatModel(factory="lc_helpers:nope").warm_up()
    with pytest.raises(ConfigError, match="not a LangChain BaseChatModel"):
        LangChainChatModel(factory="lc_helpers:not_a_retriever").warm_up()


# ---- a LangChain retriever as a stage ---------------------------------------------------------------
def test_retriever_stage_maps_documents_to_passages() -> None:
    out = LangChainRetriever(retriever=KeywordRetriever()).run(question="Bob Oslo?")
    assert [p.id for p in out.passages] == ["bob"]
    everyone = LangChainRetriever(retriever=KeywordRetriever(), top_k=2).run(question="nothing matches")
    ann, bob = everyone.passages
    assert (ann.id, ann.title, ann.score, ann.metadata) == ("ann", "Ann", 0.9, {"title": "Ann", "score": 0.9})
    assert (bob.id, bob.title, bob.doc_id) == ("bob", "Bob", "bob")
    third = LangChainRetriever(retriever=KeywordRetriever()).run(question="nothing matches").passages[2]
    assert (third.id, third.doc_id) == ("lc3", "carl.txt")


def test_retriever_stage_in_a_yaml_pipeline(tmp_path: Path) -> None:
    spec = text_rag({"factory": "lc_helpers:make_retriever", "top_k": 2}, {"type": "scripted_llm", "rules": {"Rome": "Ann lives in Rome [p1]."}})
    path = tmp_path / "p.yaml"
    Pipeline.from_dict(spec).to_yaml(path)
    pipe = Pipeline.from_yaml(path)
    res = pipe.run(question="Where does Ann live?")
    assert res["answer"] == "Ann lives in Rome [p1]." and [p.id for p in res["passages"]] == ["ann"]
    assert res.trace.stage("retrieve").extra["documents"] == 1


def test_retriever_stage_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LangChainRetriever()
    with pytest.raises(ValueError, match="top_k"):
        LangChainRetriever(retriever=KeywordRetriever(), top_k=0)
    with pytest.raises(ConfigError, match="not a LangChain BaseRetriever"):
        LangChainRetriever(factory="lc_helpers:not_a_retriever").run(question="x")
    with pytest.raises(InputError, match="empty"):
        LangChainRetriever(retriever=KeywordRetriever()).run(question=" ")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(text_rag({"factory": "lc_helpers.make_retriever"}, {"type": "scripted_llm"})))
    with pytest.raises(ConfigError, match="is not of the form") as e:
        Pipeline.from_yaml(path)
    assert e.value.issues[0].line > 0


def test_missing_langchain_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ragkit\[langchain\]'"):
        require_langchain("the bridge")
