"""ragkit: retrieval-augmented generation over knowledge graphs and vector stores, on local models.

Importing ragkit is cheap: torch, transformers, faiss, rdflib, pyoxigraph and neo4j load only when a
stage or resource that needs them warms up.

Example:
    >>> import ragkit
    >>> pipe = ragkit.Pipeline.from_yaml("pipelines/kgqa_sparql.yaml")  # doctest: +SKIP
    >>> pipe.run(question="Who wrote The Glass Orchard?")["answer"]  # doctest: +SKIP
"""

from __future__ import annotations

from ragkit.core.component import Resource, register_resource, register_stage, resource_types, stage_types
from ragkit.core.metrics import GenerationStats, StageTrace, Trace, current_recorder, emit_token
from ragkit.core.pipeline import Pipeline, PipelineResult
from ragkit.core.stage import Output, Stage
from ragkit.errors import (
    ConfigError,
    InputError,
    MissingDependencyError,
    ModelError,
    PipelineError,
    QueryError,
    RagkitError,
    StoreError,
    UserError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Pipeline",
    "PipelineResult",
    "Stage",
    "Output",
    "Resource",
    "register_stage",
    "register_resource",
    "stage_types",
    "resource_types",
    "Trace",
    "StageTrace",
    "GenerationStats",
    "current_recorder",
    "emit_token",
    "RagkitError",
    "UserError",
    "ConfigError",
    "InputError",
    "MissingDependencyError",
    "ModelError",
    "PipelineError",
    "QueryError",
    "StoreError",
]
