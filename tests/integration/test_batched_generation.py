"""Batched generation with the bundled model: prompts of different lengths decoded as one left-padded
batch give what each gives alone (float32, greedy and beams, plain and constrained), and concurrent
``generate`` calls from threads are batched without mixing their results."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from ragkit.core.metrics import StageTrace, recording, streaming_to
from ragkit.models.base import ChatMessage
from ragkit.models.llm import LocalLLM, _Request, looping
from ragkit.query.constrain import TermConstraint
from ragkit.stages.schema.reader import GraphSchemaReader
from ragkit.stores.rdf import OxigraphStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRAPH = Path(__file__).resolve().parents[2] / "fixtures" / "library" / "graph.ttl"
PROMPTS = [
    "The capital of France is",
    "Write one sentence about the sea, the wind and the old lighthouse keeper who lived on the island:",
    "List three colours:",
]
# Each asks for a property the graph does not have, so the constraint has work to do in every row.
BAITS = [
    "Write a SPARQL query that selects ?b and ?w where ?b lib:writtenBy ?w and ?b lib:novelTitle ?t. Reply with the query only.",
    "Write a SPARQL query that selects ?b and ?t where ?b lib:novelTitle ?t and ?b lib:writtenBy ?w. Reply with the query only.",
]


def bait(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="system", content="You write SPARQL. Prefix: PREFIX lib: <http://example.org/library/>"), ChatMessage(role="user", content=text)]


def req(text: str, max_new_tokens: int = 24, beams: int = 1, constraint: TermConstraint | None = None) -> _Request:
    return _Request(text, max_new_tokens, (), 0.0, beams, constraint)


def test_a_padded_batch_gives_what_each_prompt_gives_alone(float32_llm: LocalLLM) -> None:
    alone = [float32_llm._generate_one(req(p)) for p in PROMPTS]
    batch = float32_llm._generate_many([req(p) for p in PROMPTS])
    assert [g.texts for g in batch] == [g.texts for g in alone]
    lengths = [float32_llm.count_tokens(p) for p in PROMPTS]
    assert len(set(lengths)) == len(lengths)  # the prompts really needed padding
    for g, a, n in zip(batch, alone, lengths):
        assert g.stats.tokens_in == n  # its own prompt, not the padded length
        assert g.stats.tokens_out == a.stats.tokens_out and g.stats.batch_size == len(PROMPTS)
        assert g.stats.ttft is not None and 0 < g.stats.ttft < g.stats.seconds
        assert len(g.stats.inter_token) == g.stats.tokens_out - 1
        assert g.scores == pytest.approx(a.scores, abs=1e-3)


PREAMBLE = (
    "You answer questions about a small library. The library keeps novels, poems and plays, each with its "
    "author, its publisher and the year it came out. Answer in one short sentence."
)
QUESTIONS = ["Who wrote the play?", "Which year did the first novel come out, and who published it?", "Name a poem."]


def test_prompts_that_share_a_start_compute_it_once_and_give_what_each_gives_alone(float32_llm: LocalLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The padding goes after the shared start (instructions, schema), whose keys and values are then
    computed once for the batch and kept in the prefix cache for the next batch."""
    from ragkit.models.llm import _common_prefix

    texts = [float32_llm.render([ChatMessage(role="system", content=PREAMBLE), ChatMessage(role="user", content=q)]) for q in QUESTIONS]
    ids = [float32_llm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    shared = _common_prefix(ids)
    assert shared >= LocalLLM._PREFIX_MIN and len({len(x) for x in ids}) == len(ids)  # a shared start, and padding to place
    alone = [float32_llm._generate_one(req(t)) for t in texts]
    alone_beams = [float32_llm._generate_one(req(t, beams=2)) for t in texts[:2]]
    monkeypatch.setattr(float32_llm, "prefix_cache", True)
    monkeypatch.setattr(float32_llm, "_prefixes", [])
    batch = float32_llm._generate_many([req(t) for t in texts])
    assert [g.texts for g in batch] == [g.texts for g in alone]
    for g, a, x in zip(batch, alone, ids):
        assert g.scores == pytest.approx(a.scores, abs=1e-3)
        assert g.stats.cached_tokens == shared and g.stats.tokens_in == len(x)
    assert [k for k, _ in float32_llm._prefixes] == [ids[0][:shared]]  # kept for the next batch
    again = float32_llm._generate_many([req(t) for t in texts])  # now from the prefix cache
    assert [g.texts for g in again] == [g.texts for g in alone]
    beams = float32_llm._generate_many([req(t, beams=2) for t in texts[:2]])
    assert [g.texts for g in beams] == [g.texts for g in alone_beams]


def test_a_row_ended_by_a_stop_string_counts_the_tokens_it_wrote(float32_llm: LocalLLM) -> None:
    stopped = [_Request(p, 32, (".",), 0.0, 1, None) for p in PROMPTS[:2]]
    alone = [float32_llm._generate_one(r) for r in stopped]
    batch = float32_llm._generate_many(stopped)
    assert [g.texts for g in batch] == [g.texts for g in alone]
    assert len({g.stats.tokens_out for g in alone}) == 2  # the rows end at different steps, so the shorter one is padded
    assert [g.stats.tokens_out for g in batch] == [g.stats.tokens_out for g in alone]


def test_beams_in_a_batch(float32_llm: LocalLLM) -> None:
    alone = [float32_llm._generate_one(req(p, beams=2)) for p in PROMPTS[:2]]
    batch = float32_llm._generate_many([req(p, beams=2) for p in PROMPTS[:2]])
    assert [g.texts for g in batch] == [g.texts for g in alone]
    assert all(len(g.texts) == 2 and len(g.scores) == 2 for g in batch)


def test_each_prompt_of_a_batch_keeps_its_own_constraint(float32_llm: LocalLLM) -> None:
    schema = GraphSchemaReader(store=OxigraphStore(path=str(GRAPH))).run(question="Who wrote which book?").graph_schema
    constraint = TermConstraint.for_schema(schema)
    assert constraint is not None
    texts = [float32_llm.render(bait(b)) for b in BAITS]
    free = float32_llm._generate_many([req(t, 48) for t in texts])
    assert not any(constraint.accepts(g.text) for g in free)  # the control: unconstrained, each names what the graph lacks
    alone = [float32_llm._generate_one(req(t, 48, constraint=constraint)) for t in texts]
    batch = float32_llm._generate_many([req(t, 48, constraint=constraint) for t in texts])
    assert [g.texts for g in batch] == [g.texts for g in alone]
    for g, a in zip(batch, alone):
        assert constraint.accepts(g.text), g.text
        assert g.stats.forced_tokens == a.stats.forced_tokens


def test_concurrent_calls_are_batched_and_get_their_own_results(float32_llm: LocalLLM) -> None:
    expected = {p: float32_llm.generate(p, max_new_tokens=24).text for p in PROMPTS}
    start = threading.Barrier(len(PROMPTS) * 2)
    got: dict[int, tuple[str, str, StageTrace]] = {}

    def call(i: int) -> None:
        p = PROMPTS[i % len(PROMPTS)]
        trace = StageTrace(name=f"call{i}", type="test")
        start.wait()
        with recording(trace):  # each thread's trace gets its own call's figures
            text = float32_llm.generate(p, max_new_tokens=24).text
        got[i] = (p, text, trace)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS) * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == len(threads)
    for p, text, trace in got.values():
        assert text == expected[p]
        assert trace.model_calls == 1 and trace.tokens_in == float32_llm.count_tokens(p)
    assert max(t.extra.get("batch_size", 1) for _, _, t in got.values()) > 1  # the callers that waited were decoded together


