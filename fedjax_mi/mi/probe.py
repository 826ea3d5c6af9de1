"""Cross-fitted classifier probe: a lower bound on I(Z;Y) (docs/estimators.md, "Classifier probe").

Any classifier q(y|z) bounds I(Z;Y) >= H(Y) - E[-log2 q(Y|Z)] (Barber and
Agakov, "The IM algorithm: a variational approach to information
maximization", 2003). The probe fits q on one half of the samples and
measures its cross-entropy on the other half, then swaps the halves
(cross-fitting): each cross-entropy is then an unbiased estimate for a fixed
classifier, so the result is a lower bound up to sampling, however much q
overfits. A better classifier gives a tighter bound; the probe is a small
one (softmax regression, or one hidden ReLU layer) fitted full-batch with
L-BFGS.

Procedure for N samples, with a permutation drawn from `key`:
  1. halves A and B of N // 2 samples each (one sample is left out of the
     cross-fit when N is odd; H(Y) still counts it);
  2. Z is standardised per column with the training half's mean and
     standard deviation (a constant column is only centred);
  3. on the training half, the L2 strength is chosen: one model per
     candidate is fitted (vmapped) on its first half and scored by
     cross-entropy on its second half; the lowest wins;
  4. the chosen strength is refitted on the whole training half and its
     mean cross-entropy taken on the other half;
  5. steps 2-4 for both assignments of A and B (vmapped);
     I = H(Y) - mean of the two held-out cross-entropies, in bits, with the
     plug-in H(Y) over all N labels.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from fedjax_mi.mi import bounds, inputs

# Two halves, each split again for choosing L2: 16 samples leave 4 per inner part.
MIN_SAMPLES = 16

_LN2 = math.log(2.0)
# L-BFGS stops when an iteration lowers the objective by less than this
# fraction: about 8 float32 ulps of a loss near 1 nat, where the line search
# can no longer find a decrease and would only spend its trial steps.
_FTOL = 1e-6
_MAX_LINESEARCH_STEPS = 10


@dataclasses.dataclass(frozen=True)
class Probe:
    """Settings of `probe` (hashable: used as a static argument of jit).

    Attributes:
        hidden: 0 for a softmax regression on Z; > 0 for one hidden ReLU layer
            of this width (He-initialised from the key).
        l2: candidate L2 strengths, chosen inside each training half. The
            penalty is l2 * (sum of squared weights) / n_train added to the
            mean cross-entropy, i.e. l2 is the precision of a Gaussian prior on
            the weights of standardised inputs, so a strength chosen on
            n_train / 2 samples carries over to n_train. Biases are not
            penalised.
        steps: most L-BFGS iterations per fit (full batch); a fit stops
            earlier once an iteration no longer lowers the objective.
        learning_rate: scale of the L-BFGS direction before the line search;
            1 is the classical choice, the zoom line search adapts the step.
        num_classes: C; None infers max(label) + 1 from concrete labels (under
            jit or vmap it must be given).
    """

    hidden: int = 0
    l2: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    steps: int = 100
    learning_rate: float = 1.0
    num_classes: int | None = None

    def __post_init__(self):
        if not _is_int(self.hidden) or self.hidden < 0:
            raise ValueError(f"Probe.hidden must be an int >= 0, got {self.hidden!r}")
        try:
            l2 = tuple(float(v) for v in self.l2)
        except TypeError:
            raise ValueError(f"Probe.l2 must be a sequence of floats, got {self.l2!r}") from None
        if not l2 or not all(math.isfinite(v) and v >= 0 for v in l2):
            raise ValueError(f"Probe.l2 must be a non-empty sequence of finite values >= 0, got {self.l2!r}")
        object.__setattr__(self, "l2", l2)  # a list would make the config unhashable
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"Probe.steps must be an int >= 1, got {self.steps!r}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise ValueError(f"Probe.learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        if self.num_classes is not None and (not _is_int(self.num_classes) or self.num_classes < 1):
            raise ValueError(f"Probe.num_classes must be None or an int >= 1, got {self.num_classes!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def probe(key: jax.Array, labels: jax.Array, z: jax.Array, config: Probe = Probe()) -> jax.Array:
    """Cross-fitted classifier lower bound on I(Z;Y), in bits.

    Args:
        key: PRNG key; it fixes the halves and the hidden layer's initial
            weights (the same key gives the same result).
        labels: (N,) or (N, 1) integer class labels in [0, C).
        z: (N, d) or (N,) samples of the representation.
        config: `Probe` settings.

    Returns:
        Scalar bits, <= H(Y) (a cross-entropy is >= 0); about 0 or slightly
        below when Z carries no information on Y. NaN if z holds NaN or inf,
        or a label lies outside [0, C).

    Raises:
        TypeError: labels are not integers.
        ValueError: shapes disagree, N < MIN_SAMPLES, or num_classes is None
            and the labels are traced.
    """
    if not inputs.is_labels(labels):
        raise TypeError(
            f"probe needs integer class labels (N,) or (N, 1); got dtype "
            f"{jnp.asarray(labels).dtype}, shape {jnp.shape(labels)} "
            "(labels stored as floats? pass labels.astype(int))")
    inputs.check_pair(labels, z, MIN_SAMPLES, "probe")
    labels = inputs.as_labels(labels)
    z = inputs.as_matrix(z)
    num_classes = config.num_classes
    if num_classes is None:
        if not inputs.is_concrete(labels):
            raise ValueError("probe: Probe.num_classes=None infers the class count from the "
                             "label values, which are traced here (jit or vmap); set "
                             "Probe(num_classes=C)")
        num_classes = max(int(jnp.max(labels)) + 1, 1)
    return _probe(key, labels, z, config, num_classes)


@jax.jit(static_argnames=("config", "num_classes"))
def _probe(key, labels, z, config, num_classes):
    n = z.shape[0]
    half = n // 2
    k_perm, k_init = jax.random.split(key)
    perm = jax.random.permutation(k_perm, n)
    x, y = z[perm], labels[perm]
    xa, xb = x[:half], x[half:2 * half]
    ya, yb = y[:half], y[half:2 * half]
    fold = lambda xtr, ytr, xte, yte: _fold(k_init, xtr, ytr, xte, yte, config, num_classes)
    held_out_ce = jax.vmap(fold)(jnp.stack([xa, xb]), jnp.stack([ya, yb]),
                                 jnp.stack([xb, xa]), jnp.stack([yb, ya]))
    value = bounds.label_entropy(labels, num_classes) - jnp.mean(held_out_ce) / _LN2
    return inputs.nan_unless_finite(value, z)


def _fold(key, xtr, ytr, xte, yte, config, num_classes):
    """Held-out mean cross-entropy (nats) of the probe fitted on (xtr, ytr)."""
    xtr, xte = _standardize(xtr, xte)
    candidates = jnp.asarray(config.l2, xtr.dtype)
    if len(config.l2) > 1:
        inner = xtr.shape[0] // 2

        def score(l2):
            params = _fit(key, xtr[:inner], ytr[:inner], l2, config, num_classes)
            return _mean_ce(params, xtr[inner:], ytr[inner:])

        scores = jax.vmap(score)(candidates)
        # A diverged candidate (NaN) must not win argmin.
        l2 = candidates[jnp.argmin(jnp.where(jnp.isnan(scores), jnp.inf, scores))]
    else:
        l2 = candidates[0]
    params = _fit(key, xtr, ytr, l2, config, num_classes)
    return _mean_ce(params, xte, yte)


def _standardize(train, test):
    """Both sets z-scored with the training set's column statistics.

    A constant column gets scale 1 (only centred): dividing by its standard
    deviation of 0 would give NaN, and a constant feature is absorbed by the
    bias anyway.
    """
    mean = jnp.mean(train, axis=0)
    std = jnp.std(train, axis=0)
    scale = jnp.where(std > 0, std, 1.0)
    return (train - mean) / scale, (test - mean) / scale


def _init(key, d, num_classes, hidden, dtype):
    if hidden == 0:
        # Softmax regression is convex: zeros are as good a start as any.
        return {"w": jnp.zeros((d, num_classes), dtype), "b": jnp.zeros((num_classes,), dtype)}
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (d, hidden), dtype) * jnp.sqrt(2.0 / d),
            "b1": jnp.zeros((hidden,), dtype),
            "w2": jax.random.normal(k2, (hidden, num_classes), dtype) * jnp.sqrt(1.0 / hidden),
            "b2": jnp.zeros((num_classes,), dtype)}


def _logits(params, x):
    if "w" in params:
        return x @ params["w"] + params["b"]
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _mean_ce(params, x, y):
    """Mean cross-entropy in nats."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y))


def _fit(key, x, y, l2, config, num_classes):
    """Parameters minimising mean CE + l2 * |weights|^2 / n, by full-batch L-BFGS."""
    n, d = x.shape

    def objective(params):
        penalty = sum(jnp.sum(v * v) for k, v in params.items() if k.startswith("w"))
        return _mean_ce(params, x, y) + l2 * penalty / n

    opt = optax.lbfgs(
        learning_rate=config.learning_rate,
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=_MAX_LINESEARCH_STEPS, initial_guess_strategy="one"))
    value_and_grad = optax.value_and_grad_from_state(objective)

    def cond(carry):
        _, _, it, done = carry
        return (it < config.steps) & ~done

    def body(carry):
        params, state, it, _ = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=objective)
        params = optax.apply_updates(params, updates)
        new_value = optax.tree.get(state, "value")
        # A NaN comparison is False, so a NaN objective also stops the fit.
        done = ~(value - new_value > _FTOL * jnp.abs(value))
        return params, state, it + 1, done

    params = _init(key, d, num_classes, config.hidden, x.dtype)
    params, *_ = jax.lax.while_loop(
        cond, body, (params, opt.init(params), jnp.int32(0), jnp.bool_(False)))
    return params
