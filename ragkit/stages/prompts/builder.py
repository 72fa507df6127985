"""Prompt assembly within the model's token budget.

The answer prompt is: system instructions, then the context (graph rows, each with an id such as
``[g1]`` so answers can cite them), then the question. Tokens are counted with the model's own
tokenizer on the fully rendered chat text.

Trimming policy, in order, until the prompt fits ``max_prompt_tokens``: drop context rows from the
end (least relevant last, as the store returned them); then shorten the question from its start.
The system instructions are never cut.

Example:
    >>> from ragkit.stages.prompts.builder import PromptBuilder
    >>> from ragkit.testing import ScriptedLLM
    >>> p = PromptBuilder(llm=ScriptedLLM()).run(question="Where does Ann live?").prompt
    >>> p.messages[-1].content.endswith("Where does Ann live?")
    True
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Output, Stage
from ragkit.errors import InputError
from ragkit.models.base import LLM, ChatMessage
from ragkit.stages.retrievers.graph import GraphContext

__all__ = ["PromptBuilder", "Prompt", "PromptOutput", "DEFAULT_SYSTEM"]

DEFAULT_SYSTEM = (
    "You answer the question using only the facts in the context. "
    "Answer in one short sentence. If the context is empty or does not contain the answer, say that you do not know."
)


class Prompt(BaseModel):
    """A rendered chat prompt, its exact token count, and the ids of the context items it carries."""

    model_config = ConfigDict(frozen=True)

    messages: list[ChatMessage]
    tokens: int
    context_ids: list[str]
    trimmed: int = 0
    """Context items left out to fit the budget."""


class PromptOutput(Output):
    prompt: Prompt


@register_stage("prompt_builder")
class PromptBuilder(Stage):
    """Assembles the answer prompt from the question and graph context, within a token budget.

    Args:
        llm: the model the prompt is for (its tokenizer counts tokens; its context window caps the budget).
        max_prompt_tokens: budget for the whole rendered prompt.
        system: the system instructions.
        max_rows: context rows offered at most before trimming.
    """

    def __init__(self, llm: LLM, max_prompt_tokens: int = 1536, system: str = DEFAULT_SYSTEM, max_rows: int = 30) -> None:
        if max_prompt_tokens < 64:
            raise ValueError("max_prompt_tokens must be at least 64")
        self.llm = llm
        self.max_prompt_tokens = max_prompt_tokens
        self.system = system
        self.max_rows = max_rows

    def _render(self, question: str, lines: list[str]) -> list[ChatMessage]:
        if lines:
            context = "\n".join(f"[g{i + 1}] {line}" for i, line in enumerate(lines))
        else:
            context = "(no results)"
        user = f"Context:\n{context}\n\nQuestion: {question}"
        return [ChatMessage(role="system", content=self.system), ChatMessage(role="user", content=user)]

    def run(self, question: str, graph: GraphContext | None = None) -> PromptOutput:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty (ask something)")
        budget = min(self.max_prompt_tokens, self.llm.context_window)
        lines = graph.as_text(self.max_rows) if graph is not None else []
        offered = len(lines)
        msgs = self._render(question, lines)
        tokens = self.llm.count_tokens(self.llm.render(msgs))
        while tokens > budget and lines:
            lines.pop()
            msgs = self._render(question, lines)
            tokens = self.llm.count_tokens(self.llm.render(msgs))
        while tokens > budget and len(question) > 20:
            question = "..." + question[len(question) // 4 :]
            msgs = self._render(question, lines)
            tokens = self.llm.count_tokens(self.llm.render(msgs))
        if tokens > budget:
            raise InputError(f"the prompt needs {tokens} tokens even with no context, over the budget of {budget} (raise max_prompt_tokens or shorten the system text)")
        rec = current_recorder()
        if rec is not None:
            rec.note("prompt_tokens", tokens)
            rec.note("context_trimmed", offered - len(lines))
        prompt = Prompt(messages=msgs, tokens=tokens, context_ids=[f"g{i + 1}" for i in range(len(lines))], trimmed=offered - len(lines))
        return PromptOutput(prompt=prompt)
