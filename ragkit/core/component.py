"""The base of stages and resources: captured constructor parameters, lifecycle, and the registry.

A *component* is anything a pipeline file names with ``type:``. Two kinds exist:

* a :class:`~ragkit.core.stage.Stage` does one step of a pipeline (``run`` in, typed output out);
* a :class:`Resource` is something heavy that stages share: a model, an index, a graph store.

Both follow one lifecycle: ``__init__`` only stores parameters (no I/O, so building and validating a
pipeline is instant); ``warm_up()`` loads or connects once and is idempotent; ``close()`` releases.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import types
import typing
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

from ragkit.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "Component",
    "Resource",
    "Param",
    "register_stage",
    "register_resource",
    "stage_types",
    "resource_types",
    "is_compatible",
    "type_name",
]

ENTRY_POINT_GROUP = "ragkit.stages"
RESOURCE_ENTRY_POINT_GROUP = "ragkit.resources"

_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """A constructor parameter of a component, as a pipeline file sees it."""

    name: str
    annotation: Any
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def resource_kind(self) -> type[Resource] | None:
        """The resource class this parameter takes (by name in YAML), or None for a plain value."""
        return _resource_class_in(self.annotation)


class Component:
    """Shared base of stages and resources (see the module docstring for the lifecycle)."""

    type_name: ClassVar[str] = ""
    _kind: ClassVar[str] = "component"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _capture_init(cls.__dict__["__init__"])  # type: ignore[method-assign]

    # -- parameters -------------------------------------------------------------------------
    @property
    def init_params(self) -> dict[str, Any]:
        """The constructor arguments this instance was built with (defaults filled in)."""
        return dict(getattr(self, "_init_params", {}))

    @classmethod
    def params(cls) -> dict[str, Param]:
        """The parameters a pipeline file may set for this component, from ``__init__``'s signature."""
        hints = _hints(cls.__init__)
        out: dict[str, Param] = {}
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[p.name] = Param(p.name, hints.get(p.name, Any), p.default)
        return out

    # -- lifecycle --------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load models, open indexes, connect to stores. Safe to call many times; works once."""
        lock = self.__dict__.setdefault("_lifecycle_lock", threading.RLock())
        with lock:
            if self.__dict__.get("_warm", False):
                return
            for res in self.resources().values():
                res.warm_up()
            self.setup()
            self._warm = True

    def close(self) -> None:
        """Release what ``warm_up`` acquired. The component can be warmed up again afterwards."""
        lock = self.__dict__.setdefault("_lifecycle_lock", threading.RLock())
        with lock:
            if self.__dict__.get("_warm", False):
                self.teardown()
                self._warm = False

    @property
    def is_warm(self) -> bool:
        return bool(self.__dict__.get("_warm", False))

    def setup(self) -> None:
        """Override to do the real loading; called once by :meth:`warm_up`."""

    def teardown(self) -> None:
        """Override to release what :meth:`setup` acquired; called by :meth:`close`."""

    def resources(self) -> dict[str, Resource]:
        """The resources this component was given, by parameter name."""
        return {k: v for k, v in self.init_params.items() if isinstance(v, Resource)}

    def __repr__(self) -> str:
        # parameters read from ${env:...} show the reference: reprs end up in logs
        raw = self.__dict__.get("_raw_params", {})
        args = ", ".join(f"{k}={_short_repr(raw.get(k, v))}" for k, v in self.init_params.items())
        return f"{type(self).__name__}({args})"


class Resource(Component):
    """Something heavy that stages share: a model, an index, a graph store.

    Declared once in a pipeline file's ``resources:`` block and referenced by name from stages.
    """

    _kind: ClassVar[str] = "resource"


def _short_repr(v: Any) -> str:
    if isinstance(v, Resource):
        return f"<{type(v).__name__}>"
    r = repr(v)
    return r if len(r) < 60 else r[:57] + "..."


def _capture_init(init: Any) -> Any:
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Component, *args: Any, **kwargs: Any) -> None:
        # Only the outermost __init__ records: a subclass calling super().__init__ must not
        # overwrite its own parameters with its parent's.
        outer = "_init_params" not in self.__dict__
        if outer:
            try:
                bound = sig.bind(self, *args, **kwargs)
            except TypeError as e:
                raise ConfigError(f"{type(self).__name__}: {e}") from None
            bound.apply_defaults()
            params = dict(bound.arguments)
            params.pop("self", None)
            for p in sig.parameters.values():
                if p.kind is p.VAR_KEYWORD:
                    params.update(params.pop(p.name, {}))
                elif p.kind is p.VAR_POSITIONAL:
                    params.pop(p.name, None)
            self.__dict__["_init_params"] = params
        init(self, *args, **kwargs)

    return wrapper


def _hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to Any for those
        return {}


# ---- registry ---------------------------------------------------------------------------------

