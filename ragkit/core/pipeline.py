"""Pipelines: stages joined output-to-input, type-checked when joined, run in topological order.

Example:
    >>> from ragkit import Pipeline
    >>> from ragkit.testing import EchoStage, UpperStage
    >>> pipe = Pipeline()
    >>> _ = pipe.add_stage("echo", EchoStage()).add_stage("upper", UpperStage())
    >>> _ = pipe.connect("echo.text", "upper.text").add_input("text", "echo.text").add_output("out", "upper.text")
    >>> pipe.run(text="hi")["out"]
    'HI'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragkit.core.cache import CacheSpec, check_spec
from ragkit.core.component import Component, Resource, is_compatible, type_name
from ragkit.core.metrics import StageTrace, Trace, recording, streaming_to
from ragkit.core.stage import Output, Stage
from ragkit.errors import (
    ConfigError,
    ConfigIssue,
    ConnectionMismatchError,
    CycleError,
    InputError,
    PipelineError,
    StageFailedError,
    UserError,
)

logger = logging.getLogger(__name__)

__all__ = ["Pipeline", "PipelineResult", "Connection", "SPEC_VERSION"]

SPEC_VERSION = 1
"""The pipeline-file format version this ragkit reads and writes."""


@dataclass(frozen=True)
class Connection:
    """``src_stage.src_field -> dst_stage.dst_field``."""

    src_stage: str
    src_field: str
    dst_stage: str
    dst_field: str

    def __str__(self) -> str:
        return f"{self.src_stage}.{self.src_field} -> {self.dst_stage}.{self.dst_field}"


@dataclass
class PipelineResult:
    """What :meth:`Pipeline.run` returns: the declared outputs, every stage's output, and the trace."""

    outputs: dict[str, Any]
    stage_outputs: dict[str, Output]
    trace: Trace = field(default_factory=Trace)

    def __getitem__(self, key: str) -> Any:
        return self.outputs[key]


def _split_ref(ref: str, what: str) -> tuple[str, str]:
    parts = ref.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{what} {ref!r} is not of the form 'stage.field' (write e.g. 'generate.answer')")
    return parts[0], parts[1]


