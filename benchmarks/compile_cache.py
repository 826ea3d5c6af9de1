"""Start-up time of an experiment with and without the persistent compilation cache.

Run:  python -m benchmarks.compile_cache [-- extra experiments.run flags]
      (default: fig1's config on CIFAR-10 in data/, 2,000 samples per
      worker, 1,000 measured, eval every 100 steps, 124 steps)

Runs `python -m experiments.run` three times with the same flags: with
`--compilation_cache_dir` set to a fresh folder (cold: every program
traced, compiled and written, the round, the measurement and the initial
states also as exported traced programs, `fedjax_mi.program_cache`), again
with the same folder (warm: both read back, nothing traced or compiled
again), and with '' (both caches off). For each it prints the seconds from
launch to the first progress line (the step-0 measurement done: training
starts right after), to the second (the first round trained and
measured), and to exit. The last line is one JSON record.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

DEFAULT = [
    "--config=fig1",
    "--cifar_dir=data/cifar-10-batches-py",
    "--per_worker=2000",
    "--mi_samples=1000",
    "--test_samples=1000",
    "--epochs=2",
    "--eval_period=100",
    "--overwrite",
]


def timed_run(flags: list[str], out: str) -> dict:
    """Seconds from launch to each '[run] step' line and to exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", f"--out={out}", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        if line.startswith("[run] step"):
            lines.append(round(time.perf_counter() - t0, 2))
    rc = proc.wait()
    return dict(
        rc=rc,
        first_progress_s=lines[0] if lines else None,
        second_progress_s=lines[1] if len(lines) > 1 else None,
        exit_s=round(time.perf_counter() - t0, 2),
    )


def main(extra: list[str]):
    flags = extra or DEFAULT
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        result = {}
        for name, value in (("cold", cache), ("warm", cache), ("off", "")):
            result[name] = timed_run(
                flags + [f"--compilation_cache_dir={value}"], os.path.join(tmp, name)
            )
            print(name, result[name], flush=True)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
    print(
        json.dumps(
            dict(flags=flags, cache_mb=round(size / 2**20, 1), load=os.getloadavg(), **result)
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
