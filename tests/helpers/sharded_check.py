"""Run by tests/test_sharding.py in a subprocess with 4 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before jax
is imported):

    python tests/helpers/sharded_check.py ROOT

Two checks in one process (one start-up of jax for both):
- `round_check`: the worker-sharded round over 4 and over 2 devices against
  the one-device round, for three protocols, and the collectives it compiles to;
- `sweep_check`: a four-run sweep (periodic, nosync, dynamic, triggered) on
  one device, split over 2 and over 4 devices, and one checkpointed on 2
  devices and resumed on 4, into ROOT.
Prints one JSON line of both checks' results."""

import json
import os
import re
import shutil
import sys

# Run as a script, its folder is first on the path: the repository goes
# before it, so that this working tree is imported, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fedjax_mi import config, federated, sharding, sweep  # noqa: E402

# The worker-sharded round on a two-layer model (as tests/test_round_reference.py):
# what is checked (the placement of the worker axis, the pmean at a sync, the
# dynamic protocol's cross-device check) does not depend on the model, and
# LeNet's rounds took most of this check's time to compile. LeNet runs
# sharded in the sweeps below.
K, N, B, STEPS = 4, 32, 8, 6
D, C = 6, 3  # input features, classes


class Tiny(nn.Module):
    """Dense(5) + ReLU (the representation Z) + Dense(C): `(logits, z)` like LeNet."""

    @nn.compact
    def __call__(self, x):
        z = nn.relu(nn.Dense(5)(x))
        return nn.Dense(C)(z), z


def leaves(state, loss):
    return [np.asarray(a) for a in jax.tree.leaves((state.params, state.opt_state, loss))]


def round_check() -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (K, N, D), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, C, (K, N), dtype=np.int32))
    model, opt = Tiny(), federated.make_optimizer(0.9)
    state = jax.jit(federated.init, static_argnums=(1, 2, 4, 5, 7))(
        jax.random.key(0), model, opt, jnp.zeros((1, D)), K, N, 0.05, False
    )
    # Protocols as data (docs/protocols.md): no-sync, periodic 2 and dynamic
    # (checked every 2 steps; its "any worker violates" is a pmax across
    # devices), all through one compiled round.
    protocols = {
        0: federated.protocol_of("nosync"),
        2: federated.protocol_of("periodic", sync_period=2),
        "dyn": federated.protocol_of("dynamic", check_every=2, delta=1e-3),
    }
    plain = federated.make_round(model, opt, batch_size=B, steps=STEPS)
    out = {}
    for devices in (4, 2):
        mesh = sharding.worker_mesh(devices)
        sharded = sharding.make_sharded_round(model, opt, mesh, batch_size=B, steps=STEPS)
        for period, protocol in protocols.items():
            s_state, s_loss = sharded(
                sharding.shard_leading(state, mesh),
                sharding.shard_leading(x, mesh),
                sharding.shard_leading(y, mesh),
                protocol,
                5,
            )
            p_state, p_loss = plain(state, x, y, protocol, 5)
            again, again_loss = sharded(
                state, x, y, protocol, 5
            )  # same inputs, placed by the round
            out[f"syncs_d{devices}_p{period}"] = [int(s_state.syncs), int(p_state.syncs)]
            sharded_leaves = leaves(s_state, s_loss)
            out[f"bitwise_repeat_d{devices}_p{period}"] = all(
                np.array_equal(a, b) for a, b in zip(sharded_leaves, leaves(again, again_loss))
            )
            out[f"max_abs_diff_d{devices}_p{period}"] = max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(sharded_leaves, leaves(p_state, p_loss))
            )
            out[f"step_d{devices}_p{period}"] = int(s_state.step)
            out[f"sharded_over_d{devices}"] = len(
                jax.tree.leaves(s_state.params)[-1].sharding.device_set
            )
        # The program of the calls above (every protocol runs through it),
        # compiled already: its text, not a compilation of its own.
        hlo = sharded.lower(state, x, y, protocols[2], 5).compile().as_text()
        for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
            out[f"{op}_d{devices}"] = len(re.findall(rf"\s{op}(-start)?\(", hlo))
    return out


TINY = dict(
    dataset="digits",
    per_worker=48,
    batch_size=16,
    epochs=2.0,
    eval_period=3,
    lr=0.05,
    mi_samples=40,
    test_samples=40,
    checkpoint_every=0,
    mi="kde",
)


def sweep_check(root: str) -> dict:
    # Every protocol (docs/protocols.md): the triggered run's pending sync
    # and the counters must also survive the checkpoint and the resume.
    cfgs = [
        config.make(**TINY, seed=seed, **protocol)
        for seed, protocol in zip(
            (0, 0, 1, 1),
            (
                dict(protocol="sync", sync_period=3),
                dict(protocol="nosync"),
                dict(protocol="dynamic", check_every=2, delta=0.02),
                dict(protocol="triggered", trigger_ratio=0.9),
            ),
        )
    ]
    out = {}
    for devices in (1, 2, 4):
        run = [
            config.make(**{**c.flat(), "out": os.path.join(root, f"d{devices}", str(i))})
            for i, c in enumerate(cfgs)
        ]
        out[f"records_d{devices}"] = sweep.run_sweep(run, log=lambda line: None, devices=devices)
    # Checkpointed on 2 devices, the newest checkpoint removed, resumed on 4.
    resumable = [
        config.make(**{**c.flat(), "checkpoint_every": 1, "out": os.path.join(root, "r", str(i))})
        for i, c in enumerate(cfgs)
    ]
    sweep.run_sweep(resumable, log=lambda line: None, devices=2)
    ckpts = os.path.join(root, "r", "checkpoints")
    shutil.rmtree(os.path.join(ckpts, max((d for d in os.listdir(ckpts) if d.isdigit()), key=int)))
    lines = []
    out["records_resumed_d4"] = sweep.run_sweep(
        [config.make(**{**c.flat(), "resume": True}) for c in resumable],
        log=lines.append,
        devices=4,
    )
    out["resumed"] = any("resumed from the checkpoint" in line for line in lines)
    for devices, runs in ((3, 4), (8, 4)):  # uneven split; more devices than jax sees
        try:
            sweep.run_sweep(
                [
                    config.make(**{**c.flat(), "out": os.path.join(root, f"bad{devices}", str(i))})
                    for i, c in enumerate(cfgs[:runs])
                ],
                log=lambda line: None,
                devices=devices,
            )
            out[f"error_d{devices}"] = None
        except config.ConfigError as e:
            out[f"error_d{devices}"] = str(e)
    return out


def main(root: str):
    assert len(jax.devices()) == 4, jax.devices()
    print(json.dumps({**round_check(), **sweep_check(root)}))


if __name__ == "__main__":
    main(sys.argv[1])
