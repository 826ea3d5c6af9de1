"""The paper's stack against ours, on this machine, in one run: PyTorch
training with the EDGE reference computed in Python (the baseline) against
fedjax_mi's scanned round and jitted measurement, per training step and per
eval point, at the study's sizes.

    pip install torch                      # not a dependency of fedjax_mi
    python -m benchmarks.torch_baseline [--samples 25000 --test 10000 --steps 200]

Baseline (what the study's authors would have run):
- training: two PyTorch LeNets (the study's architecture, PyTorch's default
  initialisation), each with its own `torch.optim.SGD` (lr 0.05), batch 32,
  one worker's step after the other in one process; random CIFAR-shaped
  images already converted to float NCHW (the baseline's best case: no data
  loader). Worker-steps per second over `--steps` steps after 10 warm-up
  steps.
- eval point: the forward passes (`torch.no_grad`, chunks of 500) of the
  three models of a run (the two locals and their average) over the two
  local datasets of `--samples` images and `--test` test images, then EDGE
  4.2.0 with the study's settings (`measure.paper_edge_configs`) for
  I(X;Z) and I(Z;Y) of every (model, local dataset) pair, by
  `benchmarks.edge_numpy` (dictionaries and a Python loop per sample, the
  reference's cost structure). `--edge_pairs` of the six pairs are timed and
  the time is scaled to six.
Ours: `federated.make_round` (scanned, vmapped over the workers; the
training step of every run), and `measure.make_measure` with EDGE reference
mode (one run's eval point, the same sizes), each timed after its compiling
call (median of `--repeats`).

As a check that both sides compute the same estimate, the first pair's two
EDGE values are also computed by `fedjax_mi.mi` on the same inputs and the
difference is printed (reference parity, docs/estimators.md). The last
line is one JSON record, with the four paper experiments' totals (4 runs x
15,620 steps x 2 workers and 4 x 158 eval points, run one after the other;
`paper_*_hours`). Figures: docs/performance.md, "Against a PyTorch baseline".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.edge_numpy import numpy_edge
from fedjax_mi import federated, measure, mi, models

LR = 0.05
BATCH = 32
CHUNK = 500
# The four paper experiments (experiments/configs/fig1-4.py at the paper
# preset): 20 epochs of 25,000 images at batch 32, measured every 100 steps.
PAPER_RUNS, PAPER_STEPS, PAPER_POINTS = 4, 15_620, 158


def torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def baseline_training(torch, x, y, steps):
    """Worker-steps per second of two PyTorch workers stepped in turn."""
    workers = [torch_lenet(torch) for _ in range(2)]
    opts = [torch.optim.SGD(w.parameters(), lr=LR) for w in workers]
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3), np.float32) / 255.0)
    yt = torch.from_numpy(y.astype(np.int64))
    batches = x.shape[1] // BATCH

    def step(i):
        b = i % batches
        for k, (w, opt) in enumerate(zip(workers, opts)):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                w(xt[k, b * BATCH : (b + 1) * BATCH]), yt[k, b * BATCH : (b + 1) * BATCH]
            )
            loss.backward()
            opt.step()

    for i in range(10):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return 2 * steps / (time.perf_counter() - t0), workers


def ours_training(x, y, steps, repeats):
    """Worker-steps per second of the scanned, vmapped round."""
    model, opt = models.LeNet(), federated.make_optimizer()
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    state = federated.init(jax.random.key(0), model, opt, xj[0, :1] / 255.0, 2, x.shape[1], LR)
    round_fn = federated.make_round(model, opt, batch_size=BATCH, steps=steps)

    def one_round():
        nonlocal state
        state, metrics = round_fn(state, xj, yj, 0)
        return metrics

    return 2 * steps / timing.time_calls(one_round, repeats=repeats).median_s


def baseline_eval_point(torch, workers, local_x, local_y, test_x, edge_pairs):
    """Seconds of the forwards and of EDGE (scaled to 6 pairs), and the
    first pair's inputs (flat images, labels, z) for the parity check."""
    avg = torch_lenet(torch)
    with torch.no_grad():
        for p, p0, p1 in zip(avg.parameters(), *(w.parameters() for w in workers)):
            p.copy_((p0 + p1) / 2)

    def forward(model, images):
        zs = []
        with torch.no_grad():
            for i in range(0, len(images), CHUNK):
                chunk = images[i : i + CHUNK].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
                z = model[:-1](torch.from_numpy(chunk))  # up to the fc-84 ReLU
                model[-1](z)  # the logits, for the accuracy
                zs.append(z.numpy())
        return np.concatenate(zs)

    t0 = time.perf_counter()
    zs = [
        [forward(m, local_x[d]) for d in range(len(local_x))] for m in (*workers, avg)
    ]  # [model][dataset] -> (n, 84)
    for m in (*workers, avg):
        forward(m, test_x)
    forwards = time.perf_counter() - t0
    xz, zy = (
        {k: v for k, v in dataclasses.asdict(c).items() if k != "stochastic"}
        for c in measure.paper_edge_configs()
    )
    pairs = [(m, d) for m in range(3) for d in range(len(local_x))]
    t0 = time.perf_counter()
    first = None
    for m, d in pairs[:edge_pairs]:
        flat = local_x[d].reshape(len(local_x[d]), -1).astype(np.float32) / 255.0
        values = (numpy_edge(flat, zs[m][d], **xz), numpy_edge(local_y[d], zs[m][d], **zy))
        first = first or (flat, local_y[d], zs[m][d], values)
    edge_s = (time.perf_counter() - t0) * len(pairs) / edge_pairs
    return forwards, edge_s, first


