"""The repository's documents are self-contained: every `docs/NAME.md,
"Section"` citation in the code and the docs names a file and a heading (or
a bold paragraph lead) that exist, every `docs/...` file named exists, and
nothing cites a design document that is not in the repository."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITATION = re.compile(r'docs/([a-z0-9_]+\.md)(?:,|\s*\()?\s*"([^"]+)"')
NAMED = re.compile(r"docs/([a-z0-9_]+\.(?:md|png))")


def _files():
    try:
        out = subprocess.run(
            ["git", "ls-files", "*.py", "*.md", "*.toml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    # Tracked files deleted in the working tree (not yet committed) are gone.
    return [
        f for f in out if not f.startswith("tests/data/") and os.path.exists(os.path.join(ROOT, f))
    ]


def _flat(text: str) -> str:
    """Comment markers and line breaks out, so a citation wrapped over lines reads whole."""
    return re.sub(r"\s+", " ", re.sub(r"\n\s*#+ ?", " ", text))


def _anchors(doc: str) -> list[str]:
    with open(os.path.join(ROOT, "docs", doc)) as fh:
        text = fh.read()
    heads = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    return heads + re.findall(r"\*\*([^*]+)\*\*", text)


def test_every_docs_citation_resolves():
    bad = []
    for path in _files():
        with open(os.path.join(ROOT, path)) as fh:
            text = fh.read()
        for name in NAMED.findall(text):
            if not os.path.exists(os.path.join(ROOT, "docs", name)):
                bad.append(f"{path}: docs/{name} does not exist")
        for doc, section in CITATION.findall(_flat(text)):
            if os.path.exists(os.path.join(ROOT, "docs", doc)) and not any(
                section in anchor for anchor in _anchors(doc)
            ):
                bad.append(f'{path}: docs/{doc}, "{section}" is no heading there')
    assert not bad, "\n".join(bad)


def test_nothing_cites_documents_outside_the_repository():
    outside = re.compile(r"\b(DESIGN|EDGE|STYLE)\.md\b|\.\./shared\b")
    bad = [
        path
        for path in _files()
        if path != "tests/test_docs.py" and outside.search(open(os.path.join(ROOT, path)).read())
    ]
    assert not bad, bad
