"""Stages: the typed building blocks of a pipeline.

A stage declares its inputs once, as the parameters of ``run``, and its outputs once, as the fields
of the frozen :class:`Output` model that ``run`` returns. The pipeline reads both when it is built
and refuses a connection whose types do not fit.

Example:
    >>> from ragkit.core.stage import Stage, Output
    >>> class Shout(Output):
    ...     text: str
    >>> class Shouter(Stage):
    ...     def run(self, text: str) -> Shout:
    ...         return Shout(text=text.upper())
    >>> Shouter().run(text="hi").text
    'HI'
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ragkit.core.component import Component, type_name

__all__ = ["Stage", "Output", "InputSocket", "OutputSocket"]


class Output(BaseModel):
    """Base of every stage output: a small frozen pydantic model whose fields are the output sockets."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")


@dataclass(frozen=True)
class InputSocket:
    name: str
    type: Any
    default: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def __str__(self) -> str:
        return f"{self.name}: {type_name(self.type)}" + ("" if self.required else " (optional)")


@dataclass(frozen=True)
class OutputSocket:
    name: str
    type: Any

    def __str__(self) -> str:
        return f"{self.name}: {type_name(self.type)}"


class Stage(Component):
    """Base class of pipeline stages. Subclasses implement ``run(self, <inputs>) -> <Output subclass>``."""

    _kind: ClassVar[str] = "stage"

    def run(self, **inputs: Any) -> Output:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def input_sockets(cls) -> dict[str, InputSocket]:
        """The inputs ``run`` takes, with their annotated types."""
        hints = _run_hints(cls)
        out: dict[str, InputSocket] = {}
        for p in inspect.signature(cls.run).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[p.name] = InputSocket(p.name, hints.get(p.name, Any), p.default)
        return out

    @classmethod
    def output_type(cls) -> type[Output] | None:
        ret = _run_hints(cls).get("return")
        return ret if inspect.isclass(ret) and issubclass(ret, BaseModel) else None

    @classmethod
    def output_sockets(cls) -> dict[str, OutputSocket]:
        """The fields of the output model ``run`` returns."""
        model = cls.output_type()
        if model is None:
            return {}
        return {name: OutputSocket(name, f.annotation) for name, f in model.model_fields.items()}


def _run_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.run)
    except Exception:
        return {}
