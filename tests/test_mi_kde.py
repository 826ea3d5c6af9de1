"""KDE (Saxe et al. 2018; Kolchinsky and Tracey 2017): brute-force references, limits, analytic values.

Ground truth here never calls fedjax_mi.mi.kde: float64 numpy pairwise
formulas written from the definitions, analytic Gaussian limits, and 1-D
quadrature of the true mixture entropies.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fedjax_mi.mi import kde

LN2 = np.log(2.0)
N, D = 96, 4  # one shape for most tests: few compilations


# ---------------------------------------------------------------------------
# Brute-force float64 references.


def _noise(z, noise_var, relative):
    return noise_var * np.mean(np.var(z, axis=0)) if relative else noise_var


def _pairwise_i(z, s2, factor):
    """-(1/n) sum_i log((1/n) sum_j exp(-|z_i - z_j|^2 / (factor s^2))) in nats, by loops."""
    n = len(z)
    total = 0.0
    for i in range(n):
        d2 = np.sum((z - z[i]) ** 2, axis=1)
        total -= np.log(np.mean(np.exp(-d2 / (factor * s2))))
    return total / n


def ref_xz(z, noise_var, relative=True):
    """(lower, upper) in bits: Bhattacharyya (8 s^2) and KL (2 s^2) distances."""
    z = np.asarray(z, np.float64)
    s2 = _noise(z, noise_var, relative)
    return _pairwise_i(z, s2, 8.0) / LN2, _pairwise_i(z, s2, 2.0) / LN2


def ref_zy(labels, z, noise_var, relative=True):
    """(BH-based, KL-based) in bits: I_D(all) - sum_y p(y) I_D(class y), class by class."""
    z = np.asarray(z, np.float64)
    labels = np.asarray(labels).reshape(-1)
    s2 = _noise(z, noise_var, relative)
    out = []
    for factor in (8.0, 2.0):
        value = _pairwise_i(z, s2, factor)
        for c in np.unique(labels):
            value -= np.mean(labels == c) * _pairwise_i(z[labels == c], s2, factor)
        out.append(value / LN2)
    return tuple(out)


def ref_subsample(labels, z, noise_var, idx):
    """xz (lower, upper) and zy (lower, upper) in bits averaged over query rows idx only."""
    z = np.asarray(z, np.float64)
    n = len(z)
    s2 = _noise(z, noise_var, True)
    xz, zy = [], []
    for factor in (8.0, 2.0):
        a = b = 0.0
        for i in idx:
            k = np.exp(-np.sum((z - z[i]) ** 2, axis=1) / (factor * s2))
            same = labels == labels[i]
            a += np.log(n) - np.log(np.sum(k))
            b += np.log(n / np.sum(same)) + np.log(np.sum(k[same])) - np.log(np.sum(k))
        xz.append(a / len(idx) / LN2)
        zy.append(b / len(idx) / LN2)
    return tuple(xz), tuple(zy)


def plug_in_entropy_bits(labels):
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def data(seed, n=N, d=D, classes=3, shift=1.5, relu=True):
    """Class-shifted Gaussians, through a ReLU (like fc-84 features) unless relu=False.

    float32 (N, d) and int32 (N,) labels. With the ReLU some rows may
    coincide (all coordinates 0); without it all rows are distinct.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    z = rng.normal(size=(n, d)) + shift * rng.normal(size=(classes, d))[y]
    return (np.maximum(z, 0.0) if relu else z).astype(np.float32), y


KEY = jax.random.key(0)
# Configurations shared across tests (each distinct one compiles anew).
CFG = kde.KDE()
CFG_SMALL = kde.KDE(noise_var=0.05)
CFG_ABS = kde.KDE(noise_var=0.3, relative=False)
CFG_SUB = kde.KDE(queries=37, block=16)  # a query subsample, in blocks with padding


def values(b):
    return np.array([float(b.lower), float(b.upper)])


# ---------------------------------------------------------------------------
# Against the brute-force references.


class ReferenceTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("relative_small_noise", CFG_SMALL),
        ("relative_default", CFG),
        ("absolute", CFG_ABS),
    )
    def test_matches_numpy(self, cfg):
        z, y = data(1)
        z[:, 2] = 0.7  # a constant column is harmless
        noise_var, relative = cfg.noise_var, cfg.relative
        xz = values(kde.xz_bounds(KEY, z, cfg))
        zy = values(kde.zy_bounds(KEY, y, z, cfg))
        # float32 throughout (distances by GEMM, sums of 96 terms): at most
        # 1.2e-6 bits off on these data (noise down to relative 0.01), so
        # 1e-5 bits absolute plus 2e-6 relative leaves an 8x margin while a
        # wrong constant (distance factor, class weight) misses by > 1e-2.
        chex.assert_trees_all_close(
            xz, np.array(ref_xz(z, noise_var, relative)), atol=1e-5, rtol=2e-6
        )
        chex.assert_trees_all_close(
            zy, np.array(ref_zy(y, z, noise_var, relative)), atol=1e-5, rtol=2e-6
        )

    def test_query_subsample_matches_numpy_on_the_same_rows(self):
        z, y = data(2)
        cfg = CFG_SUB
        m = cfg.queries
        # The rows the estimator draws: M distinct indices by this key.
        idx = np.asarray(jax.random.choice(KEY, N, (m,), replace=False))
        assert len(set(idx.tolist())) == m
        ref_x, ref_y = ref_subsample(y, z, cfg.noise_var, idx)
        # Same float32 error budget as test_matches_numpy.
        chex.assert_trees_all_close(
            values(kde.xz_bounds(KEY, z, cfg)), np.array(ref_x), atol=1e-5, rtol=2e-6
        )
        chex.assert_trees_all_close(
            values(kde.zy_bounds(KEY, y, z, cfg)), np.array(ref_y), atol=1e-5, rtol=2e-6
        )

    def test_all_queries_equals_full(self):
        z, y = data(3)
        every, more = kde.KDE(queries=N), kde.KDE(queries=10 * N)  # more than N rows: all rows
        # Same arithmetic, so equal to float32 rounding of the mean. (M = N on
        # xz and M > N on zy: one compilation each.)
        chex.assert_trees_all_close(
            kde.xz_bounds(KEY, z, every), kde.xz_bounds(KEY, z, CFG), atol=1e-6
        )
        chex.assert_trees_all_close(
            kde.zy_bounds(KEY, y, z, more), kde.zy_bounds(KEY, y, z, CFG), atol=1e-6
        )

    def test_labels_column_and_1d_z(self):
        z, y = data(4, d=1)
        a = kde.zy_bounds(KEY, y[:, None], z[:, 0], CFG)
        chex.assert_trees_all_close(
            values(a), np.array(ref_zy(y, z, CFG.noise_var)), atol=1e-5, rtol=2e-6
        )


# ---------------------------------------------------------------------------
# Properties and limits.


@pytest.mark.parametrize("seed", range(6))
def test_xz_upper_above_lower(seed):
    rng = np.random.default_rng(100 + seed)
    z = (rng.normal(size=(N, D)) * rng.uniform(0.1, 3.0, D)).astype(np.float32)
    b = kde.xz_bounds(KEY, z, (CFG_SMALL, CFG, CFG_ABS)[seed % 3])
    # exp(-D_KL) = exp(-D_BH)^4 <= exp(-D_BH) term by term: a strict ordering,
    # and both lie in [0, log2 N].
    assert 0.0 <= float(b.lower) < float(b.upper) <= np.log2(N) + 1e-5


def test_limits_of_the_noise():
    # Only |z_i - z_j|^2 / s^2 enters, so scaling Z by c under absolute noise
    # is s^2 -> s^2 / c^2: both limits with one compiled configuration.
    z, y = data(5, relu=False)  # distinct points
    s2 = CFG_ABS.noise_var
    d2 = np.sum((z[:, None].astype(np.float64) - z[None]) ** 2, -1)
    nearest = np.min(d2[~np.eye(N, dtype=bool)])
    h_y = plug_in_entropy_bits(y)
    # Tiny noise (Z x 1e4): the nearest Bhattacharyya distance is
    # 1e8 * nearest / (8 s^2) > 1e3, exp of which is 0 in float32: every
    # component isolated, exactly log2 N and the plug-in H(Y) up to rounding.
    assert 1e8 * nearest / (8 * s2) > 1e3
    chex.assert_trees_all_close(
        values(kde.xz_bounds(KEY, 1e4 * z, CFG_ABS)), np.full(2, np.log2(N)), atol=1e-5
    )
    chex.assert_trees_all_close(
        values(kde.zy_bounds(KEY, y, 1e4 * z, CFG_ABS)), np.full(2, h_y), atol=1e-5
    )
    # Huge noise (Z x 1e-4): I_KL <= mean d2 / (2 s^2 ln 2) (Jensen), ~1e-6 bits.
    bound = 1e-8 * np.mean(d2) / (2 * s2 * LN2)
    assert bound < 1e-5
    assert np.all(np.abs(values(kde.xz_bounds(KEY, 1e-4 * z, CFG_ABS))) <= bound + 1e-6)
    assert np.all(np.abs(values(kde.zy_bounds(KEY, y, 1e-4 * z, CFG_ABS))) <= bound + 1e-6)


