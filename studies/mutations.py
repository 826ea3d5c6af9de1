"""Would the test suite notice a wrong study? Plant known bugs and see.

Answer: yes for every mutation in the list: each one fails at least one test
(the last full run caught all of them). Figures: docs/reliability.md,
"Mutations the suite catches".

Run:  python -m studies.mutations              # every mutation (~15-30 min, 2 cores)
      python -m studies.mutations --only ignore_lr average_is_worker0
      python -m studies.mutations --list

Each mutation is one exact string replacement in one library file. It is
applied to a scratch copy of the working tree in a temporary folder (the
repository itself is never touched; .git, .venv and runs/ are not copied),
and the tests it names are run there with pytest, with the copy first on
the import path (checked before anything runs). A mutation is CAUGHT when
pytest exits with status 1 (some test failed); the failing tests are
listed. Any other outcome is reported as such: NOT CAUGHT (status 0), or
ERROR (collection or usage errors, a timeout) which proves nothing. A
replacement whose text is not found exactly once in the current source is
STALE: the code moved, and the mutation must be rewritten, not skipped.

First the unmutated copy runs the union of the named tests; they must all
pass, or the run stops. The exit status is 0 only if every mutation that
was run is caught. The table of the last full run is in
docs/reliability.md ("Mutations the suite catches"). Not run in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IGNORED = (".git", ".venv", "runs", "__pycache__", ".pytest_cache", "*.egg-info")
TIMEOUT_S = 1800

TRAINING_TESTS = ("tests/test_round_reference.py", "tests/test_federated.py")


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    description: str
    path: Optional[str]  # None: a placeholder, not yet written
    old: str = ""
    new: str = ""
    tests: tuple[str, ...] = ()


_DO_SYNC = "(sync_period > 0) & (state.step > 0) & (state.step % jnp.maximum(sync_period, 1) == 0)"

MUTATIONS = (
    Mutation(
        "sync_every_step",
        "sync at every step whenever sync_period > 0",
        "fedjax_mi/federated.py",
        _DO_SYNC,
        "(sync_period > 0) & (state.step > 0)",
        TRAINING_TESTS,
    ),
    Mutation(
        "sync_one_step_late",
        "sync before step s + 1 instead of step s (s % period == 0)",
        "fedjax_mi/federated.py",
        _DO_SYNC,
        "(sync_period > 0) & (state.step > 1) & ((state.step - 1) % jnp.maximum(sync_period, 1) == 0)",
        TRAINING_TESTS,
    ),
    Mutation(
        "ignore_opt_sync",
        "the round ignores opt_sync (always averages the optimiser state)",
        "fedjax_mi/federated.py",
        "lambda p, o: sync(p, o, optimizer, opt_sync, axis_name, how, weights)",
        'lambda p, o: sync(p, o, optimizer, "average", axis_name, how, weights)',
        TRAINING_TESTS,
    ),
    Mutation(
        "ignore_lr",
        "the local step ignores the learning rate (unit rate)",
        "fedjax_mi/federated.py",
        "updates = jax.tree.map(lambda u: lr * u, updates)",
        "updates = jax.tree.map(lambda u: u, updates)",
        TRAINING_TESTS,
    ),
    Mutation(
        "average_is_worker0",
        "the average taken as worker 0's parameters",
        "fedjax_mi/federated.py",
        "mean = jax.tree.map(lambda p: jnp.mean(p, axis=0), params)",
        "mean = jax.tree.map(lambda p: p[0], params)",
        TRAINING_TESTS,
    ),
    Mutation(
        "unpickler_any_numpy",
        "the CIFAR unpickler resolves any numpy.* global",
        "fedjax_mi/data.py",
        "    def find_class(self, module: str, name: str) -> Any:\n        try:",
        "    def find_class(self, module: str, name: str) -> Any:\n"
        '        if module.split(".")[0] == "numpy":\n'
        "            return super().find_class(module, name)\n"
        "        try:",
        ("tests/test_data.py",),
    ),
    # Beyond the list: two more training bugs of the same family.
    Mutation(
        "update_sign_flipped",
        "gradient ascent: the update's sign flipped",
        "fedjax_mi/federated.py",
        "updates = jax.tree.map(lambda u: lr * u, updates)",
        "updates = jax.tree.map(lambda u: -lr * u, updates)",
        TRAINING_TESTS,
    ),
    Mutation(
        "same_order_every_epoch",
        "every epoch replays epoch 0's sample order",
        "fedjax_mi/federated.py",
        "lambda: epoch_order(state.data_keys, epoch, num_samples)",
        "lambda: epoch_order(state.data_keys, 0, num_samples)",
        TRAINING_TESTS,
    ),
    # Measurement mutations, written after the measurement rewrite .
    # M = K + 1 models and D = K datasets: a literal transpose would fail on
    # its shape, so each axis is mixed up on its own.
    Mutation(
        "records_model_axis_reversed",
        "estimator fields of model i written to model M-1-i",
        "fedjax_mi/outputs.py",
        "**{k: clean(v[i, d]) for k, v in sorted(m.mi.items())}",
        "**{k: clean(v[num_models - 1 - i, d]) for k, v in sorted(m.mi.items())}",
        ("tests/test_measure.py",),
    ),
    Mutation(
        "records_dataset_axis_reversed",
        "estimator fields of dataset d written to dataset D-1-d",
        "fedjax_mi/outputs.py",
        "**{k: clean(v[i, d]) for k, v in sorted(m.mi.items())}",
        "**{k: clean(v[i, num_datasets - 1 - d]) for k, v in sorted(m.mi.items())}",
        ("tests/test_measure.py",),
    ),
    Mutation(
        "floor_without_shuffling",
        "the floor pairs each sample with itself (no shuffle)",
        "fedjax_mi/measure.py",
        "return jax.random.permutation(jax.random.fold_in(key, 1), n)",
        "return jnp.arange(n)",
        ("tests/test_measure.py",),
    ),
)


def copy_tree(dest: str) -> None:
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)


def check_imports_from(copy: str, env: dict) -> None:
    """Refuse to run if the copy's packages are not the ones imported there
    (an editable install could otherwise win and test the unmutated tree)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fedjax_mi, experiments; print(fedjax_mi.__file__); print(experiments.__file__)",
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    real = os.path.realpath(copy)
    for path in out:
        if not os.path.realpath(path).startswith(real + os.sep):
            raise SystemExit(f"mutations: {path} is imported instead of the scratch copy's")


