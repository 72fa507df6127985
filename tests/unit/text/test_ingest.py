"""Readers, token-aware chunking and batched embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
from textkit_helpers import FIXTURE_CORPUS, write_jsonl

from ragkit.errors import InputError
from ragkit.ingest import Document, TextChunker, embed_texts, read_corpus
from ragkit.ingest.chunking import embedding_text, regex_spans, spans_for_embedder
from ragkit.testing import HashingEmbedder


# ---- readers ------------------------------------------------------------------------------------
def test_jsonl_corpus_keeps_ids_titles_and_scalar_metadata(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", [{"id": "x", "title": "T", "text": "hello", "lang": "en", "n": 3, "tags": ["a"]}, {"id": 7, "text": "bye"}])
    docs = read_corpus(p)
    assert [(d.id, d.title, d.text) for d in docs] == [("x", "T", "hello"), ("7", "", "bye")]
    assert docs[0].metadata == {"lang": "en", "n": 3}  # lists are not filterable scalars: left out


def test_fixture_corpus_reads() -> None:
    docs = read_corpus(FIXTURE_CORPUS)
    assert len(docs) >= 30 and all(d.title and d.text for d in docs)


def test_folder_of_text_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("Plain text here.\n", encoding="utf-8")
    (tmp_path / "sub" / "b.md").write_text(
        "---\nauthor: x\n---\n# The Heading\n\nSome **bold** text with a [link](http://example.org).\n\n```\ncode stays\n```\n", encoding="utf-8"
    )
    (tmp_path / ".hidden.md").write_text("# secret", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = {d.id: d for d in read_corpus(tmp_path)}
    assert set(docs) == {"a.txt", "sub/b.md"}
    md = docs["sub/b.md"]
    assert md.title == "The Heading"
    assert "bold text with a link" in md.text and "code stays" in md.text
    assert "author" not in md.text and "```" not in md.text and "http" not in md.text
    assert md.metadata == {"source": "sub/b.md", "format": "markdown"}
    assert docs["a.txt"].title == "a"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json}\n", "c.jsonl:1: not valid JSON"),
        ('{"id": "a"}\n', "c.jsonl:1: each line needs a 'text'"),
        ('{"id":"a","text":"x"}\n{"id":"a","text":"y"}\n', "occurs twice"),
        ("\n", "has no documents"),
    ],
)
def test_bad_corpus_lines_are_located(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "c.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=fragment):
        read_corpus(tmp_path / "c.jsonl")


def test_missing_corpus_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "c.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match="expected a .jsonl file"):
        read_corpus(tmp_path / "c.csv")


# ---- chunking -----------------------------------------------------------------------------------
def test_short_document_is_one_chunk_with_its_own_id() -> None:
    [c] = TextChunker(chunk_tokens=64).chunk(Document(id="d1", title="T", text="A short text.", metadata={"k": "v"}))
    assert (c.id, c.doc_id, c.title, c.text, c.metadata) == ("d1", "d1", "T", "A short text.", {"k": "v"})


def test_long_document_windows_overlap_and_fit_the_budget() -> None:
    text = " ".join(f"word{i}" for i in range(300))
    chunker = TextChunker(chunk_tokens=50, overlap=10)
    chunks = chunker.chunk(Document(id="d", title="Two Words", text=text))
    assert [c.id for c in chunks][:2] == ["d#0", "d#1"] and all(c.doc_id == "d" for c in chunks)
    for c in chunks:  # title tokens + line break + text tokens within the budget
        assert len(regex_spans(embedding_text(c.title, c.text))) <= 50
    for a, b in zip(chunks, chunks[1:]):
        shared = set(a.text.split()) & set(b.text.split())
        assert len(shared) == 10  # exactly `overlap` tokens repeated
    assert chunks[0].text.startswith("word0") and chunks[-1].text.endswith("word299")
    assert text[chunks[1].start : chunks[1].end] == chunks[1].text


def test_windows_end_at_sentence_boundaries_when_possible() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    for c in TextChunker(chunk_tokens=40, overlap=4).chunk(Document(id="d", text=text))[:-1]:
        assert c.text.endswith(".")


def test_embedder_without_tokenizer_falls_back_to_words() -> None:
    spans, max_len = spans_for_embedder(HashingEmbedder())
    assert spans is regex_spans and max_len is None


@pytest.mark.parametrize(("kw", "msg"), [({"chunk_tokens": 8}, "chunk_tokens"), ({"chunk_tokens": 64, "overlap": 40}, "overlap"), ({"overlap": -1}, "overlap")])
def test_chunker_rejects_bad_settings(kw: dict[str, int], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        TextChunker(**kw)


# ---- embedding ----------------------------------------------------------------------------------
class CountingEmbedder(HashingEmbedder):
    def __init__(self, dimension: int = 32) -> None:
        super().__init__(dimension)
        self.batches: list[int] = []

    def embed(self, texts):  # type: ignore[no-untyped-def]
        self.batches.append(len(texts))
        return super().embed(texts)


def test_embedding_goes_in_batches_without_a_bar_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    emb = CountingEmbedder()
    vecs = embed_texts(emb, [f"t{i}" for i in range(10)], batch_size=4)
    assert vecs.shape == (10, 32) and emb.batches == [4, 4, 2]
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest


def test_batches_group_similar_lengths_and_keep_the_input_order() -> None:
    texts = ["a", "a much longer text than the others", "mid length", "b", "another fairly long text"]
    emb = HashingEmbedder(dimension=32)
    assert embed_texts(emb, texts, batch_size=2).tolist() == emb.embed(texts).tolist()


def test_progress_bar_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    embed_texts(CountingEmbedder(), [f"t{i}" for i in range(10)], batch_size=4, progress=True, desc="indexing")
    assert "indexing" in capsys.readouterr().err


def test_empty_input_and_bad_batch_size() -> None:
    assert embed_texts(HashingEmbedder(dimension=16), []).shape == (0, 16)
    with pytest.raises(ValueError, match="batch_size"):
        embed_texts(HashingEmbedder(), ["x"], batch_size=0)
