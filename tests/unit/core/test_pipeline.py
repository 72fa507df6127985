"""The pipeline: connect-time type checks, acyclicity, run order, inputs/outputs, errors, traces,
streaming, the warm-up lifecycle of shared resources, and concurrent runs.

Everything runs on :mod:`ragkit.testing` fakes; timings are only compared with each other.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ragkit import InputError, Output, Pipeline, Stage
from ragkit.core.component import is_compatible, type_name
from ragkit.errors import (
    ConfigError,
    ConnectionMismatchError,
    CycleError,
    PipelineError,
    StageFailedError,
    UserError,
)
from ragkit.models.base import LLM
from ragkit.stages.generators.local import AnswerGenerator
from ragkit.stages.prompts.builder import PromptBuilder
from ragkit.stages.querygen.sparql import SparqlQueryGenerator
from ragkit.stages.retrievers.examples import FewShotExampleRetriever
from ragkit.stages.retrievers.graph import GraphQueryRetriever
from ragkit.stages.schema.reader import GraphSchemaReader
from ragkit.stores.examples import ExampleBank
from ragkit.testing import (
    EchoStage,
    HashingEmbedder,
    ScriptedLLM,
    TextOutput,
    TinyGraphStore,
    UpperStage,
)

TINY = "http://example.org/tiny/"
SPARQL = f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}"
ANSWER = "Ann lives in Rome."


# ---- small stages with typed sockets ------------------------------------------------------------


class Animal:
    pass


class Dog(Animal):
    pass


class IntOut(Output):
    value: int


class OptStrOut(Output):
    text: str | None


class ListStrOut(Output):
    items: list[str]


class ListIntOut(Output):
    items: list[int]


class DictOut(Output):
    table: dict[str, int]


class DogOut(Output):
    pet: Dog


class AnimalOut(Output):
    pet: Animal


class AnyOut(Output):
    thing: Any


class MakeInt(Stage):
    def run(self, x: int = 0) -> IntOut:
        return IntOut(value=x)


class MakeOptStr(Stage):
    def run(self, text: str = "") -> OptStrOut:
        return OptStrOut(text=text or None)


class MakeListStr(Stage):
    def run(self, text: str = "a b") -> ListStrOut:
        return ListStrOut(items=text.split())


class MakeListInt(Stage):
    def run(self) -> ListIntOut:
        return ListIntOut(items=[1, 2])


class MakeDict(Stage):
    def run(self) -> DictOut:
        return DictOut(table={"a": 1})


class MakeDog(Stage):
    def run(self) -> DogOut:
        return DogOut(pet=Dog())


class MakeAnimal(Stage):
    def run(self) -> AnimalOut:
        return AnimalOut(pet=Animal())


class MakeAny(Stage):
    def run(self) -> AnyOut:
        return AnyOut(thing="x")


class TakeStr(Stage):
    def run(self, text: str) -> TextOutput:
        return TextOutput(text=text)


class TakeOptStr(Stage):
    def run(self, text: str | None = None) -> TextOutput:
        return TextOutput(text=str(text))


class TakeIntOrStr(Stage):
    def run(self, value: int | str) -> TextOutput:
        return TextOutput(text=str(value))


class TakeListStr(Stage):
    def run(self, items: list[str]) -> TextOutput:
        return TextOutput(text=",".join(items))


class TakeSequenceStr(Stage):
    def run(self, items: Sequence[str]) -> TextOutput:
        return TextOutput(text=",".join(items))


class TakeMapping(Stage):
    def run(self, table: Mapping[str, int]) -> TextOutput:
        return TextOutput(text=str(dict(table)))


class TakeAnimal(Stage):
    def run(self, pet: Animal) -> TextOutput:
        return TextOutput(text=type(pet).__name__)


class TakeDog(Stage):
    def run(self, pet: Dog) -> TextOutput:
        return TextOutput(text=type(pet).__name__)


class TakeUntyped(Stage):
    def run(self, text) -> TextOutput:  # type: ignore[no-untyped-def]  # an unannotated input takes Any
        return TextOutput(text=str(text))


class Boom(Stage):
    def run(self, text: str) -> TextOutput:
        raise RuntimeError("kaput")


class Refuse(Stage):
    def run(self, text: str) -> TextOutput:
        raise InputError("the text is empty (give some)")


class WrongReturn(Stage):
    def run(self, text: str) -> TextOutput:
        return IntOut(value=1)  # type: ignore[return-value]


class Draft(Stage):
    """Generates and streams text that is not the answer (like a query generator that streamed)."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    def run(self, text: str) -> TextOutput:
        return TextOutput(text=self.llm.generate(f"draft: {text}", stream=True).text)


