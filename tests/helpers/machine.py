"""What decides the last bits of a run's numbers besides the code: the packages and
the instruction set XLA generates code for (docs/reliability.md, "Determinism").

`instruction_set()` is recorded in tests/data/golden_digits/golden.json; the golden
test compares bytes only where it and the packages match.
"""

import os
import platform
import re
from importlib import metadata

# The CPU features that change the code XLA's CPU backend generates (vector width,
# fused multiply-add, dot kernels).
_FEATURES = re.compile(r"^(sse4_[12]|avx|avx2|fma|f16c|avx_vnni|avx512\w*|amx\w*)$")
# The numeric packages whose versions decide the bits (and the figures' pixels).
PACKAGES = ("jax", "jaxlib", "numpy", "matplotlib", "flax", "optax", "scipy", "scikit-learn")


def _cpuinfo() -> tuple[str, list[str]]:
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:  # not Linux: the processor's name only
        return platform.processor(), []
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    found = flags.group(1).split() if flags else []
    return (model.group(1).strip() if model else ""), sorted(
        f for f in set(found) if _FEATURES.match(f)
    )


def instruction_set() -> dict:
    """The processor, its vector features and the `--xla_cpu_max_isa` cap in
    XLA_FLAGS (None when not set)."""
    cpu, features = _cpuinfo()
    cap = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "features": features,
        "xla_cpu_max_isa": cap.group(1) if cap else None,
    }


def packages() -> dict:
    return {p: metadata.version(p) for p in PACKAGES}
