"""Cross-fitted classifier probe: a lower bound on I(Z;Y) (docs/estimators.md, "Probe").

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
  3. on the training half, the L2 strength is chosen: the candidates, from
     strongest to weakest, are fitted on its first half and scored by
     cross-entropy on its second half; the lowest score wins (for softmax
     regression each fit starts from the previous one and the path stops at
     the first candidate that does not improve, see `_choose_l2`);
  4. the chosen strength is refitted on the whole training half (starting
     from its inner fit) and its mean cross-entropy taken on the other half;
  5. steps 2-4 for both assignments of A and B;
     I = H(Y) - mean of the two held-out cross-entropies, in bits, with the
     plug-in H(Y) over all N labels.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import optax

from fedjax_mi.mi import bounds, inputs

# Two halves, each split again for choosing L2: 16 samples leave 4 per inner part.
MIN_SAMPLES = 16

_LN2 = math.log(2.0)
# L-BFGS stops when an iteration lowers the objective by less than this
# fraction (about 1e-5 nats for a loss near 1 nat). Near float32 resolution
# the line search finds no decrease and would only spend trial steps; and
# any classifier gives a valid bound, so precision beyond what moves the
# read-out is wasted: 1e-6 changed no benchmark mean by more than 0.001 bits
# (docs/estimators.md, "Probe").
_FTOL = 1e-5
# Backtracking (Armijo) line search: halve the step up to 20 times, down to
# 1e-6 of the first trial (L-BFGS's first step has unit length whatever the
# curvature), and start every search from the full quasi-Newton step, which
# is well scaled once L-BFGS has curvature pairs (optax's default grows the
# previous step by 1.5 instead).
_LINESEARCH_STEPS = 20
_LINESEARCH_DECREASE = 0.5
# A column is constant when its standard deviation is below this fraction of
# its mean: about 8 float32 ulps, the rounding of a pairwise-summed mean.
_CONSTANT_RTOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Probe:
    """Settings of `probe` (hashable: used as a static argument of jit).

    Attributes:
        hidden: 0 for a softmax regression on Z; > 0 for one hidden ReLU layer
            of this width (He-initialised from the key).
        l2: candidate L2 strengths, chosen inside each training half (the
            order given does not matter: they are tried strongest first). The
            penalty is l2 * (sum of squared weights) / n_train added to the
            mean cross-entropy, i.e. l2 is the precision of a Gaussian prior on
            the weights of standardised inputs, so a strength chosen on
            n_train / 2 samples carries over to n_train. Biases are not
            penalised.
        steps: most L-BFGS iterations per fit (full batch); a fit stops
            earlier once an iteration lowers the objective by less than a
            relative 1e-5.
        learning_rate: the largest step taken along the L-BFGS direction; a
            backtracking (Armijo) line search halves it up to 20 times. 1 is
            the classical L-BFGS step.
        num_classes: C; None infers max(label) + 1 from concrete labels (under
            jit or vmap it must be given).

    The defaults were measured on class-conditional Gaussians with known
    I(Z;Y) and on independent labels (docs/estimators.md, "Probe"). The
    weak end of the grid is chosen at d = 2; the strong end makes the
    classifier the label prior when Z says nothing: at independence
    (d = 84, N = 5,000) the probe reads -0.003 bits on average, -0.070 with
    a grid ending at 100. Half-decade steps read 0.02 bits higher than
    decade steps at d = 84, N = 5,000 (the same elsewhere) for 10-40% more
    time on the shared 2-core CPU. 100 steps and a 1e-6 stop read within
    0.001 bits of the defaults.
    """

    hidden: int = 0
    l2: tuple[float, ...] = (
        0.01,
        0.03,
        0.1,
        0.3,
        1.0,
        3.0,
        10.0,
        30.0,
        100.0,
        300.0,
        1000.0,
        3000.0,
        10000.0,
    )
    steps: int = 30
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
            raise ValueError(
                f"Probe.l2 must be a non-empty sequence of finite values >= 0, got {self.l2!r}"
            )
        object.__setattr__(self, "l2", l2)  # a list would make the config unhashable
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"Probe.steps must be an int >= 1, got {self.steps!r}")
        if not (
            isinstance(self.learning_rate, (int, float))
            and math.isfinite(self.learning_rate)
            and self.learning_rate > 0
        ):
            raise ValueError(
                f"Probe.learning_rate must be a finite number > 0, got {self.learning_rate!r}"
            )
        if self.num_classes is not None and (not _is_int(self.num_classes) or self.num_classes < 1):
            raise ValueError(
                f"Probe.num_classes must be None or an int >= 1, got {self.num_classes!r}"
            )


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

    Batches: vmap over leading axes (e.g. models x datasets) with
    `Probe(num_classes=C)`. On a CPU the batch runs one member after another
    inside the compiled program (see `_one_at_a_time_under_vmap`), so it
    costs what a loop of calls costs and gives the same numbers.
    """
    if not inputs.is_labels(labels):
        raise TypeError(
            f"probe needs integer class labels (N,) or (N, 1); got dtype "
            f"{jnp.asarray(labels).dtype}, shape {jnp.shape(labels)} "
            "(labels stored as floats? pass labels.astype(int))"
        )
    inputs.check_pair(labels, z, MIN_SAMPLES, "probe")
    labels = inputs.as_labels(labels)
    z = inputs.as_matrix(z)
    num_classes = config.num_classes
    if num_classes is None:
        if not inputs.is_concrete(labels):
            raise ValueError(
                "probe: Probe.num_classes=None infers the class count from the "
                "label values, which are traced here (jit or vmap); set "
                "Probe(num_classes=C)"
            )
        # The resolved count goes into the static config, so an explicit and an
        # inferred count share one compilation.
        config = dataclasses.replace(config, num_classes=max(int(jnp.max(labels)) + 1, 1))
    if jax.default_backend() == "cpu":
        return _one_at_a_time_under_vmap(config)(key, labels, z)
    return _probe(key, labels, z, config)


