"""The input -> output examples in the docstrings of the array-only method run and hold (doctest)."""

import doctest
import importlib

import pytest

MODULES = ["ep.method.calibration", "ep.method.leader", "ep.method.dictionary", "ep.method.metrics"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
