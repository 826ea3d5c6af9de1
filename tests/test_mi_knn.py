"""Tests of fedjax_mi.mi.knn (KSG and Ross kNN estimators) against ground truth.

Ground truths, none of which calls the code under test:
* brute-force numpy versions of both estimators written here (float64, full
  N x N distance matrices, a Python loop over samples), following Kraskov,
  Stögbauer, Grassberger, "Estimating mutual information" (2004), with the
  tie rule of Gao, Kannan, Oh, Viswanath (2017), and Ross, "Mutual
  information between discrete and continuous data sets" (2014);
* analytic MI: d independent Gaussian pairs of correlation rho have
  I = -d/2 log2(1 - rho^2) bits; a two-class Gaussian mixture's I(Y; X) =
  h(X) - h(X | Y) by numerical quadrature; well separated classes give H(Y).

Float32 vs float64: neighbour counts are integers and agree exactly unless a
distance lies within float32 rounding (~1e-7 relative) of a radius, which
continuous test data avoids and the rounded test data (`grid_values`: exact
standardisation, integer distances) rules out; digamma and the means in
float32 then leave < 1e-6 bits. Hence the 1e-5-bit parity tolerance.

Every jit compilation costs ~1 s of CPU, so each parity case is one batch of
four data sets and the other tests reuse those shapes.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from scipy.special import digamma, ndtri
from scipy.stats import rankdata

from fedjax_mi.mi import knn

KEY = jax.random.PRNGKey(0)
PARITY_TOL = 1e-5  # bits; see the module docstring


@functools.partial(jax.jit, static_argnames="config")
def batched_ksg(a, b, config):
    """KSG over a leading batch axis: one compilation per shape and config."""
    return jax.vmap(lambda x, y: knn.ksg(KEY, x, y, config))(a, b)


@functools.partial(jax.jit, static_argnames="config")
def batched_mixed(labels, x, config):
    """Ross estimator over a leading batch axis."""
    return jax.vmap(lambda l, v: knn.mixed_knn(KEY, l, v, config))(labels, x)


# ---------------------------------------------------------------------------
# Independent numpy references (float64, brute force).


def np_standardize(x):
    x = np.asarray(x, np.float64)
    x = x.reshape(len(x), -1)
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    return x / np.where(std > 0, std, 1.0)


def np_ksg(a, b, k):
    """KSG algorithm 1 in bits, and the number of samples with eps = 0."""
    a, b = np_standardize(a), np_standardize(b)
    n = len(a)
    da = np.abs(a[:, None, :] - a[None, :, :]).max(axis=-1)
    db = np.abs(b[:, None, :] - b[None, :, :]).max(axis=-1)
    dz = np.maximum(da, db)
    total, zero_eps = 0.0, 0
    for i in range(n):
        others = np.arange(n) != i
        eps = np.sort(dz[i, others])[k - 1]
        if eps > 0:
            k_i = k
            n_a = np.sum(da[i, others] < eps)
            n_b = np.sum(db[i, others] < eps)
        else:  # Gao et al. (2017): k -> number of duplicates, "<" -> "<="
            zero_eps += 1
            k_i = np.sum(dz[i, others] == 0)
            n_a = np.sum(da[i, others] <= 0)
            n_b = np.sum(db[i, others] <= 0)
        total += digamma(k_i) - digamma(n_a + 1) - digamma(n_b + 1)
    return (digamma(n) + total / n) / math.log(2), zero_eps


def np_lnc(a, b, k, log_alpha, copula=False):
    """KSG with the local non-uniformity correction (Gao, Ver Steeg, Galstyan
    2015) in bits, float64 brute force: for each sample, the box centred at it,
    aligned with the principal axes of it and its k nearest joint neighbours
    and just holding them, against the max-norm box of radius eps; the log
    volume ratio is subtracted, averaged over N, where it is below log_alpha.
    Constant columns are left out of both volumes. `log_alpha` is an input
    (its Monte Carlo is tested on its own in `LNCTest`)."""
    if copula:
        a, b = np_normal_scores(a), np_normal_scores(b)
    base, _ = np_ksg(a, b, k)
    z = np.concatenate([np_standardize(a), np_standardize(b)], axis=1)
    kept = np.any(z != z[:1], axis=0)
    z = z[:, kept]
    d = z.shape[1]
    dz = np.abs(z[:, None, :] - z[None, :, :]).max(axis=-1)
    total = 0.0
    for i in range(len(z)):
        dz[i, i] = np.inf
        nearest = np.argsort(dz[i], kind="stable")[:k]
        eps = dz[i, nearest[-1]]
        offsets = z[nearest] - z[i]
        pts = np.vstack([np.zeros(d), offsets])
        _, axes = np.linalg.eigh(np.cov(pts.T, bias=True))
        half = np.abs(offsets @ axes).max(axis=0)
        if eps > 0 and np.all(half > 0):
            r = np.sum(np.log(half)) - d * np.log(eps)
            total += r if r < log_alpha else 0.0
    return base - total / len(z) / math.log(2)


def np_normal_scores(x):
    """Columns replaced by ndtri(average rank / (N + 1)), scipy's ranks."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return ndtri(rankdata(x, axis=0, method="average") / (len(x) + 1))


