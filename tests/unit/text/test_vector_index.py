"""The faiss_index resource: build, persist atomically, reopen memory-mapped, add, delete, filter."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from textkit_helpers import FIXTURE_CORPUS, ROOT, synthetic_docs, write_jsonl

from ragkit import Pipeline
from ragkit.errors import InputError, StoreError
from ragkit.ingest import Document
from ragkit.stores.vector import VectorIndex, choose_kind
from ragkit.testing import HashingEmbedder


def _index(tmp_path: Path, n: int = 60, **kw: object) -> VectorIndex:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", synthetic_docs(n))
    return VectorIndex(embedder=HashingEmbedder(dimension=64), corpus=str(corpus), path=str(tmp_path / "idx"), **kw)  # type: ignore[arg-type]


def test_defaults_and_no_io_in_constructor(tmp_path: Path) -> None:
    idx = VectorIndex(embedder=HashingEmbedder(), corpus=str(tmp_path / "missing.jsonl"), path=str(tmp_path / "idx"))
    assert idx.init_params["kind"] == "auto" and idx.init_params["mmap"] is True and idx.chunk_tokens == 200
    assert not (tmp_path / "idx").exists() and not idx.is_warm
    with pytest.raises(InputError, match="does not exist"):
        idx.warm_up()


def test_yaml_round_trip() -> None:
    spec = {
        "version": 1,
        "resources": {
            "emb": {"type": "hashing_embedder", "dimension": 64},
            "index": {"type": "faiss_index", "embedder": "emb", "corpus": str(FIXTURE_CORPUS), "kind": "hnsw", "chunk_tokens": 120},
        },
        "stages": [{"name": "retrieve", "type": "dense_retriever", "index": "index", "top_k": 3}],
        "inputs": {"question": "retrieve.question"},
        "outputs": {"passages": "retrieve.passages"},
    }
    import ragkit.stages.retrievers.text  # noqa: F401  (registers the stage types until they are built-ins)

    pipe = Pipeline.from_dict(spec)
    again = Pipeline.from_dict(pipe.to_dict())
    assert again.to_dict() == pipe.to_dict()
    assert pipe.to_dict()["resources"]["index"] == {
        "type": "faiss_index",
        "embedder": "emb",
        "corpus": str(FIXTURE_CORPUS),
        "kind": "hnsw",
        "chunk_tokens": 120,
    }
    ids = [p.id for p in again.run(question="Who founded Lanternfish Press?")["passages"]]
    assert len(ids) == 3


def test_warm_up_builds_once_and_reopen_is_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idx = _index(tmp_path)
    builds = []
    real_build = VectorIndex._build
    monkeypatch.setattr(VectorIndex, "_build", lambda self, *a: (builds.append(1), real_build(self, *a))[1])
    idx.warm_up()
    idx.warm_up()
    assert builds == [1] and idx.embedder.setup_calls == 1  # type: ignore[attr-defined]
    assert len(idx) == 60 and idx.kind_used == "flat"
    first = [p.id for p in idx.search("the castle number 2", k=5)]

    again = _index(tmp_path)
    again.warm_up()
    assert builds == [1]  # reopened from disk, not rebuilt
    assert again.memory_mapped
    assert [p.id for p in again.search("the castle number 2", k=5)] == first


def test_saved_folder_is_json_and_faiss_only(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    idx.warm_up()
    root = tmp_path / "idx"
    current = (root / "CURRENT").read_text().strip()
    assert sorted(p.name for p in (root / current).iterdir()) == ["index.faiss", "items.jsonl", "meta.json"]
    meta = json.loads((root / current / "meta.json").read_text())
    assert meta["kind"] == "flat" and meta["dimension"] == 64 and meta["count"] == 60
    assert meta["embedder"] == {"name": "hashing_embedder:default", "dimension": 64}
    row = json.loads((root / current / "items.jsonl").read_text().splitlines()[0])
    assert {"key", "id", "doc_id", "title", "text", "metadata"} <= set(row)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_each_kind_builds_searches_persists_and_reopens(tmp_path: Path, kind: str) -> None:
    idx = _index(tmp_path, n=500, kind=kind)
    idx.warm_up()
    assert idx.kind_used == kind
    doc = synthetic_docs(500)[123]
    query = f"{doc['title']} {doc['text']}"
    hit = idx.search(query, k=5)
    assert "d123" in [p.id for p in hit]
    reopened = _index(tmp_path, n=500, kind=kind)
    assert reopened.kind_used == kind and len(reopened) == 500
    assert [p.id for p in reopened.search(query, k=5)] == [p.id for p in hit]


def test_kind_chosen_by_size(tmp_path: Path) -> None:
    assert [choose_kind(n, 100, 1000) for n in (10, 100, 101, 1000, 1001)] == ["flat", "flat", "hnsw", "hnsw", "ivfpq"]
    idx = _index(tmp_path, n=50, flat_max=10)
    assert idx.kind_used == "hnsw"


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_incremental_add_replace_and_delete_persist(tmp_path: Path, kind: str) -> None:
    idx = _index(tmp_path, n=30, kind=kind)
    idx.warm_up()
    assert idx.add([Document(id="new", title="Lighthouse", text="A lighthouse on the cliff guides the ships.", metadata={"topic": "coast"})]) == 1
    assert idx.search("lighthouse cliff ships", k=1)[0].id == "new"
    idx.add([Document(id="new", title="Lighthouse", text="The lighthouse was rebuilt in stone.")])  # same id: replaced
    assert len(idx) == 31 and "stone" in idx.get("new").text  # type: ignore[union-attr]
    assert idx.delete(["new", "d0", "missing"]) == 2
    assert len(idx) == 29 and all(p.id not in ("new", "d0") for p in idx.search("lighthouse stone river note 0", k=29))

    reopened = _index(tmp_path, n=30, kind=kind)
    assert len(reopened) == 29 and reopened.get("new") is None and reopened.get("d1") is not None
    assert all(p.id != "d0" for p in reopened.search("Note 0 describes the river number 0", k=29))
    reopened.add([Document(id="later", text="Added after reopening a memory-mapped index.")])
    assert _index(tmp_path, n=30, kind=kind).get("later") is not None


def test_delete_by_document_removes_all_its_chunks(tmp_path: Path) -> None:
    idx = VectorIndex(embedder=HashingEmbedder(dimension=32), chunk_tokens=20, chunk_overlap=4)
    idx.add([Document(id="long", text=" ".join(f"Sentence {i} of the long text." for i in range(20))), Document(id="short", text="Short.")])
    assert len(idx) > 3 and idx.get("long#0") is not None
    n_long = len(idx) - 1
    assert idx.delete(["long"]) == n_long
    assert [c.id for c in idx.chunks()] == ["short"]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_metadata_filters(tmp_path: Path, kind: str) -> None:
    idx = _index(tmp_path, n=200, kind=kind)
    hits = idx.search("note describes number", k=5, filters={"topic": "glacier"})
    assert len(hits) == 5 and all(p.metadata["topic"] == "glacier" for p in hits)
    hits = idx.search("note describes number", k=50, filters={"topic": ["river", "island"]})
    assert {p.metadata["topic"] for p in hits} == {"river", "island"}
    assert [p.id for p in idx.search("note", k=3, filters={"doc_id": "d7"})] == ["d7"]
    assert idx.search("note", k=3, filters={"topic": "nowhere"}) == []


def test_changed_corpus_is_reindexed(tmp_path: Path) -> None:
    idx = _index(tmp_path, n=20)
    idx.warm_up()
    write_jsonl(tmp_path / "corpus.jsonl", synthetic_docs(25))
    assert len(_index(tmp_path, n=25)) == 25


def test_index_of_another_embedder_is_refused_without_a_corpus(tmp_path: Path) -> None:
    _index(tmp_path).warm_up()
    other = VectorIndex(embedder=HashingEmbedder(dimension=32), path=str(tmp_path / "idx"))
    with pytest.raises(StoreError, match="32-d"):
        other.warm_up()


def test_inconsistent_folder_is_reported(tmp_path: Path) -> None:
    _index(tmp_path).warm_up()
    root = tmp_path / "idx"
    items = root / (root / "CURRENT").read_text().strip() / "items.jsonl"
    items.write_text("\n".join(items.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(StoreError, match="inconsistent"):
        VectorIndex(embedder=HashingEmbedder(dimension=64), path=str(root)).warm_up()


def test_in_memory_index_cannot_save_without_a_path() -> None:
    idx = VectorIndex(embedder=HashingEmbedder())
    idx.add([Document(id="a", text="x")])
    with pytest.raises(InputError, match="no folder"):
        idx.save()


def test_leftovers_of_a_crashed_writer_are_collected(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    idx.warm_up()
    root = tmp_path / "idx"
    (root / ".tmp-crashed").mkdir()
    (root / ".tmp-crashed" / "index.faiss").write_bytes(b"half")
    for i in range(3):
        idx.add([Document(id=f"x{i}", text="more")])
    assert not (root / ".tmp-crashed").exists()
    assert len(list(root.glob("v-*"))) == 2  # the current version and the one before it


# ---- killed while writing ------------------------------------------------------------------------
_CHILD = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    import ragkit.stores.vector as v
    from ragkit.ingest import Document
    from ragkit.testing import HashingEmbedder

    path, phase = sys.argv[1], sys.argv[2]
    idx = v.VectorIndex(embedder=HashingEmbedder(dimension=32), path=path)
    idx.warm_up()

    def stall(name, real, at):
        calls = [0]
        def hook(*a):
            calls[0] += 1
            if calls[0] == at:
                print("STALLED", flush=True)
                time.sleep(60)
            return real(*a)
        setattr(v, name, hook)

    if phase == "index-written":      # index.faiss written, items and meta not yet
        stall("_fsync_file", v._fsync_file, 1)
    elif phase == "version-renamed":  # complete version renamed into place, CURRENT not yet switched
        stall("_fsync_dir", v._fsync_dir, 2)
    elif phase == "current-switched": # CURRENT replaced, old version not yet collected
        stall("_fsync_dir", v._fsync_dir, 3)
    print("READY", flush=True)
    idx.add([Document(id=f"n{{i}}", text=f"new document {{i}} " * 20) for i in range(800)])
    print("DONE", flush=True)
    """
)


