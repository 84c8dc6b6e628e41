"""The runnable examples of the pure modules (no model, no network) are run as tests."""

import doctest
import importlib

import pytest

PURE = ["scanner.config", "scanner.probe.verdict", "scanner.probe.triggers", "scanner.report.card",
        "scanner.families.classifier.cost", "scanner.families.generative.cost", "scanner.families.noise", "scanner.families.classifier.library", "scanner.families.generative.library",
        "scanner.families.generative.model", "scanner.families", "scanner.families.classifier",
        "scanner.sources.model", "scanner.report.escape", "scanner.bot.events"]


@pytest.mark.parametrize("name", PURE)
def test_examples_run(name):
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0, f"{name} has no example"
    assert failed == 0