class Generate(Stage):
    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    def run(self, text: str) -> TextOutput:
        return TextOutput(text=self.llm.generate(text, stream=True).text)


# ---- helpers ----------------------------------------------------------------------------------


def two(src: Stage, dst: Stage) -> Pipeline:
    return Pipeline().add_stage("src", src).add_stage("dst", dst)


def echo_upper() -> Pipeline:
    pipe = Pipeline().add_stage("echo", EchoStage()).add_stage("upper", UpperStage(suffix="!"))
    return pipe.connect("echo.text", "upper.text").add_input("text", "echo.text").add_output("out", "upper.text")


def kgqa(llm: ScriptedLLM | None = None, store: TinyGraphStore | None = None, embedder: HashingEmbedder | None = None) -> Pipeline:
    """The KGQA pipeline on fakes: llm shared by 3 stages, store by 2, embedder through the example bank."""
    llm = llm or ScriptedLLM(responses=[SPARQL], rules={"Context:": ANSWER})
    store = store or TinyGraphStore()
    embedder = embedder or HashingEmbedder(dimension=64)
    bank = ExampleBank.from_examples([("Where does Bob live?", f"SELECT ?c WHERE {{ <{TINY}bob> <{TINY}livesIn> ?c }}")], embedder)
    pipe = Pipeline(name="fake_kgqa")
    pipe.add_resource("llm", llm).add_resource("graph", store).add_resource("embedder", embedder)
    pipe.add_stage("schema", GraphSchemaReader(store=store))
    pipe.add_stage("examples", FewShotExampleRetriever(bank=bank, top_k=1))
    pipe.add_stage("querygen", SparqlQueryGenerator(llm=llm, num_candidates=1))
    pipe.add_stage("retrieve", GraphQueryRetriever(store=store))
    pipe.add_stage("prompt", PromptBuilder(llm=llm))
    pipe.add_stage("generate", AnswerGenerator(llm=llm))
    for c in (
        "schema.graph_schema -> querygen.graph_schema",
        "schema.text -> querygen.schema_text",
        "examples.examples -> querygen.examples",
        "querygen.generated -> retrieve.generated",
        "retrieve.context -> prompt.graph",
        "prompt.prompt -> generate.prompt",
    ):
        pipe.connect(*c.split(" -> "))
    pipe.add_input("question", "schema.question", "examples.question", "querygen.question", "prompt.question")
    pipe.add_output("answer", "generate.text").add_output("query", "retrieve.query").add_output("rows", "retrieve.rows")
    return pipe


# ---- connect-time type checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "src_field", "dst", "dst_field"),
    [
        (EchoStage(), "text", TakeStr(), "text"),  # same type
        (EchoStage(), "text", TakeOptStr(), "text"),  # str into Optional[str]
        (MakeInt(), "value", TakeIntOrStr(), "value"),  # int into int | str
        (EchoStage(), "text", TakeIntOrStr(), "value"),  # str into int | str
        (MakeOptStr(), "text", TakeOptStr(), "text"),  # Optional into the same Optional
        (MakeListStr(), "items", TakeListStr(), "items"),  # list[str] into list[str]
        (MakeListStr(), "items", TakeSequenceStr(), "items"),  # list[str] into Sequence[str]
        (MakeDict(), "table", TakeMapping(), "table"),  # dict[str, int] into Mapping[str, int]
        (MakeDog(), "pet", TakeAnimal(), "pet"),  # subclass into base class
        (MakeAny(), "thing", TakeStr(), "text"),  # Any fits anything
        (EchoStage(), "text", TakeUntyped(), "text"),  # an unannotated input takes anything
    ],
    ids=["same", "into-optional", "int-into-union", "str-into-union", "optional-same", "list", "list-into-sequence", "dict-into-mapping", "subclass", "any", "untyped"],
)
def test_connect_accepts_compatible_types(src: Stage, src_field: str, dst: Stage, dst_field: str) -> None:
    pipe = two(src, dst).connect(f"src.{src_field}", f"dst.{dst_field}")
    assert [str(c) for c in pipe.connections] == [f"src.{src_field} -> dst.{dst_field}"]