_STAGES: dict[str, type] = {}
_RESOURCES: dict[str, type] = {}
_builtins_loaded = False
_registry_lock = threading.RLock()

C = TypeVar("C", bound=type)


def _register(table: dict[str, type], kind: str, name: str) -> Any:
    if not name or not name.replace("_", "").isalnum() or not name[0].isalpha() or name.lower() != name:
        raise ValueError(f"{kind} type name {name!r} must be lower_snake_case")

    def deco(cls: C) -> C:
        existing = table.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{kind} type {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        cls.type_name = name
        table[name] = cls
        return cls

    return deco


def register_stage(name: str) -> Any:
    """Class decorator: make a :class:`~ragkit.core.stage.Stage` available to pipeline files as ``type: name``."""
    return _register(_STAGES, "stage", name)


def register_resource(name: str) -> Any:
    """Class decorator: make a :class:`Resource` available in a ``resources:`` block as ``type: name``."""
    return _register(_RESOURCES, "resource", name)


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    # Held for the whole load: another thread must not see a half-filled registry. The flag is set
    # only once loading worked, so a failed import is retried (and raises) instead of leaving the
    # registry silently empty.
    with _registry_lock:
        if _builtins_loaded:
            return
        from ragkit import _builtins  # noqa: F401  (imports register the built-in components)
        from ragkit.core.stage import Stage

        for group, table, base in ((ENTRY_POINT_GROUP, _STAGES, Stage), (RESOURCE_ENTRY_POINT_GROUP, _RESOURCES, Resource)):
            kind = "stage" if table is _STAGES else "resource"
            for ep in metadata.entry_points(group=group):
                if ep.name in table:
                    if getattr(table[ep.name], "__module__", "") != ep.value.split(":", 1)[0]:
                        logger.warning("ignoring %s entry point %r (%s): that %s type name is already taken", group, ep.name, ep.value, kind)
                    continue
                try:  # a broken plug-in must not break ragkit
                    cls = ep.load()
                    if not (inspect.isclass(cls) and issubclass(cls, base)):
                        raise TypeError(f"{ep.value} is not a {base.__name__} subclass")
                    _register(table, kind, ep.name)(cls)
                except Exception as e:  # noqa: BLE001  (whatever a plug-in raises, ragkit keeps working)
                    logger.warning("could not load %s entry point %r: %s", group, ep.name, e)
        _builtins_loaded = True


def stage_types() -> dict[str, type]:
    """Every registered stage type: built-ins, then those from the ``ragkit.stages`` entry-point group."""
    _load_builtins()
    return dict(sorted(_STAGES.items()))


def resource_types() -> dict[str, type]:
    """Every registered resource type."""
    _load_builtins()
    return dict(sorted(_RESOURCES.items()))


# ---- types ------------------------------------------------------------------------------------

_UNION_TYPES = (Union, types.UnionType)


def _resource_class_in(annotation: Any) -> type[Resource] | None:
    if inspect.isclass(annotation) and issubclass(annotation, Resource):
        return annotation
    if get_origin(annotation) in _UNION_TYPES:
        for a in get_args(annotation):
            found = _resource_class_in(a)
            if found is not None:
                return found
    return None


def is_compatible(src: Any, dst: Any) -> bool:
    """Whether a value typed ``src`` may flow into a socket typed ``dst``.

    ``Any`` on either side matches; a union destination accepts any of its members; a union source
    needs every member accepted; generics compare their origins and arguments; classes by subclass.
    """
    if src is Any or dst is Any or src == dst:
        return True
    if get_origin(dst) in _UNION_TYPES:
        if get_origin(src) in _UNION_TYPES:
            return all(any(is_compatible(s, d) for d in get_args(dst)) for s in get_args(src))
        return any(is_compatible(src, d) for d in get_args(dst))
    if get_origin(src) in _UNION_TYPES:
        return all(is_compatible(s, dst) for s in get_args(src))
    so, do = get_origin(src), get_origin(dst)
    if so is not None or do is not None:
        so, do = so or src, do or dst
        if not (inspect.isclass(so) and inspect.isclass(do) and issubclass(so, do)):
            return False
        sa, da = get_args(src), get_args(dst)
        if not sa or not da:
            return True
        if len(sa) != len(da):
            return False
        return all(is_compatible(s, d) for s, d in zip(sa, da))
    if inspect.isclass(src) and inspect.isclass(dst):
        return issubclass(src, dst)
    return False


def type_name(t: Any) -> str:
    """A short readable name for a type annotation, for messages and `ragkit stages`."""
    if t is Any:
        return "Any"
    if t is type(None):
        return "None"
    origin = get_origin(t)
    if origin in _UNION_TYPES:
        return " | ".join(type_name(a) for a in get_args(t))
    if origin is not None:
        args = get_args(t)
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(type_name(a) for a in args)}]" if args else base
    return getattr(t, "__name__", str(t))