@functools.cache
def _one_at_a_time_under_vmap(config: Probe):
    """`_probe` for `config`, which a caller's vmap runs as a sequential lax.map.

    On a CPU, a vmapped batch of probes runs each L-BFGS loop for as many
    iterations as its slowest member needs and batches every small step;
    measured 2.8x slower than one probe after another for 3 models x 2
    datasets (N = 25,000, d = 84; docs/estimators.md, "Probe").
    An accelerator runs a batch in parallel, so it keeps the native vmap.
    """
    return jax.custom_batching.sequential_vmap(
        lambda key, labels, z: _probe(key, labels, z, config)
    )


@jax.jit(static_argnames="config")
def _probe(key, labels, z, config):
    num_classes = config.num_classes
    n = z.shape[0]
    half = n // 2
    k_perm, k_init = jax.random.split(key)
    perm = jax.random.permutation(k_perm, n)
    x, y = z[perm], labels[perm]
    xa, xb = x[:half], x[half : 2 * half]
    ya, yb = y[:half], y[half : 2 * half]
    fold = lambda xtr, ytr, xte, yte: _fold(k_init, xtr, ytr, xte, yte, config, num_classes)
    folds = (jnp.stack([xa, xb]), jnp.stack([ya, yb]), jnp.stack([xb, xa]), jnp.stack([yb, ya]))
    # Sequential, not vmapped: a vmapped while loop runs every fold for as
    # many iterations as the slowest needs, which on a CPU costs more than
    # it saves; a caller's vmap over models and datasets batches this anyway.
    held_out_ce = jax.lax.map(lambda f: fold(*f), folds)
    value = bounds.label_entropy(labels, num_classes) - jnp.mean(held_out_ce) / _LN2
    return inputs.nan_unless_finite(value, z)


def _fold(key, xtr, ytr, xte, yte, config, num_classes):
    """Held-out mean cross-entropy (nats) of the probe fitted on (xtr, ytr)."""
    xtr, xte = _standardize(xtr, xte)
    params = _init(key, xtr.shape[1], num_classes, config.hidden, xtr.dtype)
    # Strongest first (see _choose_l2).
    candidates = jnp.asarray(sorted(config.l2, reverse=True), xtr.dtype)
    if len(config.l2) > 1:
        params, l2 = _choose_l2(params, xtr, ytr, candidates, config)
    else:
        l2 = candidates[0]
    params = _fit(params, xtr, ytr, l2, config)
    return _mean_ce(params, xte, yte)


def _choose_l2(params, x, y, candidates, config):
    """(fit on the inner-train part, strength) with the lowest inner-validation CE.

    The candidates, strongest first, are fitted on the first half of (x, y)
    and scored on the second half. For softmax regression (convex) they form
    a warm-started path that stops at the first candidate not improving on
    the best so far: validation CE is U-shaped in the strength, and the
    weakly regularised fits past its minimum are the slowest to converge.
    A hidden layer is different: a strong penalty drives its weights to the
    saddle at 0, from which no weaker fit recovers, and the score can stay
    flat at H(Y) over several strong candidates; so every candidate starts
    from the random initial weights and all are scored.
    """
    inner = x.shape[0] // 2
    xi, yi, xv, yv = x[:inner], y[:inner], x[inner:], y[inner:]
    path = config.hidden == 0
    init = params

    def step(carry, l2):
        params, best, best_params, best_l2, active = carry
        params = _fit(params if path else init, xi, yi, l2, config, active)
        score = _mean_ce(params, xv, yv)
        better = active & (score < best)  # False for a NaN score
        pick = lambda new, old: jnp.where(better, new, old)
        carry = (
            params,
            pick(score, best),
            jax.tree.map(pick, params, best_params),
            pick(l2, best_l2),
            better if path else active,
        )
        return carry, None

    inf = jnp.asarray(jnp.inf, x.dtype)
    carry = (params, inf, params, candidates[0], jnp.bool_(True))
    (_, _, best_params, best_l2, _), _ = jax.lax.scan(step, carry, candidates)
    return best_params, best_l2


