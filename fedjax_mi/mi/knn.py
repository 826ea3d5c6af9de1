"""k-nearest-neighbour mutual-information estimators (docs/estimators.md, "kNN").

Two estimators, both deterministic, exact (no approximate neighbour search)
and computed blockwise, so memory is O(block x N) and never O(N^2):

* `ksg`: Kraskov, Stögbauer and Grassberger, "Estimating mutual
  information" (2004), algorithm 1, for two continuous sides, with the tie
  rule of Gao, Kannan, Oh and Viswanath, "Estimating mutual information for
  discrete-continuous mixtures" (2017) for duplicated samples; optionally
  on normal scores (copula) and with the local non-uniformity correction
  of Gao, Ver Steeg and Galstyan, "Efficient estimation of mutual
  information for strongly dependent variables" (2015).
* `mixed_knn`: Ross, "Mutual information between discrete and continuous
  data sets" (2014), for integer class labels and a continuous side.

Both return bits. Each takes a PRNG key first only for a signature uniform
with the stochastic estimators; the key is not used.

The k-th smallest distance of each query row is found without a sort
(`lax.top_k` is about 1000x slower than a plain min-reduction on XLA:CPU):
the row is cut into chunks of `_CHUNK` columns, the k chunks with the
smallest minima are kept (they hold the k smallest values, see
`_kth_smallest`), and the k-th smallest of those k * _CHUNK values is found
by k passes over distinct values, which counts ties correctly. Neighbour
counts go through one packed float reduction (`_count_true`).
"""

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import digamma, ndtri

from fedjax_mi.mi import inputs, pairwise

# Columns per chunk in `_kth_smallest` and `_count_true` (which needs
# <= 64); 64 measured ~10% faster than 32 on the 2-core CPU.
_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class KSG:
    """Configuration of `ksg`. Hashable: a static jit argument.

    Attributes:
      k: neighbour order in the joint space (>= 1), or None for the
        automatic order of the local non-uniformity correction,
        max(2 d, 5) with d = da + db (needs `lnc_quantile`). Kraskov et al.
        (2004) recommend 2-4 for the plain estimator; larger k lowers
        variance and raises bias. The correction needs k > d (k neighbours
        span at most k directions).
      block: query rows per `lax.map` step; memory is O(block x N) floats.
        Changes speed only, never the estimate. 32-256 ran within timing
        noise on the 2-core CPU at N = 25,000; 64 keeps the (block, N)
        arrays cache-sized (docs/estimators.md, "kNN").
      lnc_quantile: None for plain KSG, or q in (0, 1) for the local
        non-uniformity correction (LNC) of Gao, Ver Steeg and Galstyan,
        "Efficient estimation of mutual information for strongly dependent
        variables" (2015): a sample is corrected where its neighbourhood's
        volume ratio falls below alpha, the q-quantile of that ratio for
        uniformly scattered neighbours (`lnc_log_alpha`).
      copula: replace each column by its normal scores (rank-based, ties
        averaged) before standardising. MI is unchanged by monotone
        per-coordinate maps; the scores undo heavy tails and skew.
    """

    k: Optional[int] = 3
    block: int = 64
    lnc_quantile: Optional[float] = None
    copula: bool = False

    def __post_init__(self):
        if self.k is None:
            if self.lnc_quantile is None:
                raise ValueError("KSG.k=None (automatic) needs lnc_quantile")
        elif not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"KSG.k must be an integer >= 1 or None, got {self.k!r}")
        if not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"KSG.block must be an integer >= 1, got {self.block!r}")
        if self.lnc_quantile is not None and not 0.0 < self.lnc_quantile < 1.0:
            raise ValueError(
                f"KSG.lnc_quantile must be in (0, 1) or None, got {self.lnc_quantile!r}"
            )
        if not isinstance(self.copula, bool):
            raise ValueError(f"KSG.copula must be a bool, got {self.copula!r}")

    def neighbours(self, d: int) -> int:
        """The neighbour order used for a joint dimension d (static)."""
        return max(2 * d, 5) if self.k is None else self.k


