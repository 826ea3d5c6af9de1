"""Blockwise pairwise distances shared by the kNN and KDE estimators.

Every estimator here needs, for each of M query rows, a reduction over all N
sample rows (the k smallest distances, a count within a radius, a
log-sum-exp). `map_row_blocks` evaluates such a reduction `block` query rows
at a time under `lax.map`, so memory is O(block x N), never O(N^2)
(docs/estimators.md, "Cost").
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def standardize(x: jax.Array) -> jax.Array:
    """Columns of (N, d) `x` z-scored; a constant column is only centred.

    Dividing a constant column by its standard deviation of 0 would give
    NaN; a constant column carries no information, and with scale 1 it adds
    0 to every distance, so the estimate equals that without the column.
    """
    x = x - jnp.mean(x, axis=0)
    std = jnp.std(x, axis=0)
    return x / jnp.where(std > 0, std, 1.0)


def sq_euclidean(q: jax.Array, x: jax.Array) -> jax.Array:
    """(B, N) squared Euclidean distances of rows of q (B, d) to rows of x (N, d).

    One GEMM (|q|^2 + |x|^2 - 2 q.x), clamped at 0 against rounding. The
    product is pinned to full float32 precision: accelerators may otherwise
    use reduced-precision products (TF32, bf16), which would blur neighbour
    order.
    """
    cross = jnp.matmul(q, x.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.sum(q * q, -1)[:, None] + jnp.sum(x * x, -1)[None, :] - 2.0 * cross
    return jnp.maximum(d2, 0.0)


def chebyshev(q: jax.Array, x: jax.Array) -> jax.Array:
    """(B, N) max-norm distances of rows of q (B, d) to rows of x (N, d)."""
    return jnp.max(jnp.abs(q[:, None, :] - x[None, :, :]), axis=-1)


def map_row_blocks(fn: Callable, block: int, *rows: jax.Array):
    """`fn(*row_blocks)` over blocks of `block` leading rows, results concatenated.

    Each array in `rows` shares its leading length M; it is padded (with its
    first row) to a multiple of `block`, `fn` maps each block of rows to a
    pytree of arrays with leading length `block`, and the padding is dropped.
    """
    m = rows[0].shape[0]
    block = max(1, min(block, m))
    pad = -m % block

    def split(r):
        r = jnp.concatenate([r, jnp.broadcast_to(r[:1], (pad,) + r.shape[1:])]) if pad else r
        return r.reshape((-1, block) + r.shape[1:])

    out = lax.map(lambda blocks: fn(*blocks), tuple(split(r) for r in rows))
    return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:])[:m], out)
