"""Collectives in the compiled round with the worker axis split over devices.

Compares (a) plain `jit(vmap(step))` (`federated.make_round`) fed with
worker-sharded inputs, where the SPMD partitioner decides what to
communicate, with (b) `sharding.make_sharded_round` (`shard_map`), where each
device runs its workers alone and the average is one `pmean`. Counts the
collective ops in each compiled HLO and times a round. Without a flag it
fakes 4 CPU devices (set before jax is imported):

    python -m benchmarks.sharding_collectives [--devices 4 --workers 4 --steps 20]
"""

import argparse
import json
import os
import re
import sys

ARGS = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ARGS.add_argument("--devices", type=int, default=4)
ARGS.add_argument("--workers", type=int, default=4)
ARGS.add_argument("--steps", type=int, default=20)
ARGS.add_argument("--samples", type=int, default=640)
args = ARGS.parse_args()
if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402
from fedjax_mi import federated, models, sharding  # noqa: E402

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def count_collectives(hlo: str) -> dict[str, int]:
    """Collective instructions by opcode (an op is written ` opcode(` in HLO text)."""
    return {c: len(re.findall(rf"\s{c}(-start)?\(", hlo)) for c in COLLECTIVES}


def main():
    mesh = sharding.worker_mesh(args.devices)
    rng = np.random.default_rng(0)
    k, n = args.workers, args.samples
    x = jnp.asarray(rng.integers(0, 256, (k, n, 32, 32, 3), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, (k, n), dtype=np.int32))
    model, opt = models.LeNet(), federated.make_optimizer()
    state = federated.init(jax.random.key(0), model, opt, jnp.zeros((1, 32, 32, 3)), k, n, 0.01)
    state, x, y = (sharding.shard_leading(t, mesh) for t in (state, x, y))
    plain = federated.make_round(model, opt, batch_size=32, steps=args.steps)
    mapped = sharding.make_sharded_round(model, opt, mesh, batch_size=32, steps=args.steps)
    result = {"devices": [str(d) for d in mesh.devices.flat], "workers": k, "steps": args.steps}
    for name, fn in (("jit_vmap", plain), ("shard_map", mapped)):
        hlo = fn.lower(state, x, y, 10, args.steps).compile().as_text()
        result[f"{name}_collectives"] = count_collectives(hlo)
        result[f"{name}_round_s"] = round(
            timing.time_calls(fn, state, x, y, 10, args.steps, repeats=1).median_s, 4
        )
        print(
            f"{name:10s} collectives in the compiled round: {result[f'{name}_collectives']}  "
            f"round of {args.steps} steps: {result[f'{name}_round_s']:.3f} s"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
