"""Prompt assembly within the model's token budget.

The answer prompt is: system instructions, then the context (graph rows, each with an id such as
``[g1]``, then passages with ids ``[p1]``, ``[p2]``... so answers can cite them), then the question.
Tokens are counted with the model's own tokenizer on the fully rendered chat text.

Trimming policy, in order, until the prompt fits ``max_prompt_tokens``: drop passages from the end
(they arrive best first); then drop graph rows from the end (least relevant last, as the store
returned them); then shorten the question from its start. The system instructions are never cut.

When the reranker abstained (``abstained=True``), the prompt carries no context and is marked
``abstained`` with the notice to give instead of an answer; the generator then does not call the model.

Example:
    >>> from ragkit.stages.prompts.builder import PromptBuilder
    >>> from ragkit.testing import ScriptedLLM
    >>> p = PromptBuilder(llm=ScriptedLLM()).run(question="Where does Ann live?").prompt
    >>> p.messages[-1].content.endswith("Where does Ann live?")
    True
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Output, Stage
from ragkit.errors import InputError
from ragkit.models.base import LLM, ChatMessage
from ragkit.stages.retrievers.graph import GraphContext
from ragkit.stores.vector import Passage

__all__ = ["PromptBuilder", "Prompt", "PromptOutput", "DEFAULT_SYSTEM", "ABSTAIN_NOTICE"]

DEFAULT_SYSTEM = (
    "You answer the question using only the facts in the context. "
    "Answer in one short sentence. If the context is empty or does not contain the answer, say that you do not know."
)
ABSTAIN_NOTICE = "I don't know: the retrieved context does not answer this question with enough confidence."


class Prompt(BaseModel):
    """A rendered chat prompt, its exact token count, and the ids of the context items it carries."""

    model_config = ConfigDict(frozen=True)

    messages: list[ChatMessage]
    tokens: int
    context_ids: list[str]
    trimmed: int = 0
    """Context items left out to fit the budget."""
    sources: dict[str, str] = {}
    """Passage context ids (``p1``...) to the ids of the passages they show."""
    abstained: bool = False
    """The reranker found no confident context: answer with ``notice`` instead of calling the model."""
    notice: str = ""


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
        max_passages: passages offered at most before trimming.
        abstain_notice: the answer given instead of generating when the reranker abstained.
    """

    thread_safe: ClassVar[bool] = True  # run() keeps its state in locals; the LLM only counts tokens

    def __init__(
        self,
        llm: LLM,
        max_prompt_tokens: int = 1536,
        system: str = DEFAULT_SYSTEM,
        max_rows: int = 30,
        max_passages: int = 8,
        abstain_notice: str = ABSTAIN_NOTICE,
    ) -> None:
        if max_prompt_tokens < 64:
            raise ValueError("max_prompt_tokens must be at least 64")
        if max_passages < 0:
            raise ValueError("max_passages must be 0 or more")
        self.llm = llm
        self.max_prompt_tokens = max_prompt_tokens
        self.system = system
        self.max_rows = max_rows
        self.max_passages = max_passages
        self.abstain_notice = abstain_notice

    def _render(self, question: str, lines: list[str], passages: list[Passage] | None = None) -> list[ChatMessage]:
        parts = [f"[g{i + 1}] {line}" for i, line in enumerate(lines)]
        for i, p in enumerate(passages or []):
            body = " ".join(p.text.split())
            parts.append(f"[p{i + 1}] {p.title}: {body}" if p.title else f"[p{i + 1}] {body}")
        context = "\n".join(parts) if parts else "(no results)"
        user = f"Context:\n{context}\n\nQuestion: {question}"
        return [ChatMessage(role="system", content=self.system), ChatMessage(role="user", content=user)]

    def run(self, question: str, graph: GraphContext | None = None, passages: list[Passage] | None = None, abstained: bool = False) -> PromptOutput:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty (ask something)")
        budget = min(self.max_prompt_tokens, self.llm.context_window)
        lines = graph.as_text(self.max_rows) if graph is not None and not abstained else []
        docs = list(passages or [])[: self.max_passages] if not abstained else []
        offered = len(lines) + len(docs)
        msgs = self._render(question, lines, docs)
        tokens = self.llm.count_tokens(self.llm.render(msgs))
        while tokens > budget and (docs or lines):
            (docs if docs else lines).pop()
            msgs = self._render(question, lines, docs)
            tokens = self.llm.count_tokens(self.llm.render(msgs))
        while tokens > budget and len(question) > 20:
            question = "..." + question[len(question) // 4 :]
            msgs = self._render(question, lines, docs)
            tokens = self.llm.count_tokens(self.llm.render(msgs))
        if tokens > budget:
            raise InputError(f"the prompt needs {tokens} tokens even with no context, over the budget of {budget} (raise max_prompt_tokens or shorten the system text)")
        rec = current_recorder()
        if rec is not None:
            rec.note("prompt_tokens", tokens)
            # the parts, for reports of where prompt tokens go (question vs context vs instructions)
            rec.note("prompt_instructions_tokens", self.llm.count_tokens(self.system))
            rec.note("prompt_question_tokens", self.llm.count_tokens(question))
            rec.note("prompt_context_tokens", self.llm.count_tokens(msgs[-1].content) - self.llm.count_tokens(f"Question: {question}"))
            rec.note("context_trimmed", offered - len(lines) - len(docs))
        ids = [f"g{i + 1}" for i in range(len(lines))] + [f"p{i + 1}" for i in range(len(docs))]
        prompt = Prompt(
            messages=msgs,
            tokens=tokens,
            context_ids=ids,
            trimmed=offered - len(lines) - len(docs),
            sources={f"p{i + 1}": p.id for i, p in enumerate(docs)},
            abstained=abstained,
            notice=self.abstain_notice if abstained else "",
        )
        return PromptOutput(prompt=prompt)