def _standardize(train, test):
    """Both sets z-scored with the training set's column statistics.

    A column whose spread is below float32 resolution of its mean (constant,
    up to the rounding of the mean) gets scale 1, i.e. is only centred:
    dividing by a standard deviation of 0, or of a rounding error, would give
    NaN or blow rounding up to +-1; a constant feature carries nothing.
    """
    mean = jnp.mean(train, axis=0)
    std = jnp.std(train, axis=0)
    scale = jnp.where(std > _CONSTANT_RTOL * jnp.abs(mean), std, 1.0)
    scale = jnp.where(scale > 0, scale, 1.0)
    return (train - mean) / scale, (test - mean) / scale


def _init(key, d, num_classes, hidden, dtype):
    if hidden == 0:
        # Softmax regression is convex: zeros are as good a start as any.
        return {"w": jnp.zeros((d, num_classes), dtype), "b": jnp.zeros((num_classes,), dtype)}
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (d, hidden), dtype) * jnp.sqrt(2.0 / d),
        "b1": jnp.zeros((hidden,), dtype),
        "w2": jax.random.normal(k2, (hidden, num_classes), dtype) * jnp.sqrt(1.0 / hidden),
        "b2": jnp.zeros((num_classes,), dtype),
    }


def _logits(params, x):
    if "w" in params:
        return x @ params["w"] + params["b"]
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _mean_ce(params, x, y):
    """Mean cross-entropy in nats."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y))


def _fit(params, x, y, l2, config, active=True):
    """`params` moved towards the minimum of mean CE + l2 * |weights|^2 / n.

    Full-batch L-BFGS from `params` for at most `config.steps` iterations,
    fewer once an iteration lowers the objective by less than _FTOL; none if
    `active` is False (a traced flag, so the call vmaps and scans).

    L-BFGS runs on the weights times s = sqrt(1 + 2 l2 / n). The penalty's
    curvature 2 l2 / n (200 for l2 = 10,000 on n = 100) against that of the
    unpenalised biases (<= 1/2) made the problem so badly conditioned that
    the biases barely moved and the fit stopped short of its minimum; in the
    scaled weights the penalty's curvature is below 2.
    """
    n = x.shape[0]
    scale = jnp.sqrt(1.0 + 2.0 * l2 / n)

    def rescale(params, factor):
        return {k: v * factor if k.startswith("w") else v for k, v in params.items()}

    def objective(scaled):
        params = rescale(scaled, 1.0 / scale)
        penalty = sum(jnp.sum(v * v) for k, v in params.items() if k.startswith("w"))
        return _mean_ce(params, x, y) + l2 * penalty / n

    opt = optax.lbfgs(
        learning_rate=config.learning_rate,
        linesearch=optax.scale_by_backtracking_linesearch(
            max_backtracking_steps=_LINESEARCH_STEPS,
            decrease_factor=_LINESEARCH_DECREASE,
            increase_factor=math.inf,
            store_grad=True,
        ),
    )
    value_and_grad = optax.value_and_grad_from_state(objective)

    def cond(carry):
        _, _, it, done = carry
        return (it < config.steps) & ~done

    def body(carry):
        scaled, state, it, _ = carry
        value, grad = value_and_grad(scaled, state=state)
        updates, state = opt.update(grad, state, scaled, value=value, grad=grad, value_fn=objective)
        scaled = optax.apply_updates(scaled, updates)
        new_value = optax.tree.get(state, "value")
        # Never on the first iteration: L-BFGS has no curvature yet and takes
        # a short gradient step (at most unit length), whose small decrease
        # would end a warm-started fit before it moved. A NaN comparison is
        # False, so a NaN objective also stops the fit.
        done = (it >= 1) & ~(value - new_value > _FTOL * jnp.abs(value))
        return scaled, state, it + 1, done

    scaled = rescale(params, scale)
    carry = (scaled, opt.init(scaled), jnp.int32(0), ~jnp.asarray(active))
    scaled, *_ = jax.lax.while_loop(cond, body, carry)
    return rescale(scaled, 1.0 / scale)
