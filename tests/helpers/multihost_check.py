"""Run by tests/test_multihost.py as two processes on loopback, each with 2
fake CPU devices (4 global devices):

    python tests/helpers/multihost_check.py ROOT PORT PROCESS_ID

Each process runs `experiments.sweep --devices=4` over the two processes
(the CLI's own flags join them) into ROOT/two, the same with `--devices=1`
(every run on one device of each process) into ROOT/one, then the
worker-sharded round over the 4 global devices against the same round on
one device of its own. Prints one JSON line: the process and device
counts and the round's largest difference; the test reads the files.
"""

import json
import os
import sys

# Appended: the portability pass's --xla_cpu_max_isa (.ci/run) stays in force.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from experiments import sweep  # noqa: E402
from fedjax_mi import federated, sharding  # noqa: E402

TINY = [
    "--dataset=digits",
    "--per_worker=48",
    "--batch_size=16",
    "--epochs=2",
    "--eval_period=3",
    "--lr=0.05",
    "--mi_samples=40",
    "--test_samples=40",
    "--mi=none",
    "--checkpoint_every=1",
    "--seeds=0,1",
    "--protocols=sync,nosync",
    "--sync_periods=3",
]


class Tiny(nn.Module):
    """Dense(5) + ReLU (the representation Z) + Dense(3): `(logits, z)` like LeNet."""

    @nn.compact
    def __call__(self, x):
        z = nn.relu(nn.Dense(5)(x))
        return nn.Dense(3)(z), z


def sharded_round_diff() -> float:
    """make_sharded_round over the 4 global devices vs make_round on one
    local device: largest parameter difference after 4 steps with a sync.
    On a two-layer model: the worker axis across processes does not depend
    on the model (LeNet runs across them in the sweeps above), and LeNet's
    rounds took a fifth of this check's time to compile."""
    model, opt = Tiny(), federated.make_optimizer(0.9)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 16, 6), dtype=np.uint8)  # 4 workers, 16 samples, 6 features
    y = rng.integers(0, 3, (4, 16)).astype(np.int32)
    state = jax.jit(federated.init, static_argnums=(1, 2, 4, 5))(
        jax.random.key(0), model, opt, jnp.zeros((1, 6)), 4, 16, lr=0.05
    )
    one, _ = federated.make_round(model, opt, batch_size=8, steps=4)(state, x, y, 2)
    mesh = sharding.worker_mesh(4)
    sharded_fn = sharding.make_sharded_round(model, opt, mesh, batch_size=8, steps=4)
    spread = sharding.shard_leading(state._replace(lr=jnp.asarray(state.lr)), mesh)
    two, _ = sharded_fn(spread, sharding.shard_leading(x, mesh), sharding.shard_leading(y, mesh), 2)
    a, b = jax.device_get(one.params), sharding.fetch(two.params)
    return max(float(np.max(np.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(root: str, port: str, process_id: str):
    argv = [
        "sweep",
        *TINY,
        "--devices=4",
        f"--out={root}/two",
        f"--coordinator=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={process_id}",
        "--compilation_cache_dir=",
    ]
    flags.FLAGS(argv)
    sweep.main(argv[:1])
    # The reference: the same CLI with the runs on one device of each
    # process (each process computes every run; process 0 writes).
    # Checkpoints need global arrays (runs split over the processes): none here.
    flags.FLAGS["devices"].value, flags.FLAGS["out"].value = 1, f"{root}/one"
    flags.FLAGS["checkpoint_every"].value = 0
    sweep.main(argv[:1])
    out = dict(
        process=jax.process_index(),
        processes=jax.process_count(),
        devices=len(jax.devices()),
        local_devices=len(jax.local_devices()),
        round_max_abs_diff=sharded_round_diff(),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
