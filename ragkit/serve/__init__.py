"""``ragkit serve``: a pipeline behind an OpenAI-compatible HTTP API.

Endpoints: ``POST /v1/chat/completions`` (streamed over server-sent events or not), ``GET /v1/models``,
``POST /query`` (answer, generated query, context with confidences, per-stage trace), ``GET /metrics``
(Prometheus) and ``GET /health``. See ``docs/serving.md``.

Example:
    >>> from ragkit import Pipeline
    >>> from ragkit.serve import ServeConfig, create_app
    >>> app = create_app(Pipeline.from_yaml("pipelines/kgqa_sparql.yaml"), ServeConfig(max_queue=8))  # doctest: +SKIP
    >>> app.state.ragkit.warm_up()                                                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragkit.errors import MissingDependencyError

if TYPE_CHECKING:
    from ragkit.core.pipeline import Pipeline
    from ragkit.serve.app import ServeConfig

__all__ = ["create_app", "ServeConfig", "require_server_packages"]


def require_server_packages() -> None:
    """Raise :class:`MissingDependencyError` naming the pip line when a server package is missing."""
    import importlib.util

    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("prometheus_client", "prometheus-client")):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(package, "serve", "ragkit serve")


def create_app(pipeline: Pipeline, config: ServeConfig | None = None) -> Any:
    """The FastAPI app serving ``pipeline`` (see :func:`ragkit.serve.app.create_app`)."""
    require_server_packages()
    from ragkit.serve.app import create_app as _create

    return _create(pipeline, config)


def __getattr__(name: str) -> Any:
    if name == "ServeConfig":
        require_server_packages()
        from ragkit.serve.app import ServeConfig

        return ServeConfig
    raise AttributeError(name)
