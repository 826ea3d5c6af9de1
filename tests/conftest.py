"""One JAX persistent compilation cache for the whole test session, fresh
each session (as in CI: nothing is reused from an earlier session).

The `experiments` programs that the tests start as subprocesses keep their
compiled programs in `$XDG_CACHE_HOME/fedjax_mi/jax` (docs/performance.md,
"Compilation cache"); the session points XDG_CACHE_HOME at a temporary folder, so those
subprocesses share one cache with each other and with this process, which
writes there the programs that took long to compile. A subprocess that runs
what a test already ran in-process then loads its programs instead of
compiling them again. Cached programs are the compiled ones byte for byte:
results do not change (tests/test_golden_run.py).

It also holds the runs that tests of several modules read, computed once
a session: `tiny_run` and `uninterrupted` (their settings are in
tests/helpers/shared.py).
"""

import os
import shutil
import tempfile

import jax
import pytest

# In this process only programs slower than this to compile are written: the
# runs' training rounds and measurements. Writing every small program costs
# more than it saves (docs/performance.md, "Compilation cache").
MIN_COMPILE_SECS = 1.0

_SESSION_CACHE = tempfile.mkdtemp(prefix="fedjax_mi_test_cache_")
os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE
jax.config.update("jax_compilation_cache_dir", os.path.join(_SESSION_CACHE, "fedjax_mi", "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


# Runs that several test modules read, computed once a session
# (tests/helpers/shared.py holds their settings).


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(config, records, logged lines) of the tiny digits run `TINY`, synced
    every 4 steps, in-process."""
    from experiments import progress
    from fedjax_mi import config, sweep
    from helpers.shared import TINY

    out = str(tmp_path_factory.mktemp("run"))
    cfg = config.make(**TINY, protocol="sync", sync_period=4, out=out)
    lines = []
    records = sweep.run(cfg, log=lines.append, progress=progress.Printer(lines.append))
    return cfg, records, lines


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """The bytes of metrics.jsonl of `CONFIG` run whole, in-process."""
    from fedjax_mi import config, sweep
    from helpers.shared import CONFIG

    out = tmp_path_factory.mktemp("whole")
    sweep.run(config.make(**{**CONFIG.flat(), "out": str(out)}), log=lambda line: None)
    with open(out / "metrics.jsonl", "rb") as fh:
        return fh.read()