def _old_index(tmp_path: Path) -> Path:
    root = tmp_path / "idx"
    old = VectorIndex(embedder=HashingEmbedder(dimension=32), path=str(root))
    old.add([Document(id=f"o{i}", text=f"old document {i}") for i in range(50)])
    return root


def _run_child(tmp_path: Path, root: Path, phase: str) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(root=str(ROOT)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(root), phase], stdout=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen[str], marker: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == marker:
            return
    raise AssertionError(f"child exited before printing {marker} (code {proc.wait()})")


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _open_count(root: Path) -> int:
    idx = VectorIndex(embedder=HashingEmbedder(dimension=32), path=str(root))
    n = len(idx)
    assert idx.search("old document 3", k=1)[0].id == "o3"  # usable, not just openable
    return n


@pytest.mark.parametrize(("phase", "expected"), [("index-written", 50), ("version-renamed", 50), ("current-switched", 850)])
def test_sigkill_during_the_write_leaves_the_old_or_the_new_index(tmp_path: Path, phase: str, expected: int) -> None:
    root = _old_index(tmp_path)
    proc = _run_child(tmp_path, root, phase)
    try:
        _wait_for(proc, "STALLED")
        proc.send_signal(signal.SIGKILL)
    finally:
        _reap(proc)
    assert proc.returncode == -signal.SIGKILL
    assert _open_count(root) == expected


def test_sigkill_at_random_moments_never_corrupts(tmp_path: Path) -> None:
    rng = random.Random(5)
    root = _old_index(tmp_path)
    seen = set()
    for _ in range(3):
        before = _open_count(root)
        proc = _run_child(tmp_path, root, "none")
        try:
            _wait_for(proc, "READY")
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
        finally:
            _reap(proc)
        after = _open_count(root)
        assert after in (before, 850)  # old, or the new one (the child adds the same 800 each time)
        seen.add(after)
    assert seen <= {50, 850}