def ours_eval_point(local_x, local_y, test_x, test_y, repeats):
    """Seconds of one run's eval-point measurement, reference EDGE."""
    one = models.LeNet().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    params = jax.tree.map(lambda a: jnp.stack([a, a * 1.01]), one)
    fn = measure.make_measure(
        models.LeNet(conv_impl=models.measure_conv_impl()),
        measure.study_estimators(measure.StudySettings(mi="edge_reference"), 10),
        CHUNK,
    )
    lx, ly, tx, ty = (jnp.asarray(a) for a in (local_x, local_y, test_x, test_y))
    t = timing.time_calls(fn, jax.random.key(1), params, lx, ly, tx, ty, repeats=repeats)
    return t.median_s, t.first_s


def parity(first):
    """Ours (fedjax_mi.mi, reference mode) on the baseline's first pair."""
    flat, labels, z, (xz_np, zy_np) = first
    cfg_xz, cfg_zy = measure.paper_edge_configs()
    key = jax.random.key(0)
    xz = float(mi.estimate(key, jnp.asarray(flat), jnp.asarray(z), cfg_xz))
    zy = float(mi.estimate(key, jnp.asarray(labels), jnp.asarray(z), cfg_zy))
    return dict(numpy=[round(xz_np, 6), round(zy_np, 6)], ours=[round(xz, 6), round(zy, 6)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=25_000, help="images per local dataset")
    parser.add_argument("--test", type=int, default=10_000, help="test images")
    parser.add_argument("--steps", type=int, default=200, help="training steps timed")
    parser.add_argument("--edge_pairs", type=int, default=1, help="(model, dataset) pairs timed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("torch_baseline: PyTorch is not installed (pip install torch)") from None
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (2, BATCH * args.steps, 32, 32, 3), dtype=np.uint8)
    train_y = rng.integers(0, 10, (2, BATCH * args.steps), dtype=np.int32)
    local_x = rng.integers(0, 256, (2, args.samples, 32, 32, 3), dtype=np.uint8)
    local_y = rng.integers(0, 10, (2, args.samples), dtype=np.int32)
    test_x = rng.integers(0, 256, (args.test, 32, 32, 3), dtype=np.uint8)
    test_y = rng.integers(0, 10, (args.test,), dtype=np.int32)

    base_steps, workers = baseline_training(torch, train_x, train_y, args.steps)
    print(f"baseline training: {base_steps:.1f} worker-steps/s", flush=True)
    our_steps = ours_training(train_x, train_y, args.steps, args.repeats)
    print(f"ours training: {our_steps:.1f} worker-steps/s", flush=True)
    forwards, edge_s, first = baseline_eval_point(
        torch, workers, local_x, local_y, test_x, args.edge_pairs
    )
    base_point = forwards + edge_s
    print(
        f"baseline eval point: {base_point:.1f} s (forwards {forwards:.1f} s, EDGE {edge_s:.1f} s)"
    )
    our_point, our_first = ours_eval_point(local_x, local_y, test_x, test_y, args.repeats)
    print(f"ours eval point: {our_point:.2f} s (first call {our_first:.1f} s)", flush=True)

    def hours(steps_per_s, point_s):
        return PAPER_RUNS * (PAPER_STEPS * 2 / steps_per_s + PAPER_POINTS * point_s) / 3600

    record = dict(
        device=jax.devices()[0].device_kind,
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        samples=args.samples,
        test=args.test,
        edge_pairs_timed=args.edge_pairs,
        baseline_worker_steps_per_s=round(base_steps, 1),
        ours_worker_steps_per_s=round(our_steps, 1),
        baseline_eval_point_s=round(base_point, 2),
        baseline_forwards_s=round(forwards, 2),
        baseline_edge_s=round(edge_s, 2),
        ours_eval_point_s=round(our_point, 3),
        eval_point_speedup=round(base_point / our_point, 1),
        paper_baseline_hours=round(hours(base_steps, base_point), 2),
        paper_ours_hours=round(hours(our_steps, our_point), 2),
        parity_first_pair=parity(first),
        **timing.code_version(),
    )
    print(json.dumps(record))


if __name__ == "__main__":
    main()
