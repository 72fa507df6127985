"""The fallback pipeline with the real models: the committed LoRA adapter writes the query first, and
the base model with retrieved examples writes one only when the adapter's query fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragkit import Pipeline
from ragkit.stages.querygen.base import QueryGenOutput

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ALL = [json.loads(line) for line in (ROOT / "fixtures/library/questions.jsonl").read_text().splitlines() if line.strip()]
QUESTIONS = [q["question"] for q in ALL[::4][:5]]  # a spread of the fixture's questions, easy to hard


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    p = Pipeline.from_yaml(ROOT / "pipelines/kgqa_sparql_finetuned_fallback.yaml")
    p.warm_up()
    yield p
    p.close()


def test_the_base_model_writes_only_when_the_adapters_query_fails(pipe: Pipeline) -> None:
    assert pipe.resources["tuned"] is not pipe.resources["llm"]
    fell_back = []
    for question in QUESTIONS:
        result = pipe.run(question=question)
        tuned = result.stage_outputs["tuned_querygen"]
        final = result.stage_outputs["querygen"]
        assert isinstance(tuned, QueryGenOutput) and isinstance(final, QueryGenOutput)
        trace = result.trace.stage("querygen")
        tuned_good = any(c.good for c in tuned.generated.candidates)
        assert trace.extra["fallback"] is (not tuned_good)
        if tuned_good:
            assert trace.model_calls == 0 and final.query == tuned.query
        else:
            assert trace.model_calls >= 1
            # the adapter's candidates are ranked with the fallback's: none is lost
            assert {c.query for c in tuned.generated.candidates} <= {c.query for c in final.generated.candidates}
        assert result["query"] == final.query
        fell_back.append(not tuned_good)
    print(f"fell back on {sum(fell_back)} of {len(QUESTIONS)}")
