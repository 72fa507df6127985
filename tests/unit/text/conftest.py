"""Text unit tests: offline, with a private ragkit cache."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

_LOOPBACK = ("127.", "::1", "localhost")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family == socket.AF_UNIX or str(host).startswith(_LOOPBACK):
            return real_connect(self, address)
        raise AssertionError(f"unit test tried to reach the network ({address!r})")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


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
