"""Schemas shared by the query-text and constrained-decoding tests."""

from __future__ import annotations

import pytest

from ragkit.stores.base import GraphSchema, SchemaClass, SchemaProperty


@pytest.fixture
def keyed_schema() -> GraphSchema:
    """A property-graph schema that records which label or relationship type has each key."""
    return GraphSchema(
        language="cypher",
        classes=(SchemaClass(name="Person"), SchemaClass(name="Movie")),
        properties=(
            SchemaProperty(name="REVIEWED", kind="relationship", domains=("Person",), ranges=("Movie",)),
            SchemaProperty(name="name", kind="node_property", domains=("Person",)),
            SchemaProperty(name="title", kind="node_property", domains=("Movie",)),
            SchemaProperty(name="released", kind="node_property", domains=("Movie",)),
            SchemaProperty(name="rating", kind="node_property", domains=("REVIEWED",)),  # a relationship's key
        ),
    )
