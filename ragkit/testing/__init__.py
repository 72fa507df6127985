"""Deterministic fakes for unit tests: part of the product, registered so YAML pipelines can use them.

* :class:`HashingEmbedder` (``hashing_embedder``): character n-gram hashing, no model.
* :class:`ScriptedLLM` (``scripted_llm``): answers from a script, streams word by word, counts tokens.
* :class:`TinyGraphStore` (``tiny_graph_store``): a few triples in memory, answering a small SPARQL subset.
* :class:`EchoStage` / :class:`UpperStage`: trivial stages for wiring tests.

Real models and stores are used in integration tests, never these.
"""

from ragkit.testing.fakes import EchoStage, HashingEmbedder, ScriptedLLM, TextOutput, TinyGraphStore, UpperStage

__all__ = ["HashingEmbedder", "ScriptedLLM", "TinyGraphStore", "EchoStage", "UpperStage", "TextOutput"]
