"""The confidence reranker: scores passages, calibrates the scores, fuses them with graph rows,
selects a covering context, and abstains when nothing is likely enough to answer.

Steps for each question:

1. score up to ``candidates`` passages with the backend (bi-encoder by default, or query
   likelihood under the local LLM, or a cross-encoder folder);
2. map raw scores to probabilities of relevance with the calibration artifact (``calibration:``), or
   the backend's fixed default curve when none is given;
3. add the graph result, when there is one, as one more item whose probability is the graph
   retriever's confidence (all its rows go in together: a list answer must not lose rows);
4. select ``top_k`` items by coverage-aware greedy utility (:mod:`.selection`);
5. the context's confidence (``confidence_method``):

   * ``part_support`` (default): each part of the question (its entities and content words, see
     :mod:`.selection`) is supported by the most probable chosen item that covers it (the graph
     result covers every part: its query was written for the whole question); the confidence
     is the weighted mean of that support over the parts. A context that names the question's
     entity only in passages unlikely to be relevant (the unanswerable question about a known
     entity) scores low, though every part is covered;
   * ``best_item``: the best item's probability, lowered by ``coverage_penalty`` for uncovered parts;

   below ``abstain_threshold`` the output abstains and says why.

Example:
    >>> from ragkit.stages.rerankers.confidence import ConfidenceReranker
    >>> from ragkit.stores.vector import Passage, VectorIndex
    >>> from ragkit.testing import HashingEmbedder
    >>> ps = [Passage(id="a", text="Ann lives in Rome."), Passage(id="b", text="Bob lives in Oslo.")]
    >>> out = ConfidenceReranker(embedder=HashingEmbedder(), top_k=1).run(question="Where does Bob live?", passages=ps)
    >>> [p.id for p in out.passages], out.abstained
    (['b'], False)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import register_stage
from ragkit.core.metrics import current_recorder
from ragkit.core.stage import Output, Stage
from ragkit.errors import InputError
from ragkit.ingest.chunking import embedding_text
from ragkit.models.base import LLM, Embedder
from ragkit.stages.rerankers.backends import (
    DEFAULT_CALIBRATION,
    BiEncoderScorer,
    CrossEncoderScorer,
    QueryLikelihoodScorer,
    RelevanceScorer,
)
from ragkit.stages.rerankers.calibration import Calibrator
from ragkit.stages.rerankers.selection import (
    Candidate,
    coverage,
    question_parts,
    select,
)
from ragkit.stages.retrievers.graph import GraphContext
from ragkit.stores.vector import Passage, VectorIndex

logger = logging.getLogger(__name__)

__all__ = ["ConfidenceReranker", "RankedContext", "ContextItem", "fit_calibration"]
Backend = Literal["bi_encoder", "query_likelihood", "cross_encoder"]
ConfidenceMethod = Literal["part_support", "best_item"]


class ContextItem(BaseModel):
    """One chosen item of the fused context: a passage, or the graph result as a whole."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["passage", "graph"]
    id: str
    """The passage id, or ``graph`` for the graph result."""
    text: str
    probability: float
    """Calibrated probability that the item is relevant."""


class RankedContext(Output):
    """The reranker's output: the chosen passages (score = probability), the graph result if chosen,
    the fused ranking of both, the context's confidence, and whether to abstain."""

    passages: list[Passage]
    graph: GraphContext | None
    items: list[ContextItem]
    confidence: float
    abstained: bool
    reason: str


