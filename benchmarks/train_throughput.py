"""Worker-steps per second of federated training on this machine.

(a) the scanned, vmapped round (`fedjax_mi.federated.make_round`): K workers
    stacked on one axis, P steps in one `lax.scan` under `jit`;
(b) a plain Python loop over workers and steps of a jitted single-worker step.

Both are timed after a first, compiling call (best of `--repeats`), for each convolution formulation of LeNet
("patches": slices + batched matmul; "xla": `lax.conv_general_dilated`). The
last line is JSON with `"vmapped_over_loop"`: the best (a) over the best (b).

    python -m benchmarks.train_throughput [--workers 2 --steps 100 --repeats 3]
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from fedjax_mi import federated, models

LR = 0.01


def fake_data(num_workers, num_samples, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (num_workers, num_samples, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, (num_workers, num_samples), dtype=np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def time_scanned(model, opt, x, y, batch_size, steps, repeats):
    state = federated.init(
        jax.random.key(0), model, opt, x[0, :1].astype(jnp.float32), x.shape[0], x.shape[1], LR
    )
    round_fn = federated.make_round(model, opt, batch_size=batch_size, steps=steps)

    def one_round():  # each round continues from the last one's state
        nonlocal state
        state, metrics = round_fn(state, x, y, 0)
        return state, metrics

    best = timing.time_calls(one_round, repeats=repeats).best_s
    return x.shape[0] * steps / best


def time_loop(model, opt, x, y, batch_size, steps, repeats):
    num_workers = x.shape[0]
    local_step = jax.jit(federated.make_local_step(model, opt))
    params = [
        model.init(jax.random.key(0), x[0, :1].astype(jnp.float32))["params"]
        for _ in range(num_workers)
    ]
    opt_states = [opt.init(p) for p in params]
    batches = [
        [
            (
                x[k, i * batch_size : (i + 1) * batch_size],
                y[k, i * batch_size : (i + 1) * batch_size],
            )
            for i in range(steps)
        ]
        for k in range(num_workers)
    ]

    def all_steps():  # every worker's steps, one jitted step at a time
        for i in range(steps):
            for k in range(num_workers):
                params[k], opt_states[k], _ = local_step(
                    params[k], opt_states[k], *batches[k][i], LR
                )
        return params

    best = timing.time_calls(all_steps, repeats=repeats).best_s
    return num_workers * steps / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x, y = fake_data(args.workers, args.batch_size * args.steps)
    opt = federated.make_optimizer()
    result = {
        "device": str(jax.devices()[0]),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "steps": args.steps,
    }
    for impl in ("patches", "xla"):
        model = models.LeNet(conv_impl=impl)
        a = time_scanned(model, opt, x, y, args.batch_size, args.steps, args.repeats)
        b = time_loop(model, opt, x, y, args.batch_size, args.steps, args.repeats)
        print(
            f"conv={impl:8s} (a) scanned vmapped round: {a:8.1f} worker-steps/s   "
            f"(b) per-worker loop of jitted steps: {b:8.1f} worker-steps/s"
        )
        result[f"scanned_{impl}"] = round(a, 1)
        result[f"loop_{impl}"] = round(b, 1)
    best_a = max(result["scanned_patches"], result["scanned_xla"])
    best_b = max(result["loop_patches"], result["loop_xla"])
    result["vmapped_over_loop"] = round(best_a / best_b, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
