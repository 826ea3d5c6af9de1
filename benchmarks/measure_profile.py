"""Where one eval-point measurement's time goes: forward passes vs EDGE.

Run:  python -m benchmarks.measure_profile [M] [T]    (defaults 25000 10000)

One run's measurement as `experiment` builds it (2 workers, so 3 models: the
two locals and their average), on random uint8 images: M samples per local
dataset (2 datasets) and T test samples. Times (median of 5 calls after the
compiling one) the whole `measure.make_measure` for both LeNet convolution
forms ("patches", "xla") and two forward chunk sizes; the forward passes
alone (3 models over 2 M + T images); and the EDGE part alone (3 models x 2
datasets x 2 MI values, vmapped) in the reference and default configs. The
last line is one JSON record.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from fedjax_mi import federated, measure, models
from fedjax_mi import mi


def main(m: int = 25_000, t_n: int = 10_000):
    rng = np.random.default_rng(0)
    local_x = jnp.asarray(rng.integers(0, 256, (2, m, 32, 32, 3), dtype=np.uint8))
    local_y = jnp.asarray(rng.integers(0, 10, (2, m)), jnp.int32)
    test_x = jnp.asarray(rng.integers(0, 256, (t_n, 32, 32, 3), dtype=np.uint8))
    test_y = jnp.asarray(rng.integers(0, 10, (t_n,)), jnp.int32)
    one = models.LeNet().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    params = jax.tree.map(lambda a: jnp.stack([a, a * 1.01]), one)  # 2 workers
    key = jax.random.key(1)
    out = {}

    def record(name, fn, *args):
        t = timing.time_calls(fn, *args, repeats=5)
        out[name] = dict(s=round(t.median_s, 5), first_s=round(t.first_s, 2))
        print(name, out[name], flush=True)

    images = jnp.concatenate([local_x.reshape((-1, 32, 32, 3)), test_x])
    stacked = measure.models_to_measure(params)
    for impl in ("patches", "xla"):
        model = models.LeNet(conv_impl=impl)
        for chunk in (500, 5000):
            fn = measure.make_measure(
                model,
                measure.study_estimators(measure.StudySettings(mi="edge_reference"), 10),
                chunk,
            )
            record(f"measure_{impl}_{chunk}", fn, key, params, local_x, local_y, test_x, test_y)
        forward = jax.jit(
            lambda s, im, model=model: jax.lax.map(
                lambda p: measure.chunked_forward(model, p, im, 5000), s
            )
        )
        record(f"forward_{impl}_5000", forward, stacked, images)
    z = jax.nn.relu(jax.random.normal(jax.random.key(2), (3, 2, m, 84)))
    modes = {
        "reference": measure.paper_edge_configs(),
        "quantile": (mi.EdgeQuantile(), mi.EdgeQuantile()),
    }
    for mode, (cfg_xz, cfg_zy) in modes.items():

        def pair(key, x, y, z, cfg_xz=cfg_xz, cfg_zy=cfg_zy):
            flat = federated.scale_images(x).reshape(x.shape[0], -1)
            return (mi.estimate_traced(key, flat, z, cfg_xz), mi.estimate_traced(key, y, z, cfg_zy))

        batch = jax.jit(
            jax.vmap(jax.vmap(pair, in_axes=(None, 0, 0, 0)), in_axes=(None, None, None, 0))
        )
        record(f"edge_batch12_{mode}", batch, key, local_x, local_y, z)
    print(json.dumps(dict(device=jax.devices()[0].device_kind, m=m, test=t_n, **out)))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