@register_stage("confidence_reranker")
class ConfidenceReranker(Stage):
    """Reranks passages into calibrated probabilities, fuses graph rows, selects for coverage, abstains.

    Args:
        backend: ``bi_encoder`` (needs ``embedder``), ``query_likelihood`` (needs ``llm``) or
            ``cross_encoder`` (needs ``model``, a local cross-encoder folder).
        embedder: the embedder resource for ``bi_encoder``.
        index: the ``faiss_index`` the passages come from (optional, ``bi_encoder`` only): their
            stored vectors are reused instead of embedding the passages again. It must use ``embedder``.
        llm: the local LLM resource for ``query_likelihood``.
        model: the cross-encoder folder for ``cross_encoder``.
        calibration: a calibration JSON artifact for this backend (see
            :class:`~ragkit.stages.rerankers.calibration.Calibrator`); None uses the backend's
            fixed default curve, which is not a calibrated probability.
        top_k: items chosen (the graph result counts as one).
        candidates: passages scored at most (the first ones given).
        retrieval_weight: weight of the retriever's order in each passage's probability:
            ``p = (1 - w) * p_backend + w / (1 + rank / 5)``; 0 trusts the backend alone.
        coverage_weight, redundancy_weight, bridge_weight: the selection utility's weights.
        abstain_threshold: below this confidence the output abstains.
        confidence_method: ``part_support`` (each question part's best supporting probability,
            averaged) or ``best_item`` (the best probability, lowered for uncovered parts).
        coverage_penalty: how much uncovered question parts lower a ``best_item`` confidence (0: not at all).
        batch_size: passages per scoring call.

    Example:
        >>> from ragkit.testing import HashingEmbedder
        >>> r = ConfidenceReranker(embedder=HashingEmbedder(), abstain_threshold=0.99)
        >>> r.run(question="Where does Ann live?", passages=[Passage(id="x", text="Bob lives in Oslo.")]).abstained
        True
    """

    thread_safe: ClassVar[bool] = True  # run() keeps its state in locals; the scorers only read their models (the embedding cache is locked)

    def __init__(
        self,
        backend: Backend = "bi_encoder",
        embedder: Embedder | None = None,
        index: VectorIndex | None = None,
        llm: LLM | None = None,
        model: str | None = None,
        calibration: str | None = None,
        top_k: int = 5,
        candidates: int = 20,
        retrieval_weight: float = 0.0,
        coverage_weight: float = 0.2,
        redundancy_weight: float = 0.2,
        bridge_weight: float = 0.1,
        abstain_threshold: float = 0.3,
        confidence_method: ConfidenceMethod = "part_support",
        coverage_penalty: float = 0.5,
        batch_size: int = 16,
    ) -> None:
        needs = {"bi_encoder": ("embedder", embedder), "query_likelihood": ("llm", llm), "cross_encoder": ("model", model)}
        if backend not in needs:
            raise ValueError(f"backend must be one of {', '.join(needs)}, not {backend!r}")
        if needs[backend][1] is None:
            raise ValueError(f"backend {backend} needs '{needs[backend][0]}' (set it, or choose another backend)")
        if index is not None and embedder is not None and index.embedder is not embedder:
            raise ValueError("'index' must be built with the reranker's 'embedder' (name the same embedder resource in both)")
        if top_k < 1 or candidates < 1:
            raise ValueError("top_k and candidates must be at least 1")
        if not 0.0 <= abstain_threshold <= 1.0:
            raise ValueError("abstain_threshold must be between 0 and 1")
        if confidence_method not in ("part_support", "best_item"):
            raise ValueError(f"confidence_method must be part_support or best_item, not {confidence_method!r}")
        if not 0.0 <= retrieval_weight <= 1.0 or not 0.0 <= coverage_penalty <= 1.0:
            raise ValueError("retrieval_weight and coverage_penalty must be between 0 and 1")
        self.backend = backend
        self.embedder, self.index, self.llm, self.model = embedder, index, llm, model
        self.calibration = calibration
        self.top_k, self.candidates = top_k, candidates
        self.retrieval_weight = retrieval_weight
        self.coverage_weight, self.redundancy_weight, self.bridge_weight = coverage_weight, redundancy_weight, bridge_weight
        self.abstain_threshold = abstain_threshold
        self.coverage_penalty = coverage_penalty
        self.confidence_method = confidence_method
        self.batch_size = batch_size
        self._scorer: RelevanceScorer | None = None
        self._calibrator: Calibrator | None = None

    def setup(self) -> None:
        if self.backend == "bi_encoder":
            assert self.embedder is not None
            scorer: RelevanceScorer = BiEncoderScorer(self.embedder)
        elif self.backend == "query_likelihood":
            assert self.llm is not None
            scorer = QueryLikelihoodScorer(self.llm, batch_size=self.batch_size)
        else:
            assert self.model is not None
            scorer = CrossEncoderScorer(self.model, batch_size=self.batch_size)
        scorer.warm_up()
        if self.calibration:
            cal = Calibrator.load(self.calibration)
            if cal.backend and cal.backend != self.backend:
                raise InputError(f"calibration {self.calibration} was fitted for backend {cal.backend!r}, not {self.backend!r} (fit one for this backend)")
        else:
            cal = Calibrator.sigmoid(*DEFAULT_CALIBRATION[self.backend], backend=self.backend)
        self._scorer, self._calibrator = scorer, cal

    @property
    def scorer(self) -> RelevanceScorer:
        self.warm_up()
        assert self._scorer is not None
        return self._scorer

    @property
    def calibrator(self) -> Calibrator:
        self.warm_up()
        assert self._calibrator is not None
        return self._calibrator

    def raw_scores(self, question: str, passages: list[Passage]) -> list[float]:
        """The backend's uncalibrated score of each passage (what a calibration is fitted on)."""
        if not passages:
            return []
        texts = [embedding_text(p.title, p.text) for p in passages]
        if isinstance(self.scorer, BiEncoderScorer) and self.index is not None:
            raw = self.scorer.score(question, texts, known=self.index.vectors([p.id for p in passages]))
        else:
            raw = self.scorer.score(question, texts)
        return [float(x) for x in raw]

    def probabilities(self, question: str, passages: list[Passage]) -> list[float]:
        """Calibrated probability of relevance of each passage (in the given order)."""
        import numpy as np

        if not passages:
            return []
        p = self.calibrator.predict(self.raw_scores(question, passages))
        if self.retrieval_weight:
            prior = 1.0 / (1.0 + np.arange(len(passages)) / 5.0)
            p = (1 - self.retrieval_weight) * p + self.retrieval_weight * prior
        return [float(x) for x in p]

    def run(self, question: str, passages: list[Passage] | None = None, graph: GraphContext | None = None) -> RankedContext:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty (ask something)")
        self.warm_up()
        pool = list(passages or [])[: self.candidates]
        probs = self.probabilities(question, pool)
        cands = [Candidate(key=p.id, text=p.text, title=p.title, p=pr) for p, pr in zip(pool, probs)]
        by_id = {p.id: p.model_copy(update={"score": pr}) for p, pr in zip(pool, probs)}
        if graph is not None and graph.rows:
            cands.append(Candidate(key="graph", text="\n".join(graph.as_text()), p=float(graph.confidence), kind="graph"))
        chosen = select(
            question,
            cands,
            self.top_k,
            coverage_weight=self.coverage_weight,
            redundancy_weight=self.redundancy_weight,
            bridge_weight=self.bridge_weight,
        )
        best = max((c.p for c in chosen), default=0.0)
        parts = question_parts(question)
        support = dict.fromkeys(parts, 0.0)  # each part's best probability among the chosen items covering it
        for c in chosen:
            # The graph query was written for the whole question: its rows answer every part, though
            # they rarely repeat the question's words.
            for part in parts if c.kind == "graph" else coverage(parts, c._terms):
                support[part] = max(support[part], c.p)
        total = sum(parts.values())
        share = sum(parts[p] for p, v in support.items() if v > 0) / total if parts else 1.0
        if self.confidence_method == "part_support":
            confidence = sum(parts[p] * v for p, v in support.items()) / total if parts else best
        else:
            confidence = best * (1 - self.coverage_penalty * (1 - share))
        abstained = confidence < self.abstain_threshold
        weakest = min(support, key=lambda p: support[p], default=None)
        detail = f"best item {best:.2f}, question coverage {share:.0%}" + (f", weakest part {weakest!r} {support[weakest]:.2f}" if weakest else "")
        if not cands:
            reason = "no context was retrieved"
        elif abstained:
            reason = f"confidence {confidence:.2f} is below the threshold {self.abstain_threshold:.2f} ({detail})"
        else:
            reason = f"confidence {confidence:.2f} ({detail})"
        items = [
            ContextItem(
                kind="graph" if c.kind == "graph" else "passage",
                id=c.key,
                text=c.text if c.kind == "graph" else embedding_text(c.title, c.text),
                probability=round(c.p, 6),
            )
            for c in chosen
        ]
        rec = current_recorder()
        if rec is not None:
            rec.note("candidates", len(cands))
            rec.note("confidence", round(confidence, 4))
            rec.note("abstained", abstained)
        return RankedContext(
            passages=[by_id[c.key] for c in chosen if c.kind != "graph"],
            graph=graph if any(c.kind == "graph" for c in chosen) else None,
            items=items,
            confidence=round(confidence, 6),
            abstained=abstained,
            reason=reason,
        )


def fit_calibration(
    reranker: ConfidenceReranker,
    examples: Iterable[tuple[str, list[Passage], Iterable[str]]],
    method: Literal["platt", "isotonic"] = "platt",
    note: str = "",
) -> Calibrator:
    """Fit a calibration for ``reranker``'s backend on labelled retrieval results.

    Args:
        reranker: the reranker whose backend produces the raw scores.
        examples: ``(question, candidate passages, relevant ids)``; a passage is relevant when its
            ``id`` or ``doc_id`` is among the relevant ids.
        method: ``platt`` or ``isotonic``.
        note: what the data was, kept in the artifact.

    Returns:
        The fitted :class:`Calibrator`; ``.save(path)`` writes the JSON artifact that the
        ``calibration:`` parameter reads.
    """
    scores: list[float] = []
    labels: list[int] = []
    for question, passages, relevant in examples:
        rel = set(relevant)
        pool = list(passages)[: reranker.candidates]
        scores.extend(reranker.raw_scores(question, pool))
        labels.extend(int(p.id in rel or p.doc_id in rel) for p in pool)
    return Calibrator.fit(scores, labels, method=method, backend=reranker.backend, note=note)
