"""Every generated table of the docs, written from committed result files.

    python -m experiments.tables            # rewrite every marked region
    python -m experiments.tables --check    # exit 1 naming each region that differs

A region is the lines between

    <!-- table: NAME -->
    <!-- /table: NAME -->

in a file of docs/ (or README.md); NAME is a key of `TABLES`, whose function
reads files under docs/results/ (small JSON, gzip'd where large: per run the
records a table needs, never data or checkpoints) and returns the table's
markdown lines. Prose that quotes a number cites the table's row. CI runs
`--check` (.ci/run), so a table cannot drift from its results, and a result
file cannot change without its tables.
"""

import gzip
import json
import os
import re
import sys
from typing import Callable

from absl import app, flags

from fedjax_mi import claims

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")
DOCS = [os.path.join(ROOT, "README.md")] + [
    os.path.join(ROOT, "docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
]

flags.DEFINE_bool("check", False, "exit 1 if a region differs from its table; write nothing")
flags.DEFINE_string(
    "record",
    None,
    "FOLDER=NAME: write the compact records the claims read of an `experiments.reproduce` "
    "folder to docs/results/NAME.jsonl.gz, then the tables",
)
FLAGS = flags.FLAGS

_REGION = re.compile(
    r"^<!-- table: (?P<name>[\w.-]+) -->\n(?P<body>.*?)^<!-- /table: (?P=name) -->$",
    re.M | re.S,
)


def load(name: str):
    """The JSON of docs/results/NAME (.json or .json.gz)."""
    path = os.path.join(RESULTS, name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def isa_drift() -> list[str]:
    """docs/reliability.md, "Determinism": the golden run natively against
    another instruction set (`python -m studies.isa_drift --out=...`)."""
    result = load("isa_drift.json")
    rows = [
        f"`{' '.join(result['flags'])}`, native against "
        f"`--xla_cpu_max_isa={result['isa']}` on {result['machine']}:",
        "",
        "| field | largest difference | records that differ |",
        "| --- | --- | --- |",
    ]
    for field, (big, n, total) in sorted(result["fields"].items()):
        rows.append(f"| `{field}` | {big:.2g} | {n} of {total} |")
    return rows


# The quick preset over 5 seeds, natively and with XLA's code limited to SSE4.2
# (docs/results/README.md says how each was made).
QUICK = ("quick_native.jsonl.gz", "quick_sse42.jsonl.gz")


def _quick_runs() -> dict:
    return {name.split(".")[0]: claims.read_recorded(os.path.join(RESULTS, name)) for name in QUICK}


def claim_rules() -> list[str]:
    """Every claim's rule beside the paper's numbers and ours on CIFAR-10 (the
    means over seeds of docs/cifar10_seeds_summary.md), on the local data and
    on the test split (that file's test column)."""
    with open(os.path.join(ROOT, "docs", "cifar10_seeds_summary.md")) as fh:
        means = claims.read_cifar_summary(fh.read())
    local, test = (claims.cifar_values(means, split) for split in claims.SPLITS)
    return claims.rules_markdown(local, test).splitlines()


TABLES: dict[str, Callable[[], list[str]]] = {
    "isa_drift": isa_drift,
    "claim_rules": claim_rules,
    "claim_scaling": lambda: claims.scaling_markdown().splitlines(),
    "claim_verdicts_quick": lambda: claims.verdicts_markdown(_quick_runs()).splitlines(),
    "claim_floors_quick": lambda: claims.floor_table(_quick_runs()).splitlines(),
}


def _region(name: str, tables: dict[str, Callable[[], list[str]]]) -> str:
    if name not in tables:
        raise KeyError(f"unknown table {name!r} (experiments/tables.py, TABLES)")
    lines = tables[name]()
    return (
        f"<!-- table: {name} -->\n"
        + "".join(f"{line}\n" for line in lines)
        + f"<!-- /table: {name} -->"
    )


def render(text: str, tables: dict[str, Callable[[], list[str]]] = TABLES) -> str:
    """`text` with every marked region's body replaced by its table."""
    return _REGION.sub(lambda m: _region(m["name"], tables), text)


def stale(text: str, tables: dict[str, Callable[[], list[str]]] = TABLES) -> list[str]:
    """The regions of `text` whose body is not their table."""
    return [m["name"] for m in _REGION.finditer(text) if m.group(0) != _region(m["name"], tables)]


def regions(text: str) -> list[str]:
    return [m["name"] for m in _REGION.finditer(text)]


def update(check: bool, docs=None, tables=None) -> list[str]:
    """Rewrite every region of `docs` (default: README.md and docs/*.md) from
    `tables` (default `TABLES`), or with `check` only compare; returns the
    problems: "PATH: NAME" for each region that differed, and each table that
    has no region."""
    docs, tables = DOCS if docs is None else docs, TABLES if tables is None else tables
    problems, seen = [], set()
    for path in docs:
        if not path.endswith(".md"):
            continue
        with open(path) as fh:
            text = fh.read()
        seen.update(regions(text))
        names = stale(text, tables)
        problems += [f"differs from its results: {os.path.relpath(path, ROOT)}: {n}" for n in names]
        if names and not check:
            with open(path, "w") as fh:
                fh.write(render(text, tables))
    problems += [f"{name} has no region in the docs" for name in sorted(set(tables) - seen)]
    return problems


def main(argv):
    del argv
    if FLAGS.record:
        folder, _, name = FLAGS.record.rpartition("=")
        path = os.path.join(RESULTS, f"{name}.jsonl.gz")
        claims.write_recorded(path, *claims.read_reproduce(folder))
        print(f"tables: wrote {os.path.relpath(path, ROOT)}")
    problems = update(FLAGS.check)
    for line in problems:
        print(f"tables: {line}", file=sys.stderr)
    if FLAGS.check and problems:
        print("tables: run `python -m experiments.tables` and commit", file=sys.stderr)
        sys.exit(1)
    if not FLAGS.check:
        print("tables: every region written")


if __name__ == "__main__":
    app.run(main)
