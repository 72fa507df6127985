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
    parts = []
    try:
        for i in range(0, len(texts), batch_size):
            batch = list(texts[i : i + batch_size])
            parts.append(np.asarray(embedder.embed(batch), dtype="float32"))
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if not parts:
        return np.zeros((0, int(embedder.dimension)), dtype="float32")
    return np.concatenate(parts, axis=0)
