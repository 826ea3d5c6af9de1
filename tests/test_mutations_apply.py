"""Every planted bug of `studies.mutations` still applies to the code: its
`old` text occurs exactly once in its file (a refactor or the formatter
that changes that text would otherwise leave the mutation a silent no-op)."""

import os

import pytest

from studies import mutations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "mutation", [m for m in mutations.MUTATIONS if m.path], ids=lambda m: m.name
)
def test_mutation_text_occurs_once(mutation):
    with open(os.path.join(ROOT, mutation.path)) as fh:
        assert fh.read().count(mutation.old) == 1
    for test in mutation.tests:
        assert os.path.exists(os.path.join(ROOT, test)), test
