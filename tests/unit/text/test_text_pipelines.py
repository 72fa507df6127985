"""The shipped text pipelines build and type-check without loading any model or index."""

from __future__ import annotations

from pathlib import Path

import pytest
from textkit_helpers import ROOT

import ragkit.stages.rerankers.confidence  # noqa: F401  (registers the stage types until they are built-ins)
import ragkit.stages.retrievers.text  # noqa: F401
import ragkit.stores.vector  # noqa: F401
from ragkit import Pipeline


@pytest.mark.parametrize("name", ["text_rag.yaml", "hybrid_rag.yaml"])
def test_pipeline_file_validates_without_loading(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    pipe = Pipeline.from_yaml(Path("pipelines") / name)
    assert not any(s.is_warm for s in pipe.stages.values())
    assert {"answer", "passages", "abstained", "confidence"} <= set(pipe.outputs)
    assert Pipeline.from_dict(pipe.to_dict()).to_dict() == pipe.to_dict()
    assert pipe.resources["index"].corpus == "fixtures/text/library_corpus.jsonl"  # type: ignore[attr-defined]
