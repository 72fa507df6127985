"""Pipeline files: safe YAML in, a validated :class:`~ragkit.core.pipeline.Pipeline` out.

Every mistake becomes one :class:`~ragkit.errors.ConfigIssue` with the file, line and column of the
offending key or value and a hint, e.g.::

    pipelines/kgqa.yaml:14:7: stage 'rerank': unknown field 'top_kk' (did you mean 'top_k'?)

Only registered short type names are accepted (no dotted import paths), YAML is read with the safe
loader, and ``${env:NAME}`` is replaced by the environment variable, failing when it is unset. The
reference, not the value, is what :meth:`Pipeline.to_yaml` writes back.

The format::

    version: 1
    name: kgqa                      # optional
    resources:                      # declared once, referenced by name
      llm: {type: local_llm}
      graph: {type: oxigraph_store, path: fixtures/library/graph.ttl}
    stages:
      - name: schema
        type: graph_schema_reader
        store: graph                # a resource name
    connections:
      - schema.schema -> querygen.schema
    inputs:
      question: [querygen.question, prompt.question]
    outputs:
      answer: generate.text
    cache:                          # optional, see ragkit.core.cache
      resource: qa_cache
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ragkit.core.component import Component, Resource, resource_types, stage_types
from ragkit.core.pipeline import SPEC_VERSION, Pipeline
from ragkit.errors import ConfigError, ConfigIssue

__all__ = ["build_pipeline", "load_pipeline", "params_model"]

Path_ = tuple[Any, ...]
_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_ANY = re.compile(r"\$\{env:[^}]*\}?")
_RESERVED = {"name", "type"}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    name: Optional[str] = None
    description: Optional[str] = None
    resources: dict[str, dict[str, Any]] = {}
    stages: list[dict[str, Any]]
    connections: list[str] = []
    inputs: dict[str, list[str] | str] = {}
    outputs: dict[str, str] = {}
    cache: Optional[dict[str, Any]] = None


class _Doc:
    """A YAML document's data plus the position of every key and value in it."""

    def __init__(self, source: str, text: str = "") -> None:
        self.source = source
        self.lines = text.splitlines()
        self.values: dict[Path_, tuple[int, int]] = {}
        self.keys: dict[Path_, tuple[int, int]] = {}
        self.issues: list[ConfigIssue] = []

    def at(self, path: Path_, message: str, *, key: bool = False) -> ConfigIssue:
        """An issue located at ``path`` (its key when ``key``), falling back to the nearest parent."""
        table = self.keys if key else self.values
        p = tuple(path)
        while p and p not in table and p not in self.values:
            p = p[:-1]
        line, col = table.get(p) or self.values.get(p) or (0, 0)
        return ConfigIssue(message, self.source, line, col)

    def add(self, path: Path_, message: str, *, key: bool = False) -> None:
        self.issues.append(self.at(path, message, key=key))

    def add_in_value(self, path: Path_, needle: str, message: str) -> None:
        """An issue at ``needle`` inside the scalar at ``path`` (e.g. one ``${env:...}`` in a longer string)."""
        issue = self.at(path, message)
        if issue.line and path in self.values and issue.line <= len(self.lines):
            col = self.lines[issue.line - 1].find(needle, issue.column - 1)
            if col >= 0:
                issue = ConfigIssue(message, issue.file, issue.line, col + 1)
        self.issues.append(issue)


def _walk(node: yaml.Node, path: Path_, doc: _Doc) -> None:
    doc.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, yaml.Node] = {}
        for k, v in node.value:
            key = k.value
            if key in seen:
                doc.issues.append(
                    ConfigIssue(
                        f"duplicate key '{key}' (first given on line {seen[key].start_mark.line + 1}; keep one)",
                        doc.source,
                        k.start_mark.line + 1,
                        k.start_mark.column + 1,
                    )
                )
            seen[key] = k
            doc.keys[path + (key,)] = (k.start_mark.line + 1, k.start_mark.column + 1)
            _walk(v, path + (key,), doc)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, path + (i,), doc)