def run_pytest(copy: str, env: dict, tests: tuple[str, ...]) -> tuple[int, list[str], str]:
    """(exit status, failing test ids, output tail); status -1 on a timeout."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(
            cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return -1, [], "timeout"
    output = proc.stdout + proc.stderr
    failed = sorted(set(re.findall(r"^FAILED (\S+)", output, flags=re.MULTILINE)))
    return proc.returncode, failed, output[-2000:]


def apply(copy: str, m: Mutation) -> Optional[str]:
    """Apply m in the copy; None, or why it could not be applied."""
    path = os.path.join(copy, m.path)
    with open(path) as fh:
        text = fh.read()
    count = text.count(m.old)
    if count != 1:
        return f"STALE: the text to replace occurs {count} times in {m.path}"
    with open(path, "w") as fh:
        fh.write(text.replace(m.old, m.new))
    return None


def by_function(test_ids: list[str]) -> list[tuple[str, int]]:
    """Failing test ids grouped by test function: [(file::function, cases)]."""
    counts: dict[str, int] = {}
    for test_id in test_ids:
        name = test_id.split("[")[0]
        counts[name] = counts.get(name, 0) + 1
    return sorted(counts.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:28s} {m.path or '-':24s} {m.description}")
        return 0
    chosen = [m for m in MUTATIONS if m.path and (not args.only or m.name in args.only)]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        raise SystemExit(f"mutations: unknown names {sorted(unknown)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutations-") as scratch:
        pristine = os.path.join(scratch, "pristine")
        copy_tree(pristine)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (pristine, os.environ.get("PYTHONPATH")) if p),
        }
        check_imports_from(pristine, env)
        union = tuple(sorted({t for m in chosen for t in m.tests}))
        t0 = time.perf_counter()
        status, failed, tail = run_pytest(pristine, env, union)
        print(
            f"baseline (unmutated copy): {' '.join(union)} -> status {status} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        if status != 0:
            print(tail)
            raise SystemExit("mutations: the unmutated copy fails its tests; nothing to learn")
        for m in chosen:
            copy = os.path.join(scratch, m.name)
            copy_tree(copy)
            env_m = {**env, "PYTHONPATH": env["PYTHONPATH"].replace(pristine, copy, 1)}
            t0 = time.perf_counter()
            problem = apply(copy, m)
            if problem:
                verdict, failed = problem, []
            else:
                status, failed, tail = run_pytest(copy, env_m, m.tests)
                verdict = {0: "NOT CAUGHT", 1: "CAUGHT"}.get(status, f"ERROR (status {status})")
                if status not in (0, 1):
                    print(tail)
            rows.append((m, verdict, failed))
            print(
                f"{m.name}: {verdict} in {time.perf_counter() - t0:.0f} s; failing: "
                f"{', '.join(failed) or '-'}",
                flush=True,
            )
            shutil.rmtree(copy)
    print("\n| mutation | file | verdict | failing tests |")
    print("| --- | --- | --- | --- |")
    for m, verdict, failed in rows:
        shown = (
            "<br>".join(
                f"`{name}`{f' ({n} cases)' if n > 1 else ''}" for name, n in by_function(failed)
            )
            or "-"
        )
        print(f"| {m.description} (`{m.name}`) | `{m.path}` | {verdict} | {shown} |")
    for m in MUTATIONS:
        if m.path is None:
            print(f"| {m.description} (`{m.name}`) | - | not written yet | - |")
    return 0 if all(v == "CAUGHT" for _, v, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