@dataclasses.dataclass(frozen=True)
class MixedKNN:
    """Configuration of `mixed_knn`. Hashable: a static jit argument.

    Attributes:
      k: neighbour order within a sample's own class (>= 1). Classes with
        <= k samples are skipped (see `mixed_knn`).
      block: query rows per `lax.map` step; memory is O(block x N) floats.
        Changes speed only, never the estimate (default as for `KSG`).
      distances: how squared Euclidean distances are computed (same metric,
        different rounding). "gemm": |q|^2 + |x|^2 - 2 q.x, one matrix
        product per block; at d = 84 the whole estimator runs 2.5x faster
        than with "direct" (the distances alone 5x; max-norm distances
        would be 7x slower), but the absolute error ~ d 2^-24 (|q|^2 + |x|^2)
        swamps neighbour distances that are tiny next to the norms
        (low-dimensional or tightly clustered data). "direct": summed
        coordinate differences, error relative to the distance itself.
        "auto": "direct" for d <= 8, else "gemm".
    """

    k: int = 3
    block: int = 64
    distances: str = "auto"

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"MixedKNN.k must be an integer >= 1, got {self.k!r}")
        if not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"MixedKNN.block must be an integer >= 1, got {self.block!r}")
        if self.distances not in ("auto", "gemm", "direct"):
            raise ValueError(
                f"MixedKNN.distances must be 'auto', 'gemm' or 'direct', got {self.distances!r}"
            )


# Largest d for which distances="auto" sums coordinate differences; above it
# the GEMM is used (measured crossover of speed d ~ 4; up to 8 the direct
# form costs < 2x and low d is where GEMM rounding hurts most).
_DIRECT_MAX_DIM = 8


# ---------------------------------------------------------------------------
# k-th smallest value per row.


def _kth_by_passes(d: jax.Array, k: int) -> jax.Array:
    """(B,) k-th smallest value of each row of (B, M) `d`, ties counted.

    Pass t finds the next distinct value above the last one and how many
    entries are <= it; the first value whose count reaches k is the answer.
    Each pass consumes at least one entry, so k passes suffice. Rows with
    fewer than k finite entries give inf.
    """
    below = jnp.full(d.shape[:1], -jnp.inf, d.dtype)
    result = jnp.full(d.shape[:1], jnp.inf, d.dtype)
    found = jnp.zeros(d.shape[:1], bool)
    for _ in range(k):  # k is static and small
        value = jnp.min(jnp.where(d > below[:, None], d, jnp.inf), axis=-1)
        reached = jnp.sum(d <= value[:, None], axis=-1, dtype=jnp.int32) >= k
        result = jnp.where(reached & ~found, value, result)
        found = found | reached
        below = value
    return result


def _pick_chunks(d: jax.Array, k: int, chunk: int) -> tuple[jax.Array, jax.Array]:
    """The k chunks of `chunk` columns with the smallest minima, per row of (B, M) d.

    Returns (values (B, k * chunk), columns (B, k * chunk) int32). Why these
    chunks hold the k smallest values of the row: see `_kth_smallest`.
    """
    b, m = d.shape
    groups = m // chunk
    blocks = d.reshape(b, groups, chunk)
    minima = jnp.min(blocks, axis=-1)  # (B, G)
    iota = lax.broadcasted_iota(jnp.int32, minima.shape, 1)
    taken = jnp.zeros(minima.shape, bool)
    picks = []
    for _ in range(k):
        # Smallest untaken minimum; ties (inf included) broken by the lowest
        # index among untaken chunks, so the k picks are distinct chunks.
        low = jnp.min(jnp.where(taken, jnp.inf, minima), axis=-1, keepdims=True)
        pick = jnp.min(jnp.where(~taken & (minima <= low), iota, groups), axis=-1)
        taken = taken | (iota == pick[:, None])
        picks.append(pick)
    picks = jnp.stack(picks, 1)  # (B, k)
    chosen = jnp.take_along_axis(blocks, picks[:, :, None], axis=1)
    columns = picks[:, :, None] * chunk + jnp.arange(chunk, dtype=jnp.int32)
    return chosen.reshape(b, k * chunk), columns.reshape(b, k * chunk)


