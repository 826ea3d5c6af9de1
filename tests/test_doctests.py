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


@pytest.fixture(scope="module")
def results():
    """Per module: (failed, attempted, the report of the failures)."""
    out = {}
    for name in MODULES:
        module = importlib.import_module(name)
        runner = doctest.DocTestRunner(
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
        )
        report = io.StringIO()
        for test in doctest.DocTestFinder().find(module):
            runner.run(test, out=report.write)
        failed, attempted = runner.summarize(verbose=False)
        out[name] = failed, attempted, report.getvalue()
    return out


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_pass(results, name):
    failed, attempted, report = results[name]
    assert failed == 0, f"{failed} of {attempted} examples failed in {name}:\n{report}"


def test_examples_ran(results):
    ran = {name: attempted for name, (_, attempted, _) in results.items()}
    assert sum(ran.values()) >= MIN_EXAMPLES, ran