def test_concurrent_streaming_calls_are_batched_and_each_streams_its_own_text(float32_llm: LocalLLM) -> None:
    prompts = PROMPTS * 2
    expected = {p: float32_llm.generate(p, max_new_tokens=24, stop=["."]).text for p in PROMPTS}
    start = threading.Barrier(len(prompts))
    got: dict[int, tuple[str, list[str], str, StageTrace]] = {}

    def call(i: int) -> None:
        pieces: list[str] = []
        trace = StageTrace(name=f"call{i}", type="test")
        start.wait()
        with recording(trace), streaming_to(pieces.append):  # each thread's run has its own listener
            text = float32_llm.generate(prompts[i], max_new_tokens=24, stop=["."], stream=True).text
        got[i] = (prompts[i], pieces, text, trace)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == len(prompts)
    for p, pieces, text, _ in got.values():
        assert text == expected[p]
        assert "".join(pieces) == text  # streamed up to the stop string, as the final text ends there
        assert len(pieces) > 1 or p != PROMPTS[1]  # piece by piece (the long answer has several tokens)
    assert max(t.extra.get("batch_size", 1) for *_, t in got.values()) > 1  # streaming callers were decoded together


def test_the_loop_guard_ends_a_looping_row_and_leaves_the_others(float32_llm: LocalLLM) -> None:
    guarded = LocalLLM(dtype="float32", prefix_cache=False, max_repeats=3)  # shares the loaded weights
    guarded.warm_up()
    prompts = ["Write the word yes two hundred times:", PROMPTS[0]]
    free = float32_llm._generate_many([req(p, 96) for p in prompts])
    cut = guarded._generate_many([req(p, 96) for p in prompts])
    assert free[0].stats.tokens_out == 96  # the control: unguarded, the model loops to the cap
    assert 24 <= cut[0].stats.tokens_out < 96 and free[0].text.startswith(cut[0].text)
    assert looping(guarded.tokenizer(cut[0].text, add_special_tokens=False)["input_ids"], 3)
    assert cut[1].texts == free[1].texts  # a row that does not loop is untouched
    assert guarded._generate_one(req(prompts[0], 96)).text == cut[0].text  # alone, the same cut