class Pipeline:
    """A directed acyclic graph of named stages sharing named resources.

    Args:
        name: optional name, kept in the pipeline file.
        description: optional one-line description, kept in the pipeline file.
    """

    def __init__(self, name: str | None = None, description: str | None = None) -> None:
        self.name = name
        self.description = description
        self.stages: dict[str, Stage] = {}
        self.resources: dict[str, Resource] = {}
        self.connections: list[Connection] = []
        self.inputs: dict[str, list[tuple[str, str]]] = {}
        self.outputs: dict[str, tuple[str, str]] = {}
        # Where each piece came from in a pipeline file, so late checks can point at a line.
        self.locations: dict[tuple[str, ...], ConfigIssue] = {}
        self.cache: CacheSpec | None = None
        """The ``cache:`` block (see :mod:`ragkit.core.cache`); None runs every stage every time."""

    # ---- building -----------------------------------------------------------------------------
    def add_stage(self, name: str, stage: Stage) -> Pipeline:
        """Add ``stage`` under ``name`` (unique, letters, digits and underscores)."""
        if not isinstance(stage, Stage):
            raise ConfigError(f"stage '{name}': {type(stage).__name__} is not a ragkit Stage (subclass ragkit.Stage)")
        if not name or not name.replace("_", "").replace("-", "").isalnum() or "." in name:
            raise ConfigError(f"stage name {name!r} is not valid (use letters, digits, '_' or '-' only)")
        if name in self.stages:
            raise ConfigError(f"duplicate stage name '{name}' (each stage needs its own name)")
        self.stages[name] = stage
        return self

    def add_resource(self, name: str, resource: Resource) -> Pipeline:
        """Give ``resource`` a name, so pipeline files refer to it by that name."""
        if name in self.resources and self.resources[name] is not resource:
            raise ConfigError(f"duplicate resource name '{name}'")
        self.resources[name] = resource
        return self

    def connect(self, src: str, dst: str) -> Pipeline:
        """Join ``src`` (``stage.output_field``) to ``dst`` (``stage.input``), checking that the types fit."""
        s_stage, s_field = _split_ref(src, "connection source")
        d_stage, d_field = _split_ref(dst, "connection target")
        for st in (s_stage, d_stage):
            if st not in self.stages:
                raise ConnectionMismatchError(f"connection {src} -> {dst}: no stage named '{st}' (stages: {_names(self.stages)})")
        outs = type(self.stages[s_stage]).output_sockets()
        ins = type(self.stages[d_stage]).input_sockets()
        if s_field not in outs:
            raise ConnectionMismatchError(f"connection {src} -> {dst}: stage '{s_stage}' has no output '{s_field}'{_hint(s_field, outs, 'outputs')}")
        if d_field not in ins:
            raise ConnectionMismatchError(f"connection {src} -> {dst}: stage '{d_stage}' has no input '{d_field}'{_hint(d_field, ins, 'inputs')}")
        s_type, d_type = outs[s_field].type, ins[d_field].type
        if not is_compatible(s_type, d_type):
            raise ConnectionMismatchError(
                f"connection {src} -> {dst}: type mismatch, {s_stage}.{s_field} is {type_name(s_type)} "
                f"but {d_stage}.{d_field} takes {type_name(d_type)} (connect an output of type {type_name(d_type)})"
            )
        for c in self.connections:
            if (c.dst_stage, c.dst_field) == (d_stage, d_field):
                raise ConnectionMismatchError(f"connection {src} -> {dst}: {dst} is already fed by {c} (an input takes one source)")
        fed_by = self._input_feeding(d_stage, d_field)
        if fed_by is not None:
            raise ConnectionMismatchError(
                f"connection {src} -> {dst}: {d_stage}.{d_field} is already fed by pipeline input '{fed_by}' (an input takes one source)"
            )
        if d_stage == s_stage or self._reaches(d_stage, s_stage):
            raise CycleError(
                f"connection {src} -> {dst} closes a cycle ({d_stage} already feeds {s_stage}); "
                "pipelines must be acyclic (put a bounded loop inside one stage instead)"
            )
        self.connections.append(Connection(s_stage, s_field, d_stage, d_field))
        return self

    def add_input(self, name: str, *targets: str) -> Pipeline:
        """Declare a pipeline input ``name`` that feeds each ``stage.input`` in ``targets``."""
        if not targets:
            raise ConfigError(f"input '{name}' feeds no stage (list at least one 'stage.input')")
        parsed = []
        for t in targets:
            st, f = _split_ref(t, f"input '{name}' target")
            if st not in self.stages:
                raise ConfigError(f"input '{name}': no stage named '{st}' (stages: {_names(self.stages)})")
            ins = type(self.stages[st]).input_sockets()
            if f not in ins:
                raise ConfigError(f"input '{name}': stage '{st}' has no input '{f}'{_hint(f, ins, 'inputs')}")
            for c in self.connections:
                if (c.dst_stage, c.dst_field) == (st, f):
                    raise ConfigError(f"input '{name}': {st}.{f} is already fed by connection {c} (an input takes one source)")
            fed_by = self._input_feeding(st, f)
            if fed_by is not None or (st, f) in parsed:
                raise ConfigError(f"input '{name}': {st}.{f} is already fed by pipeline input '{fed_by or name}' (an input takes one source)")
            parsed.append((st, f))
        self.inputs.setdefault(name, []).extend(parsed)
        return self

    def add_output(self, name: str, source: str) -> Pipeline:
        """Declare a pipeline output ``name`` taken from ``stage.output_field``."""
        st, f = _split_ref(source, f"output '{name}' source")
        if st not in self.stages:
            raise ConfigError(f"output '{name}': no stage named '{st}' (stages: {_names(self.stages)})")
        outs = type(self.stages[st]).output_sockets()
        if f not in outs:
            raise ConfigError(f"output '{name}': stage '{st}' has no output '{f}'{_hint(f, outs, 'outputs')}")
        self.outputs[name] = (st, f)
        return self

    def set_cache(
        self, resource: str | Resource | None, *, question: str = "question", answer: bool = True, query_stage: str | None = None
    ) -> Pipeline:
        """Consult a cache resource before running (see :mod:`ragkit.core.cache`); None removes it.

        ``resource`` is a declared resource's name or the resource itself (added as ``cache``).
        """
        if resource is None:
            self.cache = None
            return self
        if isinstance(resource, Resource):
            name = next((n for n, r in self.resources.items() if r is resource), None)
            if name is None:
                name = "cache" if "cache" not in self.resources else f"cache_{len(self.resources)}"
                self.add_resource(name, resource)
            resource = name
        spec = CacheSpec(resource=resource, question=question, answer=answer, query_stage=query_stage)
        problems = check_spec(self, spec)
        if problems:
            raise ConfigError([ConfigIssue(m) for _, m in problems])
        self.cache = spec
        return self

    # ---- checking -----------------------------------------------------------------------------
    def _input_feeding(self, stage: str, field: str) -> str | None:
        return next((n for n, ts in self.inputs.items() if (stage, field) in ts), None)

    def _reaches(self, start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            n = todo.pop()
            if n == goal:
                return True
            if n in seen:
                continue
            seen.add(n)
            todo.extend(c.dst_stage for c in self.connections if c.src_stage == n)
        return False

    def order(self) -> list[str]:
        """Stage names in a topological order (ties kept in insertion order)."""
        edges = {(c.src_stage, c.dst_stage) for c in self.connections}
        indeg = {n: 0 for n in self.stages}
        for _, d in edges:
            indeg[d] += 1
        ready = [n for n in self.stages if indeg[n] == 0]
        out: list[str] = []
        while ready:
            n = ready.pop(0)
            out.append(n)
            for d in self.stages:  # stage order, so ties keep insertion order
                if (n, d) in edges:
                    indeg[d] -= 1
                    if indeg[d] == 0:
                        ready.append(d)
        if len(out) != len(self.stages):  # connect() prevents this; kept as a guard for hand-edited state
            raise CycleError(f"stages {sorted(set(self.stages) - set(out))} form a cycle")
        return out

    def validate(self) -> None:
        """Check that every required stage input has a source. Raises :class:`ConfigError` listing all gaps."""
        fed = {(c.dst_stage, c.dst_field) for c in self.connections}
        fed |= {t for targets in self.inputs.values() for t in targets}
        issues = []
        for name, stage in self.stages.items():
            for sock in type(stage).input_sockets().values():
                if sock.required and (name, sock.name) not in fed:
                    loc = self.locations.get(("stage", name), ConfigIssue(""))
                    issues.append(
                        ConfigIssue(
                            f"stage '{name}': required input '{sock.name}' ({type_name(sock.type)}) has no source "
                            f"(connect an output to {name}.{sock.name}, or list it under inputs:)",
                            loc.file,
                            loc.line,
                            loc.column,
                        )
                    )
            if type(stage).output_type() is None:
                loc = self.locations.get(("stage", name), ConfigIssue(""))
                issues.append(ConfigIssue(f"stage '{name}': {type(stage).__name__}.run has no Output return annotation", loc.file, loc.line, loc.column))
        self.order()
        if issues:
            raise ConfigError(issues)

    def upstream(self, *outputs: str) -> Pipeline:
        """A pipeline of the stages the named outputs depend on (sharing the same stage objects).

        ``ragkit eval --skip-answer`` uses it to measure generated queries without generating answers.
        """
        unknown = [o for o in outputs if o not in self.outputs]
        if unknown:
            raise ConfigError(f"no pipeline output(s) {unknown} (outputs: {_names(self.outputs)})")
        need = self._ancestors({self.outputs[o][0] for o in outputs})
        sub = Pipeline(name=self.name, description=self.description)
        for n, st in self.stages.items():
            if n in need:
                sub.stages[n] = st
        sub.resources = dict(self.resources)
        sub.connections = [c for c in self.connections if c.src_stage in need and c.dst_stage in need]
        for name, targets in self.inputs.items():
            kept = [t for t in targets if t[0] in need]
            if kept:
                sub.inputs[name] = kept
        sub.outputs = {o: self.outputs[o] for o in outputs}
        return sub

    # ---- lifecycle ----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Warm up every resource and stage once (loads models, opens indexes, connects to stores)."""
        for stage in self.stages.values():
            stage.warm_up()

    def close(self) -> None:
        """Close every stage and resource. Resources shared by several stages close once."""
        for stage in self.stages.values():
            stage.close()
        for res in self._all_resources().values():
            res.close()

    def __enter__(self) -> Pipeline:
        self.warm_up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- running ------------------------------------------------------------------------------
    def run(
        self,
        inputs: dict[str, Any] | None = None,
        /,
        *,
        on_token: Callable[[str], None] | None = None,
        stream_stage: str | None = None,
        on_stage: Callable[[str, Output], None] | None = None,
        use_cache: bool = True,
        precomputed: dict[str, Output] | None = None,
        **kwinputs: Any,
    ) -> PipelineResult:
        """Run every stage once, in topological order.

        Args:
            inputs: values for the declared pipeline inputs (also accepted as keyword arguments).
            on_token: called with each piece of generated text as it is produced (streaming).
            stream_stage: stream only this stage's tokens (default: the stage behind the 'answer'
                output, else the one stage feeding the declared outputs, else every stage).
            on_stage: called with each stage's name and output as soon as it finishes.
            use_cache: consult the pipeline's ``cache:`` (when it has one); False runs every stage.
            precomputed: outputs to use instead of running those stages; stages needed only to feed
                them are skipped (how a cached query short-circuits query generation).

        Returns:
            The declared outputs, every stage's output and the per-stage :class:`Trace`.

        Raises:
            InputError: an input is unknown or a required one is missing.
            StageFailedError: a stage raised; ``.trace`` holds what ran until then.
        """
        data = {**(inputs or {}), **kwinputs}
        unknown = set(data) - set(self.inputs)
        if unknown:
            raise InputError(f"unknown pipeline input(s) {sorted(unknown)} (this pipeline takes: {_names(self.inputs)})")
        for name, targets in self.inputs.items():
            if name not in data and any(type(self.stages[s]).input_sockets()[f].required for s, f in targets):
                raise InputError(f"missing pipeline input '{name}' (pass it, e.g. run({name}=...))")
        self.validate()
        if self.cache is not None and use_cache:
            from ragkit.core.cache import run_cached

            return run_cached(self, data, on_token=on_token, stream_stage=stream_stage, on_stage=on_stage)
        precomputed = dict(precomputed or {})
        unknown_stages = set(precomputed) - set(self.stages)
        if unknown_stages:
            raise InputError(f"precomputed output(s) for unknown stage(s) {sorted(unknown_stages)} (stages: {_names(self.stages)})")
        skipped = self._skipped_by(precomputed)
        if not precomputed:
            self.warm_up()
        else:
            for n, st in self.stages.items():
                if n not in skipped and n not in precomputed:
                    st.warm_up()

        incoming: dict[tuple[str, str], Connection] = {(c.dst_stage, c.dst_field): c for c in self.connections}
        from_inputs: dict[tuple[str, str], str] = {t: n for n, ts in self.inputs.items() for t in ts}
        trace = Trace()
        stage_outputs: dict[str, Output] = {}
        start = time.perf_counter()

        def first_token_timer(text: str) -> None:
            if trace.ttft is None:
                trace.ttft = time.perf_counter() - start
            if on_token is not None:
                on_token(text)

        target_stage = stream_stage or self._default_stream_stage()
        with streaming_to(first_token_timer if on_token is not None else None, target_stage):
            for name in self.order():
                stage = self.stages[name]
                if name in skipped:
                    continue
                if name in precomputed:
                    trace.stages.append(StageTrace(name=name, type=type(stage).type_name or type(stage).__name__, extra={"precomputed": True}))
                    stage_outputs[name] = precomputed[name]
                    if on_stage is not None:
                        on_stage(name, precomputed[name])
                    continue
                kwargs: dict[str, Any] = {}
                for sock in type(stage).input_sockets():
                    conn = incoming.get((name, sock))
                    if conn is not None:
                        kwargs[sock] = getattr(stage_outputs[conn.src_stage], conn.src_field)
                    elif (name, sock) in from_inputs and from_inputs[(name, sock)] in data:
                        kwargs[sock] = data[from_inputs[(name, sock)]]
                st = StageTrace(name=name, type=type(stage).type_name or type(stage).__name__)
                trace.stages.append(st)
                with recording(st):
                    try:
                        out = stage.run(**kwargs)
                    except Exception as e:
                        st.error = f"{type(e).__name__}: {e}"
                        trace.seconds = time.perf_counter() - start
                        if isinstance(e, UserError):
                            e.trace = trace  # type: ignore[attr-defined]
                            raise
                        err = StageFailedError(name, e)
                        err.trace = trace  # type: ignore[attr-defined]
                        raise err from e
                expected = type(stage).output_type()
                if expected is not None and not isinstance(out, expected):
                    st.error = f"returned {type(out).__name__}, not {expected.__name__}"
                    trace.seconds = time.perf_counter() - start
                    err = PipelineError(f"stage '{name}' returned {type(out).__name__}, not its declared {expected.__name__} (fix its run method)")
                    err.trace = trace  # type: ignore[attr-defined]
                    raise err
                stage_outputs[name] = out
                if on_stage is not None:
                    on_stage(name, out)
        trace.seconds = time.perf_counter() - start
        if self.outputs:
            outputs = {k: getattr(stage_outputs[s], f) for k, (s, f) in self.outputs.items()}
        else:
            fed_from = {c.src_stage for c in self.connections}
            outputs = {n: o for n, o in stage_outputs.items() if n not in fed_from}
        return PipelineResult(outputs=outputs, stage_outputs=stage_outputs, trace=trace)

    def _skipped_by(self, precomputed: dict[str, Output]) -> set[str]:
        """Stages that need not run when ``precomputed`` stages are given: those feeding only them."""
        if not precomputed:
            return set()
        fed_from = {c.src_stage for c in self.connections}
        sinks = {s for s, _ in self.outputs.values()} or {n for n in self.stages if n not in fed_from}
        # a precomputed stage's inputs are not needed: that is the point
        needed = self._ancestors(sinks, stop=set(precomputed))
        return {n for n in self.stages if n not in needed}

    def _ancestors(self, sinks: set[str], stop: Collection[str] = ()) -> set[str]:
        """``sinks`` and every stage they depend on, not looking past the stages in ``stop``."""
        need: set[str] = set()
        todo = list(sinks)
        while todo:
            n = todo.pop()
            if n in need:
                continue
            need.add(n)
            if n not in stop:
                todo.extend(c.src_stage for c in self.connections if c.dst_stage == n)
        return need

    def _default_stream_stage(self) -> str | None:
        # The stage behind the 'answer' output is what a caller wants streamed; other stages (a query
        # generator, say) may generate too, and their tokens must not be mixed into the answer.
        if "answer" in self.outputs:
            return self.outputs["answer"][0]
        srcs = {s for s, _ in self.outputs.values()}
        return next(iter(srcs)) if len(srcs) == 1 else None

    # ---- serialisation ------------------------------------------------------------------------
    def _all_resources(self) -> dict[str, Resource]:
        """Every resource reachable from the stages, named: declared names first, then parameter names."""
        named: dict[int, str] = {id(r): n for n, r in self.resources.items()}
        found: dict[str, Resource] = dict(self.resources)

        def visit(comp: Component) -> None:
            for pname, res in comp.resources().items():
                if id(res) not in named:
                    n, i = pname, 2
                    while n in found:
                        n, i = f"{pname}_{i}", i + 1
                    named[id(res)] = n
                    found[n] = res
                visit(res)

        for stage in self.stages.values():
            visit(stage)
        for res in list(self.resources.values()):
            visit(res)
        self.resources = found
        return found

    def _params_dict(self, comp: Component, names: dict[int, str]) -> dict[str, Any]:
        raw = getattr(comp, "_raw_params", {})
        defaults = type(comp).params()
        out: dict[str, Any] = {}
        for k, v in comp.init_params.items():
            p = defaults.get(k)
            if k in raw:
                out[k] = raw[k]
                continue
            if p is not None and not p.required and _plain(p.default) == _plain(v):
                continue
            out[k] = names[id(v)] if isinstance(v, Resource) else _plain(v)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The pipeline as a plain dict in the pipeline-file format (resources by name, defaults left out)."""
        resources = self._all_resources()
        names = {id(r): n for n, r in resources.items()}
        d: dict[str, Any] = {"version": SPEC_VERSION}
        if self.name:
            d["name"] = self.name
        if self.description:
            d["description"] = self.description
        if resources:
            d["resources"] = {n: {"type": _type_of(r), **self._params_dict(r, names)} for n, r in resources.items()}
        d["stages"] = [{"name": n, "type": _type_of(s), **self._params_dict(s, names)} for n, s in self.stages.items()]
        if self.connections:
            d["connections"] = [str(c) for c in self.connections]
        if self.inputs:
            d["inputs"] = {n: [f"{s}.{f}" for s, f in ts] for n, ts in self.inputs.items()}
        if self.outputs:
            d["outputs"] = {n: f"{s}.{f}" for n, (s, f) in self.outputs.items()}
        if self.cache is not None:
            d["cache"] = self.cache.model_dump(exclude_defaults=True) | {"resource": self.cache.resource}
        return d

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The pipeline as YAML; also written to ``path`` when given. Secrets stay as ``${env:...}``."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        """Build a pipeline from a pipeline file. Raises :class:`ConfigError` with ``file:line:col`` issues."""
        from ragkit.core.config import load_pipeline

        return load_pipeline(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Pipeline:
        """Build a pipeline from a dict in the pipeline-file format."""
        from ragkit.core.config import build_pipeline

        return build_pipeline(data, source=source)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Iterator[tuple[str, Stage]]:
        return iter(self.stages.items())


def _type_of(comp: Component) -> str:
    name = type(comp).type_name
    if not name:
        raise ConfigError(f"{type(comp).__name__} is not registered (decorate it with @register_stage/@register_resource to save it)")
    return name


def _plain(v: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    return v


def _names(d: Any) -> str:
    return ", ".join(d) if d else "none"


def _hint(word: str, options: Any, what: str) -> str:
    """`` (did you mean 'x'? inputs: a, b)`` or `` (inputs: a, b)``."""
    import difflib

    m = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    guess = f"did you mean '{m[0]}'? " if m else ""
    return f" ({guess}{what}: {_names(options)})"
