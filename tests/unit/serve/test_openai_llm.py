"""The ``openai_llm`` resource against a real HTTP server on 127.0.0.1: ``ragkit serve`` on fakes."""

from __future__ import annotations

from typing import Any

import pytest
from serve_helpers import ANSWER, chat_pipeline, free_port

from ragkit import Pipeline
from ragkit.core.metrics import StageTrace, recording, streaming_to
from ragkit.errors import ConfigError, ModelError, ModelUnavailableError
from ragkit.models.base import ChatMessage
from ragkit.models.remote import OpenAILLM
from ragkit.serve.app import ServeConfig, create_app
from ragkit.testing import ScriptedLLM

pytest.importorskip("httpx")

MESSAGES = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="Where does Ann live?")]


@pytest.fixture
def backend(serve_http: Any) -> tuple[str, ScriptedLLM]:
    """A served fake pipeline answering ANSWER, and its LLM (to read the prompts it got)."""
    llm = ScriptedLLM(responses=[ANSWER])
    url = serve_http(create_app(chat_pipeline(llm=llm), ServeConfig(api_keys=("secret-key",))))
    return f"{url}/v1", llm


def test_defaults_and_yaml_round_trip(tmp_path: Any) -> None:
    llm = OpenAILLM(model="m")
    assert (llm.base_url, llm.timeout, llm.context_window, llm.max_retries) == ("http://127.0.0.1:8000/v1", 60.0, 4096, 2)
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nresources:\n  llm: {type: openai_llm, model: m, base_url: 'http://h:1/v1/', timeout: 5}\n"
        "stages:\n  - {name: prompt, type: prompt_builder, llm: llm}\n  - {name: generate, type: answer_generator, llm: llm}\n"
        "connections: [prompt.prompt -> generate.prompt]\ninputs: {question: [prompt.question]}\noutputs: {answer: generate.text}\n"
    )
    pipe = Pipeline.from_yaml(path)
    res = pipe.resources["llm"]
    assert isinstance(res, OpenAILLM) and res.base_url == "http://h:1/v1" and res.timeout == 5
    assert Pipeline.from_dict(pipe.to_dict()) == pipe


def test_api_key_stays_out_of_repr_and_yaml(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_KEY", "sk-very-secret")
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nresources:\n  llm: {type: openai_llm, model: m, api_key: '${env:LLM_KEY}'}\n"
        "stages:\n  - {name: prompt, type: prompt_builder, llm: llm}\ninputs: {question: [prompt.question]}\n"
    )
    pipe = Pipeline.from_yaml(path)
    assert "sk-very-secret" not in repr(pipe.resources["llm"]) and "sk-very-secret" not in pipe.to_yaml()
    assert "${env:LLM_KEY}" in pipe.to_yaml()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"model": ""}, "give 'model'"), ({"model": "m", "base_url": "localhost:8000"}, "http://"), ({"model": "m", "timeout": 0}, "timeout")],
)
def test_bad_parameters_say_what_to_fix(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises((ValueError, ConfigError), match=needle):
        OpenAILLM(**kwargs)


def test_generate_streams_and_records_tokens_and_timings(backend: tuple[str, ScriptedLLM]) -> None:
    url, served = backend
    llm = OpenAILLM(model="fake_chat", base_url=url, api_key="secret-key")
    trace = StageTrace(name="gen", type="x")
    pieces: list[str] = []
    with streaming_to(pieces.append, "gen"), recording(trace):
        gen = llm.generate(MESSAGES, max_new_tokens=16, stream=True)
    assert gen.text == ANSWER
    assert "".join(pieces) == ANSWER and len(pieces) == 4  # each SSE chunk reached emit_token as it came
    # the server's usage, not an estimate: the served fake counts 4 tokens out
    assert gen.stats.tokens_out == 4 and trace.tokens_out == 4 and trace.model_calls == 1
    assert gen.stats.tokens_in == trace.tokens_in > 0
    assert gen.stats.ttft is not None and trace.ttft == gen.stats.ttft
    assert len(gen.stats.inter_token) == 3 and trace.tpot is not None
    assert "Where does Ann live?" in served.prompts[-1]  # the last user message became the question
    llm.close()


def test_generate_without_a_listener_emits_nothing_but_still_times(backend: tuple[str, ScriptedLLM]) -> None:
    url, _ = backend
    llm = OpenAILLM(model="fake_chat", base_url=url, api_key="secret-key")
    pieces: list[str] = []
    with streaming_to(pieces.append, "other-stage"), recording(StageTrace(name="gen", type="x")):
        gen = llm.generate(MESSAGES, stream=True)
    assert pieces == [] and gen.stats.ttft is not None
    llm.close()


def test_in_a_pipeline_the_answer_streams_and_the_trace_has_ttft_and_tpot(backend: tuple[str, ScriptedLLM]) -> None:
    url, _ = backend
    remote = OpenAILLM(model="fake_chat", base_url=url, api_key="secret-key")
    pipe = chat_pipeline(llm=remote)
    tokens: list[str] = []
    result = pipe.run(question="Where does Ann live?", on_token=tokens.append)
    assert result["answer"] == ANSWER and "".join(tokens) == ANSWER
    st = result.trace.stage("generate")
    assert st.tokens_out == 4 and st.ttft is not None and st.tpot is not None and st.model_calls == 1
    assert result.trace.ttft is not None
    pipe.close()


def test_warm_up_checks_the_model_name(backend: tuple[str, ScriptedLLM]) -> None:
    url, _ = backend
    with pytest.raises(ModelError, match=r"has no model 'gpt-4'.*serves: fake_chat"):
        OpenAILLM(model="gpt-4", base_url=url, api_key="secret-key").warm_up()


def test_wrong_api_key_says_to_check_it(backend: tuple[str, ScriptedLLM]) -> None:
    url, _ = backend
    with pytest.raises(ModelError, match="check the resource's api_key"):
        OpenAILLM(model="fake_chat", base_url=url, api_key="wrong").warm_up()


def test_server_errors_are_reported_with_their_message(backend: tuple[str, ScriptedLLM]) -> None:
    url, _ = backend
    llm = OpenAILLM(model="fake_chat", base_url=url, api_key="secret-key")
    with pytest.raises(ModelError, match=r"rejected the request \(HTTP 400: n must be 1"):
        llm.generate(MESSAGES, num_return_sequences=2)
    llm.close()


def test_server_not_running_is_model_unavailable() -> None:
    llm = OpenAILLM(model="m", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0, timeout=5)
    with pytest.raises(ModelUnavailableError, match="cannot reach the model server at http://127.0.0.1:.*check that it is running"):
        llm.warm_up()
    assert not llm.is_warm


def test_count_tokens_is_an_estimate_from_characters() -> None:
    llm = OpenAILLM(model="m", chars_per_token=4)
    assert llm.count_tokens("x" * 40) == 10 and llm.count_tokens("x") == 1
