"""Rewrite tests/data/golden_digits/ from the current code, on this machine:

    python tests/helpers/regenerate_golden.py --why "what changed the numbers, and why"

Runs `experiments.run` with the flags in golden.json and records the metrics, the
figures' digests, the packages, the instruction set (helpers/machine.py) and the
commit. Do it once per change that is meant to move the numbers, in a commit of its
own that says why (README.md, "Installs and the lock"); show in that commit that
nothing else moved.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import machine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "data", "golden_digits")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--why", required=True, help="why the numbers change")
    args = parser.parse_args()
    with open(os.path.join(GOLDEN, "golden.json")) as fh:
        golden = json.load(fh)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        subprocess.run(
            [sys.executable, "-m", "experiments.run", *golden["flags"], f"--out={out}"],
            cwd=ROOT,
            check=True,
        )
        shutil.copyfile(os.path.join(out, "metrics.jsonl"), os.path.join(GOLDEN, "metrics.jsonl"))
        digests = {}
        for name in sorted(golden["figures_sha256"]):
            with open(os.path.join(out, "figures", name), "rb") as fh:
                digests[name] = hashlib.sha256(fh.read()).hexdigest()
    golden.update(
        produced_by_commit=commit,
        why=args.why,
        figures_sha256=digests,
        packages=machine.packages(),
        instruction_set=machine.instruction_set(),
    )
    with open(os.path.join(GOLDEN, "golden.json"), "w") as fh:
        json.dump(golden, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
