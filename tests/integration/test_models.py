"""The real bundled models: SmolLM2-135M-Instruct (GGUF, converted once) and all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from ragkit import Pipeline
from ragkit.core.metrics import StageTrace, recording, streaming_to
from ragkit.models.base import ChatMessage
from ragkit.models.embedder import SentenceEmbedder
from ragkit.models.llm import LocalLLM, cache_keyword, choose_device, resolve_model_path, returned_cache

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def llm() -> LocalLLM:
    model = LocalLLM(device="cpu")
    model.warm_up()
    return model


def test_bundled_gguf_converts_once_into_a_cached_hf_folder(llm: LocalLLM) -> None:
    path = resolve_model_path(None)
    assert (path / "config.json").is_file()
    assert resolve_model_path(None) == path  # second call: the cache, no new conversion
    assert llm.path == path


def test_device_and_dtype_are_chosen_for_this_machine() -> None:
    device, dtype = choose_device()
    assert device in ("cpu", "cuda")
    assert dtype in ("float32", "bfloat16", "float16")


def test_generation_is_greedy_and_reproducible(llm: LocalLLM) -> None:
    msgs = [ChatMessage(role="user", content="What is the capital of France? Answer in one word.")]
    a = llm.generate(msgs, max_new_tokens=8)
    b = llm.generate(msgs, max_new_tokens=8)
    assert a.text == b.text
    assert "Paris" in a.text
    assert a.stats.tokens_in == llm.count_tokens(llm.render(msgs))
    assert 0 < a.stats.tokens_out <= 9


def test_streaming_sends_pieces_that_join_to_the_text_and_records_ttft_tpot(llm: LocalLLM) -> None:
    pieces: list[str] = []
    trace = StageTrace(name="gen", type="test")
    with streaming_to(pieces.append), recording(trace):
        gen = llm.generate("Count: one, two, three,", max_new_tokens=12, stream=True)
    assert len(pieces) > 1
    assert "".join(pieces).strip() == gen.text.strip()
    assert trace.tokens_out == gen.stats.tokens_out
    assert trace.ttft is not None and 0 < trace.ttft <= trace.seconds
    assert trace.tpot is not None and trace.tpot > 0


def test_beam_candidates_are_distinct_and_scored(llm: LocalLLM) -> None:
    gen = llm.generate("The three primary colours are", max_new_tokens=6, num_return_sequences=3)
    assert len(gen.texts) == 3
    assert len(set(gen.texts)) == 3
    assert len(gen.scores) == 3 and all(s <= 0 for s in gen.scores)


def test_score_is_the_mean_log_probability_of_the_continuation_alone_or_in_a_padded_batch() -> None:
    import torch

    llm = LocalLLM(device="cpu", dtype="float32")
    msgs = [ChatMessage(role="user", content="What is the capital of France? Answer in one word.")]
    longer = [ChatMessage(role="user", content="Name the city on the Seine that is the capital of France, in one word.")]
    # by hand: the template's text, then the continuation's tokens
    head = llm.tokenizer(llm.render(msgs), add_special_tokens=False)["input_ids"]
    tail = llm.tokenizer("Paris", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = llm.hf_model(input_ids=torch.tensor([head + tail])).logits[0].float()
    want = torch.log_softmax(logits[len(head) - 1 : -1], -1).gather(1, torch.tensor(tail)[:, None]).mean().item()
    trace = StageTrace(name="review", type="test")
    with recording(trace):
        alone = llm.score([msgs], "Paris")
        batch = llm.score([longer, msgs], "Paris")  # msgs right-padded to the longer prompt
    assert alone[0] == pytest.approx(want, abs=1e-4) and batch[1] == pytest.approx(want, abs=1e-4)
    assert trace.model_calls == 2 and trace.tokens_in == 2 * (len(head) + len(tail)) + llm.count_tokens(llm.render(longer)) + len(tail)
    # a likely reply scores above an unlikely one
    assert llm.score([msgs], "Paris")[0] > llm.score([msgs], "Potato salad")[0]
    assert llm.score([], "Paris") == []
    with pytest.raises(ValueError, match="continuation is empty"):
        llm.score([msgs], "")


def test_stop_strings_end_generation(llm: LocalLLM) -> None:
    gen = llm.generate("List: apple, banana, cherry, date, elderberry, fig,", max_new_tokens=30, stop=[","])
    assert "," not in gen.text


def test_one_loaded_model_per_configuration_is_shared() -> None:
    a, b = LocalLLM(device="cpu"), LocalLLM(device="cpu")
    a.warm_up()
    b.warm_up()
    assert a.hf_model is b.hf_model


def _step_logits(llm: LocalLLM, prompts: list[str], steps: int, feed: list[object] | None = None) -> tuple[object, list[object]]:
    """The logits of ``steps`` decoding steps over a left-padded batch of ``prompts`` (no mask for one
    prompt), fed ``feed``'s tokens (or the greedy ones), and the tokens fed."""
    import torch

    enc = llm.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    model, mask = llm.hf_model, enc["attention_mask"]
    kw = cache_keyword(model)
    logits, fed = [], []
    with torch.inference_mode():
        out = model(**enc, use_cache=True)
        cache, pos = returned_cache(out), mask.sum(1, keepdim=True) - 1
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for step in range(steps):
            nxt = feed[step] if feed is not None else nxt
            fed.append(nxt)
            mask, pos = torch.cat([mask, torch.ones_like(nxt)], dim=1), pos + 1
            out = model(input_ids=nxt, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: cache})
            logits.append(out.logits[:, -1].float())
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return torch.stack(logits), fed