def np_ross(labels, x, k):
    """Ross (2014) in bits, Euclidean; classes with <= k samples deleted first."""
    labels = np.asarray(labels)
    x = np.asarray(x, np.float64).reshape(len(labels), -1)
    sizes = np.array([np.sum(labels == v) for v in labels])
    keep = sizes > k
    if not keep.any():
        return float("nan")
    labels, x, sizes = labels[keep], np_standardize(x[keep]), sizes[keep]
    n = len(labels)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1))
    psi_m = 0.0
    for i in range(n):
        others = np.arange(n) != i
        radius = np.sort(d[i, others & (labels == labels[i])])[k - 1]
        psi_m += digamma(np.sum(d[i, others] <= radius))
    return (digamma(n) - np.mean(digamma(sizes)) + digamma(k) - psi_m / n) / math.log(2)


# ---------------------------------------------------------------------------
# Data.


def gaussian_pair(rs, n, da, db, rho):
    """a (n, da), b (n, db): b_j = rho a_(j mod da) + noise, float32."""
    a = rs.standard_normal((n, da))
    b = rho * a[:, np.arange(db) % da] + math.sqrt(1 - rho**2) * rs.standard_normal((n, db))
    return a.astype(np.float32), b.astype(np.float32)


def class_data(rs, n, d, classes, shift):
    """Labels (n,) int32 and x (n, d) float32 with class means ~ shift * N(0, 1)."""
    labels = rs.randint(0, classes, n).astype(np.int32)
    means = shift * rs.standard_normal((classes, d))
    return labels, (means[labels] + rs.standard_normal((n, d))).astype(np.float32)


