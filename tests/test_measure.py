"""fedjax_mi.measure: the measurement's wiring against a direct computation
written here; the --mi and --edge_* options; the interpolation between the
local models.

Each record (model m, dataset d) must equal a forward pass of model m on
dataset d's samples (`model.apply`, not the measurement's chunked forward),
followed by the estimator call with the same key; the average's record
must come from the hand-computed mean of the workers' weights. Floors must
use a shuffled pairing: far below the estimate on informative data, and
within the estimator's spread of it on independent data.

The compiled programs are shared: one measurement (`MEASURE`) serves the
records, the floors and the interpolation of two workers; the direct
computation is jitted per shape (op by op, every LeNet layer and estimator
step compiled a program of its own); parameters are drawn with numpy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mi import measure, mi, models, outputs

M = 120  # samples per local dataset
NUM_CLASSES = 10
MODEL = models.LeNet(num_classes=NUM_CLASSES, conv_impl="xla")
# One estimator per path of `measure.pair_estimates`: EDGE quantile (I(X;Z)
# from the flattened images, with a floor), KDE (I(X;Z+e) from Z alone, and
# I(Z+e;Y) with a floor and a lower value), the mixed kNN (I(Z;Y) with a floor).
SETTINGS = measure.StudySettings(mi="quantile,kde,knn", kde_noise_var=30.0)
ESTIMATORS = measure.study_estimators(SETTINGS, NUM_CLASSES)
MEASURE = measure.make_measure(MODEL, ESTIMATORS, chunk=64)
T = 40  # test samples


def lenet_params(rng, model, num_workers, channels):
    """`num_workers` independent LeNet parameter sets (stacked), drawn with
    numpy: kernels N(0, 1 / fan_in) (flax's scale), then every parameter plus
    N(0, 0.05^2) noise, so that biases are non-zero and the average of two
    models differs from either."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, channels)))
    draw = lambda s: (
        rng.normal(0.0, 1.0 / np.sqrt(np.prod(s.shape[:-1])), (num_workers,) + s.shape)
        * (len(s.shape) > 1)
        + rng.normal(0.0, 0.05, (num_workers,) + s.shape)
    ).astype(np.float32)
    return jax.tree.map(lambda s: jnp.asarray(draw(s)), shapes["params"])


@jax.jit
def forward(params, x):
    """`MODEL.apply` on uint8 images: (logits, z)."""
    return MODEL.apply({"params": params}, jnp.asarray(x, jnp.float32) / 255.0)


@jax.jit
def xz_estimates(key, x, z):
    """EDGE quantile's and KDE's I(X;Z) fields from the flattened images x and z."""
    x_flat = jnp.asarray(x, jnp.float32).reshape(len(x), -1) / 255.0
    xz = mi.kde.xz_bounds(key, z, ESTIMATORS[1].xz)
    return {
        "mi_xz_quantile": mi.estimate_traced(key, x_flat, z, mi.EdgeQuantile()),
        "mi_xz_kde": xz.upper,
        "mi_xz_kde_lower": xz.lower,
    }


@jax.jit
def zy_estimates(key, y, z):
    """KDE's and the mixed kNN's I(Z;Y) fields."""
    zy = mi.kde.zy_bounds(key, y, z, ESTIMATORS[1].xz)
    return {
        "mi_zy_kde": zy.upper,
        "mi_zy_kde_lower": zy.lower,
        "mi_zy_knn": mi.estimate_traced(key, y, z, mi.MixedKNN()),
    }


def informative_data(seed):
    """Two local datasets whose labels are written into the images (the
    label sets a bright band), and random test data: (D, M, 32, 32, 3) uint8."""
    rs = np.random.RandomState(seed)
    y = rs.randint(0, NUM_CLASSES, size=(2, M)).astype(np.int32)
    x = rs.randint(0, 160, size=(2, M, 32, 32, 3))
    for d in range(2):
        for i in range(M):
            x[d, i, 3 * y[d, i] : 3 * y[d, i] + 3] += 60
    return x.astype(np.uint8), y


@pytest.fixture(scope="module")
def setting():
    # This draw separates what the comparison could confuse by >= 0.007 (3x its
    # 2e-3 tolerance; test_models_and_datasets_differ_so_the_comparison_can_fail).
    params = lenet_params(np.random.default_rng(8), MODEL, 2, 3)
    local_x, local_y = informative_data(1)
    test_x, test_y = local_x[0, :T], local_y[0, :T]
    step_key = jax.random.key(7)
    m = jax.device_get(
        MEASURE(
            step_key,
            params,
            jnp.asarray(local_x),
            jnp.asarray(local_y),
            jnp.asarray(test_x),
            jnp.asarray(test_y),
        )
    )
    return params, local_x, local_y, test_x, test_y, step_key, m


def direct(params, x, y, key, xz=True):
    """Fields of one model on one dataset, computed without `measure` (the
    I(X;Z) fields unless `xz` is False)."""
    logits, z = forward(params, x)
    logits = np.asarray(logits, np.float64)
    out = {"acc": float(np.mean(np.argmax(logits, -1) == y))}
    # Barber-Agakov from the head: H(Y) - CE in bits, written out here.
    p_y = np.bincount(y, minlength=NUM_CLASSES) / len(y)
    h_y = -sum(p * math.log2(p) for p in p_y if p > 0)
    shifted = logits - logits.max(-1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    out["mi_zy_head"] = h_y + float(np.mean(log_q[np.arange(len(y)), y])) / math.log(2)
    estimates = {**(xz_estimates(key, x, z) if xz else {}), **zy_estimates(key, jnp.asarray(y), z)}
    out.update({k: float(v) for k, v in estimates.items()})
    return out


def test_every_record_equals_a_direct_forward_and_estimate(setting):
    params, local_x, local_y, test_x, test_y, key, m = setting
    workers = [jax.tree.map(lambda p, k=k: p[k], params) for k in range(2)]
    mean = jax.tree.map(lambda a, b: (a + b) / 2.0, *workers)  # hand-computed average
    records = outputs.to_records(10, 1.0, m, None)
    by = {(r["model"], r["dataset"]): r for r in records}
    for name, p in (("worker0", workers[0]), ("worker1", workers[1]), ("average", mean)):
        for d in range(2):
            expected = direct(p, local_x[d], local_y[d], key)
            got = by[(name, f"local{d}")]
            for field, value in expected.items():
                # float32 forwards, vmapped vs unbatched: rounding only.
                assert got[field] == pytest.approx(value, abs=2e-3, rel=1e-4), (name, d, field)
        test = direct(p, test_x, test_y, key, xz=False)
        got = by[(name, "test")]
        assert got["acc"] == pytest.approx(test["acc"], abs=1e-6)
        # On the test split: the label estimators cross-fitted on the test
        # samples, no I(X;Z) (issue 26: memorised against generalisable).
        for field in ("mi_zy_head", "mi_zy_kde", "mi_zy_kde_lower", "mi_zy_knn"):
            assert got[field] == pytest.approx(test[field], abs=2e-3, rel=1e-4), (name, field)
        first = f"mi_zy_{measure.primary(ESTIMATORS, 'zy')}"
        assert got["mi_zy"] == got[first] is not None
        assert got["mi_zy_floor"] == got[f"{first}_floor"] is not None
        assert got["mi_xz_quantile"] is None and got["mi_xz_kde"] is None and got["mi_xz"] is None


def test_models_and_datasets_differ_so_the_comparison_can_fail(setting):
    """The check above is only as strong as the differences it could confuse."""
    *_, m = setting
    # (The kNN I(Z;Y) is not used here: labels written into the images
    # separate the classes for every model, so it reads H(Y) for all.)
    for field in ("mi_zy_kde", "mi_xz_kde", "mi_zy_head"):
        values = m.mi[field] if field in m.mi else m.head
        assert np.min(np.abs(values[:, 0] - values[:, 1])) > 2e-3, (field, values)  # datasets
        assert np.min(np.abs(values[0] - values[2])) > 2e-3, (field, values)  # worker0 vs average
        assert np.min(np.abs(values[0] - values[1])) > 2e-3, (field, values)  # the two workers


def test_floors_shuffle_the_pairing(setting):
    *_, m = setting
    # Informative data (labels written in the images): the estimate is
    # above its floor, which shuffling brings near 0 (an unshuffled floor
    # would equal the estimate exactly).
    for name in ("mi_zy_knn", "mi_zy_kde"):
        gap = m.mi[name] - m.mi[f"{name}_floor"]
        assert np.all(gap > 0.1), (name, gap)
    assert np.all(np.abs(m.mi["mi_zy_knn_floor"]) < 0.5)


def test_floor_matches_the_estimate_on_independent_data():
    """Labels independent of the images: estimate and floor are two draws of
    the same estimator at independence; they must agree within its spread,
    measured here over shuffles (5 standard deviations)."""
    one = lenet_params(np.random.default_rng(4), MODEL, 1, 3)
    params = jax.tree.map(lambda p: jnp.concatenate([p, p]), one)
    rs = np.random.RandomState(5)
    x = rs.randint(0, 255, size=(2, M, 32, 32, 3)).astype(np.uint8)
    y = rs.randint(0, NUM_CLASSES, size=(2, M)).astype(np.int32)
    m = MEASURE(
        jax.random.key(6),
        params,
        jnp.asarray(x),
        jnp.asarray(y),
        jnp.asarray(x[0, :T]),
        jnp.asarray(y[0, :T]),
    )
    _, z = forward(jax.tree.map(lambda p: p[0], params), x[0])
    draws = [
        float(
            mi.estimate(
                jax.random.key(0),
                jnp.asarray(y[0])[jax.random.permutation(jax.random.key(s), M)],
                z,
                mi.MixedKNN(),
            )
        )
        for s in range(12)
    ]
    spread = np.std(draws)
    gap = np.abs(np.asarray(m.mi["mi_zy_knn"]) - np.asarray(m.mi["mi_zy_knn_floor"]))
    assert np.all(gap <= 5 * spread + 1e-6), (gap, spread)


def test_edge_options_parse_and_replace_the_paper_settings():
    assert measure.parse_edge_options(" U=30; gamma=(0.2, 2);epsilon_vector=fixed; ") == (
        ("U", 30),
        ("gamma", (0.2, 2)),
        ("epsilon_vector", "fixed"),
    )
    assert measure.parse_edge_options("") == ()
    xz, zy = measure.paper_edge_configs(
        "4.2.0", (("U", 30),), (("L_ensemble", 3), ("gamma", (1e-4, 0.6)))
    )
    # Named options replace the author's settings for the last hidden layer;
    # the others stay.
    xz, zy = xz.settings(), zy.settings()
    assert (xz.upper_clip, xz.ensemble_size, xz.gamma) == (30.0, 10, (0.2, 1.4))
    assert (zy.upper_clip, zy.ensemble_size, zy.gamma, zy.epsilon) == (
        10.0,
        3,
        (1e-4, 0.6),
        (0.2, 0.2),
    )


def test_mi_flag_selects_estimators_in_order():
    assert measure.parse_mi("none") == () and measure.parse_mi("") == ()
    settings = measure.StudySettings(mi="probe, edge_reference,kde")
    ests = measure.study_estimators(settings, num_classes=10)
    assert [e.name for e in ests] == ["probe", "edge_reference", "kde"]
    # The probe defines no I(X;Z): the first estimator that does fills mi_xz.
    assert measure.primary(ests, "xz") == "edge_reference"
    assert measure.primary(ests, "zy") == "probe"
    assert ests[0].zy.num_classes == 10 and ests[2].xz.noise_var == settings.kde_noise_var


@pytest.fixture(scope="module")
def three_workers():
    """K = 3 (the midpoint of workers 0 and 1 is not the average): a
    measurement of its own, without estimators, on 1-channel images:
    (forward, params, local_x, local_y, test_x, test_y, measurement)."""
    model = models.LeNet(conv_impl="xla")
    rng = np.random.default_rng(5)
    local_x = jnp.asarray(rng.integers(0, 256, size=(2, 24, 32, 32, 1)), jnp.uint8)
    local_y = jnp.asarray(rng.integers(0, 10, size=(2, 24)), jnp.int32)
    params = lenet_params(rng, model, 3, 1)
    m = measure.make_measure(model, (), chunk=16)(
        jax.random.key(0), params, local_x, local_y, local_x[0, :8], local_y[0, :8]
    )
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x / 255.0))
    return apply, params, local_x, local_y, local_x[0, :8], local_y[0, :8], m


