"""Run by tests/test_sharding.py in a subprocess with 4 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before jax
is imported). Prints one JSON line of results."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mi import federated, models, sharding

K, N, B, STEPS = 4, 32, 8, 6


def main():
    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (K, N, 32, 32, 1), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, (K, N), dtype=np.int32))
    model, opt = models.LeNet(), federated.make_optimizer(0.9)
    # jitted: op by op, LeNet's initialisation compiles a program per op (seconds).
    state = jax.jit(federated.init, static_argnums=(1, 2, 4, 5, 7))(
        jax.random.key(0), model, opt, jnp.zeros((1, 32, 32, 1)), K, N, 0.05, False
    )
    out = {}
    for devices in (4, 2):
        mesh = sharding.worker_mesh(devices)
        sharded = sharding.make_sharded_round(model, opt, mesh, batch_size=B, steps=STEPS)
        plain = federated.make_round(model, opt, batch_size=B, steps=STEPS)
        # Protocols as data (docs/protocols.md): no-sync, periodic 2 and dynamic
        # (checked every 2 steps; its "any worker violates" is a pmax across
        # devices), all through one compiled round.
        protocols = {
            0: federated.protocol_of("nosync"),
            2: federated.protocol_of("periodic", sync_period=2),
            "dyn": federated.protocol_of("dynamic", check_every=2, delta=1e-3),
        }
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
            out[f"bitwise_repeat_d{devices}_p{period}"] = all(
                bool(jnp.array_equal(a, b))
                for a, b in zip(
                    jax.tree.leaves((s_state.params, s_state.opt_state, s_loss)),
                    jax.tree.leaves((again.params, again.opt_state, again_loss)),
                )
            )
            diff = max(
                float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(
                    jax.tree.leaves((s_state.params, s_state.opt_state, s_loss)),
                    jax.tree.leaves((p_state.params, p_state.opt_state, p_loss)),
                )
            )
            out[f"max_abs_diff_d{devices}_p{period}"] = diff
            out[f"step_d{devices}_p{period}"] = int(s_state.step)
            out[f"sharded_over_d{devices}"] = len(
                s_state.params["Dense_2"]["kernel"].sharding.device_set
            )
        hlo = sharded.lower(state, x, y, 2, STEPS).compile().as_text()
        for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
            out[f"{op}_d{devices}"] = len(re.findall(rf"\s{op}(-start)?\(", hlo))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