@pytest.mark.parametrize(
    ("src", "src_field", "dst", "dst_field", "got", "wanted"),
    [
        (MakeInt(), "value", TakeStr(), "text", "int", "str"),
        (MakeOptStr(), "text", TakeStr(), "text", "str | None", "str"),  # may be None: not into a str
        (MakeListInt(), "items", TakeListStr(), "items", "list[int]", "list[str]"),
        (MakeListStr(), "items", TakeStr(), "text", "list[str]", "str"),
        (MakeAnimal(), "pet", TakeDog(), "pet", "Animal", "Dog"),  # base class into subclass
        (MakeDog(), "pet", TakeIntOrStr(), "value", "Dog", "int | str"),
    ],
    ids=["int-str", "optional-into-required", "list-args", "list-into-str", "superclass", "into-union"],
)
def test_connect_refuses_mismatched_types(src: Stage, src_field: str, dst: Stage, dst_field: str, got: str, wanted: str) -> None:
    pipe = two(src, dst)
    with pytest.raises(ConnectionMismatchError) as exc:
        pipe.connect(f"src.{src_field}", f"dst.{dst_field}")
    msg = str(exc.value)
    assert "type mismatch" in msg
    assert f"src.{src_field} is {got}" in msg
    assert f"dst.{dst_field} takes {wanted}" in msg
    assert pipe.connections == []
    assert isinstance(exc.value, ConfigError) and isinstance(exc.value, PipelineError)


def test_is_compatible_rules() -> None:
    assert is_compatible(int, int | None)
    assert not is_compatible(int | None, int)
    assert is_compatible(int | None, int | str | None)
    assert is_compatible(Dog, Animal | None)
    assert is_compatible(list[Dog], list[Animal])
    assert not is_compatible(list[Animal], list[Dog])
    assert is_compatible(dict[str, list[int]], Mapping[str, Sequence[int]])
    assert not is_compatible(dict[str, int], dict[str, str])
    assert not is_compatible(tuple[int, int], tuple[int])
    assert is_compatible(Any, Dog) and is_compatible(Dog, Any)
    assert not is_compatible(str, bytes)
    assert type_name(dict[str, list[int]] | None) == "dict[str, list[int]] | None"


# ---- cycles and unknown sockets -----------------------------------------------------------------


def test_cycle_is_refused_when_connecting() -> None:
    pipe = Pipeline().add_stage("a", EchoStage()).add_stage("b", UpperStage()).add_stage("c", UpperStage())
    pipe.connect("a.text", "b.text").connect("b.text", "c.text")
    with pytest.raises(CycleError) as exc:
        pipe.connect("c.text", "a.text")
    msg = str(exc.value)
    assert "c.text -> a.text closes a cycle" in msg
    assert "acyclic" in msg and "inside one stage" in msg
    assert len(pipe.connections) == 2  # the refused connection was not added
    assert pipe.order() == ["a", "b", "c"]


def test_self_loop_is_a_cycle() -> None:
    pipe = Pipeline().add_stage("a", UpperStage())
    with pytest.raises(CycleError, match="closes a cycle"):
        pipe.connect("a.text", "a.text")


