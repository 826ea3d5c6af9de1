"""The measurement's forward pass per convolution formulation, interleaved.

Run:  python -m benchmarks.measure_forward [--images 6000] [--rounds 5] [--chunk 500]

What one eval point's forward costs per image and model: `measure`'s
forward (`lax.map` over the 3 models of a 2-worker run, `chunked_forward`
over the images), jitted once per formulation of the two convolution
layers (`models.conv_valid`: "xla", "patches", "toeplitz", "s2d"). The
formulations are timed in turn, `--rounds` times round-robin in one
process, so a load change from other jobs on a shared machine hits all of
them alike; each figure is the median over rounds, each ratio is the
median of the per-round ratios to XLA's convolution in both layers. The
process's CPU time per image (all threads) is printed too: on a machine
shared with other jobs it moves less with their load than wall time. The
last line is one JSON record.
"""

import argparse
import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from fedjax_mi import measure, models

IMPLS = ("xla", "patches", "toeplitz", "s2d")


def forward_fn(impl, chunk: int):
    """Jitted (stacked params, uint8 images) -> (logits, z) of every model."""
    model = models.LeNet(conv_impl=impl)
    return jax.jit(
        lambda s, im: jax.lax.map(lambda p: measure.chunked_forward(model, p, im, chunk), s)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--impls", default="all", help="'all' (every pair) or 'a/b,c/d'")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8))
    one = models.LeNet().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    stacked = measure.models_to_measure(jax.tree.map(lambda a: jnp.stack([a, a * 1.01]), one))
    num_models = jax.tree.leaves(stacked)[0].shape[0]
    pairs = (
        list(itertools.product(IMPLS, IMPLS))
        if args.impls == "all"
        else [tuple(p.split("/")) for p in args.impls.split(",")]
    )
    fns = {f"{a}/{b}": forward_fn((a, b), args.chunk) for a, b in pairs}
    load_before = os.getloadavg()
    timed = timing.interleaved(
        {name: functools.partial(fn, stacked, images) for name, fn in fns.items()}, args.rounds
    )
    first, times, cpu = timed.first_s, timed.times, timed.cpu
    ref = jax.block_until_ready(fns[next(iter(fns))](stacked, images))
    diffs = {
        name: float(jnp.max(jnp.abs(fn(stacked, images)[1] - ref[1]))) for name, fn in fns.items()
    }
    base = np.asarray(times["xla/xla"]) if "xla/xla" in times else None
    per_image = 1e6 / (num_models * args.images)
    result = {}
    for name, t in times.items():
        t = np.asarray(t)
        result[name] = dict(
            us_per_image=round(float(np.median(t)) * per_image, 2),
            min_us_per_image=round(float(t.min()) * per_image, 2),
            ratio_to_xla=None if base is None else round(float(np.median(t / base)), 3),
            cpu_us_per_image=round(float(np.median(cpu[name])) * per_image, 2),
            first_call_s=round(first[name], 2),
            max_abs_z_diff=diffs[name],
        )
        print(
            f"{name:18s} {result[name]['us_per_image']:8.2f} us/image (min "
            f"{result[name]['min_us_per_image']:.2f})  x{result[name]['ratio_to_xla']} of xla/xla"
            f"   {result[name]['cpu_us_per_image']:8.2f} us CPU time/image",
            flush=True,
        )
    print(
        json.dumps(
            dict(
                device=jax.devices()[0].device_kind,
                backend=jax.default_backend(),
                images=args.images,
                models=num_models,
                chunk=args.chunk,
                rounds=args.rounds,
                load_before=load_before,
                load_after=os.getloadavg(),
                results=result,
            )
        )
    )


if __name__ == "__main__":
    main()