def test_decoding_attention_in_bf16_is_transformers_own_or_as_close_to_float32() -> None:
    """On a CPU in bf16, ``attention="auto"`` decodes a lone prompt's steps by the path transformers
    takes for a padded batch (ragkit.models.attention): as far from float32 as transformers' own path for
    it, and a padded batch exactly as transformers does."""
    import torch

    fast = LocalLLM(device="cpu", dtype="bfloat16")
    sdpa = LocalLLM(device="cpu", dtype="bfloat16", attention="sdpa")
    exact = LocalLLM(device="cpu", dtype="float32")
    for m in (fast, sdpa, exact):
        m.warm_up()
    assert fast.hf_model.config._attn_implementation == "ragkit_decode"
    assert sdpa.hf_model.config._attn_implementation == "sdpa"
    questions = ["Name three colours.", "What is the capital of France? Answer in one sentence, with detail.", "Count to five."]
    prompts = [exact.render([ChatMessage(role="user", content=q)]) for q in questions]
    off = {"fast": 0.0, "sdpa": 0.0}
    for prompt in prompts:  # one prompt: no mask
        reference, fed = _step_logits(exact, [prompt], 6)
        for name, m in (("fast", fast), ("sdpa", sdpa)):
            off[name] += float((_step_logits(m, [prompt], 6, feed=fed)[0] - reference).abs().mean())
    # bf16 itself is about 0.15 off on average; every query head reading one key head is several times that
    assert 0 < off["fast"] <= 1.25 * off["sdpa"], off
    _, fed = _step_logits(exact, prompts, 4)
    assert torch.equal(_step_logits(fast, prompts, 4, feed=fed)[0], _step_logits(sdpa, prompts, 4, feed=fed)[0])


def test_a_missing_model_path_says_what_to_do(tmp_path) -> None:
    from ragkit.errors import ModelError

    with pytest.raises(ModelError, match="local Hugging Face folder"):
        LocalLLM(model=str(tmp_path / "nope")).warm_up()


def test_embedder_gives_unit_vectors_that_rank_paraphrases_first() -> None:
    emb = SentenceEmbedder(device="cpu")
    vecs = emb.embed(["Who wrote the novel?", "Which author wrote the book?", "The river floods in spring."])
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]


def test_two_stages_naming_one_llm_resource_share_one_instance() -> None:
    pipe = Pipeline.from_yaml("pipelines/kgqa_sparql.yaml")
    assert pipe.stages["querygen"].llm is pipe.stages["generate"].llm is pipe.stages["prompt"].llm