@pytest.mark.parametrize(
    ("src", "dst", "fragment"),
    [
        ("echo.txt", "upper.text", "stage 'echo' has no output 'txt' (did you mean 'text'? outputs: text)"),
        ("echo.text", "upper.txet", "stage 'upper' has no input 'txet' (did you mean 'text'? inputs: text)"),
        ("echo.text", "uper.text", "no stage named 'uper' (stages: echo, upper)"),
        ("echo.zzz", "upper.text", "has no output 'zzz' (outputs: text)"),
    ],
)
def test_unknown_sockets_are_refused_with_a_suggestion(src: str, dst: str, fragment: str) -> None:
    pipe = Pipeline().add_stage("echo", EchoStage()).add_stage("upper", UpperStage())
    with pytest.raises(ConnectionMismatchError) as exc:
        pipe.connect(src, dst)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("ref", ["echo", "echo.text.more", ".text", "echo."])
def test_malformed_references_are_refused(ref: str) -> None:
    pipe = Pipeline().add_stage("echo", EchoStage()).add_stage("upper", UpperStage())
    with pytest.raises(ConfigError, match="is not of the form 'stage.field'"):
        pipe.connect(ref, "upper.text")


def test_an_input_takes_one_source() -> None:
    pipe = Pipeline().add_stage("a", EchoStage()).add_stage("b", EchoStage()).add_stage("c", UpperStage())
    pipe.connect("a.text", "c.text")
    with pytest.raises(ConnectionMismatchError, match="already fed by a.text -> c.text"):
        pipe.connect("b.text", "c.text")
    with pytest.raises(ConfigError, match="already fed by connection a.text -> c.text"):
        pipe.add_input("text", "c.text")
    pipe.add_input("text", "b.text")
    with pytest.raises(ConnectionMismatchError, match="already fed by pipeline input 'text'"):
        pipe.connect("a.text", "b.text")
    with pytest.raises(ConfigError, match="already fed by pipeline input 'text'"):
        pipe.add_input("other", "b.text")


def test_stage_names_and_types_are_checked() -> None:
    pipe = Pipeline().add_stage("echo", EchoStage())
    with pytest.raises(ConfigError, match="duplicate stage name 'echo'"):
        pipe.add_stage("echo", UpperStage())
    with pytest.raises(ConfigError, match="is not valid"):
        pipe.add_stage("a.b", UpperStage())
    with pytest.raises(ConfigError, match="is not a ragkit Stage"):
        pipe.add_stage("x", object())  # type: ignore[arg-type]


# ---- order, inputs, outputs ---------------------------------------------------------------------


def test_topological_order_ignores_insertion_order() -> None:
    pipe = Pipeline()
    for name in ("d", "c", "b", "a"):
        pipe.add_stage(name, UpperStage())
    pipe.connect("a.text", "b.text").connect("b.text", "c.text").connect("a.text", "d.text")
    pipe.add_input("text", "a.text")
    order = pipe.order()
    assert order.index("a") < order.index("b") < order.index("c")
    assert order.index("a") < order.index("d")
    assert order == ["a", "d", "b", "c"]  # ready stages go in insertion order (d was added before b)


def test_independent_stages_keep_insertion_order() -> None:
    pipe = Pipeline()
    for name in ("z", "m", "a"):
        pipe.add_stage(name, EchoStage())
    assert pipe.order() == ["z", "m", "a"]
    pipe.add_stage("sink_b", UpperStage()).add_stage("sink_a", UpperStage())
    pipe.connect("a.text", "sink_b.text").connect("a.text", "sink_a.text")
    assert pipe.order() == ["z", "m", "a", "sink_b", "sink_a"]


def test_run_follows_topological_order() -> None:
    pipe = Pipeline().add_stage("upper", UpperStage(suffix="?")).add_stage("echo", EchoStage())
    pipe.connect("echo.text", "upper.text").add_input("text", "echo.text").add_output("out", "upper.text")
    result = pipe.run(text="hi")
    assert result["out"] == "HI?"
    assert [s.name for s in result.trace.stages] == ["echo", "upper"]


def test_declared_inputs_and_outputs() -> None:
    pipe = echo_upper()
    assert pipe.inputs == {"text": [("echo", "text")]}
    assert pipe.outputs == {"out": ("upper", "text")}
    result = pipe.run({"text": "hi"})
    assert result.outputs == {"out": "HI!"}
    assert result.stage_outputs["echo"] == TextOutput(text="hi")
    assert pipe.run(text="yo")["out"] == "YO!"


