"""LocalLLM's speculative-decoding and quantisation options: checked when constructed, settable from
YAML, validated without loading a model; the acceptance figures they produce reach the trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit import Pipeline
from ragkit.core.metrics import GenerationStats, StageTrace, recording
from ragkit.models.base import record
from ragkit.models.llm import LocalLLM, _stop_length

PIPELINE = """\
version: 1
name: spec
resources:
  llm:
    type: local_llm
{options}
stages:
  - name: prompt
    type: prompt_builder
    llm: llm
  - name: generate
    type: answer_generator
    llm: llm
connections:
  - prompt.prompt -> generate.prompt
inputs:
  question: [prompt.question]
outputs:
  answer: generate.text
"""


def _pipeline(tmp_path: Path, options: str) -> Pipeline:
    path = tmp_path / "spec.yaml"
    path.write_text(PIPELINE.format(options=options), encoding="utf-8")
    return Pipeline.from_yaml(path)


def test_defaults_turn_every_option_off() -> None:
    llm = LocalLLM()
    assert llm.prompt_lookup_tokens is None and llm.draft_model is None and llm.quantize == "none"
    assert llm.speculation is None
    assert LocalLLM(prompt_lookup_tokens=8).speculation == "prompt_lookup"
    assert LocalLLM(draft_model="smollm2").speculation == "draft_model"


def test_options_come_from_yaml_and_round_trip_without_loading(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, "    prompt_lookup_tokens: 8\n    prompt_lookup_ngram: 2\n    quantize: int8")
    llm = pipe.resources["llm"]
    assert isinstance(llm, LocalLLM) and not llm.is_warm
    assert (llm.prompt_lookup_tokens, llm.prompt_lookup_ngram, llm.quantize) == (8, 2, "int8")
    again = Pipeline.from_dict(pipe.to_dict())
    assert again.to_dict() == pipe.to_dict()
    assert again.to_dict()["resources"]["llm"]["prompt_lookup_tokens"] == 8


def test_an_unknown_quantisation_in_yaml_names_the_line(tmp_path: Path) -> None:
    from ragkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"spec\.yaml:6:\d+.*quantize"):
        _pipeline(tmp_path, "    quantize: int4")


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"prompt_lookup_tokens": 0}, "prompt_lookup_tokens must be at least 1"),
        ({"prompt_lookup_tokens": 4, "prompt_lookup_ngram": 0}, "prompt_lookup_ngram and draft_tokens"),
        ({"draft_model": "smollm2", "draft_tokens": 0}, "prompt_lookup_ngram and draft_tokens"),
        ({"prompt_lookup_tokens": 4, "draft_model": "smollm2"}, "not both"),
        ({"quantize": "int4"}, "quantize must be 'none' or 'int8'"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "computes in float32"),
        ({"attention": "flash"}, "attention must be 'auto', 'sdpa' or 'eager'"),
    ],
)
def test_bad_options_are_refused_with_what_to_do(kwargs: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        LocalLLM(**kwargs)  # type: ignore[arg-type]


def test_acceptance_rate_is_accepted_over_drafted() -> None:
    assert GenerationStats().acceptance_rate is None
    assert GenerationStats(draft_tokens=8, accepted_tokens=6).acceptance_rate == 0.75


def test_the_stage_trace_sums_drafted_and_accepted_tokens_of_its_calls() -> None:
    trace = StageTrace(name="generate", type="answer_generator")
    with recording(trace):
        record(GenerationStats(tokens_out=10, draft_tokens=8, accepted_tokens=2, speculation="prompt_lookup"))
        record(GenerationStats(tokens_out=10, draft_tokens=4, accepted_tokens=4, speculation="prompt_lookup"))
        record(GenerationStats(tokens_out=3))
    assert (trace.draft_tokens, trace.accepted_tokens, trace.model_calls) == (12, 6, 3)
    d = trace.to_dict()
    assert d["acceptance_rate"] == 0.5 and d["draft_tokens"] == 12
    assert StageTrace(name="x", type="y").to_dict()["acceptance_rate"] is None


class _CharTokenizer:
    """One token per character: decode joins them."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [("Rome.\n\nNext", ["\n\n"], 7), ("Rome. Next", ["\n\n"], None), ("a,b,c", [",", "b"], 2), ("abc", ["", "c"], 3)],
)
def test_stop_length_is_the_shortest_prefix_holding_a_stop_string(text: str, stop: list[str], expected: int | None) -> None:
    assert _stop_length(_CharTokenizer(), [ord(c) for c in text], stop) == expected


def test_a_gguf_file_is_cached_by_its_content_not_its_path(tmp_path: Path) -> None:
    # each new virtual environment installs the bundled GGUF at another path: same content, same
    # converted folder; other weights of the same size, another folder
    from ragkit.models.llm import _gguf_key

    data = bytes(range(256)) * (3 << 12)  # 3 MiB: first, middle and last MiB differ in position only
    a, b, c = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf", tmp_path / "c.gguf"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(data)
    c.write_bytes(data[:-1] + b"\x00")  # the last tensor's last byte changed
    assert _gguf_key(a) == _gguf_key(b)
    assert _gguf_key(c) != _gguf_key(a)
    assert _gguf_key(a, chunk=1 << 30) != _gguf_key(c, chunk=1 << 30)  # a chunk larger than the file
