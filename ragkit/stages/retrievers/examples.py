"""Few-shot example retrieval: the bank's examples nearest to the question, diversified.

Example:
    >>> from ragkit.stages.retrievers.examples import FewShotExampleRetriever
    >>> from ragkit.stores.examples import ExampleBank
    >>> from ragkit.testing import HashingEmbedder
    >>> bank = ExampleBank.from_examples([("Who wrote X?", "SELECT 1"), ("Where is Y?", "SELECT 2")], HashingEmbedder())
    >>> FewShotExampleRetriever(bank=bank, top_k=1).run(question="Who wrote Z?").examples[0].query
    'SELECT 1'
"""

from __future__ import annotations

from typing import ClassVar, Literal

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Output, Stage
from ragkit.errors import InputError
from ragkit.stores.examples import ExampleBank, QueryExample

__all__ = ["FewShotExampleRetriever", "FewShotExamples"]


class FewShotExamples(Output):
    examples: list[QueryExample]


@register_stage("few_shot_retriever")
class FewShotExampleRetriever(Stage):
    """Retrieves the ``top_k`` question→query examples closest to the question (embeddings + FAISS, MMR).

    Args:
        bank: the example bank resource.
        top_k: examples to return.
        diversity: MMR trade-off, 0 (similarity only) to 1 (diversity only).
        selection: ``similar`` (nearest to the question) or ``fixed``: the bank's first ``top_k``
            usable examples for every question, the fixed few-shot baseline that retrieval is
            measured against.
    """

    thread_safe: ClassVar[bool] = True  # run() keeps its state in locals

    def __init__(self, bank: ExampleBank, top_k: int = 4, diversity: float = 0.3, selection: Literal["similar", "fixed"] = "similar") -> None:
        if top_k < 0:
            raise ValueError("top_k must be 0 or more")
        if not 0.0 <= diversity <= 1.0:
            raise ValueError("diversity must be between 0 and 1")
        if selection not in ("similar", "fixed"):
            raise ValueError(f"selection must be 'similar' or 'fixed', not {selection!r}")
        self.bank = bank
        self.top_k = top_k
        self.diversity = diversity
        self.selection = selection

    def run(self, question: str) -> FewShotExamples:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty (ask something)")
        if self.selection == "fixed":
            found = self.bank.first(self.top_k)
        else:
            found = self.bank.search(question, k=self.top_k, diversity=self.diversity)
        rec = current_recorder()
        if rec is not None:
            rec.note("examples", len(found))
        return FewShotExamples(examples=found)
