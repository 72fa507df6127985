"""The prompt builder's passages input and abstention, and the generator's abstention short-cut."""

from __future__ import annotations

import pytest

from ragkit.stages.generators.local import AnswerGenerator
from ragkit.stages.prompts.builder import ABSTAIN_NOTICE, PromptBuilder
from ragkit.stages.retrievers.graph import GraphContext
from ragkit.stores.vector import Passage
from ragkit.testing import ScriptedLLM

GRAPH = GraphContext(query="q", columns=["name"], rows=[["Ada Quill"], ["Nerys Holloway"]], confidence=0.9)
PASSAGES = [Passage(id=f"doc-{i}", title=f"T{i}", text=f"Passage number {i} " + "word " * 30) for i in range(4)]


def test_graph_rows_keep_g_ids_and_passages_get_p_ids() -> None:
    prompt = PromptBuilder(llm=ScriptedLLM()).run(question="Who?", graph=GRAPH, passages=PASSAGES[:2]).prompt
    user = prompt.messages[-1].content
    assert "[g1] name=Ada Quill\n[g2] name=Nerys Holloway\n[p1] T0: Passage number 0" in user
    assert prompt.context_ids == ["g1", "g2", "p1", "p2"] and prompt.sources == {"p1": "doc-0", "p2": "doc-1"}


def test_without_passages_the_prompt_is_unchanged() -> None:
    llm = ScriptedLLM()
    a = PromptBuilder(llm=llm).run(question="Who?", graph=GRAPH).prompt
    b = PromptBuilder(llm=llm).run(question="Who?", graph=GRAPH, passages=None).prompt
    assert a == b and a.context_ids == ["g1", "g2"] and a.sources == {} and not a.abstained


def test_trimming_drops_passages_from_the_end_before_graph_rows() -> None:
    llm = ScriptedLLM()
    full = PromptBuilder(llm=llm).run(question="Who?", graph=GRAPH, passages=PASSAGES).prompt
    budget = full.tokens - 20
    trimmed = PromptBuilder(llm=llm, max_prompt_tokens=budget).run(question="Who?", graph=GRAPH, passages=PASSAGES).prompt
    assert trimmed.context_ids == ["g1", "g2", "p1", "p2", "p3"] and trimmed.trimmed == 1 and trimmed.tokens <= budget
    tiny = PromptBuilder(llm=llm, max_prompt_tokens=80).run(question="Who?", graph=GRAPH, passages=PASSAGES).prompt
    assert all(i.startswith("g") for i in tiny.context_ids)


def test_max_passages_caps_what_is_offered() -> None:
    prompt = PromptBuilder(llm=ScriptedLLM(), max_passages=1).run(question="Who?", passages=PASSAGES).prompt
    assert prompt.context_ids == ["p1"]


def test_abstained_prompt_has_no_context_and_the_generator_does_not_call_the_model() -> None:
    llm = ScriptedLLM(responses=["a made-up answer"])
    prompt = PromptBuilder(llm=llm).run(question="Who?", graph=GRAPH, passages=PASSAGES, abstained=True).prompt
    assert prompt.abstained and prompt.notice == ABSTAIN_NOTICE and prompt.context_ids == []
    answer = AnswerGenerator(llm=llm).run(prompt=prompt)
    assert answer.text == ABSTAIN_NOTICE and answer.abstained and answer.tokens_out == 0
    assert llm.prompts == []


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="max_passages"):
        PromptBuilder(llm=ScriptedLLM(), max_passages=-1)
