"""Issue 12: PyTorch's initialisation, the input scale, seeds in one sweep,
and the interpolation between the local models."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mi import config, federated, metrics_io, models, outputs, sweep

# fan_in of each LeNet layer written out by hand from the architecture
# (conv 6@5x5 on 3 channels, conv 16@5x5 on 6, fc 400 -> 120 -> 84 -> 10).
FAN_IN = {"Conv_0": 3 * 5 * 5, "Conv_1": 6 * 5 * 5, "Dense_0": 16 * 5 * 5, "Dense_1": 120,
          "Dense_2": 84}


def test_torch_init_bounds_and_moments():
    """Every weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)): inside the
    bound, reaching close to it, and with the uniform law's mean 0 and
    variance b^2/3 (within 5 standard errors)."""
    model = models.LeNet()
    # jitted: op by op, flax compiles one small program per initialiser shape.
    init = jax.jit(models.init_params, static_argnums=(1, 3))
    params = init(jax.random.key(3), model, jnp.zeros((1, 32, 32, 3)), "torch")
    assert set(params) == set(FAN_IN)
    for name, fan_in in FAN_IN.items():
        b = 1.0 / math.sqrt(fan_in)
        for part in ("kernel", "bias"):
            w = np.asarray(params[name][part], np.float64).ravel()
            assert np.abs(w).max() <= b, (name, part)
            n = w.size
            # The largest |w| of n uniform draws falls below b(1 - 5/n) with probability e^-5.
            assert np.abs(w).max() >= b * (1 - 5.0 / n), (name, part)
            assert abs(w.mean()) <= 5 * b / math.sqrt(3 * n), (name, part)
            var_se = math.sqrt(4.0 / 45.0) * b * b / math.sqrt(n)  # sd of w^2 / sqrt(n)
            assert abs(np.mean(w * w) - b * b / 3) <= 5 * var_se, (name, part)
    flax = init(jax.random.key(3), model, jnp.zeros((1, 32, 32, 3)), "flax")
    assert np.all(np.asarray(flax["Dense_0"]["bias"]) == 0)  # flax: zero biases


def test_symmetric_input_scale_is_the_unit_model_on_2x_minus_1():
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 32, 32, 3)), jnp.float32)
    params = jax.jit(models.LeNet().init)(jax.random.key(0), x)["params"]
    sym = models.LeNet(input_scale="symmetric").apply({"params": params}, x)
    unit = models.LeNet().apply({"params": params}, 2 * x - 1)
    np.testing.assert_array_equal(np.asarray(sym[0]), np.asarray(unit[0]))


def test_init_runs_mixes_schemes_per_run():
    """A run's initial weights in a sweep mixing schemes are those of a sweep
    of that scheme alone (bit for bit; one compilation: the scheme is data),
    torch's with nonzero biases, flax's with zero ones."""
    model, opt = models.LeNet(), federated.make_optimizer()
    x = jnp.zeros((1, 32, 32, 1))
    keys = jax.random.split(jax.random.key(0), 2)
    init = lambda t: federated.init_runs(keys, model, opt, x, 2, 8, [0.1, 0.1], torch_inits=t)
    mixed, torch, flax = init([True, False]), init([True, True]), init([False, False])
    for name in FAN_IN:
        for part in ("kernel", "bias"):
            leaf = lambda s: np.asarray(s.params[name][part])
            np.testing.assert_array_equal(leaf(mixed)[0], leaf(torch)[0])
            np.testing.assert_array_equal(leaf(mixed)[1], leaf(flax)[1])
            np.testing.assert_array_equal(leaf(mixed)[:, 0], leaf(mixed)[:, 1])  # identical workers
        assert np.all(np.asarray(mixed.params[name]["bias"])[0] != 0)
        assert np.all(np.asarray(mixed.params[name]["bias"])[1] == 0)


def test_interpolation_ends_are_the_local_models():
    """a = 0 and a = 1 give worker 0's and worker 1's own accuracy (and a =
    0.5 the average's, K = 2); losses equal a numpy cross-entropy of each
    model's logits; the record's barrier and distance follow their formulas."""
    from fedjax_mi import measure
    model = models.LeNet(conv_impl="xla")
    rng = np.random.default_rng(5)
    local_x = jnp.asarray(rng.integers(0, 256, size=(2, 24, 32, 32, 1)), jnp.uint8)
    local_y = jnp.asarray(rng.integers(0, 10, size=(2, 24)), jnp.int32)
    params = jax.jit(jax.vmap(lambda k: model.init(k, jnp.zeros((1, 32, 32, 1)))["params"]))(
        jax.random.split(jax.random.key(7), 2))
    m = measure.make_measure(model, (), chunk=16)(
        jax.random.key(0), params, local_x, local_y, local_x[0, :8], local_y[0, :8])
    np.testing.assert_array_equal(m.interp_acc[0], m.acc[0])
    np.testing.assert_array_equal(m.interp_acc[-1], m.acc[1])
    np.testing.assert_array_equal(m.interp_acc[2], m.acc[2])
    for j, k in ((0, 0), (4, 1)):
        p = jax.tree.map(lambda a: a[k], params)
        for d in range(2):
            logits = np.asarray(model.apply({"params": p}, local_x[d] / 255.0)[0], np.float64)
            logp = logits - logits.max(1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(1, keepdims=True))
            ce = -logp[np.arange(24), np.asarray(local_y[d])].mean()
            assert float(m.interp_loss[j, d]) == pytest.approx(ce, rel=1e-5)
    leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(params)]
    dist = math.sqrt(sum(((a[1] - a[0]) ** 2).sum() for a in leaves)
                     / sum((a[0] ** 2).sum() for a in leaves))
    assert float(m.weight_distance) == pytest.approx(dist, rel=1e-5)
    records = outputs.to_records(0, 0.0, m, None)
    avg = [r for r in records if r["model"] == "average" and r["dataset"] == "local1"][0]
    loss = np.asarray(m.interp_loss[:, 1], np.float64)
    assert avg["barrier"] == pytest.approx(loss[2] - (loss[0] + loss[4]) / 2, abs=2e-6)
    assert avg["interp_acc_a0"] == pytest.approx(float(m.acc[0, 1]), abs=1e-6)
    assert avg["weight_distance"] == pytest.approx(dist, rel=1e-5)
    assert "barrier" not in [r for r in records if r["model"] == "worker0"][0]


@pytest.mark.slow
def test_reproduce_seeds_sweep_writes_each_run_alone_bytes(tmp_path):
    """`reproduce --seeds=2`: seed 1's metrics, written inside the sweep of
    both seeds, are those that run writes alone (accuracies to the byte,
    float32 means to 1e-5)."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "rep"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.reproduce", "--per_worker=64", "--batch_size=16",
         "--epochs=2.5", "--eval_period=4", "--mi=none", "--figures=fig1", "--seeds=2",
         "--checkpoint_every=0", f"--out={out}"], cwd=root, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    swept = {s: (out / "fig1" / f"seed{s}" / "metrics.jsonl").read_bytes() for s in (0, 1)}
    assert swept[0] != swept[1]
    assert (out / "fig1" / "seeds.png").exists()
    assert "± " in (out / "summary.md").read_text()
    with open(out / "fig1" / "seed1" / "config.json") as fh:
        saved = json.load(fh)["config"]
    assert saved["seed"] == 1 and saved["init"] == "flax" and saved["input_scale"] == "unit"
    alone = config.make(**{**saved, "out": str(tmp_path / "alone")})
    sweep.run(alone, log=lambda line: None)
    # Every accuracy (of the locals, the average and the interpolants: the
    # trained weights) to the byte; the means of float32 cross-entropies
    # (the round's training loss, the head's bound, the interpolants'
    # losses, the barrier) and the weight distance to 1e-5: XLA orders their
    # sums differently in a program of one run and of two (measured: a few
    # values differ in the 6th decimal; README "Sweeps").
    alone_records = metrics_io.read_records(str(tmp_path / "alone" / "metrics.jsonl"))
    swept_records = metrics_io.read_records(str(out / "fig1" / "seed1" / "metrics.jsonl"))
    assert len(alone_records) == len(swept_records)
    exact = lambda k: k in ("step", "epoch", "model", "dataset", "acc", "mi_zy_fano") \
        or k.startswith("interp_acc")
    for ra, rb in zip(alone_records, swept_records):
        assert list(ra) == list(rb)
        for k in ra:
            if not exact(k) and ra[k] is not None:
                assert ra[k] == pytest.approx(rb[k], abs=1e-5), k
            else:
                assert ra[k] == rb[k], (ra["step"], ra["model"], ra["dataset"], k)
