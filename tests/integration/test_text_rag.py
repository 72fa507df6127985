"""Text RAG with the real bundled models: MiniLM for retrieval and reranking, SmolLM2 for answers.

Runs on the fixture corpus (36 passages), so the index builds in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ragkit.stages.rerankers.confidence  # noqa: F401  (registers the stage types until they are built-ins)
import ragkit.stages.retrievers.text  # noqa: F401
import ragkit.stores.vector  # noqa: F401
from ragkit import Pipeline
from ragkit.eval.textqa import evaluate_textqa, read_textqa
from ragkit.stages.prompts.builder import ABSTAIN_NOTICE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "fixtures" / "text"


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    import os

    old = os.environ.get("RAGKIT_CACHE_DIR")
    # Converted GGUF models are reused from the normal cache; only indexes go to a private folder.
    from ragkit.models.llm import cache_dir

    models = cache_dir() / "models"
    private = tmp_path_factory.mktemp("cache")
    if models.is_dir():
        (private / "models").symlink_to(models, target_is_directory=True)
    os.environ["RAGKIT_CACHE_DIR"] = str(private)
    yield
    if old is None:
        os.environ.pop("RAGKIT_CACHE_DIR", None)
    else:
        os.environ["RAGKIT_CACHE_DIR"] = old


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    # Two cores shared with other test workers: one torch thread each avoids oversubscription,
    # which makes every model call several times slower.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    from ragkit.models.embedder import SentenceEmbedder

    emb = SentenceEmbedder(device="cpu")
    emb.warm_up()
    return emb


@pytest.fixture(scope="module")
def index(embedder, tmp_path_factory):  # type: ignore[no-untyped-def]
    from ragkit.stores.vector import VectorIndex

    idx = VectorIndex(embedder=embedder, corpus=str(FIXTURE / "library_corpus.jsonl"), path=str(tmp_path_factory.mktemp("idx") / "library"))
    idx.warm_up()
    return idx


def test_minilm_index_chunks_within_the_model_limit_and_reopens_mapped(index, embedder) -> None:  # type: ignore[no-untyped-def]
    from ragkit.ingest import Document
    from ragkit.stores.vector import VectorIndex

    assert len(index) == 36 and index.kind_used == "flat"
    tok = embedder.st_model.tokenizer
    long = Document(id="long", title="A long note", text=" ".join(f"Sentence {i} about the library of Vesk." for i in range(120)))
    assert index.add([long]) > 1
    for c in index.chunks():
        assert len(tok(f"{c.title}\n{c.text}")["input_ids"]) <= embedder.st_model.max_seq_length
    index.delete(["long"])
    again = VectorIndex(embedder=embedder, path=index.path)
    assert again.memory_mapped and len(again) == 36


def test_hybrid_retrieval_and_reranking_find_the_supporting_passages(index, embedder) -> None:  # type: ignore[no-untyped-def]
    from ragkit.eval.textqa import recall_at_k
    from ragkit.stages.rerankers.confidence import ConfidenceReranker
    from ragkit.stages.retrievers.text import HybridRetriever

    hybrid = HybridRetriever(index=index, top_k=20)
    rerank = ConfidenceReranker(embedder=embedder, top_k=4)
    answerable = [q for q in read_textqa(FIXTURE) if q["supporting"]]
    recalls = []
    for q in answerable:
        out = rerank.run(question=q["question"], passages=hybrid.run(question=q["question"]).passages)
        recalls.append(recall_at_k([p.doc_id for p in out.passages], q["supporting"], 4))
        assert out.passages[0].doc_id in q["supporting"]
    assert sum(recalls) / len(recalls) >= 0.85


def test_query_likelihood_with_smollm2_prefers_the_relevant_passage(index) -> None:  # type: ignore[no-untyped-def]
    from ragkit.models.llm import LocalLLM
    from ragkit.stages.rerankers.confidence import ConfidenceReranker

    passages = [index.get(i) for i in ("lib-p30", "lib-p13", "lib-p05", "lib-p02")]
    from ragkit.stores.vector import Passage

    ps = [Passage(id=c.id, title=c.title, text=c.text, doc_id=c.doc_id) for c in passages if c is not None]
    rr = ConfidenceReranker(backend="query_likelihood", llm=LocalLLM(device="cpu"), top_k=4, coverage_weight=0, redundancy_weight=0, bridge_weight=0)
    out = rr.run(question="How many pages does The Weaver's Almanac have?", passages=ps)
    assert out.passages[0].id == "lib-p13"


def _text_rag(**rerank: object) -> Pipeline:
    import yaml

    spec = yaml.safe_load((ROOT / "pipelines" / "text_rag.yaml").read_text())
    spec["resources"]["index"]["corpus"] = str(FIXTURE / "library_corpus.jsonl")
    spec["resources"]["llm"]["threads"] = 1
    spec["stages"][1].update(rerank)
    spec["stages"][3]["max_new_tokens"] = 32
    return Pipeline.from_dict(spec)


def test_text_rag_pipeline_answers_with_cited_passages_and_streams() -> None:
    pipe = _text_rag()
    pieces: list[str] = []
    result = pipe.run(question="In which year was Lanternfish Press founded?", on_token=pieces.append)
    assert result["passages"][0].id == "lib-p01" and not result["abstained"]
    assert result["answer"] and "".join(pieces).strip() == result["answer"]
    prompt = result.stage_outputs["prompt"].prompt  # type: ignore[attr-defined]
    assert prompt.context_ids[0] == "p1" and prompt.sources["p1"] == "lib-p01"
    gen = result.trace.stage("generate")
    assert gen.tokens_out > 0 and gen.ttft is not None and result.trace.ttft is not None


def test_text_rag_pipeline_abstains_and_says_so() -> None:
    pipe = _text_rag(abstain_threshold=0.99)
    pieces: list[str] = []
    result = pipe.run(question="What is the favourite food of Osric Penhallow?", on_token=pieces.append)
    assert result["abstained"] and result["answer"] == ABSTAIN_NOTICE == "".join(pieces)
    assert result.trace.stage("generate").tokens_out == 0


def test_evaluate_textqa_with_the_real_pipeline(tmp_path: Path) -> None:
    summary = evaluate_textqa(_text_rag(), FIXTURE, tmp_path / "preds.jsonl", limit=2)
    lines = [json.loads(x) for x in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(x["retrieved"] and x["tokens"]["in"] > 0 for x in lines)
    assert summary["recall@5"] >= 0.8


def test_hybrid_rag_pipeline_fuses_graph_rows_and_passages() -> None:
    import yaml

    spec = yaml.safe_load((ROOT / "pipelines" / "hybrid_rag.yaml").read_text())
    for res in spec["resources"].values():
        for key in ("path", "corpus"):
            if key in res:
                res[key] = str(ROOT / res[key])
    spec["resources"]["llm"]["threads"] = 1
    stages = {s["name"]: s for s in spec["stages"]}
    stages["querygen"]["num_candidates"] = 1  # one candidate query keeps this test quick
    stages["generate"]["max_new_tokens"] = 32
    pipe = Pipeline.from_dict(spec)
    result = pipe.run(question="Who wrote Cold Water Gospel?")
    kinds = [i.kind for i in result.stage_outputs["rerank"].items]  # type: ignore[attr-defined]
    assert "passage" in kinds and result["answer"]
    assert any(p.doc_id in ("lib-p25", "lib-p24") for p in result["passages"])
    if "graph" in kinds:  # the graph query is generated by a 135M model: when it works, its rows are in the prompt
        assert result.stage_outputs["prompt"].prompt.context_ids[0] == "g1"  # type: ignore[attr-defined]


# ---- tiny local models made here: a causal LM for query likelihood, a cross-encoder trained on pairs ----
TINY_WORDS = (
    "who where what which when is are was the a of in by wrote lives live born city river book author press founded "
    "year ann bob rome oslo glass orchard ada quill lantern fish port amberly published novel poem garden tide "
    "? . , passage please write question based on this"
).split()
TRAIN_PAIRS = [
    ("who wrote the glass orchard ?", "ada quill wrote the glass orchard .", 1),
    ("who wrote the glass orchard ?", "bob lives in oslo .", 0),
    ("where does ann live ?", "ann lives in rome .", 1),
    ("where does ann live ?", "the lantern fish press was founded in port amberly .", 0),
    ("where does bob live ?", "bob lives in oslo .", 1),
    ("where does bob live ?", "ada quill wrote the glass orchard .", 0),
    ("where was lantern fish press founded ?", "the lantern fish press was founded in port amberly .", 1),
    ("where was lantern fish press founded ?", "ann lives in rome .", 0),
]
TINY_PASSAGES = ["bob lives in oslo .", "ann lives in rome .", "ann lives in rome , ann lives in rome .", "the glass orchard ."]


def tiny_tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(TINY_WORDS)]) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    # transformers 5 ignores the old 'vocab_file' argument and builds a 5-token vocabulary in which
    # every word is [UNK]: a model trained on that learns lengths, not words.
    assert tok.unk_token_id not in tok("ann lives in rome", add_special_tokens=False)["input_ids"]
    return tok


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init one-layer GPT-2 with a word-level tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok = tiny_tokenizer(folder)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=1, n_head=2, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-encoder trained here: a random-init two-layer BERT fitted on a few labelled pairs."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    tok = tiny_tokenizer(folder)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128, num_labels=1
    )
    model = BertForSequenceClassification(cfg)
    enc = tok([q for q, _, _ in TRAIN_PAIRS], [p for _, p, _ in TRAIN_PAIRS], padding=True, return_tensors="pt")
    labels = torch.tensor([float(y) for _, _, y in TRAIN_PAIRS])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(80):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**enc).logits[:, 0], labels)
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_hf_tokenizer_spans_count_word_pieces(tmp_path: Path) -> None:
    from ragkit.ingest import Document, TextChunker
    from ragkit.ingest.chunking import hf_spans

    tok = tiny_tokenizer(tmp_path / "tok")
    assert hf_spans(tok)("ann lives in rome") == [(0, 3), (4, 9), (10, 12), (13, 17)]
    chunks = TextChunker(chunk_tokens=16, overlap=2, spans=hf_spans(tok)).chunk(Document(id="d", text=" ".join(["ann lives in rome ."] * 20)))
    assert len(chunks) > 1 and all(len(tok(c.text, add_special_tokens=False)["input_ids"]) <= 16 for c in chunks)


def test_query_likelihood_with_a_tiny_local_model(tiny_causal_lm: Path) -> None:
    from ragkit.models.llm import LocalLLM
    from ragkit.stages.rerankers.confidence import ConfidenceReranker

    llm = LocalLLM(model=str(tiny_causal_lm), device="cpu", dtype="float32", threads=1)
    r = ConfidenceReranker(backend="query_likelihood", llm=llm, top_k=4, batch_size=3)
    scores = r.scorer.score("where does ann live ?", TINY_PASSAGES)
    assert scores.shape == (4,) and (scores < 0).all()
    # batching must not change a passage's score (right padding is masked out)
    single = [float(r.scorer.score("where does ann live ?", [t])[0]) for t in TINY_PASSAGES]
    assert scores.tolist() == pytest.approx(single, abs=1e-4)
    from ragkit.stores.vector import Passage

    out = r.run(question="where does ann live ?", passages=[Passage(id=str(i), text=t) for i, t in enumerate(TINY_PASSAGES)])
    assert len(out.passages) == 4 and all(0 < p.score < 1 for p in out.passages)


def test_cross_encoder_trained_here_ranks_the_relevant_passage_first(tiny_cross_encoder: Path, tmp_path: Path) -> None:
    from ragkit.stages.rerankers.calibration import Calibrator
    from ragkit.stages.rerankers.confidence import ConfidenceReranker
    from ragkit.stores.vector import Passage

    r = ConfidenceReranker(backend="cross_encoder", model=str(tiny_cross_encoder), top_k=2, coverage_weight=0, redundancy_weight=0, bridge_weight=0)
    passages = [Passage(id="rel", text="ann lives in rome ."), Passage(id="irr", text="the lantern fish press was founded in port amberly .")]
    out = r.run(question="where does ann live ?", passages=passages)
    assert [p.id for p in out.passages] == ["rel", "irr"] and out.passages[0].score > 0.5 > out.passages[1].score
    # calibrate on the labelled pairs, store the artifact, and rerank with it
    raw = [float(r.scorer.score(q, [p])[0]) for q, p, _ in TRAIN_PAIRS]
    cal = Calibrator.fit(raw, [y for _, _, y in TRAIN_PAIRS], backend="cross_encoder").save(tmp_path / "ce.json")
    calibrated = ConfidenceReranker(backend="cross_encoder", model=str(tiny_cross_encoder), calibration=str(cal))
    assert calibrated.run(question="where does ann live ?", passages=passages).passages[0].id == "rel"
