"""Load an RDF file into an empty Neo4j as a property graph (the compose file's load-graph service).

    NEO4J_URI=bolt://localhost:7687 NEO4J_USERNAME=neo4j NEO4J_PASSWORD=... python docker/load_neo4j.py fixtures/library/graph.ttl

The mapping is :func:`ragkit.stores.loaders.rdf_to_cypher`'s, the one the embedded Cypher store
uses, so Neo4j holds the same graph as ``pipelines/kgqa_cypher.yaml`` queries. A database that
already has nodes is left alone, so running it again is harmless.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    from ragkit.stores.cypher import Neo4jStore
    from ragkit.stores.loaders import load_cypher_script, rdf_to_cypher

    if len(argv) != 1:
        print("usage: python docker/load_neo4j.py GRAPH.ttl", file=sys.stderr)
        return 2
    missing = [v for v in ("NEO4J_URI", "NEO4J_PASSWORD") if not os.environ.get(v)]
    if missing:
        print(f"error: set {', '.join(missing)} (e.g. NEO4J_URI=bolt://localhost:7687)", file=sys.stderr)
        return 2
    store = Neo4jStore(os.environ["NEO4J_URI"], username=os.environ.get("NEO4J_USERNAME", "neo4j"), password=os.environ["NEO4J_PASSWORD"])
    store.warm_up()
    try:
        nodes = store.query("MATCH (n) RETURN count(n) AS n").rows[0][0]
        if nodes:
            print(f"Neo4j already holds {nodes} nodes; not loading {argv[0]}")
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "graph.cypher"
            script.write_text(rdf_to_cypher(argv[0]), encoding="utf-8")
            statements = load_cypher_script(store, script)
        nodes = store.query("MATCH (n) RETURN count(n) AS n").rows[0][0]
    finally:
        store.close()
    print(f"loaded {argv[0]} into Neo4j: {statements} statements, {nodes} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
