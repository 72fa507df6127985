"""Pipelines on fakes for the server tests."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from ragkit import Pipeline
from ragkit.core.stage import Stage
from ragkit.errors import StoreUnavailableError
from ragkit.stages.generators.local import AnswerGenerator
from ragkit.stages.prompts.builder import PromptBuilder
from ragkit.stages.querygen.sparql import SparqlQueryGenerator
from ragkit.stages.retrievers.graph import GraphQueryRetriever
from ragkit.stages.schema.reader import GraphSchemaReader
from ragkit.testing import ScriptedLLM, TextOutput, TinyGraphStore

pytest.importorskip("fastapi")

TINY = "http://example.org/tiny/"
ANSWER = "Ann lives in Rome."
QUERY = f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}"


def chat_pipeline(answer: str = ANSWER, llm: Any = None) -> Pipeline:
    """prompt -> generate on a scripted LLM: the smallest pipeline ragkit serve accepts."""
    llm = llm or ScriptedLLM(responses=[answer])
    pipe = Pipeline(name="fake_chat")
    pipe.add_stage("prompt", PromptBuilder(llm=llm)).add_stage("generate", AnswerGenerator(llm=llm, max_new_tokens=32))
    pipe.connect("prompt.prompt", "generate.prompt").add_input("question", "prompt.question").add_output("answer", "generate.text")
    return pipe


class SwitchableStore(TinyGraphStore):
    """The tiny graph, which can be switched off to act like a store that went down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def fingerprint(self) -> str:
        if self.down:
            raise StoreUnavailableError("cannot reach the tiny store (check that it is running)")
        return super().fingerprint()

    def _execute(self, query: str, limit: int) -> Any:
        if self.down:
            raise StoreUnavailableError("cannot reach the tiny store (check that it is running)")
        return super()._execute(query, limit)


def kgqa_pipeline(store: TinyGraphStore | None = None) -> Pipeline:
    """schema -> SPARQL -> graph rows -> prompt -> answer, on the tiny graph and a scripted LLM."""
    llm = ScriptedLLM(responses=[QUERY], rules={"Context:": ANSWER})
    store = store or TinyGraphStore()
    pipe = Pipeline(name="fake_kgqa")
    pipe.add_resource("graph", store).add_resource("llm", llm)
    pipe.add_stage("schema", GraphSchemaReader(store=store))
    pipe.add_stage("querygen", SparqlQueryGenerator(llm=llm, num_candidates=1))
    pipe.add_stage("retrieve", GraphQueryRetriever(store=store))
    pipe.add_stage("prompt", PromptBuilder(llm=llm))
    pipe.add_stage("generate", AnswerGenerator(llm=llm))
    for src, dst in [
        ("schema.graph_schema", "querygen.graph_schema"),
        ("schema.text", "querygen.schema_text"),
        ("querygen.generated", "retrieve.generated"),
        ("retrieve.context", "prompt.graph"),
        ("retrieve.context", "generate.graph"),
        ("prompt.prompt", "generate.prompt"),
    ]:
        pipe.connect(src, dst)
    pipe.add_input("question", "schema.question", "querygen.question", "prompt.question")
    pipe.add_output("answer", "generate.text").add_output("query", "retrieve.query")
    return pipe


class GateStage(Stage):
    """Blocks each run until ``gate`` is set: holds requests in flight for the queue tests."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.started = threading.Semaphore(0)

    def run(self, text: str) -> TextOutput:
        self.started.release()
        if not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        return TextOutput(text=f"done: {text}")


def gated_pipeline(gate: threading.Event) -> tuple[Pipeline, GateStage]:
    stage = GateStage(gate)
    pipe = Pipeline(name="gated")
    pipe.add_stage("gate", stage).add_input("question", "gate.text").add_output("answer", "gate.text")
    return pipe, stage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


