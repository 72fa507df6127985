"""Embedding many texts in batches, with a progress bar when a person is watching.

Example:
    >>> from ragkit.ingest.embedding import embed_texts
    >>> from ragkit.testing import HashingEmbedder
    >>> embed_texts(HashingEmbedder(dimension=16), ["a", "b", "c"], batch_size=2).shape
    (3, 16)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ragkit.models.base import Embedder

__all__ = ["embed_texts"]


def embed_texts(embedder: Embedder, texts: Sequence[str], *, batch_size: int = 64, progress: bool | None = None, desc: str = "embedding") -> Any:
    """A float32 array of shape ``(len(texts), dimension)``, rows L2-normalised.

    Args:
        embedder: the embedder resource.
        texts: what to embed.
        batch_size: texts handed to the embedder per call.
        progress: show a tqdm bar; None shows it only when stderr is a terminal (never in CI logs).
        desc: the bar's label.
    """
    import numpy as np

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    embedder.warm_up()
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress and len(texts) > batch_size:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc=desc, unit="text", leave=False)
        except ImportError:  # the bar is a nicety: embedding goes on without it
            bar = None
    if not len(texts):
        return np.zeros((0, int(embedder.dimension)), dtype="float32")
    # Batches of similar length waste little on padding: embed longest first, then restore the order.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: Any = None
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            vecs = np.asarray(embedder.embed([texts[i] for i in idx]), dtype="float32")
            if out is None:
                out = np.empty((len(texts), vecs.shape[1]), dtype="float32")
            out[idx] = vecs
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return out