def test_one_input_feeds_several_stages() -> None:
    pipe = Pipeline().add_stage("a", EchoStage()).add_stage("b", UpperStage())
    pipe.add_input("text", "a.text", "b.text").add_output("same", "a.text").add_output("loud", "b.text")
    assert pipe.run(text="hi").outputs == {"same": "hi", "loud": "HI"}


def test_without_declared_outputs_the_leaf_stages_are_returned() -> None:
    pipe = Pipeline().add_stage("echo", EchoStage()).add_stage("upper", UpperStage())
    pipe.connect("echo.text", "upper.text").add_input("text", "echo.text")
    assert pipe.run(text="hi").outputs == {"upper": TextOutput(text="HI")}


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p.add_input("text", "echo.txt"), "has no input 'txt' (did you mean 'text'?"),
        (lambda p: p.add_input("text", "nope.text"), "no stage named 'nope'"),
        (lambda p: p.add_input("text"), "feeds no stage"),
        (lambda p: p.add_output("out", "upper.txt"), "has no output 'txt' (did you mean 'text'?"),
        (lambda p: p.add_output("out", "nope.text"), "no stage named 'nope'"),
    ],
)
def test_bad_input_and_output_declarations(make: Any, fragment: str) -> None:
    pipe = Pipeline().add_stage("echo", EchoStage()).add_stage("upper", UpperStage())
    with pytest.raises(ConfigError) as exc:
        make(pipe)
    assert fragment in str(exc.value)


def test_missing_or_unknown_inputs_raise_input_error() -> None:
    pipe = echo_upper()
    with pytest.raises(InputError, match="missing pipeline input 'text'"):
        pipe.run()
    with pytest.raises(InputError, match=r"unknown pipeline input\(s\) \['txt'\] \(this pipeline takes: text\)"):
        pipe.run(text="hi", txt="typo")
    assert issubclass(InputError, UserError)


def test_optional_input_may_be_left_out() -> None:
    pipe = Pipeline().add_stage("opt", TakeOptStr()).add_input("text", "opt.text").add_output("out", "opt.text")
    assert pipe.run()["out"] == "None"
    assert pipe.run(text="x")["out"] == "x"


def test_validate_lists_every_unfed_required_input() -> None:
    pipe = Pipeline().add_stage("a", UpperStage()).add_stage("b", TakeStr())
    with pytest.raises(ConfigError) as exc:
        pipe.validate()
    messages = [i.message for i in exc.value.issues]
    assert len(messages) == 2
    assert "stage 'a': required input 'text' (str) has no source" in messages[0]
    assert "stage 'b'" in messages[1]
    with pytest.raises(ConfigError):  # run() validates too, before warming anything up
        pipe.run()


# ---- failures -----------------------------------------------------------------------------------


def test_stage_exception_becomes_stage_failed_error_with_trace() -> None:
    pipe = Pipeline().add_stage("echo", EchoStage()).add_stage("boom", Boom()).add_stage("after", UpperStage())
    pipe.connect("echo.text", "boom.text").connect("boom.text", "after.text").add_input("text", "echo.text")
    with pytest.raises(StageFailedError) as exc:
        pipe.run(text="hi")
    err = exc.value
    assert err.stage == "boom"
    assert "stage 'boom' failed: kaput" in str(err)
    assert isinstance(err.__cause__, RuntimeError)
    trace = err.trace  # type: ignore[attr-defined]
    assert [s.name for s in trace.stages] == ["echo", "boom"]  # 'after' never ran
    assert trace.stage("echo").error is None
    assert trace.stage("boom").error == "RuntimeError: kaput"
    assert trace.seconds >= trace.stage("boom").seconds >= 0


def test_user_error_in_a_stage_passes_through_with_trace() -> None:
    pipe = Pipeline().add_stage("refuse", Refuse()).add_input("text", "refuse.text")
    with pytest.raises(InputError, match="the text is empty") as exc:
        pipe.run(text="")
    assert exc.value.trace.stage("refuse").error.startswith("InputError")  # type: ignore[attr-defined]


