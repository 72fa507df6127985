"""Text unit tests: a private ragkit cache and one faiss thread (offline via tests/unit/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_faiss_thread() -> None:
    # The indexes here are tiny: with OpenMP threads on a busy shared machine, k-means training
    # spends its time spinning on barriers (ten times slower than one thread).
    import faiss

    faiss.omp_set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Indexes built without a 'path' go to the ragkit cache: never the developer's own.
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path_factory.mktemp("ragkit-cache")))