def _kth_smallest(d: jax.Array, k: int, chunk: int = _CHUNK) -> jax.Array:
    """(B,) k-th smallest value of each row of (B, M) `d` (M a multiple of chunk).

    Why the k chunks with the smallest minima suffice (let S be those chunks,
    tau the largest of their minima, v the k-th smallest value of the row):
    S holds k entries <= tau, so v <= tau; every entry outside S is >= tau.
    All entries < v are therefore in S, and S holds at least k entries <= v
    (all of them if v < tau, its k minima if v = tau), so the k-th smallest
    value of S is v.
    """
    if d.shape[1] // chunk <= k:
        return _kth_by_passes(d, k)
    return _kth_by_passes(_pick_chunks(d, k, chunk)[0], k)


def _k_nearest(d: jax.Array, k: int, chunk: int = _CHUNK) -> tuple[jax.Array, jax.Array]:
    """The k smallest values of each row of (B, M) `d` and their columns.

    Returns (values (B, k) ascending, columns (B, k) int32); among tied
    values any k are returned. `lax.top_k` runs on the k chunks of
    `_pick_chunks` only (k * chunk columns), not the whole row, where it is
    slow on XLA:CPU. Used for large k (the LNC correction), where the k
    passes of `_kth_by_passes` would cost O(k^2 chunk) per row.
    """
    if d.shape[1] // chunk <= k:
        values, columns = d, lax.broadcasted_iota(jnp.int32, d.shape, 1)
    else:
        values, columns = _pick_chunks(d, k, chunk)
    neg, pos = lax.top_k(-values, k)
    return -neg, jnp.take_along_axis(columns, pos, axis=1)