def test_a_stage_returning_the_wrong_type_is_reported() -> None:
    pipe = Pipeline().add_stage("wrong", WrongReturn()).add_input("text", "wrong.text")
    with pytest.raises(PipelineError, match="returned IntOut, not its declared TextOutput") as exc:
        pipe.run(text="x")
    assert exc.value.trace.stage("wrong").error  # type: ignore[attr-defined]


# ---- traces and streaming -----------------------------------------------------------------------


def test_trace_has_per_stage_time_tokens_ttft_tpot() -> None:
    llm = ScriptedLLM(responses=[SPARQL], rules={"Context:": ANSWER}, seconds_per_token=0.003)
    result = kgqa(llm=llm).run(question="Where does Ann live?")
    assert result["answer"] == ANSWER
    assert result["rows"] == [[f"{TINY}rome"]]
    trace = result.trace
    assert [s.name for s in trace.stages] == ["schema", "examples", "querygen", "retrieve", "prompt", "generate"]
    assert all(s.seconds >= 0 and s.error is None for s in trace.stages)

    gen = trace.stage("generate")
    assert gen.type == "answer_generator"
    assert gen.model_calls == 1
    assert gen.tokens_out == len(ANSWER.split())
    assert gen.tokens_in > 0
    assert gen.ttft is not None and gen.tpot is not None
    assert 0 < gen.ttft <= gen.seconds
    assert gen.tpot > 0
    assert gen.tokens_per_second is not None and gen.tokens_per_second > 0

    qg = trace.stage("querygen")
    assert qg.model_calls == 1 and qg.tokens_out > 1 and qg.tpot is not None and qg.tpot > 0
    assert qg.extra["candidates"] == 1

    for quiet in ("schema", "retrieve"):  # no model in these stages
        assert trace.stage(quiet).model_calls == 0 and trace.stage(quiet).ttft is None
    assert trace.tokens_out == gen.tokens_out + qg.tokens_out
    assert trace.seconds >= sum(s.seconds for s in trace.stages) * 0.99
    assert trace.ttft is None  # nothing was streamed to a caller
    d = trace.to_dict()
    assert [s["name"] for s in d["stages"]] == [s.name for s in trace.stages]
    assert d["tokens_out"] == trace.tokens_out


def test_streaming_delivers_the_answer_in_order() -> None:
    llm = ScriptedLLM(responses=[SPARQL], rules={"Context:": ANSWER}, seconds_per_token=0.001)
    pieces: list[str] = []
    result = kgqa(llm=llm).run(question="Where does Ann live?", on_token=pieces.append)
    assert pieces == ["Ann", " lives", " in", " Rome."]
    assert "".join(pieces) == result["answer"]
    trace = result.trace
    assert trace.ttft is not None and 0 < trace.ttft <= trace.seconds
    # the answer's first token comes after every stage before 'generate' finished
    assert trace.ttft >= sum(s.seconds for s in trace.stages if s.name != "generate")


def test_only_the_answer_stage_streams_by_default() -> None:
    llm = ScriptedLLM(rules={"draft:": "scratch notes", "hello": "final answer"})
    pipe = Pipeline().add_resource("llm", llm).add_stage("draft", Draft(llm=llm)).add_stage("generate", Generate(llm=llm))
    pipe.add_input("text", "draft.text", "generate.text")
    pipe.add_output("answer", "generate.text").add_output("draft", "draft.text")
    pieces: list[str] = []
    result = pipe.run(text="hello", on_token=pieces.append)
    assert "".join(pieces) == result["answer"] == "final answer"
    everything: list[str] = []
    pipe.run(text="hello", on_token=everything.append, stream_stage=None)  # None: the default applies
    assert "".join(everything) == "final answer"
    drafted: list[str] = []
    pipe.run(text="hello", on_token=drafted.append, stream_stage="draft")
    assert "".join(drafted) == "scratch notes"


