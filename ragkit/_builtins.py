"""Imports every built-in stage and resource module so their decorators register them.

Each module imports its heavy dependencies inside ``setup()``, so importing them here stays cheap.
"""

from __future__ import annotations

import importlib

_MODULES = [
    "ragkit.testing.fakes",
    "ragkit.models.llm",
    "ragkit.models.remote",
    "ragkit.models.embedder",
    "ragkit.models.router",
    "ragkit.models.langchain",
    "ragkit.stores.rdf",
    "ragkit.stores.rdflib_store",
    "ragkit.stores.sparql_http",
    "ragkit.stores.cypher",
    "ragkit.stores.examples",
    "ragkit.stores.vector",
    "ragkit.stages.schema.reader",
    "ragkit.stages.linkers.entity",
    "ragkit.stages.retrievers.examples",
    "ragkit.stages.retrievers.graph",
    "ragkit.stages.retrievers.text",
    "ragkit.stages.retrievers.langchain",
    "ragkit.stages.rerankers.confidence",
    "ragkit.stages.querygen.sparql",
    "ragkit.stages.querygen.cypher",
    "ragkit.stages.prompts.builder",
    "ragkit.stages.generators.local",
    "ragkit.stages.cache.semantic",
]

for _m in _MODULES:
    importlib.import_module(_m)
