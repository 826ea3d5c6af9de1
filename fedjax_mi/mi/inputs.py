"""Shapes, kinds and validity of estimator inputs (docs/estimators.md, "Bad input").

A side of a pair is either continuous samples, (N, d) or (N,) floats, or class
labels, (N,) integers. Labels are recognised by dtype alone: labels stored as
floats are continuous data to every estimator, and an estimator that needs
labels refuses a pair without an integer side.

Static problems (shapes, N too small, no label side) raise at trace time.
Value problems (NaN, inf) can only be seen on concrete arrays: `check_values`
raises on them, and under jit every estimator returns NaN instead of a
number computed from garbage (`nan_unless_finite`).
"""

import jax
import jax.numpy as jnp
import numpy as np


def is_labels(a) -> bool:
    """True for an integer array of shape (N,) or (N, 1): class labels."""
    return jnp.issubdtype(jnp.asarray(a).dtype, jnp.integer) and (
        a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)
    )


def as_matrix(a: jax.Array, dtype=None) -> jax.Array:
    """(N,) -> (N, 1); (N, d) unchanged; cast to `dtype` (float32 by default)."""
    a = jnp.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"samples must be (N, d) or (N,), got shape {a.shape}")
    return a.astype(dtype or jnp.result_type(float))


def as_labels(a: jax.Array) -> jax.Array:
    """Integer labels (N,) or (N, 1) -> (N,) int32."""
    a = jnp.asarray(a)
    return a.reshape(a.shape[0]).astype(jnp.int32)


def check_pair(a, b, min_samples: int, name: str) -> int:
    """Shapes of a pair; returns N. Raises ValueError naming `name`."""
    if jnp.ndim(a) not in (1, 2) or jnp.ndim(b) not in (1, 2):
        raise ValueError(
            f"{name}: inputs must be (N, d) or (N,), got {jnp.shape(a)} and {jnp.shape(b)}"
        )
    n = jnp.shape(a)[0]
    if jnp.shape(b)[0] != n:
        raise ValueError(
            f"{name}: inputs must have the same number of rows, "
            f"got {jnp.shape(a)} and {jnp.shape(b)}"
        )
    if n < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples, got N = {n}")
    return n


def split_labels(a, b, name: str) -> tuple[jax.Array, jax.Array]:
    """(labels (N,) int32, continuous side (N, d) float) from a pair in either order.

    Raises TypeError if neither side is integer labels (labels given as
    floats are refused here, not guessed).
    """
    if is_labels(a):
        return as_labels(a), as_matrix(b)
    if is_labels(b):
        return as_labels(b), as_matrix(a)
    raise TypeError(
        f"{name} needs integer class labels (N,) on one side; got dtypes "
        f"{jnp.asarray(a).dtype} {jnp.shape(a)} and {jnp.asarray(b).dtype} {jnp.shape(b)} "
        "(labels stored as floats? pass labels.astype(int))"
    )


def nan_unless_finite(value: jax.Array, *arrays: jax.Array) -> jax.Array:
    """`value`, or NaN if any floating input holds NaN or inf (works under jit)."""
    ok = jnp.bool_(True)
    for a in arrays:
        if jnp.issubdtype(a.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(a))
    return jnp.where(ok, value, jnp.nan)


def is_concrete(*arrays) -> bool:
    """True when no array is a tracer (values can be checked on the host)."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_values(a, b) -> None:
    """Host-side: raise ValueError if a floating input holds NaN or inf."""
    for name, arr in (("first", a), ("second", b)):
        arr = np.asarray(arr)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            raise ValueError(
                f"the {name} input holds {int(np.sum(~np.isfinite(arr)))} "
                "non-finite values (NaN or inf)"
            )
