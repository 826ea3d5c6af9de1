"""`estimate` and `floor`: one entry point for every estimator (docs/estimators.md).

The estimator is chosen by the type of its config; `config=None` takes the
project's validated default for the kind of pair (docs/estimators.md,
"Which estimator for which question").
"""

import functools
import warnings
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mi.mi import edge_quantile, edge_reference, inputs, kde, knn, probe
from fedjax_mi.mi.edge_quantile import EdgeQuantile
from fedjax_mi.mi.edge_reference import EdgeReference
from fedjax_mi.mi.kde import KDE
from fedjax_mi.mi.knn import KSG, MixedKNN
from fedjax_mi.mi.probe import Probe

Config = Union[KSG, MixedKNN, Probe, KDE, EdgeReference, EdgeQuantile]

# The validated defaults (docs/estimators.md, "Validation"): the most
# accurate estimator of each kind of pair on the known-answer tasks. For two
# continuous sides KSG on normal scores with k = 1, chosen on a separate
# draw (other seeds, N = 2,000) among k = 1, 2, 3 with and without the
# scores, the LNC correction and whitening (docs/estimators.md, "KSG").
DEFAULT_CONTINUOUS = KSG(k=1, copula=True)
DEFAULT_LABELS = Probe()


def default_config(a, b) -> Config:
    """The project's default for the pair: labels on a side, or two continuous sides."""
    return DEFAULT_LABELS if (inputs.is_labels(a) or inputs.is_labels(b)) else DEFAULT_CONTINUOUS


def _labels_side(a, b, name):
    return inputs.split_labels(a, b, name)


def estimate_traced(key: jax.Array, a: jax.Array, b: jax.Array, config: Config) -> jax.Array:
    """`estimate` without host checks or jit: for use inside jitted code (bits)."""
    if isinstance(config, KSG):
        return knn.ksg(key, a, b, config)
    if isinstance(config, MixedKNN):
        return knn.mixed_knn(key, *_labels_side(a, b, "MixedKNN"), config)
    if isinstance(config, Probe):
        return probe.probe(key, *_labels_side(a, b, "Probe"), config)
    if isinstance(config, KDE):
        # The upper (KL) value is the point estimate, as in Saxe et al. 2018.
        if inputs.is_labels(a) or inputs.is_labels(b):
            return kde.zy_bounds(key, *_labels_side(a, b, "KDE"), config).upper
        return kde.xz_bounds(key, inputs.as_matrix(b), config).upper
    if isinstance(config, EdgeReference):
        return edge_reference.estimate(key, a, b, config)
    if isinstance(config, EdgeQuantile):
        return edge_quantile.estimate(key, a, b, config)
    raise TypeError(
        f"unknown estimator config {type(config).__name__}; expected one of "
        f"{[c.__name__ for c in Config.__args__]}"
    )


@functools.partial(jax.jit, static_argnames=("config",))
def _estimate_jit(key, a, b, config):
    return estimate_traced(key, a, b, config)


@functools.partial(jax.jit, static_argnames=("config", "n"))
def _floor_jit(key, a, b, config, n):
    def one(k):
        k_perm, k_est = jax.random.split(k)
        perm = jax.random.permutation(k_perm, b.shape[0])
        return estimate_traced(k_est, a, b[perm], config)

    return jnp.mean(jax.vmap(one)(jax.random.split(key, n)))


def _prepare(a, b, config: Optional[Config]) -> Config:
    """Host-side checks of concrete inputs, and settings read from them."""
    config = default_config(a, b) if config is None else config
    if not inputs.is_concrete(a, b):
        return config
    inputs.check_values(a, b)
    if isinstance(config, (MixedKNN, Probe)):
        labels, _ = inputs.split_labels(a, b, type(config).__name__)
        counts = np.bincount(np.asarray(labels) - np.min(labels))
        if isinstance(config, MixedKNN):
            small = [int(c) for c in np.flatnonzero((counts > 0) & (counts <= config.k))]
            if small:
                warnings.warn(
                    f"MixedKNN: classes {small} (offset by the smallest label) have "
                    f"<= k = {config.k} samples; their samples are skipped",
                    stacklevel=3,
                )
        if isinstance(config, Probe) and config.num_classes is None:
            import dataclasses

            config = dataclasses.replace(config, num_classes=int(np.max(labels)) + 1)
    return config


def estimate(
    key: jax.Array,
    a: jax.typing.ArrayLike,
    b: jax.typing.ArrayLike,
    config: Optional[Config] = None,
) -> jax.Array:
    """I(a; b) in bits with the estimator `config` selects (jitted, config static).

    Args:
      key: PRNG key (projections, shifts, query subsamples, probe splits).
      a, b: (N, d) or (N,) paired samples; class labels are integer (N,).
      config: `KSG`, `MixedKNN`, `Probe`, `KDE`, `EdgeReference` or
        `EdgeQuantile`; None for the validated default of the pair's kind.

    Raises:
      ValueError on NaN or inf in concrete inputs or too few samples;
      TypeError when an estimator needs integer labels and gets none.
      Inside jit (traced inputs) NaN or inf gives NaN instead.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    config = _prepare(a, b, config)
    return _estimate_jit(key, a, b, config)


def floor(
    key: jax.Array,
    a: jax.typing.ArrayLike,
    b: jax.typing.ArrayLike,
    config: Optional[Config] = None,
    n: int = 5,
) -> jax.Array:
    """The mean estimate over `n` random pairings of a with b (bits).

    Shuffling breaks the pairing, so the true MI is 0: what remains is the
    estimator's bias at this N, dimension and config.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    config = _prepare(a, b, config)
    return _floor_jit(key, a, b, config, n)