def test_on_stage_is_called_in_run_order_with_each_output() -> None:
    seen: list[tuple[str, str]] = []
    result = kgqa().run(question="Where does Ann live?", on_stage=lambda name, out: seen.append((name, type(out).__name__)))
    assert [n for n, _ in seen] == [s.name for s in result.trace.stages]
    assert seen[0] == ("schema", "SchemaOutput") and seen[-1] == ("generate", "Answer")


# ---- lifecycle ----------------------------------------------------------------------------------


def test_warm_up_loads_each_shared_resource_once() -> None:
    llm, store, embedder = ScriptedLLM(responses=[SPARQL], rules={"Context:": ANSWER}), TinyGraphStore(), HashingEmbedder(dimension=64)
    pipe = kgqa(llm=llm, store=store, embedder=embedder)
    users = [n for n, s in pipe.stages.items() if llm in s.resources().values()]
    assert users == ["querygen", "prompt", "generate"]  # three stages share one model
    assert (llm.setup_calls, store.setup_calls, embedder.setup_calls) == (0, 0, 0)  # building loads nothing

    pipe.warm_up()
    pipe.warm_up()
    assert (llm.setup_calls, store.setup_calls, embedder.setup_calls) == (1, 1, 1)
    assert all(s.is_warm for s in pipe.stages.values())
    pipe.run(question="Where does Ann live?")
    pipe.run(question="Where does Bob live?")
    assert (llm.setup_calls, store.setup_calls, embedder.setup_calls) == (1, 1, 1)


def test_run_warms_up_by_itself() -> None:
    llm = ScriptedLLM(responses=[SPARQL], rules={"Context:": ANSWER})
    pipe = kgqa(llm=llm)
    assert pipe.run(question="Where does Ann live?")["answer"] == ANSWER
    assert llm.setup_calls == 1 and llm.is_warm


def test_close_then_warm_up_again() -> None:
    llm, store, embedder = ScriptedLLM(responses=[SPARQL], rules={"Context:": ANSWER}), TinyGraphStore(), HashingEmbedder(dimension=64)
    pipe = kgqa(llm=llm, store=store, embedder=embedder)
    with pipe:
        assert llm.is_warm and store.is_warm and embedder.is_warm
    assert not llm.is_warm and not store.is_warm and not embedder.is_warm
    assert not any(s.is_warm for s in pipe.stages.values())
    pipe.close()  # closing twice is harmless
    pipe.warm_up()
    assert (llm.setup_calls, store.setup_calls, embedder.setup_calls) == (2, 2, 2)
    assert pipe.run(question="Where does Ann live?")["answer"] == ANSWER
    pipe.close()


def test_concurrent_runs_keep_their_traces_and_streams_apart() -> None:
    llm = ScriptedLLM(rules={"Ann": "Ann lives in Rome.", "Bob": "Bob lives in Oslo."}, seconds_per_token=0.002)
    pipe = Pipeline().add_resource("llm", llm)
    pipe.add_stage("echo", EchoStage()).add_stage("generate", Generate(llm=llm)).add_stage("upper", UpperStage())
    pipe.connect("echo.text", "generate.text").connect("generate.text", "upper.text")
    pipe.add_input("text", "echo.text").add_output("answer", "generate.text").add_output("loud", "upper.text")
    pipe.warm_up()

    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}
    streamed: dict[str, list[str]] = {"Ann": [], "Bob": []}
    errors: list[BaseException] = []

    def work(who: str) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(3):
                results[who] = pipe.run(text=f"Where does {who} live?", on_token=streamed[who].append)
        except BaseException as e:  # noqa: BLE001  (surfaced below: a thread cannot fail the test itself)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in ("Ann", "Bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    for who, city in (("Ann", "Rome"), ("Bob", "Oslo")):
        r = results[who]
        assert r["answer"] == f"{who} lives in {city}."
        assert r["loud"] == f"{who} lives in {city}.".upper()
        assert [s.name for s in r.trace.stages] == ["echo", "generate", "upper"]
        gen = r.trace.stage("generate")
        assert gen.model_calls == 1 and gen.tokens_out == 4
        assert "".join(streamed[who]) == f"{who} lives in {city}." * 3
    assert llm.setup_calls == 1