def test_the_loop_guard_ends_looping_beams_and_leaves_the_others(float32_llm: LocalLLM) -> None:
    guarded = LocalLLM(dtype="float32", prefix_cache=False, max_repeats=3)  # shares the loaded weights
    guarded.warm_up()
    looper = float32_llm.render([ChatMessage(role="user", content="Write the word yes two hundred times.")])
    free = float32_llm._generate_one(req(looper, 96, beams=2))
    cut = guarded._generate_one(req(looper, 96, beams=2))
    assert free.stats.tokens_out == 2 * 96  # the control: unguarded, both beams loop to the cap
    assert cut.stats.tokens_out < free.stats.tokens_out and len(cut.texts) == 2
    assert free.texts[0].startswith(cut.texts[0])  # the best beam, cut where it started to loop
    assert all(looping(guarded.tokenizer(t, add_special_tokens=False)["input_ids"], 3) for t in cut.texts)
    # in a batch: the looping prompt's beams end early, the other prompt's beams are untouched
    free_many = float32_llm._generate_many([req(looper, 96, beams=2), req(PROMPTS[0], 24, beams=2)])
    cut_many = guarded._generate_many([req(looper, 96, beams=2), req(PROMPTS[0], 24, beams=2)])
    assert cut_many[0].stats.tokens_out < free_many[0].stats.tokens_out
    assert cut_many[1].texts == free_many[1].texts


