"""The docstring examples of every library module run as doctests."""

import doctest
import importlib
import io
import pkgutil

import pytest

import fedjax_mi

# Every module of the package, found by walking it: a new module is covered
# without editing this list.
MODULES = sorted(m.name for m in pkgutil.walk_packages(fedjax_mi.__path__, "fedjax_mi."))
# Fewer examples than this means that modules or examples went missing unnoticed.
MIN_EXAMPLES = 40
# Examples that compile programs for seconds (four estimators on 2,000 samples;
# LeNet's initialisation op by op) run with the slow tests.
SLOW = ("fedjax_mi.mi", "fedjax_mi.models")
_RESULTS = {}


def find(name):
    return doctest.DocTestFinder().find(importlib.import_module(name))


def run(name):
    """(failed, attempted, the report of the failures) of module `name`, once."""
    if name not in _RESULTS:
        runner = doctest.DocTestRunner(
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
        )
        report = io.StringIO()
        for test in find(name):
            runner.run(test, out=report.write)
        failed, attempted = runner.summarize(verbose=False)
        _RESULTS[name] = failed, attempted, report.getvalue()
    return _RESULTS[name]


@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in MODULES]
)
def test_module_examples_pass(name):
    failed, attempted, report = run(name)
    assert failed == 0, f"{failed} of {attempted} examples failed in {name}:\n{report}"
    assert attempted == sum(len(t.examples) for t in find(name))  # every example ran


def test_examples_ran():
    """Every module's examples are found (test_module_examples_pass runs each
    module's, the slow ones in the slow tier)."""
    found = {name: sum(len(t.examples) for t in find(name)) for name in MODULES}
    assert sum(found.values()) >= MIN_EXAMPLES, found
    assert all(found[name] for name in SLOW), found
