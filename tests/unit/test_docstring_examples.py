"""The examples in ragkit's docstrings run and print what they show (``python -m doctest`` for each module)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import ragkit

MODULES = sorted(m.name for m in pkgutil.walk_packages(ragkit.__path__, "ragkit.") if not m.name.endswith("__main__"))


def test_the_modules_are_found() -> None:
    assert "ragkit.query.constrain" in MODULES and "ragkit.stages.querygen.cypher" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        if test.examples:
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} fail (the report is above)"
