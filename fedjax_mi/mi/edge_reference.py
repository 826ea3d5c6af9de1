"""EDGE as its author's code computes it: the estimator the study used.

`EdgeReference` holds exactly the reference implementation's keyword
arguments (Noshad, Zeng, Hero, "Scalable mutual information estimation using
dependence graphs", ICASSP 2019, versions 4.2.0, 4.3.1 and 4.4.1 of the
author's code), with their names; the estimate is bit-for-bit the
reference's up to float32 rounding (docs/estimators.md, "EDGE reference
mode"). The arithmetic lives in `fedjax_mi.mi.edge`.

>>> import jax
>>> from fedjax_mi import mi
>>> x = jax.random.normal(jax.random.key(0), (2000, 1))
>>> y = x + jax.random.normal(jax.random.key(1), (2000, 1))
>>> bits = mi.estimate(jax.random.key(2), x, y, mi.EdgeReference())
"""

import dataclasses
from typing import Optional

import jax

from fedjax_mi.mi import edge

VERSIONS = tuple(edge.VERSION_SCALE)


@dataclasses.dataclass(frozen=True)
class EdgeReference:
    """The reference's keywords; `None` means the version's own default.

    Attributes:
      version: "4.2.0" (the study's), "4.3.1" or "4.4.1".
      U: upper clip of each per-sample log ratio (bits).
      gamma: smoothness (gamma_X, gamma_Y).
      epsilon: manual widths (e_X, e_Y); (0, 0) for the automatic k-NN widths.
      epsilon_vector: "fixed" or "range" (None: "fixed" in 4.2.0, else "range").
      eps_range_factor: width spread of "range".
      normalize_epsilon: the renormalising second pass.
      ensemble_estimation: "median", "average" or "optimal_weights".
      L_ensemble: ensemble size (None: 5 in 4.2.0, else 10).
      hashing: "p-stable" (random projection) or "floor".
      stochastic: random shifts drawn from the key instead of diagonal ones.
    """

    version: str = "4.2.0"
    U: float = 10.0
    gamma: tuple[float, float] = (1.0, 1.0)
    epsilon: tuple[float, float] = (0.0, 0.0)
    epsilon_vector: Optional[str] = None
    eps_range_factor: float = 0.1
    normalize_epsilon: bool = True
    ensemble_estimation: str = "median"
    L_ensemble: Optional[int] = None
    hashing: str = "p-stable"
    stochastic: bool = False

    def __post_init__(self):
        # Lists become tuples (hashable, a static jit argument); every
        # value is checked once, by building the engine's settings.
        object.__setattr__(self, "gamma", tuple(float(g) for g in self.gamma))
        object.__setattr__(self, "epsilon", tuple(float(e) for e in self.epsilon))
        self.settings()

    def settings(self) -> edge.EdgeConfig:
        """The engine's full knob set for these keywords."""
        kw = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "version" and getattr(self, f.name) is not None
        }
        return edge.EdgeConfig.reference(self.version, **kw)

    @classmethod
    def paper_xz(cls, version: str = "4.2.0", **kw) -> "EdgeReference":
        """How the EDGE author's own deep-learning analysis called it for
        I(X;T) of the last hidden layer (gamma_xt 1.4; docs/estimators.md)."""
        return cls(version, **{**PAPER_XZ, **kw})

    @classmethod
    def paper_zy(cls, version: str = "4.2.0", **kw) -> "EdgeReference":
        """... and for I(T;Y) (gamma_ty 0.52, manual widths 0.2)."""
        return cls(version, **{**PAPER_ZY, **kw})


# The author's settings for the last hidden layer (docs/estimators.md,
# "EDGE reference mode").
PAPER_XZ = dict(U=20.0, L_ensemble=10, gamma=(0.2, 1.4), epsilon_vector="range")
PAPER_ZY = dict(
    U=10.0, L_ensemble=10, gamma=(1e-4, 0.52), epsilon=(0.2, 0.2), epsilon_vector="range"
)


def estimate(key: jax.Array, a: jax.Array, b: jax.Array, config: EdgeReference) -> jax.Array:
    """EDGE reference estimate of I(a; b) in bits; see `edge.mutual_information`."""
    return edge.estimate(key, a, b, config.settings())
