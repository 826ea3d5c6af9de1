"""Noise-regularised KDE estimates of I(X; Z+e) and I(Z+e; Y) (docs/estimators.md, "KDE").

A deterministic network maps each of the N inputs to one point z_i, so
I(X; Z) is infinite (or log N for a finite sample). Saxe, Bansal, Dapello,
Advani, Kolchinsky, Tracey and Cox, "On the information bottleneck theory of
deep learning" (ICLR 2018), measure instead the noisy representation
Z + e, e ~ N(0, s^2 I). With X uniform over the N samples, Z + e is a mixture
of the N Gaussians p_i = N(z_i, s^2 I) with weights 1/N, H(Z+e | X) = H(e),
and I(X; Z+e) = H(Z+e) - H(e) is the mutual information between a Gaussian
mixture and its component index.

Kolchinsky and Tracey, "Estimating mixture entropy with pairwise distances"
(Entropy, 2017), bound that mixture entropy by pairwise distances D_ij
between components:

    I_D = -(1/N) sum_i log( (1/N) sum_j exp(-D_ij) )            (nats)

is an upper bound on I(X; Z+e) for D = KL(p_i || p_j) = |z_i - z_j|^2 / (2 s^2)
and a lower bound for D = Bhattacharyya distance = |z_i - z_j|^2 / (8 s^2).
Both are exact when the components are all isolated (I = log N) or all equal
(I = 0). Neither converges to I(X; Z+e) as N grows: for Z ~ N(0, C) and
N -> infinity they tend to

    upper: 1/2 log det(I + C/s^2)   + 1/2 tr(C (C + s^2 I)^-1)
    lower: 1/2 log det(I + C/4s^2)  + 1/2 tr(C (C + 4 s^2 I)^-1)

around the true 1/2 log det(I + C/s^2) (tests/test_mi_kde.py checks this).

I(Z+e; Y) = H(Z+e) - sum_y p(y) H(Z+e | Y=y), each entropy by the same
pairwise formula restricted to class y (weights 1/N_y); H(e) cancels. These
same-distance differences are the practice of Saxe et al., but they are
*estimates*, not bounds: the Bhattacharyya-based value can exceed the true
I(Z+e; Y) (1-D quadrature: 0.1364 vs 0.1323 bits, tests/test_mi_kde.py),
and no proof puts the KL-based value above it or orders the two (in every
case we computed, Bhattacharyya <= true <= KL held otherwise, including
Monte Carlo values of the true I(Z+e; Y) on 84-dim ReLU-like features).
Provable bounds on I(Z+e; Y) pair different distances, KL-total minus
Bhattacharyya-within-class (upper) and the reverse (lower), but in 84
dimensions they are too wide to use (e.g. [-5.7, 6.8] bits around a true
0.4) (docs/estimators.md, "KDE").

Only Z is needed, never X. Everything is float32 and blockwise: memory is
O(block x N), time O(M N d) for M query rows.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_mi.mi import inputs, pairwise

_LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class KDE:
    """Configuration of `xz_bounds` and `zy_bounds`. Hashable: a static jit argument.

    Attributes:
      noise_var: s^2 of the added noise (> 0, finite). With `relative`, a
        multiple of the mean per-dimension variance of Z; otherwise absolute.
        Default 10, relative, chosen for d = 84: the mean squared distance
        between two rows is 2 d = 168 times the mean per-dimension variance,
        so a small relative noise isolates every component. On synthetic
        84-dim ReLU features (N = 5,000 and 25,000) relative 0.01 to 0.3
        gives I(X; Z+e) = log2 N and I(Z+e; Y) = H(Y) to 0.001 bits in both
        values whatever the representation, 1 stays within 0.75 bits of
        them, and 3 still saturates the upper bound; 10 leaves both
        mid-range at both N (true I(X; Z+e) ~ 5 bits, true I(Z+e; Y) 0.4 to
        1.7 of 3.32 bits); 30 to 100 push I(Z+e; Y) towards 0
        (docs/estimators.md, "KDE", noise table). The fixed s^2 = 0.1 in Saxe
        et al.'s code, on activities of order 1, is of the small kind that
        saturates at this width.
      relative: True: s^2 = noise_var * mean_k Var(Z[:, k]), so the estimate
        is unchanged when Z is rescaled, as in the adaptive KDE of Chelombiev,
        Houghton and O'Donnell, "Adaptive estimators show information
        compression in deep neural networks" (ICLR 2019), who scale the noise
        to each layer's activity. As s^2 = noise_var * tr(Cov Z) / d, at a
        fixed width d a unit that dies (constant 0) changes s^2 only by the
        variance it carried. False: s^2 = noise_var.
      queries: M, the number of query rows i (the outer average), drawn
        without replacement by the key; None, or M >= N, uses all N rows in
        order. The inner sums over j always use all N rows. The query mean
        is an unbiased estimate of the all-rows value with RMS error
        sd_i * sqrt((N - M) / (M (N - 1))), sd_i the spread of the per-row
        terms. For the study, M = 5,000: at N = 25,000, d = 84 and the
        default noise that RMS error is <= 0.021 bits for all four values
        (0.035 at M = 2,000), far below the 0.8 to 6.6 bit gaps between
        lower and upper (docs/estimators.md, "KDE", subsample table).
      block: query rows per `lax.map` step; memory O(block x N) floats.
        Changes speed only, never the estimate. 128: at N = 25,000 a (128, N)
        float32 block is 13 MB; 512 (51 MB) measured 2x slower on the 2-core
        CPU, 64-256 alike (docs/estimators.md, "KDE", cost).
    """

    noise_var: float = 10.0
    relative: bool = True
    queries: int | None = None
    block: int = 128

    def __post_init__(self):
        if (
            isinstance(self.noise_var, bool)
            or not isinstance(self.noise_var, (int, float))
            or not math.isfinite(self.noise_var)
            or self.noise_var <= 0
        ):
            raise ValueError(f"KDE.noise_var must be a finite number > 0, got {self.noise_var!r}")
        if not isinstance(self.relative, bool):
            raise ValueError(f"KDE.relative must be a bool, got {self.relative!r}")
        if self.queries is not None and (
            isinstance(self.queries, bool) or not isinstance(self.queries, int) or self.queries < 1
        ):
            raise ValueError(f"KDE.queries must be None or an integer >= 1, got {self.queries!r}")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"KDE.block must be an integer >= 1, got {self.block!r}")


class KDEBounds(NamedTuple):
    """Two float32 scalars in bits.

    For `xz_bounds`: the Bhattacharyya (lower) and KL (upper) bounds on
    I(X; Z+e). For `zy_bounds`: the Bhattacharyya-based (`lower`) and
    KL-based (`upper`) estimates of I(Z+e; Y), which are not bounds (see the
    module docstring).
    """

    lower: jax.Array
    upper: jax.Array


# Minimum N: with one sample every estimate is 0 and the relative noise
# scale (a variance) is undefined.
_MIN_SAMPLES = 2


def _prepare(key: jax.Array, z: jax.Array, config: KDE):
    """(centred z (N, d), query indices (M,), 1 / (8 s^2)) for `config`."""
    n = z.shape[0]
    # Centring changes no distance but shrinks |z|^2, and with it the
    # cancellation error of the GEMM form |q|^2 + |x|^2 - 2 q.x. Constant
    # columns become exactly 0 (centring alone can leave a rounding residue,
    # which a relative s^2 of ~0 would blow up).
    constant = jnp.max(z, axis=0) == jnp.min(z, axis=0)
    z = jnp.where(constant, 0.0, z - jnp.mean(z, axis=0))
    scale = jnp.mean(jnp.var(z, axis=0)) if config.relative else 1.0
    s2 = config.noise_var * scale
    # s^2 = 0 only in relative mode with every column constant: all points
    # coincide, every distance is 0 and any finite 1/s^2 gives the exact 0.
    inv_8s2 = jnp.where(s2 > 0, 1.0 / (8.0 * jnp.where(s2 > 0, s2, 1.0)), 0.0).astype(z.dtype)
    if config.queries is None or config.queries >= n:
        idx = jnp.arange(n)
    else:
        idx = jax.random.choice(key, n, (config.queries,), replace=False)
    return z, idx, inv_8s2


def _sq_dists(zq: jax.Array, iq: jax.Array, z: jax.Array) -> jax.Array:
    """(B, N) squared distances of query rows zq (B, d), indices iq (B,), to z (N, d).

    The self term (column iq) is set to 0 exactly: GEMM rounding would
    otherwise leave it slightly positive, and it dominates the sums when the
    components are isolated.
    """
    # Accelerators may run float32 GEMMs at reduced precision (TF32, bf16);
    # pin full precision: the distances are divided by a small s^2.
    with jax.default_matmul_precision("highest"):
        d2 = pairwise.sq_euclidean(zq, z)
    return jnp.where(iq[:, None] == jnp.arange(z.shape[0])[None, :], 0.0, d2)


def _log_kernel_sum(d2: jax.Array, rate: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """(B,) log sum_j exp(-rate * d2_ij) over the columns j where `mask` holds.

    A plain log(sum(exp)) is a stable log-sum-exp here: every exponent is
    <= 0 and the self column (inside every mask) is exactly exp(0) = 1, so
    each sum lies in [1, N], with no overflow or underflow; the usual
    max-shift would be 0. One exp per sum, which XLA fuses into its
    reduction (on the 2-core CPU no slower than one shared exp raised to the
    4th power for D_KL = 4 D_BH, measured).
    """
    k = jnp.exp(-rate * d2)
    if mask is not None:
        k = jnp.where(mask, k, 0.0)
    return jnp.log(jnp.sum(k, axis=-1))


def _xz_terms(key, z, config):
    """(I_BH, I_KL) bounds on I(X; Z+e) in nats, as (2,), averaged over the query rows."""
    z, idx, inv_8s2 = _prepare(key, z, config)
    # log N by the same float32 log as the sums, so that S = N (all points
    # coincide) gives exactly 0.
    log_n = jnp.log(jnp.asarray(z.shape[0], z.dtype))

    def rows(zq, iq):
        d2 = _sq_dists(zq, iq, z)
        return jnp.stack(
            [log_n - _log_kernel_sum(d2, inv_8s2), log_n - _log_kernel_sum(d2, 4.0 * inv_8s2)], -1
        )

    terms = pairwise.map_row_blocks(rows, config.block, z[idx], idx)  # (M, 2)
    return jnp.mean(terms, axis=0)


def _class_sizes(labels: jax.Array) -> jax.Array:
    """(N,) float: N_{y_i}, the number of rows with label y_i, by one sort."""
    ordered = jnp.sort(labels)
    sizes = jnp.searchsorted(ordered, labels, side="right") - jnp.searchsorted(
        ordered, labels, side="left"
    )
    return sizes.astype(jnp.result_type(float))


def _zy_terms(key, labels, z, config):
    """Four nats values averaged over the query rows, as (4,):

    [I_BH(X; Z+e), I_KL(X; Z+e), sum_y p(y) I_BH(class y), sum_y p(y) I_KL(class y)]

    where I_D(class y) is the pairwise value for the mixture of class y's
    components alone (weights 1/N_y). A query row stands for its own class,
    and a uniform random row is in class y with probability N_y / N, so the
    query mean of the class terms is the p(y)-weighted sum, with no static
    number of classes.
    """
    z, idx, inv_8s2 = _prepare(key, z, config)
    log_n = jnp.log(jnp.asarray(z.shape[0], z.dtype))  # see _xz_terms
    log_sizes = jnp.log(_class_sizes(labels))

    def rows(zq, iq, yq, log_nq):
        d2 = _sq_dists(zq, iq, z)
        same = yq[:, None] == labels[None, :]
        return jnp.stack(
            [
                log_n - _log_kernel_sum(d2, inv_8s2),
                log_n - _log_kernel_sum(d2, 4.0 * inv_8s2),
                log_nq - _log_kernel_sum(d2, inv_8s2, same),
                log_nq - _log_kernel_sum(d2, 4.0 * inv_8s2, same),
            ],
            -1,
        )

    terms = pairwise.map_row_blocks(rows, config.block, z[idx], idx, labels[idx], log_sizes[idx])
    return jnp.mean(terms, axis=0)  # (M, 4) -> (4,)


@functools.partial(jax.jit, static_argnames=("config",))
def xz_bounds(key: jax.Array, z: jax.Array, config: KDE) -> KDEBounds:
    """Bounds on I(X; Z+e) in bits, e ~ N(0, s^2 I) (Kolchinsky and Tracey 2017).

    Args:
      key: PRNG key; draws the query rows when `config.queries` < N, else unused.
      z: (N, d) or (N,) float representation of the N inputs; N >= 2.
      config: `KDE`, static.

    Returns:
      KDEBounds of float32 scalars in bits, 0 <= lower <= upper <= log2 N
      (with all N query rows): lower uses the Bhattacharyya distance
      |z_i - z_j|^2 / (8 s^2), upper the KL divergence |z_i - z_j|^2 / (2 s^2),
      in I = -(1/N) sum_i log2((1/N) sum_j exp(-D_ij)). Both NaN if z holds
      NaN or inf.
    """
    inputs.check_pair(z, z, _MIN_SAMPLES, "kde.xz_bounds")
    z = inputs.as_matrix(z)
    i_bh, i_kl = _xz_terms(key, z, config) / _LN2
    return KDEBounds(
        lower=inputs.nan_unless_finite(i_bh, z), upper=inputs.nan_unless_finite(i_kl, z)
    )


@functools.partial(jax.jit, static_argnames=("config",))
def zy_bounds(key: jax.Array, labels: jax.Array, z: jax.Array, config: KDE) -> KDEBounds:
    """Bhattacharyya- and KL-based estimates of I(Z+e; Y) in bits.

    Each is H(Z+e) - sum_y p(y) H(Z+e | Y=y) with every entropy from the
    same pairwise formula (module docstring), i.e.

        (1/N) sum_i [ log2(N / N_{y_i}) + log2 S_i^{y_i} - log2 S_i ],
        S_i = sum_j exp(-D_ij),  S_i^y = sum_{j: y_j = y} exp(-D_ij).

    These are estimates, not bounds on I(Z+e; Y), and no proof orders them
    (module docstring).
    Both reach the plug-in H(Y) of the labels when classes are isolated and
    0 when all points coincide; each query term is <= log2(N / N_{y_i}).

    Args:
      key: PRNG key; draws the query rows when `config.queries` < N, else unused.
      labels: (N,) or (N, 1) integer class labels; any values, no static
        number of classes.
      z: (N, d) or (N,) float representation; N >= 2.
      config: `KDE`, static.

    Returns:
      KDEBounds(lower=Bhattacharyya-based, upper=KL-based), float32 scalars
      in bits; both NaN if z holds NaN or inf.

    Raises:
      TypeError: labels are not integers (e.g. labels stored as floats).
    """
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise TypeError(
            f"kde.zy_bounds needs integer class labels, got dtype "
            f"{jnp.asarray(labels).dtype} (labels stored as floats? pass labels.astype(int))"
        )
    inputs.check_pair(labels, z, _MIN_SAMPLES, "kde.zy_bounds")
    if not inputs.is_labels(labels):
        raise ValueError(
            f"kde.zy_bounds: labels must be (N,) or (N, 1), got shape {jnp.shape(labels)}"
        )
    labels = inputs.as_labels(labels)
    z = inputs.as_matrix(z)
    t = _zy_terms(key, labels, z, config) / _LN2
    return KDEBounds(
        lower=inputs.nan_unless_finite(t[0] - t[2], z),
        upper=inputs.nan_unless_finite(t[1] - t[3], z),
    )
