"""A digits run's metrics and figures are byte-identical to those the code
wrote before the restructuring of issue 16 (tests/data/golden_digits/, made
by `python -m experiments.run` with the flags in golden.json at the commit
named there).

Bytes are compared where the numeric packages are the versions the golden
files were written with; under other versions (other XLA kernels, other
rasterisers) the metrics are compared to float32 rounding instead and the
figures are not compared.
"""

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

from fedjax_mi import metrics_io

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_digits")


def _same_packages(recorded: dict) -> bool:
    return all(metadata.version(p) == v for p, v in recorded.items())


@pytest.mark.slow
def test_digits_run_matches_the_golden_files(tmp_path):
    with open(os.path.join(GOLDEN, "golden.json")) as fh:
        golden = json.load(fh)
    out = tmp_path / "run"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-m", "experiments.run", *golden["flags"], f"--out={out}"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    )
    got = (out / "metrics.jsonl").read_bytes()
    want = open(os.path.join(GOLDEN, "metrics.jsonl"), "rb").read()
    if _same_packages(golden["packages"]):
        assert got == want
        for name, digest in golden["figures_sha256"].items():
            assert hashlib.sha256((out / "figures" / name).read_bytes()).hexdigest() == digest, name
        return
    new = metrics_io.read_records(str(out / "metrics.jsonl"))
    old = metrics_io.read_records(os.path.join(GOLDEN, "metrics.jsonl"))
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(b[key], float):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-4, err_msg=key)
            else:
                assert a[key] == b[key], key