def _prompt_widths(llm: LocalLLM, run: object) -> tuple[object, list[tuple[int, int]]]:
    """What ``run()`` returns, and the (rows, positions) of each forward pass it made."""
    shapes: list[tuple[int, int]] = []

    def hook(module: object, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        shapes.append(tuple(ids.shape))

    handle = llm.hf_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return run(), shapes
    finally:
        handle.remove()


def test_candidates_share_one_computation_of_their_prompt(float32_llm: LocalLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [float32_llm.render(bait(b)) for b in BAITS]
    n_in = float32_llm.count_tokens(texts[0])
    one, one_shapes = _prompt_widths(float32_llm, lambda: float32_llm._generate_one(req(texts[0], 32, beams=3)))
    many, many_shapes = _prompt_widths(float32_llm, lambda: float32_llm._generate_many([req(t, 32, beams=3) for t in texts]))
    assert one_shapes[0] == (1, n_in - 1)  # the prompt once, not once per beam
    assert one_shapes[1] == (3, 1)  # then every beam starts from its last token
    assert many_shapes[0][0] == len(texts) and many_shapes[1] == (3 * len(texts), 1)

    monkeypatch.setattr(LocalLLM, "_prefill", lambda self, *a, **k: None)  # transformers' own way: each beam computes the prompt
    plain, plain_shapes = _prompt_widths(float32_llm, lambda: float32_llm._generate_one(req(texts[0], 32, beams=3)))
    plain_many = float32_llm._generate_many([req(t, 32, beams=3) for t in texts])
    assert plain_shapes[0] == (3, n_in)  # the control: what the shared computation saves
    assert one.texts == plain.texts and one.scores == pytest.approx(plain.scores, abs=1e-3)
    assert [g.texts for g in many] == [g.texts for g in plain_many]


def test_beams_start_from_the_prefix_cache_of_the_greedy_call(float32_llm: LocalLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    text = float32_llm.render(bait(BAITS[0]))
    n_in = float32_llm.count_tokens(text)
    expected = float32_llm._generate_one(req(text, 32, beams=3))
    monkeypatch.setattr(float32_llm, "prefix_cache", True)
    monkeypatch.setattr(float32_llm, "_prefixes", [])
    float32_llm._generate_one(req(text, 32))  # a greedy call stores its prompt's cache
    beams, shapes = _prompt_widths(float32_llm, lambda: float32_llm._generate_one(req(text, 32, beams=3)))
    assert beams.stats.cached_tokens == n_in - 1
    assert shapes[0] == (3, 1)  # nothing of the prompt computed again
    assert beams.texts == expected.texts and beams.scores == pytest.approx(expected.scores, abs=1e-3)


def _as_alone(llm: LocalLLM, call: _Request, mine: Any) -> Any:
    """Checks that ``mine``, what a continuous batch gave ``call``, is what ``call`` gives decoded alone."""
    alone = llm._generate_one(call)
    assert mine.texts == alone.texts
    assert mine.scores == pytest.approx(alone.scores, abs=1e-3)
    assert mine.stats.tokens_out == alone.stats.tokens_out and mine.stats.tokens_in == alone.stats.tokens_in
    assert mine.stats.forced_tokens == alone.stats.forced_tokens
    return mine


def test_rows_that_join_and_leave_mid_flight_get_what_each_gets_alone(float32_llm: LocalLLM) -> None:
    """Continuous batching: a call joins at a later step, next to rows already decoding, and a row that
    ends leaves the others; each still gets what it gets alone (plain, constrained, stop string, loop guard)."""
    llm = LocalLLM(dtype="float32", prefix_cache=True, max_batch=3, max_repeats=3)  # shares the loaded weights
    llm.warm_up()
    schema = GraphSchemaReader(store=OxigraphStore(path=str(GRAPH))).run(question="Who wrote which book?").graph_schema
    constraint = TermConstraint.for_schema(schema)
    baits = [llm.render(bait(b)) for b in BAITS]
    calls = [
        req(baits[0], 48, constraint=constraint),
        req(PROMPTS[1], 40),
        _Request(PROMPTS[0], 40, (".",), 0.0, 1, None),
        req(baits[1], 48, constraint=constraint),  # its prompt starts as the first one's: from the prefix cache
        req("Write the word yes two hundred times:", 96),
    ]
    queue, steps, got = list(calls[1:]), [0], {}

    def admit(room: int) -> list[_Request]:
        steps[0] += 1
        return [queue.pop(0)] if queue and room and steps[0] % 4 == 0 else []  # one call every 4 steps

    _, shapes = _prompt_widths(llm, lambda: llm._decode_continuously(calls[:1], admit, lambda r, g: got.__setitem__(id(r), g)))
    rows = [n for n, width in shapes if width == 1]  # the decoding steps' row counts
    assert max(rows) == 3 and any(a < b for a, b in zip(rows, rows[1:]))  # calls joined rows in flight
    assert any(a > b > 0 for a, b in zip(rows, rows[1:]))  # and rows left while others went on
    assert got[id(calls[3])].stats.cached_tokens > 0
    for call in calls:
        mine = _as_alone(llm, call, got[id(call)])
        assert len(mine.stats.inter_token) == mine.stats.tokens_out - 1 and 0 < mine.stats.ttft < mine.stats.seconds
    assert constraint.accepts(got[id(calls[0])].text) and "." not in got[id(calls[2])].text
    assert got[id(calls[4])].stats.tokens_out < 96  # the loop guard ended it


def test_a_one_token_prompt_is_decoded_alone_next_to_a_continuous_batch(float32_llm: LocalLLM) -> None:
    # a prompt of one token leaves no cache to join a batch with: it is decoded alone, the others go on
    got: dict[int, object] = {}
    calls = [req("Hello", 8), req(PROMPTS[0], 8)]
    assert float32_llm.count_tokens("Hello") == 1
    float32_llm._decode_continuously(calls, lambda room: [], lambda r, g: got.__setitem__(id(r), g))
    for call in calls:
        assert got[id(call)].texts == float32_llm._generate_one(call).texts  # type: ignore[attr-defined]


def test_fixed_batches_when_continuous_batching_is_off(float32_llm: LocalLLM) -> None:
    fixed = LocalLLM(dtype="float32", prefix_cache=False, continuous_batching=False)
    fixed.warm_up()
    assert fixed._batcher._stream is None and float32_llm._batcher._stream is not None


def test_beam_searches_decode_in_the_continuous_batch_as_they_do_alone(float32_llm: LocalLLM) -> None:
    """Beams as rows of the continuous batch, next to single rows that join and leave: each beam search
    gives the candidates, scores and counts that transformers' beam search gives it alone."""
    llm = LocalLLM(dtype="float32", prefix_cache=True, max_batch=6, max_repeats=3)  # shares the loaded weights
    llm.warm_up()
    schema = GraphSchemaReader(store=OxigraphStore(path=str(GRAPH))).run(question="Who wrote which book?").graph_schema
    constraint = TermConstraint.for_schema(schema)
    baits = [llm.render(bait(b)) for b in BAITS]
    looper = llm.render([ChatMessage(role="user", content="Write the word yes two hundred times.")])
    calls = [
        req(baits[0], 40, beams=2, constraint=constraint),
        req(PROMPTS[1], 40),
        req(baits[1], 40, beams=3, constraint=constraint),  # from the prefix cache, next to the first
        req(looper, 64, beams=2),  # the loop guard ends its beams
        req(PROMPTS[2], 30, beams=2),
    ]
    queue, steps, got = list(calls[1:]), [0], {}

    def admit(room: int) -> list[_Request]:
        steps[0] += 1
        if queue and steps[0] % 3 == 0 and queue[0].num_return_sequences <= room:
            return [queue.pop(0)]
        return []

    _, shapes = _prompt_widths(llm, lambda: llm._decode_continuously(calls[:1], admit, lambda r, g: got.__setitem__(id(r), g)))
    rows = [n for n, width in shapes if width == 1]
    assert max(rows) > 3 and any(a > b > 0 for a, b in zip(rows, rows[1:]))  # beams joined rows in flight and left
    for call in calls:
        _as_alone(llm, call, got[id(call)])
    assert len(got[id(calls[2])].texts) == 3 and got[id(calls[2])].stats.cached_tokens > 0
    assert got[id(calls[3])].stats.tokens_out < 2 * 64