@pytest.mark.parametrize("num_workers", [2, 3])
def test_interpolation_ends_are_the_local_models(num_workers, request):
    """a = 0 and a = 1 give worker 0's and worker 1's own accuracy (and a =
    0.5 the average's when K = 2); every interpolant's loss equals a numpy
    cross-entropy of the model with (1 - a) w0 + a w1 interpolated in
    float64 (with K = 3 the midpoint is not the average and is run itself);
    the record's barrier and distance follow their formulas. K = 2: the
    measurement of `setting`; K = 3: `three_workers`."""
    if num_workers == 2:
        params, local_x, local_y, test_x, test_y, _, m = request.getfixturevalue("setting")
        apply = forward
    else:
        apply, params, local_x, local_y, test_x, test_y, m = request.getfixturevalue(
            "three_workers"
        )
    np.testing.assert_array_equal(m.interp_acc[0], m.acc[0])
    np.testing.assert_array_equal(m.interp_acc[-1], m.acc[1])
    if num_workers == 2:
        np.testing.assert_array_equal(m.interp_acc[2], m.acc[2])
    for j, a in enumerate(measure.INTERP_ALPHAS):
        p = jax.tree.map(
            lambda w: (
                (1 - a) * np.asarray(w[0], np.float64) + a * np.asarray(w[1], np.float64)
            ).astype(np.float32),
            params,
        )
        for d, (x, y, got) in enumerate(
            [(local_x[d], local_y[d], m.interp_loss[j, d]) for d in range(2)]
            + [(test_x, test_y, m.test_interp_loss[j])]
        ):
            logits = np.asarray(apply(p, x)[0], np.float64)
            logp = logits - logits.max(1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(1, keepdims=True))
            ce = -logp[np.arange(len(y)), np.asarray(y)].mean()
            assert float(got) == pytest.approx(ce, rel=1e-5), (a, d)
    leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(params)]
    dist = math.sqrt(
        sum(((a[1] - a[0]) ** 2).sum() for a in leaves) / sum((a[0] ** 2).sum() for a in leaves)
    )
    assert float(m.weight_distance) == pytest.approx(dist, rel=1e-5)
    records = outputs.to_records(0, 0.0, m, None)
    for dataset, loss in (("local1", m.interp_loss[:, 1]), ("test", m.test_interp_loss)):
        avg = [r for r in records if r["model"] == "average" and r["dataset"] == dataset][0]
        loss = np.asarray(loss, np.float64)
        assert avg["barrier"] == pytest.approx(loss[2] - (loss[0] + loss[4]) / 2, abs=2e-6)
        # The largest excess over the chord between the ends, written out.
        chord = [(1 - a) * loss[0] + a * loss[4] for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
        assert avg["max_barrier"] == pytest.approx(max(loss - np.asarray(chord)), abs=2e-6)
        assert avg["max_barrier"] >= max(avg["barrier"], 0.0) - 1e-6
    avg = [r for r in records if r["model"] == "average" and r["dataset"] == "local1"][0]
    assert avg["interp_acc_a0"] == pytest.approx(float(m.acc[0, 1]), abs=1e-6)
    assert avg["weight_distance"] == pytest.approx(dist, rel=1e-5)
    assert "barrier" not in [r for r in records if r["model"] == "worker0"][0]
