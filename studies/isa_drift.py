"""How far do a run's numbers move when XLA generates code for another
instruction set, as on a user's other CPU?

Answer: docs/reliability.md, "Determinism" (the table there is this script's
output for the golden run's flags). The tolerances of the tests that compare
records across programs or machines (tests/helpers/shared.py, `TOLERANCES`)
must lie above what this measures.

    python -m studies.isa_drift --out=docs/results/isa_drift.json  # golden flags, SSE4_2
    python -m studies.isa_drift --isa=AVX2 -- --per_worker=200     # other flags after --

Runs `experiments.run` twice into a temporary folder, natively and with
`XLA_FLAGS=--xla_cpu_max_isa=ISA`, and prints per record field the largest
absolute difference and the number of records in which it differs; `--out`
writes the same as JSON, which `python -m experiments.tables` turns into the
table of docs/reliability.md.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from fedjax_mi import metrics_io

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)
from helpers import machine  # noqa: E402  (the golden test's record of the machine)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "data", "golden_digits", "golden.json")

flags.DEFINE_string("isa", "SSE4_2", "the instruction set of the second run (--xla_cpu_max_isa)")
flags.DEFINE_string("out", None, "also write the result as JSON here (docs/results/isa_drift.json)")
FLAGS = flags.FLAGS


def run(flag_list: list[str], out: str, xla_flags: str | None) -> list[dict]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    subprocess.run(
        [sys.executable, "-m", "experiments.run", *flag_list, f"--out={out}"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return metrics_io.read_records(os.path.join(out, "metrics.jsonl"))


def differences(a: list[dict], b: list[dict]) -> dict[str, tuple[float, int, int]]:
    """{field: (largest |a - b|, records where it differs, records with a value)}."""
    out = {}
    for ra, rb in zip(a, b, strict=True):
        for k, va in ra.items():
            vb = rb[k]
            if not isinstance(va, (int, float)) or isinstance(va, bool) or vb is None:
                continue
            big, n, total = out.get(k, (0.0, 0, 0))
            d = abs(float(va) - float(vb))
            out[k] = (max(big, d), n + (d > 0), total + 1)
    return out


def main(argv):
    with open(GOLDEN) as fh:
        flag_list = argv[1:] or json.load(fh)["flags"]
    with tempfile.TemporaryDirectory() as tmp:
        native = run(flag_list, os.path.join(tmp, "native"), None)
        other = run(flag_list, os.path.join(tmp, "other"), f"--xla_cpu_max_isa={FLAGS.isa}")
    fields = differences(native, other)
    print(f"flags: {' '.join(flag_list)}; native against --xla_cpu_max_isa={FLAGS.isa}")
    print("| field | largest difference | records that differ |")
    print("| --- | --- | --- |")
    for k, (big, n, total) in sorted(fields.items()):
        print(f"| `{k}` | {big:.2g} | {n} of {total} |")
    if FLAGS.out:
        cpu = machine.instruction_set()
        result = dict(
            flags=flag_list,
            isa=FLAGS.isa,
            machine=f"{cpu['cpu']} ({'AVX-512' if 'avx512f' in cpu['features'] else 'no AVX-512'})",
            packages=machine.packages(),
            fields=fields,
        )
        with open(FLAGS.out, "w") as fh:
            json.dump(result, fh, indent=1, sort_keys=True)
            fh.write("\n")


if __name__ == "__main__":
    app.run(main)