def _parse_yaml(text: str, source: str) -> tuple[Any, _Doc]:
    doc = _Doc(source, text)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError(ConfigIssue("the file is empty (a pipeline needs at least 'version: 1' and 'stages:')", source, 1, 1))
            _walk(node, (), doc)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if isinstance(e, yaml.constructor.ConstructorError) and e.problem and "tag" in e.problem:
            tag = (e.problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")) or "?"
            message = f"YAML tag {tag} is not allowed (pipeline files are plain YAML; remove the tag and write a plain value)"
        else:
            context = e.context or ""
            cm = e.context_mark
            if context and cm is not None and mark is not None and (cm.line, cm.column) != (mark.line, mark.column):
                context += f" (opened at line {cm.line + 1}, column {cm.column + 1})"
            what = ": ".join(x for x in (context, e.problem) if x)
            message = f"invalid YAML: {what} (check the indentation, colons, brackets and quotes here)"
        raise ConfigError(
            ConfigIssue(message, source, (mark.line + 1) if mark else 0, (mark.column + 1) if mark else 0)
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(ConfigIssue(f"invalid YAML: {e}", source)) from None
    return data, doc


def _interpolate(value: Any, path: Path_, doc: _Doc, raw: dict[Path_, str]) -> Any:
    if isinstance(value, str) and "${" in value:
        for m in _ENV_ANY.finditer(value):
            if not _ENV.fullmatch(m.group(0)):
                doc.add_in_value(path, m.group(0), f"malformed reference {m.group(0)!r} (write ${{env:NAME}} with NAME made of letters, digits and '_')")

        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            got = os.environ.get(var)
            if got is None:
                doc.add_in_value(
                    path, m.group(0), f"environment variable '{var}' is not set (export {var}=... before running, or remove the reference)"
                )
                return ""
            return got

        raw[path] = value
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, path + (k,), doc, raw) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, path + (i,), doc, raw) for i, v in enumerate(value)]
    return value