def _count_true(*masks: jax.Array, chunk: int = _CHUNK) -> tuple[jax.Array, ...]:
    """(B,) int32 number of True entries per row of each of up to 3 (B, M) masks.

    Speed (XLA:CPU, measured): float reductions run vectorised, int32
    reductions and sibling reductions fused into one multi-output loop run
    ~10x slower. So the masks are packed as one float, mask i worth 256^i,
    summed over chunks of `chunk` <= 64 columns (a chunk sum is an integer
    < 64 * 65793 < 2^24, exact in float32, with no carries between fields),
    and the (B, M / chunk) chunk sums are unpacked as integers. M must be a
    multiple of `chunk`.
    """
    assert 1 <= len(masks) <= 3 and chunk <= 64
    b, m = masks[0].shape
    packed = jnp.where(masks[0], 1.0, 0.0)
    for i, mask in enumerate(masks[1:], 1):
        packed = packed + jnp.where(mask, float(256**i), 0.0)
    sums = jnp.sum(packed.reshape(b, m // chunk, chunk), axis=-1).astype(jnp.int32)
    return tuple(jnp.sum((sums >> (8 * i)) & 0xFF, axis=-1) for i in range(len(masks)))


def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
    """Rows of `x` padded with zeros to a multiple of `multiple` (masked by the caller)."""
    pad = -x.shape[0] % multiple
    return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) if pad else x


def _chebyshev(q: jax.Array, xt: jax.Array) -> jax.Array:
    """(B, N) max-norm distances of rows of q (B, d) to the columns of xt (d, N).

    Same values as `pairwise.chebyshev(q, xt.T)`, but faster on XLA:CPU
    (measured ~2x): the samples come transposed, so each coordinate is a
    contiguous row, and the loop over the d coordinates fuses into one pass
    over (B, N) without forming the (B, N, d) differences.
    """
    out = jnp.abs(q[:, 0:1] - xt[0][None, :])
    for c in range(1, q.shape[1]):  # d is static
        out = jnp.maximum(out, jnp.abs(q[:, c : c + 1] - xt[c][None, :]))
    return out


def _sq_differences(q: jax.Array, xt: jax.Array) -> jax.Array:
    """(B, N) squared Euclidean distances of rows of q (B, d) to columns of xt (d, N).

    Summed from coordinate differences: rounding is relative to the distance
    itself (exact 0 for duplicates), unlike the GEMM form.
    """
    out = jnp.square(q[:, 0:1] - xt[0][None, :])
    for c in range(1, q.shape[1]):  # d is static
        out = out + jnp.square(q[:, c : c + 1] - xt[c][None, :])
    return out


_sq_euclidean = pairwise.sq_euclidean


# ---------------------------------------------------------------------------
# Copula scores and the local non-uniformity correction.


def normal_scores(x: jax.Array) -> jax.Array:
    """(N, d) columns replaced by their normal scores ndtri(rank / (N + 1)).

    Ranks are 1-based, tied values share their average rank (so duplicates
    stay duplicates and a constant column becomes constant 0). Every column
    map is monotone, so the MI of the pair is unchanged.
    """
    n = x.shape[0]
    s = jnp.sort(x, axis=0)
    side = lambda which: jax.vmap(
        lambda c, v: jnp.searchsorted(c, v, side=which), in_axes=(1, 1), out_axes=1
    )(s, x)
    rank = (side("left") + side("right") + 1).astype(x.dtype) / 2.0
    return ndtri(rank / (n + 1))


def _box_log_ratio(offsets: jax.Array, eps: jax.Array, kept: jax.Array) -> jax.Array:
    """log(V_pca / V_max) per sample (nats), NaN where it is undefined.

    Args:
      offsets: (B, k, d) neighbours minus the sample, in standardised units.
      eps: (B,) max-norm distance to the k-th neighbour.
      kept: (d,) bool, the non-constant columns (a constant column has
        offsets exactly 0 and is left out of both volumes).

    V_max = (2 eps)^d' is the max-norm box of the k neighbours (d' kept
    columns); V_pca is the box centred at the sample, aligned with the
    principal axes of the sample and its neighbours, just holding every
    neighbour. Undefined (NaN) where eps = 0 or a principal half-side is 0
    (the neighbours span fewer than d' directions).
    """
    b, k, d = offsets.shape
    pts = jnp.concatenate([jnp.zeros((b, 1, d), offsets.dtype), offsets], axis=1)
    centred = pts - jnp.mean(pts, axis=1, keepdims=True)
    hi = lax.Precision.HIGHEST
    cov = jnp.einsum("bkd,bke->bde", centred, centred, precision=hi)
    # Constant columns have zero rows and columns; a unit diagonal there
    # makes them eigenvectors of their own, recognised and skipped below.
    cov = cov + jnp.diag((~kept).astype(offsets.dtype))
    _, axes = jnp.linalg.eigh(cov)  # (B, d, d) columns
    half = jnp.max(jnp.abs(jnp.einsum("bkd,bdm->bkm", offsets, axes, precision=hi)), axis=1)
    on_kept = jnp.sum(jnp.where(kept[None, :, None], axes * axes, 0.0), axis=1) > 0.5  # (B, d)
    d_kept = jnp.sum(kept).astype(offsets.dtype)
    log_half = jnp.where(on_kept, jnp.log(jnp.where(on_kept, half, 1.0)), 0.0)
    ratio = jnp.sum(log_half, axis=1) - d_kept * jnp.log(eps)
    defined = (eps > 0) & jnp.all(~on_kept | (half > 0), axis=1)
    return jnp.where(defined, ratio, jnp.nan)


@functools.lru_cache(maxsize=None)
def lnc_log_alpha(k: int, d: int, quantile: float, draws: int = 4000, seed: int = 0) -> float:
    """log alpha: the `quantile` of log(V_pca / V_max) for uniform neighbours (nats).

    Under local uniformity the k neighbours of a sample, given the k-th
    neighbour's distance eps, are scattered uniformly in its max-norm ball
    (the k-th on the surface); the ratio is scale-free, so k points drawn
    uniformly in [-1, 1]^d with eps their largest max-norm have its
    distribution. Monte Carlo in float64 numpy with a fixed seed (a pure
    function of k, d and quantile, computed once per static shape).
    """
    rng = np.random.default_rng([seed, k, d])
    out = []
    for start in range(0, draws, 250):  # bounded memory
        off = rng.uniform(-1.0, 1.0, (min(250, draws - start), k, d))
        eps = np.abs(off).max(axis=(1, 2))
        pts = np.concatenate([np.zeros_like(off[:, :1]), off], axis=1)
        c = pts - pts.mean(axis=1, keepdims=True)
        _, axes = np.linalg.eigh(np.einsum("bkd,bke->bde", c, c))
        half = np.abs(np.einsum("bkd,bdm->bkm", off, axes)).max(axis=1)
        out.append(np.log(half).sum(axis=1) - d * np.log(eps))
    return float(np.quantile(np.concatenate(out), quantile))


# ---------------------------------------------------------------------------
# KSG.


@functools.partial(jax.jit, static_argnames=("config",))
def ksg(key: jax.Array, a: jax.Array, b: jax.Array, config: KSG) -> jax.Array:
    """KSG estimate (Kraskov et al. 2004, algorithm 1) of I(a; b) in bits.

    Each column of a and of b is standardised (`pairwise.standardize`; a
    constant column becomes 0 and changes no distance). Distances are
    max-norm; the joint distance is the larger of the two marginal ones.
    For sample i, eps_i is the distance to its k-th neighbour in the joint
    space (itself excluded, duplicates counted), and n_a,i, n_b,i count the
    other samples strictly closer than eps_i in each marginal. Then

        I = psi(k) + psi(N) - mean_i[psi(n_a,i + 1) + psi(n_b,i + 1)]  (nats),

    returned / ln 2.

    Ties (Gao et al. 2017): where eps_i = 0 (sample i has >= k exact
    duplicates in the joint space), k is replaced for that sample by k_i,
    the number of other samples at joint distance 0, and the marginal counts
    use <= 0 instead of < 0 (so n_a,i, n_b,i >= k_i); psi(k) becomes
    mean_i psi(k_i). For samples with eps_i > 0 the rule is the plain one.

    With `config.copula`, each column is first replaced by its normal
    scores (`normal_scores`). With `config.lnc_quantile` (the local
    non-uniformity correction of Gao, Ver Steeg, Galstyan 2015), for each
    sample r_i = log(V_pca,i / V_max,i) (`_box_log_ratio`: the box aligned
    with the principal axes of the sample and its k neighbours vs the
    max-norm box of radius eps_i, in the joint space) and

        I_LNC = I - mean_i[r_i if r_i < log alpha else 0],

    alpha from `lnc_log_alpha`; samples where r_i is undefined (eps_i = 0,
    a degenerate box) are not corrected.

    Args:
      key: unused (the estimator is deterministic).
      a: (N, da) or (N,) continuous samples (cast to float32 by default).
      b: (N, db) or (N,) continuous samples paired row-wise with a.
      config: static `KSG`.

    Returns:
      A float scalar, bits; NaN if a or b holds NaN or inf. Vmaps over
      leading batch axes of a and b.

    Raises:
      ValueError at trace time if the shapes disagree, N <= k, or the
      correction is asked for with k <= da + db.
    """
    del key
    dim = sum(1 if jnp.ndim(x) == 1 else jnp.shape(x)[-1] for x in (a, b))  # da + db
    k = config.neighbours(dim)
    n = inputs.check_pair(a, b, min_samples=k + 1, name="KSG")
    lnc = config.lnc_quantile is not None
    if lnc and k <= dim:
        raise ValueError(
            f"KSG with the LNC correction needs k > da + db = {dim} "
            f"(k neighbours span at most k directions), got k = {k}; use k=None"
        )
    a_raw, b_raw = jnp.asarray(a), jnp.asarray(b)
    xa, xb = inputs.as_matrix(a_raw), inputs.as_matrix(b_raw)
    if config.copula:
        xa, xb = normal_scores(xa), normal_scores(xb)
    za, zb = pairwise.standardize(xa), pairwise.standardize(xb)
    za_cols, zb_cols = _pad_rows(za, _CHUNK).T, _pad_rows(zb, _CHUNK).T  # (d, Np)
    index = jnp.arange(za_cols.shape[1])
    valid = index < n
    if lnc:
        joint_rows = jnp.concatenate([za_cols, zb_cols]).T  # (Np, d)
        kept = jnp.any(joint_rows[:n] != joint_rows[:1], axis=0)  # non-constant

    def block(qi):
        # Queries are read from the column arrays inside the loop body, where
        # those are materialised loop operands: taken from za, zb outside the
        # loop, XLA:CPU recomputed the standardisation separately for queries
        # and columns, with reductions rounded differently, and duplicated
        # rows ended up 1 ulp apart instead of at distance 0.
        qa, qb = za_cols[:, qi].T, zb_cols[:, qi].T  # (B, d)
        da = _chebyshev(qa, za_cols)  # (B, Np)
        db = _chebyshev(qb, zb_cols)
        other = (qi[:, None] != index[None, :]) & valid[None, :]
        dz = jnp.where(other, jnp.maximum(da, db), jnp.inf)
        if lnc:
            nearest, columns = _k_nearest(dz, k)  # (B, k)
            eps = nearest[:, -1]
            offsets = joint_rows[columns] - joint_rows[qi][:, None, :]  # (B, k, d)
            log_ratio = _box_log_ratio(offsets, eps, kept)
        else:
            eps = _kth_smallest(dz, k)  # (B,)
            log_ratio = jnp.zeros_like(eps)
        # "Strictly closer than eps" is "<= the float below eps"; at eps = 0
        # the Gao et al. rule counts "<= 0".
        radius = jnp.where(eps > 0, jnp.nextafter(eps, jnp.zeros_like(eps)), 0.0)[:, None]
        n_a, n_b, at_zero = _count_true(
            other & (da <= radius), other & (db <= radius), dz <= 0
        )  # self: dz = inf
        k_i = jnp.where(eps > 0, k, at_zero)
        return k_i, n_a, n_b, log_ratio

    k_i, n_a, n_b, log_ratio = pairwise.map_row_blocks(block, config.block, jnp.arange(n))
    f = lambda c: digamma(c.astype(za.dtype))
    nats = digamma(jnp.asarray(n, za.dtype)) + jnp.mean(f(k_i) - f(n_a + 1) - f(n_b + 1))
    if lnc:
        # Gao et al. (2015): subtract the mean log volume ratio over the
        # samples whose ratio is below alpha (0 for the others and where it
        # is undefined).
        log_alpha = lnc_log_alpha(k, dim, config.lnc_quantile)
        below = jnp.where(log_ratio < log_alpha, log_ratio, 0.0)  # NaN < x is False
        nats = nats - jnp.mean(below)
    return inputs.nan_unless_finite(nats / math.log(2.0), a_raw, b_raw)


# ---------------------------------------------------------------------------
# Ross (2014), discrete labels and continuous samples.


def _standardize_kept(x: jax.Array, kept: jax.Array) -> jax.Array:
    """`pairwise.standardize` with mean and std over the rows where `kept`.

    Makes skipping a small class identical to deleting its rows first.
    Dropped rows are transformed too (their values are never used).
    """
    w = kept.astype(x.dtype)[:, None]
    count = jnp.maximum(jnp.sum(w), 1.0)
    x = x - jnp.sum(w * x, axis=0) / count
    std = jnp.sqrt(jnp.sum(w * x * x, axis=0) / count)
    return x / jnp.where(std > 0, std, 1.0)


def _class_sizes(labels: jax.Array) -> jax.Array:
    """(N,) size of each sample's class, for any int labels, under jit.

    One sort and two binary searches; the number of classes need not be
    static (no bincount length).
    """
    s = jnp.sort(labels)
    return (
        jnp.searchsorted(s, labels, side="right") - jnp.searchsorted(s, labels, side="left")
    ).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config",))
def mixed_knn(key: jax.Array, labels: jax.Array, x: jax.Array, config: MixedKNN) -> jax.Array:
    """Ross (2014) kNN estimate of I(labels; x) in bits.

    Columns of x are standardised (z-scored over the kept samples, see
    below; a constant column is only centred), so the estimate does not
    depend on the units of each column. Distances are Euclidean (Ross's
    argument holds for any norm), computed as `config.distances` says: by
    one GEMM per block for d > 8, by summed differences otherwise. For sample i
    of class y_i: d_i is the distance to its k-th nearest neighbour among the
    other samples of class y_i; m_i counts the other samples of any class at
    distance <= d_i (so the k same-class neighbours count, m_i >= k); N_y is
    the size of class y. Then

        I = psi(N) - mean_i psi(N_{y_i}) + psi(k) - mean_i psi(m_i)  (nats),

    returned / ln 2.

    Small classes: a class with <= k samples has no k-th neighbour, so its
    samples are removed before estimation: they get zero weight, do not count
    in m_i of other samples nor in the standardisation, and N is the number
    of samples kept (the result equals that on the kept rows alone). If no
    class has more than k samples the result is NaN. Done with masks under
    jit; the number of classes need not be static.

    Ties need no special rule: m_i counts with <=, so every sample tied with
    the k-th neighbour counts and m_i >= k even when d_i = 0 (duplicates).
    Summed differences put duplicates at exactly 0. The GEMM puts them at a
    rounding-size distance instead, equal for all copies of a point on
    XLA:CPU (tested), so ties among duplicates still count as ties; exact
    ties between distinct points survive only where the GEMM is exact
    (e.g. small-integer data).

    Args:
      key: unused (the estimator is deterministic).
      labels: (N,) or (N, 1) integer class labels (any integer values).
      x: (N, d) or (N,) continuous samples (cast to float32 by default).
      config: static `MixedKNN`.

    Returns:
      A float scalar, bits; NaN if x holds NaN or inf. Vmaps over leading
      batch axes of labels and x.

    Raises:
      TypeError if labels are not integers (labels stored as floats).
      ValueError at trace time if the shapes disagree or N <= k.
    """
    del key
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"MixedKNN needs integer class labels, got dtype {labels.dtype} "
            "(labels stored as floats? pass labels.astype(int))"
        )
    if not inputs.is_labels(labels):
        raise ValueError(f"MixedKNN: labels must be (N,) or (N, 1), got shape {labels.shape}")
    n = inputs.check_pair(labels, x, min_samples=config.k + 1, name="MixedKNN")
    x_raw = jnp.asarray(x)
    labels = inputs.as_labels(labels)
    sizes = _class_sizes(labels)
    kept = sizes > config.k
    z = _standardize_kept(inputs.as_matrix(x_raw), kept)

    gemm = config.distances == "gemm" or (
        config.distances == "auto" and z.shape[1] > _DIRECT_MAX_DIM
    )
    z_cols = _pad_rows(z, _CHUNK)  # (Np, d) rows for the GEMM
    if not gemm:
        z_cols = z_cols.T  # (d, Np) coordinate rows
    labels_cols = _pad_rows(labels, _CHUNK)
    index = jnp.arange(labels_cols.shape[0])
    counted = _pad_rows(kept, _CHUNK)  # padding rows are False

    def block(qi):
        # Queries read from the loop operand, as in `ksg` (exact duplicates).
        if gemm:
            d2 = _sq_euclidean(z_cols[qi], z_cols)  # (B, Np)
        else:
            d2 = _sq_differences(z_cols[:, qi].T, z_cols)
        other = qi[:, None] != index[None, :]
        same = (labels[qi][:, None] == labels_cols[None, :]) & counted[None, :]
        radius = _kth_smallest(jnp.where(same & other, d2, jnp.inf), config.k)
        (m,) = _count_true(other & counted[None, :] & (d2 <= radius[:, None]))
        return m

    m = pairwise.map_row_blocks(block, config.block, jnp.arange(n))
    weight = kept.astype(z.dtype)
    n_kept = jnp.sum(weight)
    mean = lambda v: jnp.sum(weight * v) / n_kept  # NaN if nothing is kept
    f = lambda c: digamma(jnp.maximum(c, 1).astype(z.dtype))  # skipped rows may hold 0
    nats = digamma(n_kept) + digamma(jnp.asarray(config.k, z.dtype)) - mean(f(sizes)) - mean(f(m))
    nats = jnp.where(n_kept > 0, nats, jnp.nan)
    return inputs.nan_unless_finite(nats / math.log(2.0), x_raw)