def test_constant_z_gives_zero():
    z = np.full((N, D), 3.25, np.float32)
    y = np.arange(N, dtype=np.int32) % 3
    # All components coincide: I = 0 exactly (relative s^2 is 0 here).
    chex.assert_trees_all_close(values(kde.xz_bounds(KEY, z, CFG)), np.zeros(2), atol=1e-6)
    chex.assert_trees_all_close(values(kde.zy_bounds(KEY, y, z, CFG)), np.zeros(2), atol=1e-6)


def test_relative_mode_is_scale_free_absolute_is_not():
    z, y = data(6)
    rel, ab = CFG, CFG_ABS
    # Rescaling by 8 (a power of 2) is exact in float32: same distances / s^2.
    chex.assert_trees_all_close(
        kde.xz_bounds(KEY, 8 * z, rel), kde.xz_bounds(KEY, z, rel), rtol=1e-6
    )
    chex.assert_trees_all_close(
        kde.zy_bounds(KEY, y, 8 * z, rel), kde.zy_bounds(KEY, y, z, rel), rtol=1e-6
    )
    # A scale of 37.5 (not exact) still agrees to float32 rounding.
    chex.assert_trees_all_close(
        kde.xz_bounds(KEY, 37.5 * z, rel), kde.xz_bounds(KEY, z, rel), rtol=1e-5
    )
    # Absolute noise: 8x larger distances move the estimate by whole bits.
    assert (
        abs(float(kde.xz_bounds(KEY, 8 * z, ab).upper) - float(kde.xz_bounds(KEY, z, ab).upper))
        > 0.5
    )


def test_constant_column_is_ignored_in_absolute_mode():
    z, _ = data(7)
    wider = np.concatenate([z, np.full((N, 1), -2.0, np.float32)], axis=1)
    cfg = CFG_ABS
    # The column adds 0 to every distance (after centring, exactly).
    chex.assert_trees_all_close(
        kde.xz_bounds(KEY, wider, cfg), kde.xz_bounds(KEY, z, cfg), atol=1e-6
    )


def _gaussian_limit(c, v):
    """Large-N limit (nats) of -E_i log E_j exp(-|z_i - z_j|^2 / (2 v)), Z ~ N(0, C).

    E_j exp(-|z - z_j|^2 / 2v) = (2 pi v)^(d/2) N(z; 0, C + vI); taking -E_z log
    of that gives 1/2 log det(I + C/v) + 1/2 tr(C (C + vI)^-1).
    """
    d = len(c)
    return 0.5 * np.linalg.slogdet(np.eye(d) + c / v)[1] + 0.5 * np.trace(
        c @ np.linalg.inv(c + v * np.eye(d))
    )


def test_gaussian_analytic_limits():
    c = np.array([[1.0, 0.6], [0.6, 0.8]])
    s2 = 0.5
    z = (np.random.default_rng(8).normal(size=(3000, 2)) @ np.linalg.cholesky(c).T).astype(
        np.float32
    )
    b = values(kde.xz_bounds(KEY, z, kde.KDE(noise_var=s2, relative=False)))
    true = 0.5 * np.linalg.slogdet(np.eye(2) + c / s2)[1] / LN2  # 1.335 bits
    # KL distance: v = s^2; Bhattacharyya distance (|dz|^2 / 8 s^2): v = 4 s^2.
    limits = np.array([_gaussian_limit(c, 4 * s2), _gaussian_limit(c, s2)]) / LN2  # 0.906, 2.142
    # Over 20 data seeds at N = 3000 the estimates' std was 0.012 (lower) and
    # 0.017 (upper) bits, and the self term biases them by O(1/N) ~ 1e-3:
    # 0.07 bits is 4 standard deviations of the upper.
    chex.assert_trees_all_close(b, limits, atol=0.07)
    # The true I(X; Z+e) = 1/2 log2 det(I + C/s^2) of the continuous density
    # lies strictly between (0.43 and 0.81 bits inside, >> 0.07).
    assert b[0] < true < b[1]