@functools.cache
def params_model(cls: type[Component]) -> type[BaseModel]:
    """A pydantic model of ``cls``'s constructor parameters; resource parameters take a resource name."""
    fields: dict[str, Any] = {}
    for p in cls.params().values():
        ann = p.annotation
        if p.resource_kind is not None:
            ann = Optional[str] if not p.required and p.default is None else str
        fields[p.name] = (ann, ... if p.required else p.default)
    return create_model(
        f"{cls.__name__}Params",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


def _suggest(word: str, options: Any) -> str:
    m = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"did you mean '{m[0]}'?" if m else ""


def _hint(word: str, options: Any, otherwise: str) -> str:
    s = _suggest(word, options)
    return f" ({s})" if s else f" ({otherwise})"


def _data_loc(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of ``loc`` that exists in ``data``: drops the union-member tags pydantic appends
    (``('inputs', 'q', 'list[str]')`` -> ``('inputs', 'q')``)."""
    out: list[Any] = []
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_dict or in_list):
            break
        data = data[part]
        out.append(part)
    return tuple(out) or loc


def _dotted_hint(kind: str) -> str:
    # Constructing whatever class a file names is how YAML configs become code execution.
    return (
        f" (dotted import paths are not accepted, only registered {kind} types: register the class with "
        f"@register_{kind} or the 'ragkit.{kind}s' entry-point group and use its short name)"
    )


def _report_validation(
    e: ValidationError, base: Path_, doc: _Doc, who: str, allowed: Any, data: Any = None, raw: dict[Path_, str] | None = None
) -> None:
    seen: set[tuple[Any, ...]] = set()
    for err in e.errors():
        loc = tuple(err["loc"])
        if data is not None and err["type"] != "missing":
            loc = _data_loc(data, loc)
        if loc in seen:  # one message per place: a union reports once per member
            continue
        seen.add(loc)
        field = ".".join(str(x) for x in loc)
        if err["type"] == "extra_forbidden":
            doc.add(base + loc, f"{who}unknown field '{field}'{_hint(str(loc[-1]), allowed, 'allowed: ' + ', '.join(allowed))}", key=True)
        elif err["type"] == "missing":
            doc.add(base, f"{who}missing required field '{field}' (add '{field}: ...')", key=True)
        else:
            # never echo a value that came from the environment: it may be a secret
            shown = (raw or {}).get(base + loc, err.get("input"))
            doc.add(base + loc, f"{who}field '{field}': {err['msg'].rstrip('.')} (got {shown!r})")


def load_pipeline(path: str | Path) -> Pipeline:
    """Read, validate and build the pipeline in ``path``. Raises :class:`ConfigError` on any mistake."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(ConfigIssue("no such file (check the path)", str(path))) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(ConfigIssue(f"cannot read it ({e})", str(path))) from None
    data, doc = _parse_yaml(text, str(path))
    if isinstance(data, dict) and "extends" in data:
        data = _extend(data, p, doc, {p.resolve()})
    return _build(data, doc)


_EXTENDING_KEYS = {"extends", "set", "name", "description", "version"}


def _extend(data: dict[str, Any], path: Path, doc: _Doc, seen: set[Path]) -> dict[str, Any]:
    """A pipeline file that names another (``extends: base.yaml``, relative to the file) and changes
    some of its parameters (``set: {querygen.constrained: false, resources.llm.adapter: PATH}``,
    a null value removes the parameter) or adds a resource (``resources.reviewer: {type: local_llm}``):
    the base's dict with those changes, and this file's name.

    Variants of one pipeline (ablations, a fine-tuned model) stay one line each instead of copies.
    """
    if doc.issues:
        raise ConfigError(doc.issues)
    extra = sorted(set(data) - _EXTENDING_KEYS)
    if extra:
        raise ConfigError(doc.at((extra[0],), f"a file that extends another takes only {', '.join(sorted(_EXTENDING_KEYS))}; '{extra[0]}' belongs in the base file or in 'set'", key=True))
    ref = data["extends"]
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(doc.at(("extends",), "'extends' takes the path of another pipeline file (relative to this one)"))
    base_path = path.parent / ref
    if base_path.resolve() in seen:
        raise ConfigError(doc.at(("extends",), f"{ref} extends this file again (a cycle): extend a file that does not"))
    try:
        text = base_path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(doc.at(("extends",), f"cannot read {base_path} ({e.strerror or e}); the path is relative to {path}")) from None
    base, base_doc = _parse_yaml(text, str(base_path))
    if not isinstance(base, dict):
        raise ConfigError(doc.at(("extends",), f"{base_path} is not a pipeline file (a mapping)"))
    if "extends" in base:
        base = _extend(base, base_path, base_doc, seen | {base_path.resolve()})
    elif base_doc.issues:
        raise ConfigError(base_doc.issues)
    merged = copy.deepcopy(base)
    for key in ("name", "description", "version"):
        if key in data:
            merged[key] = data[key]
    changes = data.get("set") or {}
    if not isinstance(changes, dict):
        raise ConfigError(doc.at(("set",), "'set' takes a mapping of 'stage.parameter' or 'resources.name.parameter' to values"))
    stages = {st.get("name"): st for st in merged.get("stages", []) if isinstance(st, dict)}
    for dotted, value in changes.items():
        owner, _, param = str(dotted).rpartition(".")
        if owner == "resources" and param:  # a whole resource: added (e.g. a second model), replaced, or removed
            if value is not None and not (isinstance(value, dict) and isinstance(value.get("type"), str)):
                message = f"'{dotted}' takes a resource: a mapping with its 'type' (e.g. {{type: local_llm}}), or null to remove it"
                raise ConfigError(doc.at(("set", dotted), message))
            resources = merged.setdefault("resources", {})
            if value is None:
                resources.pop(param, None)
            else:
                resources[param] = value
            continue
        if owner.startswith("resources."):
            target = (merged.get("resources") or {}).get(owner[len("resources.") :])
            known = ", ".join(f"resources.{r}" for r in merged.get("resources") or {})
        else:
            target = stages.get(owner)
            known = ", ".join(str(n) for n in stages)
        if not param or not isinstance(target, dict):
            raise ConfigError(doc.at(("set", dotted), f"'{dotted}': no stage or resource '{owner}' in {base_path} (one of: {known}); write 'stage.parameter'", key=True))
        if param in _RESERVED:
            raise ConfigError(doc.at(("set", dotted), f"'{dotted}': a stage's or resource's {param} cannot be changed by 'set'", key=True))
        if value is None:
            target.pop(param, None)
        else:
            target[param] = value
    return merged


def build_pipeline(data: dict[str, Any], source: str = "<dict>") -> Pipeline:
    """Build a pipeline from an already-parsed pipeline dict (no positions in its messages).

    Relative paths in parameters are taken relative to the working directory, as on the command line.
    """
    return _build(data, _Doc(source))


def _build(data: Any, doc: _Doc) -> Pipeline:
    if doc.issues:  # duplicate keys: the YAML loader would silently keep the last one
        raise ConfigError(doc.issues)
    if not isinstance(data, dict):
        raise ConfigError(
            doc.at((), "a pipeline file must be a mapping (give it 'version: 1', 'stages:' and optionally 'resources', 'connections', 'inputs', 'outputs')")
        )
    if "version" in data and (type(data["version"]) is not int or data["version"] != SPEC_VERSION):  # `true == 1` in Python
        raise ConfigError(doc.at(("version",), f"unsupported version {data['version']!r} (this ragkit reads 'version: {SPEC_VERSION}')"))
    raw: dict[Path_, str] = {}
    original = data
    data = _interpolate(data, (), doc, raw)
    if doc.issues:
        raise ConfigError(doc.issues)
    try:
        spec = _Spec.model_validate(data)
    except ValidationError as e:
        _report_validation(e, (), doc, "", list(_Spec.model_fields), data, raw)
        raise ConfigError(doc.issues) from None
    if not spec.stages:
        raise ConfigError(doc.at(("stages",), "'stages' is empty (a pipeline needs at least one stage)"))

    pipe = Pipeline(name=spec.name, description=spec.description)

    # Resources may refer to each other (an example bank names its embedder): build in dependency order.
    rtypes = resource_types()
    built: dict[str, Resource] = {}
    validated: dict[str, tuple[type[Resource], dict[str, Any]]] = {}
    for rname, rdata in spec.resources.items():
        base = ("resources", rname)
        rtype = rdata.get("type")
        if rtype is None:
            doc.add(base, f"resource '{rname}': missing 'type' (one of: {', '.join(rtypes)})", key=True)
            continue
        if rtype not in rtypes:
            hint = _dotted_hint("resource") if isinstance(rtype, str) and "." in rtype else _hint(str(rtype), rtypes, "see `ragkit stages --resources`")
            doc.add(base + ("type",), f"resource '{rname}': unknown resource type '{rtype}'{hint}")
            continue
        cls = rtypes[rtype]
        kw = _validate_params(cls, {k: v for k, v in rdata.items() if k != "type"}, base, doc, f"resource '{rname}': ", raw)
        if kw is not None:
            validated[rname] = (cls, kw)
    progress = True
    pending = dict(validated)
    while pending and progress:
        progress = False
        for rname, (cls, kw) in list(pending.items()):
            refs = {k: v for k, v in kw.items() if k in _resource_params(cls) and v is not None}
            if any(v not in built for v in refs.values() if v in pending):
                continue
            ok = _resolve_refs(cls, kw, built, spec.resources, ("resources", rname), doc, f"resource '{rname}': ")
            if ok:
                res = _construct(cls, kw, ("resources", rname), doc, f"resource '{rname}': ", original)
                if res is not None:
                    built[rname] = res
                    pipe.add_resource(rname, res)
            del pending[rname]
            progress = True
    for rname in pending:
        doc.add(("resources", rname), f"resource '{rname}': its resource references form a cycle (break it)")

    stypes = stage_types()
    seen_names: dict[str, int] = {}
    for i, sdata in enumerate(spec.stages):
        base = ("stages", i)
        name, stype = sdata.get("name"), sdata.get("type")
        if not isinstance(name, str) or not name:
            doc.add(base, "stage without a 'name' (give every stage a unique name)", key=True)
            continue
        if name in seen_names:
            doc.add(base + ("name",), f"duplicate stage name '{name}' (already used by stage #{seen_names[name] + 1}; names must be unique)")
            continue
        seen_names[name] = i
        pipe.locations[("stage", name)] = doc.at(base + ("name",), "")
        if stype is None:
            doc.add(base, f"stage '{name}': missing 'type' (see `ragkit stages` for the types)", key=True)
            continue
        if stype not in stypes:
            if isinstance(stype, str) and "." in stype:
                hint = _dotted_hint("stage")
            else:
                hint = _hint(str(stype), stypes, "see `ragkit stages` for the types")
            doc.add(base + ("type",), f"stage '{name}': unknown stage type '{stype}'{hint}")
            continue
        cls = stypes[stype]
        who = f"stage '{name}': "
        kw = _validate_params(cls, {k: v for k, v in sdata.items() if k not in _RESERVED}, base, doc, who, raw)
        if kw is None or not _resolve_refs(cls, kw, built, spec.resources, base, doc, who):
            continue
        stage = _construct(cls, kw, base, doc, who, original)
        if stage is not None:
            try:
                pipe.add_stage(name, stage)
            except ConfigError as e:
                doc.add(base + ("name",), str(e.issues[0].message))
    if doc.issues:
        raise ConfigError(doc.issues)

    for j, text in enumerate(spec.connections):
        path = ("connections", j)
        m = re.fullmatch(r"\s*(\S+)\s*->\s*(\S+)\s*", text)
        if not m:
            doc.add(path, f"connection {text!r} is not of the form 'stage.output -> stage.input' (write e.g. 'schema.text -> querygen.schema_text')")
            continue
        try:
            pipe.connect(m.group(1), m.group(2))
        except ConfigError as e:
            doc.add(path, e.issues[0].message)
    for iname, targets in spec.inputs.items():
        listed = [(("inputs", iname), targets)] if isinstance(targets, str) else [(("inputs", iname, k), t) for k, t in enumerate(targets)]
        if not listed:
            doc.add(("inputs", iname), f"input '{iname}' feeds no stage (list at least one 'stage.input')")
        for path, target in listed:  # one by one, so a mistake points at its own list item
            try:
                pipe.add_input(iname, target)
            except ConfigError as e:
                doc.add(path, e.issues[0].message)
    for oname, src in spec.outputs.items():
        try:
            pipe.add_output(oname, src)
        except ConfigError as e:
            doc.add(("outputs", oname), e.issues[0].message)
    if spec.cache is not None:
        _build_cache(pipe, spec.cache, doc)
    if doc.issues:
        raise ConfigError(doc.issues)
    pipe.validate()
    return pipe


def _build_cache(pipe: Pipeline, data: dict[str, Any], doc: _Doc) -> None:
    from ragkit.core.cache import CacheSpec, check_spec

    try:
        cspec = CacheSpec.model_validate(data)
    except ValidationError as e:
        _report_validation(e, ("cache",), doc, "cache: ", list(CacheSpec.model_fields), data)
        return
    problems = check_spec(pipe, cspec)
    for fieldname, message in problems:
        doc.add(("cache", fieldname), message)
    if not problems:
        pipe.cache = cspec


def _resource_params(cls: type[Component]) -> dict[str, type[Resource]]:
    return {n: p.resource_kind for n, p in cls.params().items() if p.resource_kind is not None}


def _validate_params(
    cls: type[Component], given: dict[str, Any], base: Path_, doc: _Doc, who: str, raw: dict[Path_, str] | None = None
) -> dict[str, Any] | None:
    model = params_model(cls)
    try:
        m = model.model_validate(given)
    except ValidationError as e:
        _report_validation(e, base, doc, who, list(model.model_fields), given, raw)
        return None
    return {k: getattr(m, k) for k in m.model_fields_set}


def _resolve_refs(
    cls: type[Component], kw: dict[str, Any], built: dict[str, Resource], declared: dict[str, Any], base: Path_, doc: _Doc, who: str
) -> bool:
    ok = True
    for pname, kind in _resource_params(cls).items():
        ref = kw.get(pname)
        if ref is None:
            continue
        if ref not in declared:
            hint = _suggest(ref, declared) or (f"declare it under resources:, or use one of: {', '.join(declared)}" if declared else "declare it under resources:")
            doc.add(base + (pname,), f"{who}resource '{ref}' is not declared ({hint})")
            ok = False
            continue
        res = built.get(ref)
        if res is None:  # declared but itself invalid: its own issue is already reported
            ok = False
            continue
        if not isinstance(res, kind):
            doc.add(
                base + (pname,),
                f"{who}field '{pname}' takes a resource of kind {kind.__name__}, but '{ref}' is of type {type(res).type_name} "
                f"(name a resource of kind {kind.__name__})",
            )
            ok = False
            continue
        kw[pname] = res
    return ok


def _construct(cls: type[Component], kw: dict[str, Any], base: Path_, doc: _Doc, who: str, original: Any) -> Any:
    try:
        obj = cls(**kw)
    except ConfigError as e:
        doc.add(base, who + e.issues[0].message)
        return None
    except Exception as e:  # noqa: BLE001  (a plug-in's constructor may raise anything; validate must still report a line)
        # point at the parameter the constructor complains about when it names one
        named = next((k for k in kw if re.search(rf"\b{re.escape(k)}\b", str(e))), None)
        msg = str(e).rstrip(".") if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {e}"
        if not msg.endswith(")"):
            msg += f" (fix '{named}')" if named else " (check this component's parameters)"
        doc.add(base + (named,) if named else base, f"{who}{msg}")
        return None
    # Parameters holding a ${env:...} reference anywhere inside keep their unexpanded text, so
    # to_yaml() writes the reference back, never the secret.
    given = _get(original, base)
    secret = {k: v for k, v in given.items() if k not in _RESERVED and _has_env_ref(v)} if isinstance(given, dict) else {}
    if secret:
        obj._raw_params = secret
    return obj


def _get(data: Any, path: Path_) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _has_env_ref(v: Any) -> bool:
    if isinstance(v, str):
        return _ENV.search(v) is not None
    if isinstance(v, dict):
        return any(_has_env_ref(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_env_ref(x) for x in v)
    return False

