"""Relevance scorers behind the confidence reranker: each turns (question, passages) into raw scores.

* :class:`BiEncoderScorer` (``bi_encoder``, the default): cosine similarity of the embedder's vectors.
  Needs no extra weights.
* :class:`QueryLikelihoodScorer` (``query_likelihood``): mean log-probability of the question's tokens
  given the passage under a local causal LM (the UPR idea: a passage that makes the question likely
  is relevant).
* :class:`CrossEncoderScorer` (``cross_encoder``): a sentence-transformers cross-encoder loaded from any
  local folder; raw logits.

Raw scores live on different scales; :mod:`ragkit.stages.rerankers.calibration` maps them to
probabilities. ``DEFAULT_CALIBRATION`` holds the uncalibrated fall-back per backend: a fixed logistic
curve placed where the scale's "relevant" region usually starts. Fit a calibration on labelled data
before trusting these numbers as probabilities.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragkit.core.metrics import current_recorder
from ragkit.errors import MissingDependencyError, ModelError
from ragkit.models.base import LLM, Embedder

logger = logging.getLogger(__name__)

__all__ = ["RelevanceScorer", "BiEncoderScorer", "QueryLikelihoodScorer", "CrossEncoderScorer", "DEFAULT_CALIBRATION"]

DEFAULT_CALIBRATION: dict[str, tuple[float, float]] = {
    # p = sigmoid(a * score + b). Cosine 0.45 -> 0.5; mean log-prob -2.5 -> 0.5; logit 0 -> 0.5.
    "bi_encoder": (12.0, -5.4),
    "query_likelihood": (2.0, 5.0),
    "cross_encoder": (1.0, 0.0),
}

_CE_LOADED: dict[tuple[str, str], Any] = {}
_SHARED: dict[int, tuple[OrderedDict[str, Any], threading.Lock]] = {}
_SHARED_LOCK = threading.Lock()
_CE_LOCK = threading.Lock()


class RelevanceScorer:
    """Scores passages for a question; higher is more relevant. ``name`` keys the calibration."""

    name = ""

    def warm_up(self) -> None:
        """Load what scoring needs (idempotent)."""

    def score(self, question: str, texts: Sequence[str]) -> Any:
        """A float numpy array, one raw score per text."""
        raise NotImplementedError


class BiEncoderScorer(RelevanceScorer):
    """Cosine similarity between the question's and each text's embedding."""

    name = "bi_encoder"

    def __init__(self, embedder: Embedder, cache_size: int = 50_000) -> None:
        self.embedder = embedder
        self.cache_size = cache_size
        # Passages recur across questions (the same top documents): embedding each once is most of
        # the saving. Bounded, least recently used first out; shared by every scorer of one embedder.
        with _SHARED_LOCK:
            self._cache, self._lock = _SHARED.setdefault(id(embedder), (OrderedDict(), threading.Lock()))
        weakref.finalize(embedder, _SHARED.pop, id(embedder), None)

    def warm_up(self) -> None:
        self.embedder.warm_up()

    def score(self, question: str, texts: Sequence[str], known: Any = None) -> Any:
        """Cosine of each text with the question; ``known`` may hold stored vectors (NaN rows are embedded)."""
        import numpy as np

        if not texts:
            return np.zeros(0, dtype="float32")
        if known is None:
            vecs = self.vectors(texts)
        else:
            vecs = np.array(known, dtype="float32")
            todo = [i for i in range(len(texts)) if not np.isfinite(vecs[i]).all()]
            if todo:
                vecs[todo] = self.vectors([texts[i] for i in todo])
        q = self.embedder.embed([question])[0]
        return (vecs @ q).astype("float32")

    def vectors(self, texts: Sequence[str]) -> Any:
        """Unit vectors of ``texts``, from the cache where possible."""
        import numpy as np

        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            fresh = self.embedder.embed(missing)
            with self._lock:
                for t, v in zip(missing, fresh):
                    self._cache[t] = v
                    self._cache.move_to_end(t)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
                got = {t: self._cache[t] for t in texts if t in self._cache}
        else:
            with self._lock:
                got = {t: self._cache[t] for t in texts}
        rest = [t for t in texts if t not in got]
        if rest:  # evicted between the two steps by a concurrent caller: embed again
            got.update(zip(rest, self.embedder.embed(rest)))
        return np.stack([got[t] for t in texts]).astype("float32")


class QueryLikelihoodScorer(RelevanceScorer):
    """Mean log p(question | passage) under a local causal LM.

    Args:
        llm: a ``local_llm`` resource (its transformers model is used directly).
        batch_size: passages per forward pass.
        max_passage_tokens: passage tokens kept (from the start) so long passages do not dominate cost.
        template: the text before the question; ``{passage}`` is replaced.
    """

    name = "query_likelihood"
    TEMPLATE = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"

    def __init__(self, llm: LLM, batch_size: int = 8, max_passage_tokens: int = 256, template: str = TEMPLATE) -> None:
        self.llm = llm
        self.batch_size = batch_size
        self.max_passage_tokens = max_passage_tokens
        self.template = template

    def warm_up(self) -> None:
        self.llm.warm_up()
        if not hasattr(self.llm, "hf_model") or not hasattr(self.llm, "tokenizer"):
            raise ModelError(f"the query_likelihood backend needs a transformers model (a local_llm resource), not {type(self.llm).__name__}")

    def score(self, question: str, texts: Sequence[str]) -> Any:
        import numpy as np

        self.warm_up()
        if not texts:
            return np.zeros(0, dtype="float32")
        tok = self.llm.tokenizer  # type: ignore[attr-defined]
        q_ids = tok(" " + question.strip(), add_special_tokens=False)["input_ids"]
        pre, post = self.template.split("{passage}", 1)
        prefixes = []
        for t in texts:
            p_ids = tok(t, add_special_tokens=False)["input_ids"][: self.max_passage_tokens]
            prefix = tok(pre, add_special_tokens=False)["input_ids"] + p_ids + tok(post, add_special_tokens=False)["input_ids"]
            if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False):
                prefix = [tok.bos_token_id, *prefix]
            prefixes.append(prefix)
        out, n_tokens = self.llm.continuation_logprobs(prefixes, q_ids, self.batch_size)  # type: ignore[attr-defined]
        rec = current_recorder()
        if rec is not None:
            rec.add_tokens(tokens_in=n_tokens)
        return np.asarray(out, dtype="float32")


class CrossEncoderScorer(RelevanceScorer):
    """A sentence-transformers cross-encoder from a local folder; raw (pre-sigmoid) scores.

    Args:
        model: a local folder holding a cross-encoder (a sequence-classification model with one label).
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: pairs per forward pass.
        max_length: tokens per (question, passage) pair; None keeps the model's own limit.
    """

    name = "cross_encoder"

    def __init__(self, model: str, device: str = "auto", batch_size: int = 32, max_length: int | None = 512) -> None:
        self.model_path = model
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None

    def warm_up(self) -> None:
        if self._model is not None:
            return
        folder = Path(self.model_path).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelError(f"cross-encoder folder {folder} has no config.json (give a local sentence-transformers cross-encoder folder)")
        try:
            import torch
            from sentence_transformers import CrossEncoder
        except ImportError:
            raise MissingDependencyError("sentence-transformers", "models", "the cross-encoder reranker") from None
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        key = (str(folder.resolve()), device)
        with _CE_LOCK:
            if key not in _CE_LOADED:
                try:
                    _CE_LOADED[key] = CrossEncoder(str(folder), device=device, local_files_only=True, max_length=self.max_length)
                except Exception as e:
                    raise ModelError(f"could not load the cross-encoder in {folder}: {e}") from e
            self._model = _CE_LOADED[key]

    def score(self, question: str, texts: Sequence[str]) -> Any:
        import numpy as np
        import torch

        self.warm_up()
        if not texts:
            return np.zeros(0, dtype="float32")
        raw = self._model.predict(
            [(question, t) for t in texts], batch_size=self.batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=False, convert_to_numpy=True
        )
        raw = np.asarray(raw, dtype="float32")
        return raw[:, -1] if raw.ndim == 2 else raw
