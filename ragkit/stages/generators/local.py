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

from ragkit.core.component import register_stage
from ragkit.core.stage import Output, Stage
from ragkit.models.base import LLM
from ragkit.stages.prompts.builder import Prompt

__all__ = ["AnswerGenerator", "Answer"]


class Answer(Output):
    text: str
    tokens_in: int
    tokens_out: int


@register_stage("answer_generator")
class AnswerGenerator(Stage):
    """Generates the answer from a prompt, streaming each piece to the caller.

    Args:
        llm: the language model resource.
        max_new_tokens: answer length limit in tokens.
        temperature: 0 for greedy decoding (reproducible), above 0 to sample.
        stop: strings that end the answer.
    """

    def __init__(self, llm: LLM, max_new_tokens: int = 96, temperature: float = 0.0, stop: list[str] | None = None) -> None:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if temperature < 0:
            raise ValueError("temperature must be 0 or more")
        self.llm = llm
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.stop = list(stop or [])

    def run(self, prompt: Prompt) -> Answer:
        gen = self.llm.generate(prompt.messages, max_new_tokens=self.max_new_tokens, temperature=self.temperature, stop=self.stop, stream=True)
        stats = gen.stats
        return Answer(text=gen.text.strip(), tokens_in=stats.tokens_in if stats else 0, tokens_out=stats.tokens_out if stats else 0)
