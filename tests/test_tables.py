"""experiments.tables: marked regions are rewritten from their tables and
nothing else; `--check` fails on a stale region; the committed docs hold what
the committed results give."""

import subprocess
import sys

import pytest

from experiments import tables
from helpers.shared import ROOT

DOC = """# A doc

Prose before, with a number: 0.5.

<!-- table: a -->
| old | table |
<!-- /table: a -->

Prose between.
<!-- table: b -->
<!-- /table: b -->
end
"""


def test_render_replaces_each_region_and_nothing_else():
    got = tables.render(DOC, {"a": lambda: ["| x |", "| 1 |"], "b": lambda: ["| y |"]})
    assert got == DOC.replace("| old | table |", "| x |\n| 1 |").replace(
        "<!-- table: b -->\n", "<!-- table: b -->\n| y |\n"
    )
    assert tables.regions(DOC) == ["a", "b"]
    # Idempotent: a rendered doc renders to itself.
    assert tables.render(got, {"a": lambda: ["| x |", "| 1 |"], "b": lambda: ["| y |"]}) == got


def test_an_unknown_table_is_an_error():
    with pytest.raises(KeyError, match="unknown table 'a'"):
        tables.render(DOC, {"b": lambda: []})


def test_every_table_has_a_region_and_the_docs_match_the_results():
    # What CI runs: a stale or missing region exits 1 and names it.
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.tables", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_check_names_a_stale_region_and_writes_nothing(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    fresh = {"a": lambda: ["| old | table |"], "b": lambda: []}
    assert tables.update(True, [str(doc)], fresh) == []
    stale = tables.update(True, [str(doc)], {**fresh, "a": lambda: ["| new |"], "c": list})
    where = tables.os.path.relpath(doc, tables.ROOT)
    assert stale == [f"differs from its results: {where}: a", "c has no region in the docs"]
    assert doc.read_text() == DOC  # check writes nothing
    assert tables.update(False, [str(doc)], {**fresh, "a": lambda: ["| new |"]})
    assert "| new |" in doc.read_text()
