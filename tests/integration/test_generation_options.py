"""Speculative decoding and int8 quantisation of ``local_llm`` with real models.

Greedy decoding must give the same tokens with and without speculation: the model checks every
drafted token. The checks run in float32, where a forward pass over several positions rounds like
one position at a time closely enough for the argmax not to move; in bfloat16 it can, on near ties.
Tiny random-init GPT-2 folders made here stand in for draft/target pairs (one with another vocabulary).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ragkit.core.metrics import StageTrace, recording, streaming_to
from ragkit.models.base import ChatMessage
from ragkit.models.llm import LocalLLM

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONTEXT = (
    "[p1] Lanternfish Press: Lanternfish Press is an independent publisher founded in 1998 in Port Amberly. "
    "It publishes poetry, translated fiction and field guides to the coastal birds of the north.\n"
    "[p2] The Glass Orchard: The Glass Orchard is a novel by Ada Quill, published by Lanternfish Press in 2004."
)
COPY = [
    ChatMessage(role="system", content="Answer using only the context."),
    ChatMessage(role="user", content=f"Context:\n{CONTEXT}\n\nQuestion: Repeat the passage about Lanternfish Press word for word."),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def plain() -> LocalLLM:
    llm = LocalLLM(device="cpu", dtype="float32", prefix_cache=False)
    llm.warm_up()
    return llm


def test_prompt_lookup_gives_the_greedy_tokens_and_reports_acceptance(plain: LocalLLM) -> None:
    fast = LocalLLM(device="cpu", dtype="float32", prefix_cache=False, prompt_lookup_tokens=8)
    assert fast.hf_model is plain.hf_model  # same weights: only the decoding differs
    want = plain.generate(COPY, max_new_tokens=40)
    got = fast.generate(COPY, max_new_tokens=40)
    assert got.text == want.text and got.stats.tokens_out == want.stats.tokens_out
    assert want.stats.draft_tokens == 0 and want.stats.acceptance_rate is None
    s = got.stats
    assert s.speculation == "prompt_lookup" and s.draft_tokens > 0
    assert 0 < s.accepted_tokens <= s.draft_tokens  # the answer copies the context: some drafts hold
    assert got.scores and got.scores[0] == pytest.approx(want.scores[0], abs=1e-3)


def test_speculation_streams_stops_and_stores_the_prefix_cache(plain: LocalLLM) -> None:
    fast = LocalLLM(device="cpu", dtype="float32", prompt_lookup_tokens=8)
    want = plain.generate(COPY, max_new_tokens=40, stop=["1998"])
    pieces: list[str] = []
    trace = StageTrace(name="gen", type="test")
    with streaming_to(pieces.append), recording(trace):
        got = fast.generate(COPY, max_new_tokens=40, stop=["1998"], stream=True)
    assert "1998" not in got.text and got.text == want.text
    assert got.stats.tokens_out == want.stats.tokens_out  # counted up to the stop, as plain decoding stops
    assert "".join(pieces) == got.text  # nothing past the stop string reaches the listener
    assert trace.draft_tokens == got.stats.draft_tokens > 0 and trace.to_dict()["acceptance_rate"] is not None
    # a speculative call does not start from a cached prefix (see LocalLLM.generate), but stores its
    # prompt's cache, which plain decoding then reuses with the same result
    again = fast.generate(COPY, max_new_tokens=40, stop=["1998"])
    assert again.stats.cached_tokens == 0 and again.text == want.text
    reuse = LocalLLM(device="cpu", dtype="float32")
    reuse._prefixes = list(fast._prefixes)
    third = reuse.generate(COPY, max_new_tokens=40, stop=["1998"])
    assert third.stats.cached_tokens > 0 and third.text == want.text


def test_beams_ignore_speculation() -> None:
    fast = LocalLLM(device="cpu", dtype="float32", prompt_lookup_tokens=8)
    gen = fast.generate("The three primary colours are", max_new_tokens=5, num_return_sequences=2)
    assert len(gen.texts) == 2 and gen.stats.draft_tokens == 0 and gen.stats.speculation is None


def test_a_draft_model_gives_the_greedy_tokens(plain: LocalLLM) -> None:
    # The bundled model drafting for itself: every draft should hold, which checks the counting.
    spec = LocalLLM(device="cpu", dtype="float32", prefix_cache=False, draft_model="smollm2", draft_tokens=4)
    want = plain.generate(COPY, max_new_tokens=24)
    got = spec.generate(COPY, max_new_tokens=24)
    assert got.text == want.text
    assert got.stats.speculation == "draft_model" and got.stats.draft_tokens > 0
    assert got.stats.acceptance_rate is not None and got.stats.acceptance_rate > 0.8
    # the draft length is set on the draft's own copy of the generation config, not on the shared model
    assert spec._draft.generation_config.num_assistant_tokens == 4 != plain.hf_model.generation_config.num_assistant_tokens


# ---- tiny draft/target pairs ---------------------------------------------------------------------
WORDS = "who where what is are was the a of in by wrote lives ann bob rome oslo glass orchard ada quill press founded year . ,".split()


def _tiny_lm(folder: Path, words: list[str], seed: int) -> Path:
    import torch
    from transformers import BertTokenizerFast, GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    assert tok.unk_token_id not in tok("ann lives in rome", add_special_tokens=False)["input_ids"]
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny-pair")
    return {
        "target": _tiny_lm(base / "target", WORDS, seed=0),
        "draft": _tiny_lm(base / "draft", WORDS, seed=1),
        "other_vocab": _tiny_lm(base / "other", [*reversed(WORDS), "river", "tide"], seed=2),
        "same_size_other_vocab": _tiny_lm(base / "shuffled", list(reversed(WORDS)), seed=3),
    }


@pytest.mark.parametrize("draft", ["draft", "other_vocab"])
def test_tiny_draft_models_of_either_vocabulary_keep_greedy_tokens(tiny: dict[str, Path], draft: str) -> None:
    prompt = "ann lives in rome . bob lives in oslo . ada quill wrote the glass orchard . who wrote the glass orchard ?"
    plain = LocalLLM(model=str(tiny["target"]), device="cpu", dtype="float32", prefix_cache=False)
    spec = LocalLLM(model=str(tiny["target"]), device="cpu", dtype="float32", prefix_cache=False, draft_model=str(tiny[draft]), draft_tokens=3)
    want = plain.generate(prompt, max_new_tokens=20)
    got = spec.generate(prompt, max_new_tokens=20)
    assert got.text == want.text and got.stats.tokens_out == want.stats.tokens_out
    assert spec._same_vocab is (draft == "draft")
    assert got.stats.draft_tokens > 0 and 0 <= got.stats.accepted_tokens <= got.stats.draft_tokens


def test_a_draft_vocabulary_transformers_cannot_translate_is_refused(tiny: dict[str, Path]) -> None:
    from ragkit.errors import ModelError

    spec = LocalLLM(model=str(tiny["target"]), device="cpu", dtype="float32", draft_model=str(tiny["same_size_other_vocab"]))
    with pytest.raises(ModelError, match="same size"):
        spec.warm_up()


def test_prompt_lookup_on_a_tiny_model_keeps_greedy_tokens(tiny: dict[str, Path]) -> None:
    prompt = "ann lives in rome . " * 6
    plain = LocalLLM(model=str(tiny["target"]), device="cpu", dtype="float32", prefix_cache=False)
    spec = LocalLLM(model=str(tiny["target"]), device="cpu", dtype="float32", prefix_cache=False, prompt_lookup_tokens=5, prompt_lookup_ngram=2)
    want, got = plain.generate(prompt, max_new_tokens=30), spec.generate(prompt, max_new_tokens=30)
    assert got.text == want.text and got.stats.draft_tokens > 0


# ---- int8 ----------------------------------------------------------------------------------------
def test_int8_quantises_every_linear_layer_and_still_answers() -> None:
    import torch

    q = LocalLLM(device="cpu", quantize="int8")
    q.warm_up()
    assert q.dtype_used == "float32"
    linears = [m for m in q.hf_model.modules() if type(m) is torch.nn.Linear]
    quantised = [m for m in q.hf_model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert not linears and quantised
    assert q.hf_model is not LocalLLM(device="cpu", dtype="float32").hf_model  # its own entry in the model cache
    gen = q.generate([ChatMessage(role="user", content="What is the capital of France? Answer in one word.")], max_new_tokens=8)
    assert "Paris" in gen.text


def test_int8_on_a_gpu_device_is_refused() -> None:
    from ragkit.errors import ModelError

    with pytest.raises(ModelError, match="set device: cpu"):
        LocalLLM(device="cuda", quantize="int8").warm_up()
