"""Embedding a large corpus on a Ray cluster: the costly part of building an index, spread over workers.

Each task rebuilds the embedder from its class and constructor parameters (weights are loaded by
the worker, never shipped), embeds a contiguous slice of the texts with :func:`embed_texts`, and the
slices are put back together in order. With a deterministic embedder the vectors equal the local
ones; with a neural one they match to float rounding (batches differ in padding).

Used by :meth:`ragkit.stores.vector.VectorIndex.add` with ``engine="ray"``.

Example:
    >>> from ragkit.ingest.distributed import slices
    >>> slices(10, 3)
    [(0, 4), (4, 8), (8, 10)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ragkit.errors import MissingDependencyError
from ragkit.ingest.embedding import embed_texts
from ragkit.models.base import Embedder

__all__ = ["embed_texts_ray", "slices"]


def slices(n: int, parts: int) -> list[tuple[int, int]]:
    """``n`` items cut into at most ``parts`` contiguous (start, end) ranges of near-equal size."""
    size = max(1, -(-n // max(1, parts)))
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _embed_slice(cls: type[Embedder], params: dict[str, Any], texts: list[str], batch_size: int) -> Any:
    return embed_texts(cls(**params), texts, batch_size=batch_size, progress=False)


def embed_texts_ray(embedder: Embedder, texts: Sequence[str], *, batch_size: int = 64, tasks: int | None = None) -> Any:
    """Like :func:`embed_texts`, with slices of ``texts`` embedded by Ray tasks.

    Args:
        embedder: the embedder resource; its class and parameters are sent, not the loaded model.
        texts: what to embed.
        batch_size: texts per embedder call inside a task.
        tasks: how many slices (default: the cluster's CPUs). Joins ``$RAY_ADDRESS`` or starts a
            local cluster when Ray is not initialised yet.
    """
    import numpy as np

    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "ray", "embedding on a Ray cluster") from None
    if not texts:
        return embed_texts(embedder, texts, batch_size=batch_size, progress=False)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    params = {k: v for k, v in embedder.init_params.items()}
    parts = tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1)(_embed_slice)
    refs = [remote.remote(type(embedder), params, list(texts[a:b]), batch_size) for a, b in slices(len(texts), parts)]
    return np.concatenate([np.asarray(v, dtype="float32") for v in ray.get(refs)], axis=0)
