"""EDGE mutual-information estimator (Noshad, Zeng, Hero, ICASSP 2019) in JAX.

EDGE estimates I(X; Y) from N paired samples in O(N log N): it hashes every
sample of X and of Y into a bucket (a random projection followed by a shifted
floor), counts how many samples share each X bucket (N_a), each Y bucket (M_b)
and each joint bucket (N_ab), and averages log2(N N_ab / (N_a M_b)) over the
samples. An ensemble of L bucket grids is combined by a median or a mean.

Everything here is one jitted function of arrays with static shapes, so it
vmaps over models, datasets and ensemble members:

>>> import jax, jax.numpy as jnp
>>> from fedjax_mi.mi import edge
>>> x = jax.random.normal(jax.random.key(0), (2000, 1))
>>> y = x + jax.random.normal(jax.random.key(1), (2000, 1))
>>> mi = edge.mutual_information(jax.random.key(2), x, y)   # bits; truth 0.5

Two families of settings live in one `EdgeConfig`:

* `EdgeConfig.reference(version, **kw)` reproduces the author's code
  (github mrtnoshad/EDGE, versions 4.2.0, 4.3.1, 4.4.1) as described in
  `docs/estimators.md` ("EDGE reference mode, step by step"), quirks included, with the reference's keyword names. The fixed
  projection matrices and the 500 nearest-neighbour query indices come from
  `numpy.random.RandomState(3334)` on the host (they depend only on shapes).
* `EdgeConfig()` is this project's default, which fixes what docs/estimators.md, EDGE step 6
  shows to be wrong: every ensemble member draws its own Gaussian projection
  and uniform shifts from the PRNG key (no fixed grid dressed as an
  ensemble); no gamma scaling at all, hence none twice; no 0.001 floor under
  every per-sample term and no renormalising pass (whose 2^(0.5 / I) factor
  explodes for small I); equal-probability bins of each z-scored hash
  coordinate at a few resolutions, with the hash dimensions of both sides
  sharing one budget so that the joint grid never has more cells than
  samples (no saturation at N = 25,000); and each grid's estimate minus the
  same grid's estimate with y permuted, which removes the counting bias
  (independence reads 0.00-0.02 bits instead of up to 0.73). 1-D integer
  inputs (labels) are hashed by value. It estimates the MI of the projected,
  discretised pair: a lower bound that is close where N covers the joint
  grid (low dimensions) and far below the truth for high MI in many
  dimensions. Measured errors: docs/estimators.md, "EDGE quantile".

Counting: each integer bucket vector is hashed to one 32-bit key (two rounds
of a murmur3-style mixer; 1-D codes are their own keys); each side's keys are
sorted once and turned into dense ranks, and the joint buckets are the exact
integers rank_a * N + rank_b, grouped by one more integer sort (XLA:CPU sorts
plain integer arrays several times faster than key/value pairs). Distinct
multi-coordinate buckets that collide in 32 bits are merged: the expected
number of merged pairs per side and grid is n_buckets^2 / 2^33 (< 0.08 at
N = 25,000), each moving an estimate by O(log2(N) / N) bits, far below 1e-3.
Above N = 46,340 the joint key no longer fits in int32 and is hashed too.
A 1-D coordinate shared by every grid (reference mode's labels) is sorted
once per call and each grid ranks its buckets by a running count over the
sorted codes (the floor is monotone). With class labels on one side, one
sort per grid does all the counting: each sample's word holds its label
value's index in the low bits and its other-side bucket above them, as an
exact mixed-radix number when the codes' spans fit (else a hash, merging
about K^2 2^b / 2^33 bucket pairs for b label bits). The default's
shuffle-corrected estimate needs only the sizes of the joint buckets (its
marginal terms cancel), so it sorts 32-bit hashes of the (x, y) bucket
pairs, one sort for the paired and one for the shuffled pairing, with the
same collision bound.

Precision: arrays are float32 unless jax x64 is enabled and float64 inputs are
passed (then float64 throughout). The reference computes in float64; float32
rounding can move a sample across a bucket boundary. Measured effect: see
docs/estimators.md, "Parity and speed against the author's code".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fedjax_mi.mi import counting

# docs/estimators.md, EDGE steps 1 and 2: constants of the reference implementation.
_REFERENCE_SEED = 3334  # numpy.random.RandomState seed of the reference.
_KNN_QUERIES = 500  # query points for the automatic widths.
_KNN_OFFSET = 1e-4  # added to the mean k-NN distance.
_MIN_STD = 1e-4  # smaller column standard deviations are replaced by 1.
_MIN_SAMPLES = 20  # floor(log2(N / 10)) >= 1 needs N >= 20.
# Section 4: the renormalising factor 2^(-sqrt(2 I) + 0.5 / I) overflows
# float32 for I < ~0.004; clip its exponent. Any exponent this large already
# makes every bucket wider than the data, as in the reference.
_MAX_RENORM_EXPONENT = 60.0

# The two passes of EDGE step 4 are a scan, unrolled: XLA:CPU runs a loop
# body's ops on one thread (EDGE step 5's I(Z; Y) at N = 25,000: 38-39 ms
# unrolled, 61-62 ms looped; I(X; Z): 168-173 against 169-214 ms, no clear
# gain; about 1 s more compile; an interleaved A/B of this flag on a 2-core
# CPU, each variant compiled after `jax.clear_caches()`).
_UNROLL_PASSES = True

VERSION_SCALE = {"4.2.0": 1.0, "4.3.1": 0.9, "4.4.1": 0.4}


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
    """Every knob of EDGE (docs/estimators.md, EDGE steps 1-5). Hashable: a static jit arg.

    Build reference behaviour with `EdgeConfig.reference(version, **kw)`; the
    no-argument constructor gives the project default.

    Attributes:
      upper_clip: U, the upper clip of each per-sample log ratio (bits);
        `math.inf` for none.
      lower_clip: lower clip of each per-sample log ratio (bits); the reference
        uses 0.001 (docs/estimators.md, EDGE step 3), `None` for none.
      gamma: smoothness (gamma_X, gamma_Y) multiplying the base widths.
      gamma_scale: the version's scale s applied to gamma (EDGE step 2, docs/estimators.md).
      epsilon: manual base widths (e_X, e_Y); `epsilon[0] == 0` switches both
        sides to automatic widths (the reference's rule).
      auto_width_factor, manual_width_factor: C / k' for automatic and manual
        widths (3 in 4.2.0; 18 and 15 in 4.4.1, where C is also divided by
        max(1 + ln d, 1) when `width_log_dim`).
      width_log_dim: divide C by max(1 + ln d, 1) (4.4.1).
      knn_exponent: the k of the automatic widths' k-th nearest neighbour is
        floor(0.43 N^(2/3 + knn_exponent k'/(k'+1)) exp(-1/max(1e4, k'^4))).
      knn_queries: number of query values for the automatic widths; 0 uses
        every sample as a query (no host-drawn indices).
      epsilon_vector: "fixed" (all members share the width) or "range" (widths
        linspace(1, 1 + eps_range_factor, L) times the base width).
      eps_range_factor: see `epsilon_vector`.
      ensemble_size: L, the number of base estimates.
      ensemble: "median", "average" or "optimal_weights".
      shifts: "diagonal" (member j shifts by j/L of a width, the reference),
        "stochastic" (0.1 U(0,1) widths, the reference's `stochastic=True`), or
        "uniform" (U(0,1) widths, independently per coordinate and member).
      hashing: "p-stable" (random projection), "floor" (no projection) or
        "auto" (quantile rule: project only a side with more dimensions than
        its hash-space share).
      floor_max_dim: use "floor" hashing when both dimensions are <= this
        (6 in 4.4.1; 0 disables).
      projection: "reference" (one fixed Gaussian matrix from
        RandomState(3334), shared by all members) or "random" (a fresh matrix
        per member, drawn from the PRNG key).
      dim_divisor: projected dimension k = min(d, floor(log2(N / dim_divisor))).
      max_projected_dim: cap on k (None for no cap).
      renormalize: run a second pass with gamma multiplied by
        renormalize_rescale * 2^(-sqrt(2 I1) + 0.5 / I1) (EDGE step 4, docs/estimators.md).
      renormalize_rescale: the extra factor of that second pass; the reference
        4.3.1 and 4.4.1 apply s again here (the double scaling of EDGE step 6).
      bias_correction: "none"; "miller_madow" (add the first-order plug-in
        correction (K_a + K_b - K_ab - 1) / (2 N ln 2) per member, K the
        numbers of occupied buckets; knn rule only); or "shuffle" (subtract the
        same grid's estimate with y permuted; quantile rule only).
      width_rule: "knn" (the reference: k-NN widths, EDGE steps 2-4) or
        "quantile" (the default: equal-probability bins of each z-scored hash
        coordinate at several resolutions, see `_estimate_quantile`).
      resolutions: quantile rule: number of bins-per-coordinate values, from 2
        to (max_joint_cells * N)^(1 / (k_x + k_y)); the estimate is the largest.
      max_joint_cells: quantile rule: joint cells per sample at the finest
        resolution.
      discrete_integers: quantile rule: hash 1-D integer inputs by value.
      discrete_bits: quantile rule: hash-space coordinates charged to a
        discrete side (about log2 of its number of values; 3 for 10 classes).
      scale_rows: quantile rule: the column standard deviations that scale a
        projection (EDGE step 1, docs/estimators.md) are taken over at most this many evenly spaced
        rows (None: every row, as the reference). The projection is random
        anyway; this saves a full pass over a wide x (docs/estimators.md, "EDGE quantile").
    """

    upper_clip: float = math.inf
    lower_clip: float | None = None
    gamma: tuple[float, float] = (1.0, 1.0)
    gamma_scale: float = 1.0
    epsilon: tuple[float, float] = (0.0, 0.0)
    auto_width_factor: float = 3.0
    manual_width_factor: float = 3.0
    width_log_dim: bool = False
    knn_exponent: float = 0.17
    knn_queries: int = 0
    epsilon_vector: Literal["fixed", "range"] = "fixed"
    eps_range_factor: float = 0.1
    ensemble_size: int = 4
    ensemble: Literal["median", "average", "optimal_weights"] = "average"
    shifts: Literal["diagonal", "stochastic", "uniform"] = "uniform"
    hashing: Literal["p-stable", "floor", "auto"] = "auto"
    floor_max_dim: int = 0
    projection: Literal["reference", "random"] = "random"
    dim_divisor: float = 10.0
    max_projected_dim: int | None = None
    renormalize: bool = False
    renormalize_rescale: float = 1.0
    bias_correction: Literal["none", "miller_madow", "shuffle"] = "shuffle"
    width_rule: Literal["knn", "quantile"] = "quantile"
    resolutions: int = 5
    max_joint_cells: float = 1.0
    discrete_bits: int = 3
    discrete_integers: bool = True
    scale_rows: int | None = 1024

    def __post_init__(self):
        for name, allowed in (
            ("epsilon_vector", ("fixed", "range")),
            ("ensemble", ("median", "average", "optimal_weights")),
            ("shifts", ("diagonal", "stochastic", "uniform")),
            ("hashing", ("p-stable", "floor", "auto")),
            ("projection", ("reference", "random")),
            ("bias_correction", ("none", "miller_madow", "shuffle")),
            ("width_rule", ("knn", "quantile")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        # Lists from callers become tuples so that the config stays hashable.
        object.__setattr__(self, "gamma", tuple(float(g) for g in self.gamma))
        object.__setattr__(self, "epsilon", tuple(float(e) for e in self.epsilon))
        if len(self.gamma) != 2 or min(self.gamma) <= 0:
            raise ValueError(f"gamma must be two positive numbers, got {self.gamma}")
        if len(self.epsilon) != 2 or min(self.epsilon) < 0:
            raise ValueError(f"epsilon must be two numbers >= 0, got {self.epsilon}")
        if self.epsilon[0] != 0 and self.epsilon[1] == 0:
            raise ValueError("manual epsilon needs both widths > 0")
        if self.ensemble_size < 1:
            raise ValueError("ensemble_size must be >= 1")

    @classmethod
    def reference(cls, version: str = "4.2.0", **kw) -> "EdgeConfig":
        """The reference implementation's behaviour, with its keyword names.

        `EDGE(X, Y, U=20, gamma=[0.2, 1.4], epsilon_vector='range')` of version
        4.2.0 is `EdgeConfig.reference("4.2.0", U=20, gamma=(0.2, 1.4),
        epsilon_vector="range")`. Keywords: U, gamma, epsilon, epsilon_vector,
        eps_range_factor, normalize_epsilon, ensemble_estimation, L_ensemble,
        hashing, stochastic; defaults are the version's own.
        """
        if version not in VERSION_SCALE:
            raise ValueError(f"version must be one of {sorted(VERSION_SCALE)}, got {version!r}")
        newer = version != "4.2.0"
        args = dict(
            U=10.0,
            gamma=(1.0, 1.0),
            epsilon=(0.0, 0.0),
            epsilon_vector="range" if newer else "fixed",
            eps_range_factor=0.1,
            normalize_epsilon=True,
            ensemble_estimation="median",
            L_ensemble=10 if newer else 5,
            hashing="p-stable",
            stochastic=False,
        )
        unknown = set(kw) - set(args)
        if unknown:
            raise TypeError(f"unknown reference keywords {sorted(unknown)}; known: {sorted(args)}")
        args.update(kw)
        s = VERSION_SCALE[version]
        v441 = version == "4.4.1"
        return cls(
            upper_clip=float(args["U"]),
            lower_clip=0.001,
            gamma=tuple(args["gamma"]),
            gamma_scale=s,
            epsilon=tuple(args["epsilon"]),
            auto_width_factor=18.0 if v441 else 3.0,
            manual_width_factor=15.0 if v441 else 3.0,
            width_log_dim=v441,
            knn_exponent=0.17,
            knn_queries=_KNN_QUERIES,
            epsilon_vector=args["epsilon_vector"],
            eps_range_factor=float(args["eps_range_factor"]),
            ensemble_size=int(args["L_ensemble"]),
            ensemble=args["ensemble_estimation"],
            shifts="stochastic" if args["stochastic"] else "diagonal",
            hashing=args["hashing"],
            floor_max_dim=6 if v441 else 0,
            projection="reference",
            dim_divisor=10.0,
            max_projected_dim=None,
            renormalize=bool(args["normalize_epsilon"]),
            renormalize_rescale=s,
            bias_correction="none",
            width_rule="knn",
            resolutions=1,
            discrete_integers=False,
            scale_rows=None,
        )


# --------------------------------------------------------------------------
# Host-side constants that depend only on shapes (docs/estimators.md, EDGE step 7).


@functools.lru_cache(maxsize=64)
def _reference_projections(dx: int, kx: int, dy: int, ky: int):
    """G (dx, kx) then V (dy, ky), standard normal, as the reference draws them."""
    rs = np.random.RandomState(_REFERENCE_SEED)
    g = rs.standard_normal((dx, kx))
    v = rs.standard_normal((dy, ky))
    return g, v


@functools.lru_cache(maxsize=64)
def _reference_query_indices(n: int, queries: int) -> np.ndarray:
    """The reference's k-NN query rows: a draw with replacement, seed 3334."""
    return np.random.RandomState(_REFERENCE_SEED).randint(0, n, size=queries).astype(np.int32)


@functools.lru_cache(maxsize=64)
def _optimal_weights(size: int, dim: int, multipliers: tuple[float, ...], n: int) -> np.ndarray:
    """Ensemble weights of the reference's "optimal_weights" (docs/estimators.md, EDGE step 4).

    Minimise t subject to sum(w) = 1, ||w||_2 <= t / 2 and, for i = 1 .. L-1,
    sum_j w_j (T_j / N)^(i / (2 d)) <= 2 t. For L <= 16 the solution is the
    uniform weight (docs/estimators.md); larger L is solved here once per shape.
    """
    if size <= 16:
        return np.full(size, 1.0 / size)
    from scipy import optimize  # Host-only, imported where needed.

    t_vec = np.asarray(multipliers) / n
    rows = np.stack([t_vec ** (i / (2.0 * dim)) for i in range(1, size)])
    cons = [
        {"type": "eq", "fun": lambda z: np.sum(z[:-1]) - 1.0},
        {"type": "ineq", "fun": lambda z: z[-1] / 2.0 - np.linalg.norm(z[:-1])},
        {"type": "ineq", "fun": lambda z: 2.0 * z[-1] - rows @ z[:-1]},
    ]
    z0 = np.append(np.full(size, 1.0 / size), 1.0)
    res = optimize.minimize(
        lambda z: z[-1],
        z0,
        constraints=cons,
        method="SLSQP",
        options={"maxiter": 500, "ftol": 1e-12},
    )
    return res.x[:-1]


def _projected_dim(d: int, n: int, config: EdgeConfig) -> int:
    """k = min(d, floor(log2(N / 10))) (docs/estimators.md, EDGE step 1)."""
    k = min(d, math.floor(math.log(n / config.dim_divisor, 2)))
    if config.max_projected_dim is not None:
        k = min(k, config.max_projected_dim)
    return max(k, 1)


def _knn_order(k_proj: int, n: int, exponent: float) -> int:
    """Neighbour order of the automatic widths (docs/estimators.md, EDGE step 2)."""
    k = math.floor(
        0.43
        * n ** (2.0 / 3.0 + exponent * (k_proj / (k_proj + 1.0)))
        * math.exp(-1.0 / max(10000, k_proj**4))
    )
    return min(max(k, 1), n)


# --------------------------------------------------------------------------
# Array code.


def _base_estimate(
    p, q, wx, wy, bx, by, config: EdgeConfig, sorted_x=None, sorted_y=None, classes=None
) -> jax.Array:
    """One grid's estimate in bits. p: (N, kx), q: (N, ky); widths/shifts: (k,).

    sorted_x, sorted_y: optional `counting.sorted_column` of a 1-D p or q. `classes`:
    exactly one side is sorted and holds class labels, whose `counting.LabelClasses` let
    one sort count the grid (`counting.labelled_grid_counts`).
    """
    n = p.shape[0]
    if n > counting.MAX_EXACT_JOINT_N or (sorted_x is None and sorted_y is None):
        hx = counting.bucket_keys(counting.bucket_codes(p, bx, wx))
        hy = counting.bucket_keys(counting.bucket_codes(q, by, wy))
        [(nab, na, mb)], (ka, kb, kab) = counting.grid_counts(hx, hy)
    elif classes is not None:
        if sorted_x is None:  # labels on the y side
            p, q, wx, wy, bx, by = q, p, wy, wx, by, bx
        nab, na, mb = counting.labelled_grid_counts(
            counting.bucket_codes(q, by, wy), classes, bx, wx
        )
    else:
        rx, size_x, ka = counting.side_ranks(p, bx, wx, sorted_x)
        ry, size_y, kb = counting.side_ranks(q, by, wy, sorted_y)
        nab, na, mb, kab = counting.joint_counts(rx, ry, size_x, size_y)
    dt = p.dtype
    log_ratio = counting.log_ratio(nab, na, mb, n, dt)
    if config.lower_clip is not None or math.isfinite(config.upper_clip):
        log_ratio = jnp.clip(log_ratio, config.lower_clip, config.upper_clip)
    estimate = jnp.mean(log_ratio)
    if config.bias_correction == "miller_madow":
        estimate = estimate + (ka + kb - kab - 1).astype(dt) / (2.0 * n * math.log(2.0))
    return estimate


def _combine(estimates: jax.Array, weights: np.ndarray | None, config: EdgeConfig) -> jax.Array:
    if config.ensemble == "median":
        return jnp.median(estimates)
    if config.ensemble == "average":
        return jnp.mean(estimates)
    return jnp.dot(estimates, jnp.asarray(weights, estimates.dtype))


@dataclasses.dataclass(frozen=True)
class _Side:
    """Static facts about one side (X or Y) of the estimate."""

    dim: int  # original dimension d
    proj: int  # projected dimension k'
    floor: bool  # no projection


def _sides(n: int, dx: int, dy: int, config: EdgeConfig) -> tuple[_Side, _Side]:
    floor = config.hashing == "floor" or (dx <= config.floor_max_dim and dy <= config.floor_max_dim)
    if floor:
        return _Side(dx, dx, True), _Side(dy, dy, True)
    return (
        _Side(dx, _projected_dim(dx, n, config), False),
        _Side(dy, _projected_dim(dy, n, config), False),
    )


def _column_std(data: jax.Array, rows: int | None = None) -> jax.Array:
    """Population standard deviation of each column, (N, d) -> (d,).

    With `rows`, over every ceil(N / rows)-th row only (at most `rows` rows).

    Two passes (jnp.std): one-pass E[a^2] - E[a]^2 variants measured up to 1.7x
    faster at (25,000, 3,072) but lose digits for data far from 0, and the
    projection must match the reference's float64 to the bucket boundary.
    """
    if rows is not None and data.shape[0] > rows:
        # The barrier keeps XLA:CPU from fusing the strided slice into the
        # reductions, which then run about as long as over every row (measured
        # 21 ms with the barrier vs 40 ms without, (25,000, 3,072) float32).
        data = lax.optimization_barrier(data[:: -(-data.shape[0] // rows)])
    return jnp.std(data, axis=0)


def _project(
    key, data, side: _Side, members: int, fixed: np.ndarray | None, scale_rows: int | None = None
):
    """Hash-space coordinates (members, N, k') (docs/estimators.md, EDGE step 1).

    data: (N, d). The projection is W = G / (sigma_i sqrt(d)) row-wise, sigma the
    column standard deviations (1 where below 1e-4). With `fixed` (d, k') all
    members share one projection (returned with a leading axis of 1).
    `scale_rows`: see `EdgeConfig.scale_rows`.
    """
    if side.floor:
        return data[None]
    std = _column_std(data, scale_rows)
    std = jnp.where(std < _MIN_STD, 1.0, std)
    scale = 1.0 / (std * math.sqrt(side.dim))
    if fixed is not None:
        w = jnp.asarray(fixed, data.dtype) * scale[:, None]
        return (data @ w)[None]
    g = jax.random.normal(key, (side.dim, members * side.proj), data.dtype)
    p = data @ (g * scale[:, None])
    return p.reshape(data.shape[0], members, side.proj).transpose(1, 0, 2)


def _auto_widths(p: jax.Array, side: _Side, config: EdgeConfig) -> jax.Array:
    """Mean k-th nearest-neighbour distance per coordinate + 1e-4. p: (M, N, k')."""
    n = p.shape[1]
    k = _knn_order(side.proj, n, config.knn_exponent)
    cols = jnp.swapaxes(p, 1, 2)  # (M, k', N)
    if config.knn_queries:
        queries = cols[..., _reference_query_indices(n, config.knn_queries)]
    else:
        queries = cols
    dist = jax.vmap(jax.vmap(lambda c, q: counting.kth_neighbour_distance(c, q, k)))(cols, queries)
    return jnp.mean(dist, axis=-1) + _KNN_OFFSET


def _width_constant(side: _Side, factor: float, config: EdgeConfig) -> float:
    c = factor * side.proj
    if config.width_log_dim:
        c = c / max(1.0 + math.log(side.dim), 1.0)
    return c


def _as_matrix(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a[:, None]


def _float_dtype(x, y):
    dt = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.float32


def estimate(key: jax.Array, x: jax.Array, y: jax.Array, config: EdgeConfig) -> jax.Array:
    """Unbatched estimator body; see `mutual_information`."""
    if x.ndim > 2 or y.ndim > 2:
        raise ValueError(f"x and y must be (N, d) or (N,), got {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x.shape} and {y.shape}")
    if x.shape[0] < _MIN_SAMPLES:
        raise ValueError(
            f"EDGE needs at least {_MIN_SAMPLES} samples (projected dimension "
            f"floor(log2(N / 10)) >= 1), got N = {x.shape[0]}"
        )
    if config.width_rule == "knn":
        return _estimate_knn(key, x, y, config)
    return _estimate_quantile(key, x, y, config)


def _estimate_knn(key: jax.Array, x: jax.Array, y: jax.Array, config: EdgeConfig) -> jax.Array:
    """The reference's estimator (docs/estimators.md, EDGE steps 1-4): k-NN widths, renormalisation."""
    n = x.shape[0]
    dt = _float_dtype(x, y)
    x_dtype, y_dtype = x.dtype, y.dtype
    x, y = _as_matrix(x).astype(dt), _as_matrix(y).astype(dt)
    side_x, side_y = _sides(n, x.shape[1], y.shape[1], config)
    members = config.ensemble_size
    k_proj, k_shift = jax.random.split(key)
    kpx, kpy = jax.random.split(k_proj)

    # Hash space (EDGE step 1, docs/estimators.md): one shared projection or one per member.
    fixed = config.projection == "reference"
    g, v = (
        _reference_projections(side_x.dim, side_x.proj, side_y.dim, side_y.proj)
        if fixed
        else (None, None)
    )
    p = _project(kpx, x, side_x, members, g)
    q = _project(kpy, y, side_y, members, v)

    # Base widths r and constants C (EDGE step 2, docs/estimators.md).
    if config.epsilon[0] == 0:
        rx, ry = _auto_widths(p, side_x, config), _auto_widths(q, side_y, config)
        cx = _width_constant(side_x, config.auto_width_factor, config)
        cy = _width_constant(side_y, config.auto_width_factor, config)
    else:
        rx = jnp.full((1, side_x.proj), config.epsilon[0], dt)
        ry = jnp.full((1, side_y.proj), config.epsilon[1], dt)
        cx = _width_constant(side_x, config.manual_width_factor, config)
        cy = _width_constant(side_y, config.manual_width_factor, config)

    # Member multipliers T and shift fractions (EDGE step 3, docs/estimators.md).
    if config.epsilon_vector == "fixed":
        mult = np.ones(members)
    else:
        mult = np.linspace(1.0, 1.0 + config.eps_range_factor, members)
    weights = (
        _optimal_weights(members, x.shape[1], tuple(mult.tolist()), n)
        if config.ensemble == "optimal_weights"
        else None
    )
    if config.shifts == "diagonal":
        diag = jnp.asarray(np.linspace(0.0, 1.0, members, endpoint=False), dt)[:, None]
        frac_x = jnp.broadcast_to(diag, (members, side_x.proj))
        frac_y = jnp.broadcast_to(diag, (members, side_y.proj))
    else:
        kbx, kby = jax.random.split(k_shift)
        top = 0.1 if config.shifts == "stochastic" else 1.0
        frac_x = top * jax.random.uniform(kbx, (members, side_x.proj), dt)
        frac_y = top * jax.random.uniform(kby, (members, side_y.proj), dt)
    mult = jnp.asarray(mult, dt)[:, None]

    # A 1-D coordinate shared by every grid (labels, 1-D inputs) is sorted once.
    def sorted_once(a):
        shared = a.shape[0] == 1 and a.shape[2] == 1 and n <= counting.MAX_EXACT_JOINT_N
        return counting.sorted_column(a[0]) if shared else None

    sorted_x, sorted_y = sorted_once(p), sorted_once(q)
    # Class labels on one sorted side (docs/estimators.md, EDGE step 5's I(T; Y)): one sort a grid.
    label_dtype = x_dtype if sorted_x is not None else y_dtype
    labelled = (
        (sorted_x is None) != (sorted_y is None)
        and jnp.issubdtype(label_dtype, jnp.integer)
        and config.bias_correction != "miller_madow"
    )  # (which needs K_ab)
    classes = (
        counting.label_classes(sorted_x if sorted_x is not None else sorted_y) if labelled else None
    )

    def one_pass(gamma_x, gamma_y):
        base_x = rx * cx * gamma_x  # (1 or M, k')
        base_y = ry * cy * gamma_y
        wx, wy = base_x * mult, base_y * mult  # (M, k')
        bx, by = frac_x * wx, frac_y * wy
        pm = jnp.broadcast_to(p, (members,) + p.shape[1:])
        qm = jnp.broadcast_to(q, (members,) + q.shape[1:])
        est = jax.vmap(lambda *a: _base_estimate(*a, config, sorted_x, sorted_y, classes))(
            pm, qm, wx, wy, bx, by
        )
        return _combine(est, weights, config)

    s = config.gamma_scale
    gamma_x, gamma_y = config.gamma[0] * s, config.gamma[1] * s

    def step(previous, second):
        # Section 4: the second pass multiplies gamma by 2^(-sqrt(2 I1) + 0.5 / I1)
        # (and by s again in 4.3.1/4.4.1). Both passes are one scanned step, so
        # the estimator is traced once (the scan is unrolled: _UNROLL_PASSES).
        first = jnp.maximum(previous, 1e-6)  # Only unclipped configs can reach 0.
        exponent = jnp.minimum(-jnp.sqrt(2.0 * first) + 0.5 / first, _MAX_RENORM_EXPONENT)
        factor = jnp.where(second, jnp.exp2(exponent), 1.0).astype(dt)
        rescale = jnp.where(second, config.renormalize_rescale, 1.0).astype(dt)
        estimate = one_pass(gamma_x * factor * rescale, gamma_y * factor * rescale)
        return estimate, None

    passes = jnp.arange(2 if config.renormalize else 1) > 0
    estimate, _ = lax.scan(step, jnp.ones((), dt), passes, unroll=_UNROLL_PASSES)

    finite = jnp.all(jnp.isfinite(p)) & jnp.all(jnp.isfinite(q))
    return jnp.where(finite, estimate, jnp.nan)


def _resolutions(n: int, joint_dim: int, count: int, cells: float) -> tuple[float, ...]:
    """Bins per coordinate tried by the quantile rule: geometric from 2 to m_max.

    m_max^joint_dim = cells * N: near cells = 1 the finest grid has as many
    joint cells as samples, the edge of saturation (finer grids put almost
    every sample alone in its joint cell, where the shuffle-corrected estimate
    falls back towards 0 and the uncorrected one reads log2 N whatever the data).
    """
    if joint_dim == 0:  # Both sides discrete: no grid.
        return (1.0,)
    top = max(2.0, (cells * n) ** (1.0 / joint_dim))
    # Consecutive resolutions at least 25% apart: closer ones cost a full
    # count each and only add to the upward noise of the maximum.
    count = max(1, min(count, 1 + math.floor(math.log(top / 2.0) / math.log(1.25))))
    grid = np.geomspace(2.0, top, count) if count > 1 else np.array([top])
    return tuple(sorted({round(float(m), 6) for m in grid}))


def _is_discrete(a: jax.Array, config: EdgeConfig) -> bool:
    """1-D integer input hashed by value (class labels), when enabled."""
    return (
        config.discrete_integers and jnp.issubdtype(a.dtype, jnp.integer) and a.size == a.shape[0]
    )


def _quantile_dims(n: int, a: jax.Array, b: jax.Array, config: EdgeConfig) -> tuple[int, int]:
    """Hash-space dimensions (k_x, k_y) of the quantile rule; 0 for a discrete side.

    The two sides share one budget of B = floor(log2(N / 10)) coordinates (the
    reference's per-side rule, docs/estimators.md, EDGE step 1, applied to the joint space),
    so that even 2 bins per coordinate give at most N / 10 joint cells: with
    B per side, the joint space of two high-dimensional inputs has 2^(2B) ~ N^2
    cells, every sample sits alone, and nothing can be estimated. A discrete
    side is charged `discrete_bits` coordinates.
    """
    budget = math.floor(math.log(n / config.dim_divisor, 2))
    da = 0 if _is_discrete(a, config) else _as_matrix(a).shape[1]
    db = 0 if _is_discrete(b, config) else _as_matrix(b).shape[1]
    if da == 0 or db == 0:
        d = max(da, db)
        k = min(d, max(1, budget - config.discrete_bits)) if d else 0
        return (k, 0) if da else (0, k)
    kb0 = min(db, budget // 2)
    ka = min(da, max(1, budget - kb0))
    kb = min(db, max(1, budget - ka))
    return ka, kb


def _quantile_side(key, a: jax.Array, k: int, config: EdgeConfig):
    """Hash-space coordinates of one side for the quantile rule.

    Returns (M or 1, N, k) values in (0, 1): each coordinate goes through the
    standard normal CDF of its z-score (equal-probability bins for
    Gaussian-like coordinates, which random projections of many features
    are); or, for a discrete side (k == 0), the (N,) int32 labels.
    """
    n = a.shape[0]
    if k == 0:
        return a.reshape(n).astype(jnp.int32)
    dt = (
        jnp.promote_types(a.dtype, jnp.float32)
        if jnp.issubdtype(a.dtype, jnp.floating)
        else jnp.float32
    )
    a = _as_matrix(a).astype(dt)
    d = a.shape[1]
    # A random projection of a side that already fits the hash space only
    # scrambles it: "auto" projects only when d > k.
    project = config.hashing == "p-stable" or (config.hashing == "auto" and d > k)
    if project:
        p = _project(key, a, _Side(d, k, False), config.ensemble_size, None, config.scale_rows)
    else:
        p = a[None]
    mean = jnp.mean(p, axis=1, keepdims=True)
    std = jnp.std(p, axis=1, keepdims=True)
    # Constant coordinates (up to the rounding of the mean) go to one bin.
    constant = std <= 1e-6 * jnp.abs(mean)
    z = jnp.where(constant, 0.0, (p - mean) / jnp.where(constant, 1.0, std))
    return jax.scipy.special.ndtr(z)


def _grid_codes(u: jax.Array, bins: float, shift: jax.Array) -> jax.Array:
    """floor(u * bins + shift) as int32: (N, k) codes for one grid."""
    return jnp.floor(u * bins + shift).astype(jnp.int32)


def _estimate_quantile(key: jax.Array, x: jax.Array, y: jax.Array, config: EdgeConfig) -> jax.Array:
    """The project default: a real ensemble, shuffle-corrected, not saturated.

    Each of L members draws its own Gaussian projection (when a side has more
    dimensions than its share of the hash space, see `_quantile_dims`) and its
    own uniform shifts; coordinates are binned into equal-probability cells at
    R resolutions (bins per coordinate from 2 up to the saturation limit). Each
    grid gives the plug-in estimate minus the plug-in estimate of the same grid
    with y permuted (which removes the counting bias, first order included, as
    it depends only on the marginal cell counts). The member mean at each
    resolution is a near-unbiased estimate of the MI of the discretised pair,
    which is below I(x; y) and grows with the resolution: the estimate is the
    largest over resolutions.
    """
    n = x.shape[0]
    k_x, k_y, k_shift, k_perm = jax.random.split(key, 4)
    dim_x, dim_y = _quantile_dims(n, x, y, config)
    x_discrete, y_discrete = dim_x == 0, dim_y == 0
    u = _quantile_side(k_x, x, dim_x, config)
    v = _quantile_side(k_y, y, dim_y, config)
    discrete_cells = 2.0 ** (config.discrete_bits * (x_discrete + y_discrete))
    bins = _resolutions(
        n, dim_x + dim_y, config.resolutions, config.max_joint_cells / discrete_cells
    )
    members = config.ensemble_size
    # One random permutation, rotated by a different offset per member: each
    # member's shuffled pairing is still a uniformly random permutation, and
    # the members pair each x with different ys, for one sort instead of M
    # (saves ~2.7 ms per call at N = 25,000, M = 4).
    offsets = jnp.arange(members)[:, None] * (n // members)
    perms = counting.random_permutation(k_perm, n)[(jnp.arange(n)[None, :] + offsets) % n]

    def keys_of(w, discrete, member, b, shift):
        if discrete:
            return lax.bitcast_convert_type(w, jnp.uint32)
        w = w[member] if w.shape[0] > 1 else w[0]
        return counting.bucket_keys(_grid_codes(w, b, shift))

    def grid(member, b, shift_x, shift_y):
        hx = keys_of(u, x_discrete, member, b, shift_x)
        hy = keys_of(v, y_discrete, member, b, shift_y)
        if config.bias_correction == "shuffle" and config.lower_clip is None:
            # Paired and shuffled pairs have the same marginal buckets, so their
            # sum log2 N_a and sum log2 M_b cancel in the difference: only the two
            # joint bucketings are counted (joint keys: 32-bit hashes of the pair,
            # see the module docstring).
            joint = counting.sum_log_sizes(counting.joint_keys(hx, hy))
            joint_shuffled = counting.sum_log_sizes(counting.joint_keys(hx, hy[perms[member]]))
            return (joint - joint_shuffled) / n
        [paired, shuffled], _ = counting.grid_counts(hx, hy, perms[member])

        def mean_log_ratio(joint, marginal_x, marginal_y):
            log_ratio = counting.log_ratio(joint, marginal_x, marginal_y, n, jnp.float32)
            if config.lower_clip is not None:
                log_ratio = jnp.maximum(log_ratio, config.lower_clip)
            return jnp.mean(log_ratio)

        plug_in = mean_log_ratio(*paired)
        if config.bias_correction != "shuffle":
            return plug_in
        return plug_in - mean_log_ratio(*shuffled)

    # Grids form a (resolution, member) array axis: traced once, vmapped.
    ksx, ksy = jax.random.split(k_shift)
    shift_x = jax.random.uniform(ksx, (len(bins), members, max(dim_x, 1)))
    shift_y = jax.random.uniform(ksy, (len(bins), members, max(dim_y, 1)))
    bins_array = jnp.asarray(bins, jnp.float32)
    per_member = jax.vmap(jax.vmap(grid, in_axes=(0, None, 0, 0)), in_axes=(None, 0, 0, 0))
    estimates = per_member(jnp.arange(members), bins_array, shift_x, shift_y)  # (R, M)
    estimate = jnp.max(jnp.mean(estimates, axis=1))
    finite = jnp.ones((), bool)
    for w, discrete in ((u, x_discrete), (v, y_discrete)):
        if not discrete:
            finite = finite & jnp.all(jnp.isfinite(w))
    return jnp.where(finite, estimate, jnp.nan)


@functools.partial(jax.jit, static_argnames=("config",))
def mutual_information(
    key: jax.Array,
    x: jax.typing.ArrayLike,
    y: jax.typing.ArrayLike,
    config: EdgeConfig = EdgeConfig(),
) -> jax.Array:
    """EDGE estimate of I(x; y) in bits.

    Args:
      key: PRNG key; drives the projections and shifts of the default config
        (reference configs are deterministic and ignore it unless stochastic).
      x: (N, dx) or (N,) samples; integer class labels allowed.
      y: (N, dy) or (N,) samples paired row-wise with x.
      config: static `EdgeConfig`.

    Returns:
      A float scalar, bits. NaN if x or y holds NaN or inf (call `check_inputs`
      on concrete arrays to get an error instead). Jitted with `config`
      static; vmap it over leading batch axes of x and y (and key) as usual.

    Raises:
      ValueError at trace time if N < 20 or the shapes disagree.
    """
    return estimate(key, jnp.asarray(x), jnp.asarray(y), config)


@functools.partial(jax.jit, static_argnames=("config", "n"))
def shuffle_baseline(
    key: jax.Array,
    x: jax.typing.ArrayLike,
    y: jax.typing.ArrayLike,
    config: EdgeConfig = EdgeConfig(),
    n: int = 5,
) -> jax.Array:
    """Mean estimate over `n` random permutations of y: the estimator's floor (bits).

    Shuffling breaks the pairing, so the true MI is 0 and what remains is the
    estimator's bias at this N, dimension and config. Same shapes as
    `mutual_information`; jitted with `config` and `n` static.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    keys = jax.random.split(key, n)

    def one(k):
        k_perm, k_est = jax.random.split(k)
        perm = jax.random.permutation(k_perm, y.shape[0])
        return estimate(k_est, x, y[perm], config)

    return jnp.mean(jax.vmap(one)(keys))


def check_inputs(x, y) -> None:
    """Host-side validation of concrete inputs; raises ValueError.

    Checks shapes ((N, d) or (N,), equal N, N >= 20) and that every value is
    finite. Not jittable: call it on concrete arrays before the jitted estimate.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim not in (1, 2) or y.ndim not in (1, 2):
        raise ValueError(f"x and y must be (N, d) or (N,), got {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x.shape} and {y.shape}")
    if x.shape[0] < _MIN_SAMPLES:
        raise ValueError(f"EDGE needs at least {_MIN_SAMPLES} samples, got {x.shape[0]}")
    for name, a in (("x", x), ("y", y)):
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            raise ValueError(
                f"{name} holds {np.sum(~np.isfinite(a))} non-finite values (NaN or inf)"
            )
