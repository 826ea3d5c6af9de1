"""Mutual-information estimators with a measured accuracy (docs/estimators.md).

>>> import jax, jax.numpy as jnp
>>> from fedjax_mi import mi
>>> x = jax.random.normal(jax.random.key(0), (2000, 2))
>>> y = x + jax.random.normal(jax.random.key(1), (2000, 2))
>>> bits = mi.estimate(jax.random.key(2), x, y)            # KSG on normal scores, the continuous default
>>> labels = (x[:, 0] > 0).astype(int)
>>> bits = mi.estimate(jax.random.key(2), x, labels)       # the labels default
>>> bits = mi.estimate(jax.random.key(2), x, y, mi.KSG(k=5))
>>> bits = mi.estimate(jax.random.key(2), x, y, mi.KSG(k=None, lnc_quantile=0.01, copula=True))
>>> base = mi.floor(jax.random.key(3), x, y, mi.KSG(), n=5)

Configs: `KSG`, `MixedKNN`, `Probe`, `KDE`, `EdgeReference`, `EdgeQuantile`.
"""

from fedjax_mi.mi.api import (
    DEFAULT_CONTINUOUS,
    DEFAULT_LABELS,
    Config,
    default_config,
    estimate,
    estimate_traced,
    floor,
)
from fedjax_mi.mi.edge import EdgeConfig
from fedjax_mi.mi.edge_quantile import EdgeQuantile
from fedjax_mi.mi.edge_reference import EdgeReference
from fedjax_mi.mi.kde import KDE, KDEBounds
from fedjax_mi.mi.knn import KSG, MixedKNN
from fedjax_mi.mi.probe import Probe
