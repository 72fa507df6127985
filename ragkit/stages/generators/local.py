"""Answer generation with a local model, streamed token by token.

Example:
    >>> from ragkit.stages.generators.local import AnswerGenerator
    >>> from ragkit.stages.prompts.builder import PromptBuilder
    >>> from ragkit.testing import ScriptedLLM
    >>> llm = ScriptedLLM(responses=["Ann lives in Rome."])
    >>> prompt = PromptBuilder(llm=llm).run(question="Where does Ann live?").prompt
    >>> AnswerGenerator(llm=llm).run(prompt=prompt).text
    'Ann lives in Rome.'
"""

from __future__ import annotations

import re
import unicodedata
from typing import ClassVar

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder, emit_token
from ragkit.core.stage import Output, Stage
from ragkit.models.base import LLM
from ragkit.stages.prompts.builder import Prompt
from ragkit.stages.retrievers.graph import GraphContext

__all__ = ["AnswerGenerator", "Answer"]


class Answer(Output):
    text: str
    tokens_in: int
    tokens_out: int
    grounded: bool | None = None
    """Whether the answer states at least one value of the graph context (None when no context was given)."""
    abstained: bool = False
    """The prompt was marked abstained (no confident context): ``text`` is its notice, the model was not called."""


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(t.strip(".") for t in re.findall(r"[\w.]+", text))


def _value_forms(v: object) -> list[str]:
    if isinstance(v, bool):
        return ["yes", "true"] if v else ["no", "not", "false"]
    s = str(v)
    if s.lower() in ("true", "false"):
        return _value_forms(s.lower() == "true")
    forms = [s]
    try:
        x = float(s)
        forms += [f"{x:g}", f"{x:.1f}", f"{x:.2f}", f"{x:.3f}"] if "." in s or "e" in s.lower() else [str(int(x))]
    except ValueError:
        pass
    return forms


def is_grounded(answer: str, graph: GraphContext) -> bool:
    """Whether ``answer`` mentions a value from ``graph``'s rows (numbers in common roundings, booleans as yes/no)."""
    text = f" {_norm(answer)} "
    for row in graph.rows:
        for v in row:
            if v is None:
                continue
            if any(f" {_norm(f)} " in text for f in _value_forms(v) if _norm(f)):
                return True
    return False


@register_stage("answer_generator")
class AnswerGenerator(Stage):
    """Generates the answer from a prompt, streaming each piece to the caller.

    Given the graph context too, it checks the answer against it: ``grounded`` says whether the
    answer states at least one retrieved value. Small models sometimes embellish or drop the value;
    this flags it instead of hiding it.

    Args:
        llm: the language model resource.
        max_new_tokens: answer length limit in tokens.
        temperature: 0 for greedy decoding (reproducible), above 0 to sample.
        stop: strings that end the answer.
    """

    thread_safe: ClassVar[bool] = True  # run() keeps its state in locals; tokens stream to the calling run's listener

    def __init__(self, llm: LLM, max_new_tokens: int = 96, temperature: float = 0.0, stop: list[str] | None = None) -> None:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if temperature < 0:
            raise ValueError("temperature must be 0 or more")
        self.llm = llm
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.stop = list(stop or [])

    def run(self, prompt: Prompt, graph: GraphContext | None = None) -> Answer:
        if prompt.abstained:
            emit_token(prompt.notice)
            return Answer(text=prompt.notice, tokens_in=0, tokens_out=0, abstained=True)
        gen = self.llm.generate(prompt.messages, max_new_tokens=self.max_new_tokens, temperature=self.temperature, stop=self.stop, stream=True)
        stats = gen.stats
        text = gen.text.strip()
        grounded = is_grounded(text, graph) if graph is not None and graph.rows else None
        rec = current_recorder()
        if rec is not None and grounded is not None:
            rec.note("grounded", grounded)
        return Answer(text=text, tokens_in=stats.tokens_in if stats else 0, tokens_out=stats.tokens_out if stats else 0, grounded=grounded)
