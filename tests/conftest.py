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
"""

import os
import shutil
import tempfile

import jax

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
