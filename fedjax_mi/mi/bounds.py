"""Lower bounds on I(Z;Y) from a classifier of the label, in bits.

docs/estimators.md, "Which estimator for which question" (the head's bounds).

For any classifier q(y|z), I(Z;Y) = H(Y) - H(Y|Z) >= H(Y) - E[-log2 q(Y|Z)]:
the cross-entropy of q exceeds the conditional entropy by a KL divergence
(Barber and Agakov, "The IM algorithm: a variational approach to information
maximization", 2003). Fano's inequality gives a bound from the accuracy
alone, which needs no calibrated probabilities (Cover and Thomas, "Elements
of Information Theory", 2nd ed. 2006, section 2.10).

All functions are pure jnp, jittable and vmappable; results are in bits.
Estimated from N samples, each is a bound "up to sampling": the held-out mean
cross-entropy is unbiased, the plug-in H(Y) is low by about
(C - 1) / (2 N ln 2) bits (Miller, "Note on the bias of information
estimates", 1955).
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import entr

from fedjax_mi.mi import inputs

_LN2 = math.log(2.0)


def _labels(labels, name: str) -> jax.Array:
    if not inputs.is_labels(labels):
        raise TypeError(
            f"{name} needs integer class labels of shape (N,) or (N, 1); got dtype "
            f"{jnp.asarray(labels).dtype}, shape {jnp.shape(labels)} "
            "(labels stored as floats? pass labels.astype(int))"
        )
    return inputs.as_labels(labels)


# The cores are jitted at module level: called eagerly, one small program
# per shape compiles faster than each jnp op on its own.
@jax.jit(static_argnames="num_classes")
def _entropy_bits(labels: jax.Array, num_classes: int) -> jax.Array:
    """Plug-in H(Y) in bits of (N,) int labels; NaN if one is outside [0, C)."""
    # one_hot gives a zero row for a label outside [0, C), so counts stay
    # well defined; that case is turned into NaN below.
    counts = jnp.sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.result_type(float)), axis=0)
    p = counts / labels.shape[0]
    h = jnp.sum(entr(p)) / _LN2  # entr(0) = 0: the 0 log 0 = 0 convention
    return jnp.where(jnp.all((labels >= 0) & (labels < num_classes)), h, jnp.nan)


def _cross_entropy_bits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy -log2 softmax(logits)[label], in bits.

    logits: (N, C) floats; labels: (N,) int32 in [0, C) (not checked here).
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, labels[:, None], axis=-1, mode="clip")[:, 0]
    return -jnp.mean(picked) / _LN2


@jax.jit
def _barber_agakov(logits: jax.Array, labels: jax.Array) -> jax.Array:
    value = _entropy_bits(labels, logits.shape[-1]) - _cross_entropy_bits(logits, labels)
    return inputs.nan_unless_finite(value, logits)


@jax.jit
def _fano(accuracy, label_entropy_bits, num_classes):
    acc = jnp.asarray(accuracy, jnp.result_type(float))
    pe = 1.0 - acc
    h2 = (entr(pe) + entr(1.0 - pe)) / _LN2
    bound = label_entropy_bits - h2 - pe * jnp.log2(num_classes - 1.0)
    valid = (acc >= 0.0) & (acc <= 1.0)
    return jnp.where(valid, jnp.maximum(bound, 0.0), jnp.nan)


def label_entropy(labels: jax.Array, num_classes: int) -> jax.Array:
    """Plug-in entropy H(Y) of the empirical label distribution, in bits.

    Args:
        labels: (N,) or (N, 1) integer class labels in [0, num_classes).
        num_classes: C, static.

    Returns:
        Scalar, in [0, log2 C]; NaN if a label lies outside [0, C).

    Raises:
        TypeError: labels are not integers.

    >>> float(label_entropy(jnp.array([0, 1, 2, 3]), 4))  # uniform on 4: log2 4
    2.0
    >>> float(label_entropy(jnp.array([0, 0, 0, 1]), 10))  # -(3/4 log2 3/4 + 1/4 log2 1/4)
    0.811...
    """
    labels = _labels(labels, "label_entropy")
    if num_classes < 1:
        raise ValueError(f"label_entropy needs num_classes >= 1, got {num_classes}")
    return _entropy_bits(labels, int(num_classes))


def barber_agakov(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Barber-Agakov bound H(Y) - CE of softmax(logits), in bits.

    The model's own head as the classifier q(y|z). Evaluated on data the
    model was not trained on, it is a lower bound on I(Z;Y) up to sampling;
    on its training data it is optimistic by the model's overfit. Not clipped
    at 0: a negative value says the head predicts worse than the label
    prior alone (the bound is then vacuous), which is worth seeing.

    Args:
        logits: (N, C) floats; C is the number of classes.
        labels: (N,) or (N, 1) integers in [0, C).

    Returns:
        Scalar bits, <= H(Y) <= log2 C; NaN if logits hold NaN/inf or a
        label lies outside [0, C).

    Raises:
        TypeError: labels are not integers.
        ValueError: logits are not (N, C) with the labels' N.
    """
    labels = _labels(labels, "barber_agakov")
    logits = jnp.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"barber_agakov needs logits (N, C) and labels (N,), got "
            f"{logits.shape} and {labels.shape}"
        )
    return _barber_agakov(logits, labels)


def fano(
    accuracy: jax.typing.ArrayLike, label_entropy_bits: jax.typing.ArrayLike, num_classes: int
) -> jax.Array:
    """Fano lower bound on I(Z;Y) from a classifier's accuracy, in bits.

    With Pe = 1 - accuracy, Fano's inequality H(Y|Yhat) <= h2(Pe) + Pe log2(C - 1)
    and data processing (Yhat a function of Z) give
    I(Z;Y) >= I(Yhat;Y) >= H(Y) - h2(Pe) - Pe log2(C - 1),
    h2 the binary entropy in bits with 0 log 0 = 0. Fano's inequality holds
    for every Pe, so the right side is a bound everywhere; it is not monotone
    (it is lowest at Pe = (C - 1) / C, chance for uniform labels, and rises
    again for an estimator that is reliably wrong, which does carry
    information). Clipped at 0: MI is non-negative, so max(0, bound) is
    still a bound and never looser.

    Args:
        accuracy: array in [0, 1] (any shape; broadcasts with the entropy).
        label_entropy_bits: H(Y) in bits, e.g. `label_entropy(labels, C)`.
        num_classes: C >= 2.

    Returns:
        Bits, >= 0; NaN where accuracy is outside [0, 1] or NaN.

    >>> float(fano(1.0, 1.0, 2))  # no errors: all of H(Y)
    1.0
    >>> round(float(fano(0.5, 1.0, 2)), 6)  # chance on two balanced classes: 1 - h2(1/2)
    0.0
    """
    if isinstance(num_classes, int) and num_classes < 2:
        raise ValueError(f"fano needs num_classes >= 2, got {num_classes}")
    return _fano(accuracy, label_entropy_bits, num_classes)