def _mixture_entropy_1d(centres, grid):
    """Entropy (nats) of the equal-weight mixture of N(c, 1), by quadrature on `grid`."""
    x = grid[:, None] - centres[None, :]
    p = np.mean(np.exp(-0.5 * x**2), axis=1) / np.sqrt(2 * np.pi)
    logp = np.log(np.maximum(p, 1e-300))
    return -np.sum(p * logp) * (grid[1] - grid[0])


def test_zy_values_are_not_bounds():
    # 1-D case found by search: the Bhattacharyya-based value exceeds the true
    # I(Z+e; Y), so the zy pair are estimates, not bounds (module docstring).
    zc = np.array([0.075, -0.152, 4.174, -0.036, 4.145, -0.207, 3.944], np.float32)
    y = np.array([1, 0, 1, 0, 1, 0, 0], np.int32)
    grid = np.linspace(-30.0, 35.0, 130001)
    true = _mixture_entropy_1d(zc, grid) - sum(
        np.mean(y == c) * _mixture_entropy_1d(zc[y == c], grid) for c in (0, 1)
    )
    true /= LN2  # 0.1323 bits
    b = values(kde.zy_bounds(KEY, y, zc[:, None], kde.KDE(noise_var=1.0, relative=False)))
    # Quadrature (step 5e-4 over +-30 sd) is exact to ~1e-9 here; the gap
    # BH - true is 0.0041 bits, float32 errors ~1e-6.
    assert b[0] > true + 2e-3
    assert b[1] > true


# ---------------------------------------------------------------------------
# Batching.


def test_vmap_equals_loop():
    zs = np.stack([data(20 + r)[0] for r in range(3)])
    ys = np.stack([data(20 + r)[1] for r in range(3)])
    keys = jax.random.split(jax.random.key(9), 3)
    cfg = CFG_SUB
    batched_x = jax.vmap(lambda k, z: kde.xz_bounds(k, z, cfg))(keys, zs)
    batched_y = jax.vmap(lambda k, y, z: kde.zy_bounds(k, y, z, cfg))(keys, ys, zs)
    loop_x = [kde.xz_bounds(keys[r], zs[r], cfg) for r in range(3)]
    loop_y = [kde.zy_bounds(keys[r], ys[r], zs[r], cfg) for r in range(3)]
    # Same rows and arithmetic; batching may reorder float32 sums.
    chex.assert_trees_all_close(
        batched_x, jax.tree.map(lambda *a: jnp.stack(a), *loop_x), atol=1e-6, rtol=1e-6
    )
    chex.assert_trees_all_close(
        batched_y, jax.tree.map(lambda *a: jnp.stack(a), *loop_y), atol=1e-6, rtol=1e-6
    )
    # Different keys draw different rows: the three are not all one number.
    assert len({round(float(v), 6) for v in batched_x.upper}) == 3


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(noise_var=0.0),
        dict(noise_var=-0.1),
        dict(noise_var=float("nan")),
        dict(noise_var=float("inf")),
        dict(queries=0),
        dict(queries=2.5),
        dict(block=0),
        dict(relative=1),
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        kde.KDE(**kwargs)


def test_float_labels_raise_type_error():
    z, y = data(10)
    with pytest.raises(TypeError, match="integer"):
        kde.zy_bounds(KEY, y.astype(np.float32), z, CFG)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gives_nan(bad):
    z, y = data(11)
    z[5, 1] = bad
    for b in (kde.xz_bounds(KEY, z, CFG), kde.zy_bounds(KEY, y, z, CFG)):
        assert np.all(np.isnan(values(b)))


def test_bad_shapes_raise():
    z, y = data(12)
    with pytest.raises(ValueError, match="at least"):
        kde.xz_bounds(KEY, z[:1], CFG)
    with pytest.raises(ValueError, match="at least"):
        kde.zy_bounds(KEY, y[:1], z[:1], CFG)
    with pytest.raises(ValueError, match="same number of rows"):
        kde.zy_bounds(KEY, y[:-1], z, CFG)
    with pytest.raises(ValueError):
        kde.zy_bounds(KEY, np.stack([y, y], 1), z, CFG)