def grid_values(n):
    """n (even) integers in [-2, 2] with sum 0 and sum of squares n.

    Standardisation is then exactly the identity in float32 and float64, and
    all distances are small integers, so every tie (at 0 or not) is exact in
    both implementations. Counts: 2 and -2 c times each, 1 and -1 n/2 - 4c
    times each, 0 the remaining 6c times.
    """
    c = n // 20
    return np.repeat([-2.0, -1.0, 0.0, 1.0, 2.0], [c, n // 2 - 4 * c, 6 * c, n // 2 - 4 * c, c])


def grid_columns(rs, n, d):
    return np.stack([rs.permutation(grid_values(n)) for _ in range(d)], axis=1)


def reshuffled(rs, column, fraction):
    """The column with a random `fraction` of its entries permuted among themselves."""
    column = column.copy()
    pos = rs.choice(len(column), int(fraction * len(column)), replace=False)
    column[pos] = column[rs.permutation(pos)]
    return column


def grid_pair(rs, n, da, db):
    """Rounded, dependent data: b's first column is a's, the others partly reshuffled."""
    a = grid_columns(rs, n, da)
    b = np.stack([reshuffled(rs, a[:, j % da], 0.0 if j == 0 else 0.3) for j in range(db)], axis=1)
    for col in np.concatenate([a, b], axis=1).T:  # the premise of exact ties
        assert col.mean() == 0.0 and col.std() == 1.0
    return a.astype(np.float32), b.astype(np.float32)


def repeated_rows(rs, copies, *arrays):
    """Each of n // copies rows repeated `copies` times, rows shuffled."""
    n = len(arrays[0])
    assert n % copies == 0
    rows = rs.permutation(np.repeat(np.arange(n // copies), copies))
    return tuple(a[: n // copies][rows] for a in arrays)


def assert_parity(got, want):
    np.testing.assert_allclose(
        np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=0, atol=PARITY_TOL
    )  # NaN must meet NaN


# ---------------------------------------------------------------------------
# Every parity case is one batch of 4 data sets, one compilation per case:
# independent and dependent continuous data, rounded data with exact ties,
# continuous data with repeated rows (exact duplicates).


class KSGParityTest(parameterized.TestCase):
    # (n, da, db, k, block, copies): blocks that do and do not divide n;
    # n = 336 has 6 > k chunks of 64 columns (the chunked k-th smallest).
    # `copies` > k makes eps = 0 for every repeated row (Gao et al. rule).
    @parameterized.parameters(
        (50, 1, 1, 1, 16, 2),
        (120, 2, 3, 3, 40, 4),
        (336, 1, 2, 5, 128, 3),
    )
    def test_matches_numpy(self, n, da, db, k, block, copies):
        rs = np.random.RandomState(n + k)
        data = [
            gaussian_pair(rs, n, da, db, 0.0),
            gaussian_pair(rs, n, da, db, 0.8),
            grid_pair(rs, n, da, db),
            repeated_rows(rs, copies, *gaussian_pair(rs, n, da, db, 0.6)),
        ]
        a, b = (np.stack(t) for t in zip(*data))
        got = batched_ksg(a, b, knn.KSG(k=k, block=block))
        want = [np_ksg(a[i], b[i], k) for i in range(4)]
        chex.assert_shape(got, (4,))
        self.assertTrue(np.all(np.isfinite(got)))
        assert_parity(got, [w for w, _ in want])
        # Not vacuous: the rounded data set has duplicates (eps = 0), and the
        # repeated rows do too once copies > k.
        self.assertGreater(want[2][1], 0)
        if copies > k:
            self.assertEqual(want[3][1], n)


class MixedParityTest(parameterized.TestCase):
    # (n, d, classes, k, block, copies): d = 12 uses the GEMM under "auto";
    # n = 198 has 4 > k chunks of 64 columns (the chunked k-th smallest).
    # Repeated rows with copies = k > 1: the k-th neighbour is a copy of
    # another repeated point, and m_i counts its other copies only if all
    # copies are at exactly the same distance - true for the direct form by
    # construction, and for the GEMM on this CPU.
    @parameterized.parameters(
        (50, 1, 2, 1, 16, 2),
        (120, 3, 3, 5, 40, 5),
        (198, 12, 5, 3, 64, 3),
    )
    def test_matches_numpy(self, n, d, classes, k, block, copies):
        rs = np.random.RandomState(n + d)
        grid = grid_columns(rs, n, d)
        grid_labels = np.where(
            rs.rand(n) < 0.3, rs.randint(0, classes, n), (grid[:, 0] > 0) + (grid[:, -1] < 0)
        ).astype(np.int32)
        data = [
            class_data(rs, n, d, classes, 0.0),
            class_data(rs, n, d, classes, 1.0),
            (grid_labels, grid.astype(np.float32)),
            repeated_rows(rs, copies, *class_data(rs, n, d, classes, 1.0)),
        ]
        labels, x = (np.stack(t) for t in zip(*data))
        got = batched_mixed(labels, x, knn.MixedKNN(k=k, block=block))
        chex.assert_shape(got, (4,))
        self.assertTrue(np.all(np.isfinite(got)))
        assert_parity(got, [np_ross(labels[i], x[i], k) for i in range(4)])

    def test_small_classes_are_skipped(self):
        # Classes of 2 and 3 samples (<= k = 5) are deleted: the estimate
        # equals numpy's on the kept rows alone. Same shapes as a parity case.
        rs = np.random.RandomState(3)
        labels, x = (
            np.stack(t) for t in zip(*[class_data(rs, 120, 3, 3, s) for s in (0.5, 1.0, 1.0, 2.0)])
        )
        labels[0, :2] = 7
        labels[0, 2:5] = -4
        labels[1, :3] = 9
        labels[2, 100:] = 5  # a class of 20 is kept
        labels[3] = np.arange(120) // 3  # every class has 3 samples: nothing kept
        got = batched_mixed(labels, x, knn.MixedKNN(k=5, block=40))
        want = [
            np_ross(labels[0, 5:], x[0, 5:], 5),
            np_ross(labels[1, 3:], x[1, 3:], 5),
            np_ross(labels[2], x[2], 5),
            float("nan"),
        ]
        assert_parity(got, want)
        assert_parity(got, [np_ross(labels[i], x[i], 5) for i in range(4)])


class AnalyticTest(absltest.TestCase):
    """Known MI. Tolerances come from the spread over 20-30 seeds measured at
    the same N, d and k = 3: KSG at N = 2000, d = 2: std <= 0.04 bits,
    |bias| <= 0.02; Ross at N = 1000: std 0.03, |bias| <= 0.003. Each
    tolerance is ~3 std + |bias|; a lost factor ln 2 or a digamma term off
    by one sample would exceed it in most cases."""

    def test_ksg_correlated_gaussians(self):
        # Two independent coordinate pairs with correlations (r1, r2):
        # I = -1/2 [log2(1 - r1^2) + log2(1 - r2^2)].
        rs = np.random.RandomState(0)
        cases = ((0.0, 0.0), (0.5, 0.5), (0.9, 0.9), (0.9, 0.0))
        a = rs.standard_normal((4, 2000, 2))
        r = np.array(cases)[:, None, :]
        b = r * a + np.sqrt(1 - r**2) * rs.standard_normal(a.shape)
        got = batched_ksg(a.astype(np.float32), b.astype(np.float32), knn.KSG())
        truth = [sum(-0.5 * math.log2(1 - q**2) for q in c) for c in cases]
        np.testing.assert_allclose(np.asarray(got), truth, rtol=0, atol=0.12)

    def test_mixed_class_conditional_gaussians(self):
        rs = np.random.RandomState(2)
        n, mu = 1000, 1.0
        # Two classes at -mu, +mu: I = h(X) - h(N(0, 1)), h(X) by quadrature.
        t = np.linspace(-14.0, 14.0, 400_001)
        p = (
            0.5
            * (np.exp(-0.5 * (t - mu) ** 2) + np.exp(-0.5 * (t + mu) ** 2))
            / math.sqrt(2 * math.pi)
        )
        mixture = (
            -np.trapezoid(p * np.log(p), t) - 0.5 * math.log(2 * math.pi * math.e)
        ) / math.log(2)
        two = rs.randint(0, 2, n)
        # Four classes 20 sd apart: I = H(Y), here of the empirical labels.
        four = rs.randint(0, 4, n)
        counts = np.bincount(four) / n
        separated = -np.sum(counts * np.log2(counts))
        # No dependence: I = 0.
        none = rs.randint(0, 4, n)
        labels = np.stack([two, four, none]).astype(np.int32)
        x = np.stack(
            [
                np.where(two == 1, mu, -mu) + rs.standard_normal(n),
                20.0 * four + rs.standard_normal(n),
                rs.standard_normal(n),
            ]
        )[..., None].astype(np.float32)
        got = np.asarray(batched_mixed(labels, x, knn.MixedKNN()))
        np.testing.assert_allclose(got, [mixture, separated, 0.0], rtol=0, atol=0.1)
        # Perfect separation: every m_i = k, so the estimate is
        # psi(N) - mean psi(N_y) = H(Y) up to O(C / N) digamma terms.
        self.assertLess(abs(got[1] - separated), 0.01)


class InterfaceTest(absltest.TestCase):
    """Shapes of the (120, .) parity cases, so nothing recompiles but the loop."""

    def test_vmap_equals_loop(self):
        # (For mixed_knn every parity case already compares each element of
        # a vmapped batch with its own numpy estimate.)
        rs = np.random.RandomState(5)
        a, b = (
            np.stack(t)
            for t in zip(*[gaussian_pair(rs, 120, 2, 3, r) for r in (0.0, 0.3, 0.6, 0.9)])
        )
        cfg = knn.KSG(k=3, block=40)
        loop = [knn.ksg(KEY, a[i], b[i], cfg) for i in range(4)]
        # batched_ksg is jax.vmap(lambda a, b: knn.ksg(KEY, a, b, cfg)), jitted.
        np.testing.assert_allclose(batched_ksg(a, b, cfg), jnp.stack(loop), rtol=0, atol=1e-6)

    def test_too_few_samples_raise(self):
        a = np.zeros((3, 2), np.float32)
        with self.assertRaisesRegex(ValueError, "KSG needs at least 4"):
            knn.ksg(KEY, a, a, knn.KSG(k=3))
        with self.assertRaisesRegex(ValueError, "MixedKNN needs at least 4"):
            knn.mixed_knn(KEY, np.zeros(3, np.int32), a, knn.MixedKNN(k=3))
        with self.assertRaises(ValueError):  # rows disagree
            knn.ksg(KEY, a, np.zeros((4, 2), np.float32), knn.KSG(k=1))

    def test_float_labels_raise_type_error(self):
        x = np.zeros((10, 2), np.float32)
        with self.assertRaises(TypeError):
            knn.mixed_knn(KEY, np.zeros(10, np.float32), x, knn.MixedKNN())
        with self.assertRaises(ValueError):
            knn.mixed_knn(KEY, np.zeros((10, 2), np.int32), x, knn.MixedKNN())

    def test_bad_config_raises(self):
        for make in (
            lambda: knn.KSG(k=0),
            lambda: knn.KSG(block=0),
            lambda: knn.MixedKNN(k=0),
            lambda: knn.MixedKNN(block=0),
            lambda: knn.MixedKNN(distances="cosine"),
        ):
            with self.assertRaises(ValueError):
                make()

    def test_non_finite_input_gives_nan(self):
        # The bad elements of the batch are NaN, the good ones still match.
        rs = np.random.RandomState(6)
        a, b = (np.stack(t) for t in zip(*[gaussian_pair(rs, 120, 2, 3, 0.5) for _ in range(4)]))
        a[0, 5, 1] = np.nan
        b[1, 9, 0] = np.inf
        got = batched_ksg(a, b, knn.KSG(k=3, block=40))
        assert_parity(got, [np.nan, np.nan] + [np_ksg(a[i], b[i], 3)[0] for i in (2, 3)])
        labels, x = (np.stack(t) for t in zip(*[class_data(rs, 120, 3, 3, 1.0) for _ in range(4)]))
        x[0, 7, 2] = -np.inf
        x[1, 8, 0] = np.nan
        got = batched_mixed(labels, x, knn.MixedKNN(k=5, block=40))
        assert_parity(got, [np.nan, np.nan] + [np_ross(labels[i], x[i], 5) for i in (2, 3)])

    def test_constant_column_changes_nothing(self):
        # A constant column standardises to 0 and adds 0 to every distance:
        # the estimate equals numpy's on the data without it.
        rs = np.random.RandomState(8)
        a, b = (
            np.stack(t)
            for t in zip(*[gaussian_pair(rs, 120, 2, 3, r) for r in (0.0, 0.3, 0.6, 0.9)])
        )
        b[:, :, 2] = 4.25
        got = batched_ksg(a, b, knn.KSG(k=3, block=40))
        assert_parity(got, [np_ksg(a[i], b[i, :, :2], 3)[0] for i in range(4)])
        labels, x = (
            np.stack(t) for t in zip(*[class_data(rs, 120, 3, 3, s) for s in (0.0, 0.5, 1.0, 2.0)])
        )
        x[:, :, 1] = -3.0
        got = batched_mixed(labels, x, knn.MixedKNN(k=5, block=40))
        assert_parity(got, [np_ross(labels[i], x[i][:, [0, 2]], 5) for i in range(4)])


class LNCTest(parameterized.TestCase):
    """The local non-uniformity correction and the copula scores.

    Parity with `np_lnc` at 1e-5 bits: the neighbour sets are those of KSG
    (the same argument as the module docstring's); the log half-sides come
    from a float32 eigendecomposition, ~1e-6 relative, well under 1e-5 bits
    after the mean over N. One compiled batch of 4 data sets, reused below.
    """

    # LNC k=None -> k = max(2 (da + db), 5): 5 for 1 + 1, 9 for... (k > d).
    @parameterized.parameters((1, 1, None), (2, 2, 9))
    def test_matches_numpy(self, da, db, k):
        rs = np.random.RandomState(20 + da)
        n = 130  # 3 chunks of 64 columns after padding: the chunked path with k < 3
        data = [gaussian_pair(rs, n, da, db, r) for r in (0.0, 0.9, 0.99)]
        x = rs.standard_normal((n, da))
        data.append(
            (
                (x**3).astype(np.float32),
                np.exp(x[:, np.arange(db) % da] + 0.1 * rs.standard_normal((n, db))).astype(
                    np.float32
                ),
            )
        )
        a, b = (np.stack(t) for t in zip(*data))
        cfg = knn.KSG(k=k, lnc_quantile=0.05, block=48)
        kk = cfg.neighbours(da + db)
        log_alpha = knn.lnc_log_alpha(kk, da + db, 0.05)
        got = batched_ksg(a, b, cfg)
        want = [np_lnc(a[i], b[i], kk, log_alpha) for i in range(4)]
        assert_parity(got, want)
        # Not vacuous: the correction changes the strongly dependent cases.
        plain = [np_ksg(a[i], b[i], kk)[0] for i in range(4)]
        self.assertGreater(want[2] - plain[2], 0.1)
        if da == 1:  # in 1 + 1 dims a loop of plain calls equals the vmapped batch
            loop = [knn.ksg(KEY, a[i], b[i], cfg) for i in range(4)]
            np.testing.assert_allclose(got, jnp.stack(loop), rtol=0, atol=1e-6)

    def test_constant_column_left_out_of_the_volumes(self):
        rs = np.random.RandomState(23)
        a, b = (
            np.stack(t)
            for t in zip(*[gaussian_pair(rs, 130, 1, 1, r) for r in (0.0, 0.5, 0.9, 0.99)])
        )
        b = np.concatenate([b, np.full_like(b, 2.5)], axis=2)  # (4, 130, 2), last constant
        cfg = knn.KSG(k=7, lnc_quantile=0.05, block=48)
        log_alpha = knn.lnc_log_alpha(7, 3, 0.05)
        got = batched_ksg(a, b, cfg)
        assert_parity(got, [np_lnc(a[i], b[i], 7, log_alpha) for i in range(4)])

    def test_log_alpha(self):
        # One dimension: the principal box is the max-norm box, ratio 1.
        self.assertAlmostEqual(knn.lnc_log_alpha(5, 1, 0.05), 0.0, places=12)
        # Two dimensions, k = 5: an independent Monte Carlo here (another
        # seed, 20,000 draws); the two 5% quantiles differ by their sampling
        # error, measured < 0.02 nats (std of the 4,000-draw estimate).
        rng = np.random.default_rng(123)
        off = rng.uniform(-1, 1, (20000, 5, 2))
        eps = np.abs(off).max(axis=(1, 2))
        pts = np.concatenate([np.zeros((20000, 1, 2)), off], axis=1)
        pts -= pts.mean(axis=1, keepdims=True)
        _, axes = np.linalg.eigh(np.einsum("nki,nkj->nij", pts, pts))
        ratios = np.log(np.abs(np.einsum("nki,nij->nkj", off, axes)).max(axis=1)).sum(
            1
        ) - 2 * np.log(eps)
        self.assertAlmostEqual(knn.lnc_log_alpha(5, 2, 0.05), np.quantile(ratios, 0.05), delta=0.06)

    def test_strongly_dependent_gaussians(self):
        # Three coordinate pairs of correlation 0.95: I = -3/2 log2(1 - 0.95^2)
        # = 5.04 bits, N = 1000. Measured over 10 other seeds: LNC (k = 12)
        # 4.80 +- 0.09 (bias -0.24), plain KSG k = 3 4.18 +- 0.07 (its bias
        # for strong dependence, Gao et al. 2015). Tolerance |bias| + 3 std
        # = 0.5, plus 0.05; plain KSG must miss by more than 0.5 (all 10
        # seeds missed by > 0.7), so the correction is what passes it.
        rs = np.random.RandomState(30)
        truth = -1.5 * math.log2(1 - 0.95**2)
        a, b = (np.stack(t) for t in zip(*[gaussian_pair(rs, 1000, 3, 3, 0.95) for _ in range(2)]))
        lnc = batched_ksg(a, b, knn.KSG(k=None, lnc_quantile=0.05))
        plain = batched_ksg(a, b, knn.KSG(k=3))
        np.testing.assert_allclose(lnc, truth, atol=0.55)
        self.assertTrue(np.all(truth - np.asarray(plain) > 0.5))

    def test_normal_scores_and_invariance(self):
        rs = np.random.RandomState(31)
        x = rs.standard_normal((130, 3)).astype(np.float32)
        x[:10, 1] = x[10:20, 1]  # ties share their average rank
        x[:, 2] = 1.5  # constant column -> 0
        np.testing.assert_allclose(
            knn.normal_scores(jnp.asarray(x)), np_normal_scores(x), rtol=0, atol=1e-5
        )
        # KSG on normal scores is invariant under increasing per-coordinate
        # maps: identical ranks give identical scores, bit for bit.
        a, b = gaussian_pair(rs, 130, 1, 2, 0.7)
        cfg = knn.KSG(k=3, copula=True, block=48)
        same = knn.ksg(KEY, a, b, cfg), knn.ksg(KEY, np.exp(a), b**3 + 2.0 * b, cfg)
        self.assertEqual(float(same[0]), float(same[1]))
        # (No parity with np_ksg on the scores: scores sit on one grid, so
        # many max-norm distances tie exactly and float32 rounding breaks
        # those ties differently from float64.)

    def test_bad_lnc_config(self):
        for make in (
            lambda: knn.KSG(k=None),
            lambda: knn.KSG(lnc_quantile=0.0),
            lambda: knn.KSG(k=None, lnc_quantile=1.5),
            lambda: knn.KSG(copula=1),
        ):
            with self.assertRaises(ValueError):
                make()
        a = np.zeros((50, 2), np.float32)
        with self.assertRaisesRegex(ValueError, "k > da \\+ db = 4"):
            knn.ksg(KEY, a, a, knn.KSG(k=4, lnc_quantile=0.05))
        a = np.random.RandomState(0).standard_normal((130, 1)).astype(np.float32)
        bad = a.copy()
        bad[3, 0] = np.nan
        got = batched_ksg(
            np.stack([a, bad, a, a]),
            np.stack([a, a, a, a]),
            knn.KSG(k=None, lnc_quantile=0.05, block=48),
        )
        self.assertTrue(np.isnan(got[1]) and np.all(np.isfinite(np.asarray(got)[[0, 2, 3]])))


class HelperTest(absltest.TestCase):
    """The private selection and counting helpers against numpy."""

    def test_kth_smallest_with_ties_and_inf(self):
        rs = np.random.RandomState(9)
        d = rs.randint(0, 6, (6, 64)).astype(np.float32)  # heavy ties
        d[1] = np.inf
        d[1, [3, 40]] = 2.0  # fewer than k finite entries -> inf
        d[2, :] = 5.0
        d[3, ::7] = 0.0
        d[4, 8:] = np.inf  # all finite entries in the first chunk
        # chunk = 8: 8 chunks > k, the chunked path; chunk = 64: plain passes.
        kth = jax.jit(
            lambda d: [knn._kth_smallest(d, k, chunk=c) for k in (1, 3, 5) for c in (8, 64)]
        )
        got = kth(jnp.asarray(d))
        want = [np.sort(d, axis=1)[:, k - 1] for k in (1, 3, 5) for _ in (8, 64)]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), w)

    def test_k_nearest_values_and_columns(self):
        # chunk = 8: 64 chunks > k, the chunked path (as LNC at N >= 64 (k + 1));
        # chunk = 64, k = 10: 8 chunks <= k, top_k on the whole row.
        rs = np.random.RandomState(11)
        d = rs.standard_normal((6, 512)).astype(np.float32)
        d[0, 100:] = np.inf
        nearest = jax.jit(
            lambda d: [knn._k_nearest(d, k, chunk=c) for k, c in ((3, 8), (10, 8), (10, 64))]
        )
        for (values, cols), k in zip(nearest(jnp.asarray(d)), (3, 10, 10)):
            np.testing.assert_array_equal(np.asarray(values), np.sort(d, axis=1)[:, :k])
            np.testing.assert_array_equal(
                np.take_along_axis(d, np.asarray(cols), 1), np.asarray(values)
            )

    def test_count_true_packs_without_overflow(self):
        rs = np.random.RandomState(10)
        masks = [rs.rand(4, 128) < p for p in (0.5, 0.9, 0.1)]
        masks[1][0] = True  # a full row: 64 per chunk in the middle field
        masks[0][1] = True
        masks[2][2] = True
        got = jax.jit(knn._count_true)(*map(jnp.asarray, masks))
        for g, m in zip(got, masks):
            np.testing.assert_array_equal(np.asarray(g), m.sum(axis=1))


if __name__ == "__main__":
    absltest.main()
