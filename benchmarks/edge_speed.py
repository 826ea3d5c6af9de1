"""Speed of EDGE at the study's eval-point shapes.

Run:  python -m benchmarks.edge_speed [--n 25000] [--repeats 5]

Times one jitted call after compilation (`benchmarks.timing`) at N = 25,000
for I(X; Z) (X 3,072-dim images, Z the 84-dim representation) and I(Z; Y)
(10-class labels, on the first side as `measure` calls it), in reference
4.2.0 mode with the settings the reference's own CNN analysis used
(`measure.paper_edge_configs()`; docs/estimators.md, "EDGE reference mode")
and with the project's quantile rule (`mi.EdgeQuantile()`); then the whole
eval-point batch (3 models x 2 local datasets x 2 MI values) vmapped. The
last line printed is one JSON record with the seconds per call.

Z is the fc-84 activation of the project's LeNet (`models.LeNet`) at three
random inits, computed as the measurement does (`measure.chunked_forward`),
on CIFAR-like images (random class templates plus noise, quantised to
uint8), so each mode's I(Z; Y) is shown next to H(Y) and its floor (labels
shuffled): it must be clearly below H(Y), not saturated.
"""

from __future__ import annotations

import argparse
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from fedjax_mi import federated, measure, mi, models

N = 25_000
CLASSES = 10
MODELS, DATASETS = 3, 2
MODES = {
    "reference_4.2.0": measure.paper_edge_configs(),
    "quantile": (mi.EdgeQuantile(), mi.EdgeQuantile()),
}


def cifar_like(key: jax.Array, n: int, signal: float = 0.15):
    """(n, 32, 32, 3) float32 images in [0, 1] and (n,) int32 labels.

    Each class has a smooth random template; an image is its class template
    times `signal` plus uniform noise, so labels are only weakly recoverable.
    """
    k_lab, k_tmp, k_noise = jax.random.split(key, 3)
    labels = jax.random.randint(k_lab, (n,), 0, CLASSES)
    coarse = jax.random.uniform(k_tmp, (CLASSES, 4, 4, 3))
    templates = jax.image.resize(coarse, (CLASSES, 32, 32, 3), "linear")
    noise = jax.random.uniform(k_noise, (n, 32, 32, 3))
    return (1 - signal) * noise + signal * templates[labels], labels


def eval_point_inputs(data_key: jax.Array, model_keys, n: int, chunk: int = 500):
    """x (n, 3072) pixels in [0, 1], z (models, n, 84) of the project LeNet at
    each init in `model_keys`, y (n,) labels, from `cifar_like` images
    quantised to uint8 as the study's datasets are."""
    images, labels = cifar_like(data_key, n)
    images_u8 = jnp.round(images * 255).astype(jnp.uint8)
    model = models.LeNet()
    forward = jax.jit(lambda p, x: measure.chunked_forward(model, p, x, chunk)[1])
    z = jnp.stack([forward(model.init(k, images[:1])["params"], images_u8) for k in model_keys])
    return federated.scale_images(images_u8).reshape(n, -1), z, labels


def speed(n: int, repeats: int) -> dict:
    xs, zs, ys = [], [], []
    model_keys = [jax.random.key(100 + m) for m in range(MODELS)]
    for k in jax.random.split(jax.random.key(0), DATASETS):
        x, z, y = eval_point_inputs(k, model_keys, n)
        xs.append(x)
        zs.append(z)
        ys.append(y)
    x = jnp.stack(xs)  # (datasets, n, 3072)
    z = jnp.stack(zs, axis=1)  # (models, datasets, n, 84)
    y = jnp.stack(ys)  # (datasets, n)

    k = jax.random.key(1)
    out = {}
    for name, (cfg_xz, cfg_zy) in MODES.items():
        xz = jax.jit(functools.partial(mi.estimate_traced, k, config=cfg_xz))
        zy = jax.jit(functools.partial(mi.estimate_traced, k, config=cfg_zy))
        t_xz = timing.time_calls(xz, x[0], z[0, 0], repeats=repeats)
        t_zy = timing.time_calls(zy, y[0], z[0, 0], repeats=repeats)

        @jax.jit
        def batch(x, z, y, cfg_xz=cfg_xz, cfg_zy=cfg_zy):
            # Models outer, datasets inner; x and y are per dataset, shared by models.
            per_dataset = lambda cfg: jax.vmap(lambda a, b: mi.estimate_traced(k, a, b, cfg))
            return (
                jax.vmap(per_dataset(cfg_xz), (None, 0))(x, z),
                jax.vmap(per_dataset(cfg_zy), (None, 0))(y, z),
            )

        t_batch = timing.time_calls(batch, x, z, y, repeats=2)
        b_zy = t_batch.value[1]
        # The estimator's floor on the same inputs: the pairing shuffled.
        floor_xz = mi.floor(k, x[0], z[0, 0], cfg_xz, n=2)
        floor_zy = mi.floor(k, y[0], z[0, 0], cfg_zy, n=2)
        v_xz, v_zy = float(t_xz.value), float(t_zy.value)
        out[name] = dict(
            xz_s=t_xz.median_s,
            zy_s=t_zy.median_s,
            batch_s=t_batch.median_s,
            i_xz_bits=v_xz,
            i_zy_bits=v_zy,
            shuffled_xz_bits=float(floor_xz),
            shuffled_zy_bits=float(floor_zy),
            batch_i_zy_bits=np.asarray(b_zy).round(4).tolist(),
        )
        print(
            f"{name:16s} I(X;Z) {t_xz.median_s * 1e3:8.1f} ms ({v_xz:.3f} bits, shuffled "
            f"{float(floor_xz):.3f})  I(Z;Y) {t_zy.median_s * 1e3:8.1f} ms ({v_zy:.3f} bits, "
            f"shuffled {float(floor_zy):.3f}, H(Y) = {math.log2(CLASSES):.3f})  "
            f"batch of {MODELS * DATASETS * 2}: {t_batch.median_s:.3f} s",
            flush=True,
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=N, help="samples per estimate")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed calls after the first (median)"
    )
    args = parser.parse_args()
    device = jax.devices()[0].device_kind
    print(f"jax {jax.__version__} on {device}, N = {args.n}")
    print(json.dumps(dict(n=args.n, device=device, **speed(args.n, args.repeats))))


if __name__ == "__main__":
    main()
