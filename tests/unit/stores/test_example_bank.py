"""The example bank's persisted embeddings and its fit to the live schema."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from ragkit.stores.base import GraphSchema, SchemaProperty
from ragkit.stores.examples import ExampleBank, example_problem
from ragkit.testing import HashingEmbedder, TinyGraphStore

TINY = "http://example.org/tiny/"
LIVES = ("Where does Ann live?", f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}livesIn> ?c }}")
WORKS = ("Where does Ann work?", f"SELECT ?c WHERE {{ <{TINY}ann> <{TINY}worksIn> ?c }}")
KIND = ("Which people are there?", f"SELECT ?p WHERE {{ ?p a <{TINY}Person> }}")


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__(dimension=64)
        self.embedded: list[str] = []

    def embed(self, texts: Any) -> Any:
        self.embedded.extend(texts)
        return super().embed(texts)


class GrowingStore(TinyGraphStore):
    """A tiny store whose data (fingerprint) and schema can change, as a live graph's do."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 1
        self.fingerprints = 0

    def fingerprint(self) -> str:
        self.fingerprints += 1
        return f"v{self.version}"

    def _schema(self) -> GraphSchema:
        base = super()._schema()
        if self.version < 2:
            return base
        extra = SchemaProperty(name=TINY + "worksIn", kind="object")
        return base.model_copy(update={"properties": (*base.properties, extra)})


def write_bank(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "sparql": s}) + "\n" for q, s in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_embeddings_are_persisted_and_reused_across_restarts(tmp_path: Path, cache: Path) -> None:
    bank_file = write_bank(tmp_path / "bank.jsonl", [LIVES, KIND])
    first = CountingEmbedder()
    ExampleBank(path=str(bank_file), embedder=first).warm_up()
    assert len(first.embedded) == 2
    again = CountingEmbedder()
    bank = ExampleBank(path=str(bank_file), embedder=again)
    assert bank.search("Where does Bob live?", k=1)[0].question == LIVES[0]
    assert len(again.embedded) == 1  # only the question: the bank came from the cache
    assert bank.reused == 2
    # one new line: only it is embedded
    write_bank(bank_file, [LIVES, KIND, WORKS])
    third = CountingEmbedder()
    ExampleBank(path=str(bank_file), embedder=third).warm_up()
    assert len(third.embedded) == 1 and "work" in third.embedded[0]
    assert sorted(p.name for p in next(cache.glob("example_banks/*")).iterdir()) == ["meta.json", "vectors.npy"]


def test_persist_off_writes_nothing(tmp_path: Path, cache: Path) -> None:
    bank_file = write_bank(tmp_path / "bank.jsonl", [LIVES])
    ExampleBank(path=str(bank_file), embedder=HashingEmbedder(), persist=False).warm_up()
    assert not cache.exists()


def test_a_damaged_cache_is_ignored_with_a_warning(tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    bank_file = write_bank(tmp_path / "bank.jsonl", [LIVES, KIND])
    ExampleBank(path=str(bank_file), embedder=HashingEmbedder()).warm_up()
    folder = next(cache.glob("example_banks/*"))
    (folder / "vectors.npy").write_bytes(b"not numpy")
    emb = CountingEmbedder()
    with caplog.at_level(logging.WARNING, logger="ragkit.stores.examples"):
        bank = ExampleBank(path=str(bank_file), embedder=emb)
        assert len(bank) == 2
    assert len(emb.embedded) == 2 and "re-embedding" in caplog.text
    # and it was rewritten whole
    assert ExampleBank(path=str(bank_file), embedder=CountingEmbedder()).examples and json.loads((folder / "meta.json").read_text())["dim"] == 64


def test_examples_that_do_not_fit_the_live_schema_are_left_out_until_the_data_changes(tmp_path: Path) -> None:
    store = GrowingStore()
    bank = ExampleBank(path=str(write_bank(tmp_path / "b.jsonl", [LIVES, WORKS, KIND])), embedder=HashingEmbedder(), store=store)
    found = [e.question for e in bank.search("Where does Bob work?", k=3)]
    assert WORKS[0] not in found and set(found) == {LIVES[0], KIND[0]}
    assert [e.question for e in bank.dropped] == [WORKS[0]]
    store.version = 2  # the graph now has tiny:worksIn
    assert bank.search("Where does Bob work?", k=1)[0].question == WORKS[0]
    assert bank.dropped == []


def test_example_problem_names_the_reason() -> None:
    schema = TinyGraphStore().schema()
    assert example_problem(LIVES[1], schema) is None
    assert example_problem(WORKS[1], schema) == "unknown property tiny:worksIn"
    assert "read-only" in (example_problem(f"INSERT DATA {{ <{TINY}a> <{TINY}livesIn> <{TINY}b> }}", schema) or "")
