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
  1. Z is standardised per column with the mean and standard deviation of
     all N rows (a constant column is only centred; the labels play no
     part, so each held-out cross-entropy is still that of a classifier
     fitted without them);
  2. the rows, in the permuted order, are sorted by class, and alternate
     rows form halves A and B of N // 2 samples each: every class is split
     as evenly as its count allows (when N is odd the last row, a random
     sample of the largest label, is left out of the cross-fit; H(Y) still
     counts it);
  3. on the training half, the L2 strength is chosen: its alternate rows
     (stratified again) give an inner fit and a validation part; the label
     prior, then the candidates from strongest to weakest, are fitted on
     the first and scored by cross-entropy on the second; the lowest score
     wins (for softmax regression each fit starts from the previous one and
     the path stops at the first candidate that does not improve, see
     `_choose_l2`);
  4. the chosen strength is refitted on the whole training half (starting
     from its inner fit), or the prior taken from the whole half's class
     counts, and its mean cross-entropy taken on the other half;
  5. steps 3-4 for both assignments of A and B;
     I = H(Y) - mean of the two held-out cross-entropies, in bits, with the
     plug-in H(Y) over all N labels.

Every fit minimises the mean cross-entropy plus a Gaussian prior on the
weights (the L2 strength) and an add-1/2 Dirichlet prior on the class
probabilities of the biases, with L-BFGS until the gradient vanishes (to
float32 resolution); the prior candidate is that objective's minimum
without weights, the add-1/2 class frequencies. So the chosen classifier
is never worse than the prior on the validation part, a class missing from
a training half keeps a probability of about 1 / (2 n), and a converged fit
is a continuous function of Z: a last-bit change of Z (batching, another
instruction set) moves the read-out by ~1e-5 bits, at most 2e-4 in 240
draws at N = 96 and 200, where a near-tie of two strengths' scores swaps
the choice. docs/estimators.md, "Probe", has what each of these fixed: the
read-out was -7 bits on the ReLU features of a LeNet at N = 96 before.
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
# L-BFGS stops once no component of the objective's gradient (in the
# rescaled weights, see `_fit`) exceeds these, in nats: _GTOL for the fit
# scored on the held-out half, _GTOL_INNER for the fits that choose L2. A
# fit stopped on its gradient lies within about the tolerance over the
# curvature of its minimum, so a tiny change of Z (rounding, batching,
# another instruction set) moves the fit and the read-out by a tiny amount.
# The rule it replaces, stopping once an iteration lowered the objective by
# less than a relative 1e-5, left fits far from their minimum where the
# penalty is weak (its curvature is 4e-4 for l2 = 0.01 on 48 samples).
# Largest move of the read-out for a relative change of 2e-7 in Z, over 120
# draws of ReLU features with class shifts at N = 96 / 200
# (docs/estimators.md, "Probe"): 2.8e-2 / 2.7e-2 bits with that rule (and
# the other changes of this probe); 6.9e-3 / 2.3e-2 with the inner fits at
# 1e-5 (in one draw each: two adjacent strengths whose inner scores were
# within the 1e-3 error of those fits swapped places); 1.2e-4 / 2.0e-4 with
# these, for 1.3-1.45x the old probe's time at N = 2,000-25,000. The fits
# reach 3e-7 in at most 41 iterations from N = 96 to 25,000; float32
# resolves the gradient to ~1e-7.
_GTOL = 3e-7
_GTOL_INNER = 3e-6
# Pseudo-counts per class of the prior on the output biases: add-1/2, the
# Krichevsky-Trofimov estimator of class frequencies (Krichevsky and
# Trofimov, "The performance of universal encoding", 1981), so a class
# absent from a training half keeps probability ~1 / (2 n) on the other.
_ALPHA = 0.5
# Zoom line search (strong Wolfe conditions, with the approximate Wolfe
# decrease test of Hager and Zhang, "A new conjugate gradient method with
# guaranteed descent and an efficient line search", 2005, near float32
# resolution of the objective) from the full quasi-Newton step, at most 20
# trials. The backtracking (Armijo) search it replaces compares values only,
# and near the minimum, where a step lowers the objective by less than
# float32 resolves, it took steps of 1e-6 of the full one and the fit stalled
# short of the gradient tolerance.
_LINESEARCH_STEPS = 20
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
            order given does not matter: they are tried strongest first,
            after the label prior, which is always a candidate). The
            penalty is l2 * (sum of squared weights) / n_train added to the
            mean cross-entropy, i.e. l2 is the precision of a Gaussian prior on
            the weights of standardised inputs, so a strength chosen on
            n_train / 2 samples carries over to n_train. Biases are not
            penalised by l2; the output biases carry an add-1/2 prior on the
            class frequencies.
        steps: most L-BFGS iterations per fit (full batch); a fit stops
            earlier once no gradient component exceeds 3e-7 nats (3e-6 for
            the fits that choose L2): converged, in at most 41 iterations
            from N = 96 to 25,000 with the defaults.
        learning_rate: scales the L-BFGS direction, the first step its zoom
            line search tries. 1 is the classical L-BFGS step.
        num_classes: C; None infers max(label) + 1 from concrete labels (under
            jit or vmap it must be given).

    The grid was chosen on class-conditional Gaussians with known I(Z;Y)
    and on independent labels (docs/estimators.md, "Probe") with the
    earlier procedure (unstratified halves, the training half's column
    statistics, no prior candidate, a stop on the objective's decrease):
    the weak end at d = 2; the strong end made the classifier the label
    prior when Z says nothing (-0.003 bits on average at independence,
    d = 84, N = 5,000; -0.070 with a grid ending at 100), which the prior
    candidate now also does; half-decade steps read 0.02 bits higher than
    decade steps at d = 84, N = 5,000 (the same elsewhere) for 10-40% more
    time on the shared 2-core CPU.
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
    order = _stratified_order(k_perm, labels)
    x, y = _standardize(z)[order], labels[order]
    # Alternate rows of the class-sorted order: each class is split between
    # the halves as evenly as its count allows, and each half stays sorted
    # by class, so that splitting it the same way again (`_choose_l2`) is
    # stratified too.
    xa, xb = x[0 : 2 * half : 2], x[1 : 2 * half : 2]
    ya, yb = y[0 : 2 * half : 2], y[1 : 2 * half : 2]
    fold = lambda xtr, ytr, xte, yte: _fold(k_init, xtr, ytr, xte, yte, config, num_classes)
    folds = (jnp.stack([xa, xb]), jnp.stack([ya, yb]), jnp.stack([xb, xa]), jnp.stack([yb, ya]))
    # Sequential, not vmapped: a vmapped while loop runs every fold for as
    # many iterations as the slowest needs, which on a CPU costs more than
    # it saves; a caller's vmap over models and datasets batches this anyway.
    held_out_ce = jax.lax.map(lambda f: fold(*f), folds)
    value = bounds.label_entropy(labels, num_classes) - jnp.mean(held_out_ce) / _LN2
    return inputs.nan_unless_finite(value, z)


def _stratified_order(key, labels):
    """A random order of the N rows, sorted by class (random within a class)."""
    perm = jax.random.permutation(key, labels.shape[0])
    return perm[jnp.argsort(labels[perm], stable=True)]


def _fold(key, xtr, ytr, xte, yte, config, num_classes):
    """Held-out mean cross-entropy (nats) of the probe fitted on (xtr, ytr)."""
    params = _init(key, xtr.shape[1], num_classes, config.hidden, xtr.dtype)
    # Strongest first (see _choose_l2).
    candidates = jnp.asarray(sorted(config.l2, reverse=True), xtr.dtype)
    params, l2, prior = _choose_l2(params, xtr, ytr, candidates, config, num_classes)
    params = _fit(params, xtr, ytr, l2, config, active=~prior)
    params = _where(prior, _prior(params, ytr, num_classes), params)
    return _mean_ce(params, xte, yte)


def _choose_l2(params, x, y, candidates, config, num_classes):
    """(inner fit, strength, prior?) with the lowest inner-validation CE.

    (x, y) is split by alternate rows (stratified, x being sorted by class);
    each candidate is fitted on the first part and scored on the second. The
    label prior (no weights, see `_prior`) is the first candidate: a fitted
    strength is chosen only where it scores below it, and prior? is True
    where none does.

    For softmax regression (convex) the strengths, strongest first, form a
    warm-started path from the prior that stops at the first candidate not
    improving on the best so far: validation CE is U-shaped in the strength,
    and the weakly regularised fits past its minimum are the slowest to
    converge. A hidden layer is different: a strong penalty drives its
    weights to the saddle at 0, from which no weaker fit recovers, and the
    score can stay flat at H(Y) over several strong candidates; so every
    candidate starts from the random initial weights and all are scored.
    """
    xi, yi, xv, yv = x[0::2], y[0::2], x[1::2], y[1::2]
    path = config.hidden == 0
    init = params
    prior = _prior(params, yi, num_classes)

    def step(carry, l2):
        params, best, best_params, best_l2, is_prior, active = carry
        params = _fit(params if path else init, xi, yi, l2, config, active, _GTOL_INNER)
        score = _mean_ce(params, xv, yv)
        better = active & (score < best)  # False for a NaN score
        carry = (
            params,
            jnp.where(better, score, best),
            _where(better, params, best_params),
            jnp.where(better, l2, best_l2),
            is_prior & ~better,
            better if path else active,
        )
        return carry, None

    true = jnp.bool_(True)
    carry = (prior if path else init, _mean_ce(prior, xv, yv), prior, candidates[0], true, true)
    (_, _, best_params, best_l2, is_prior, _), _ = jax.lax.scan(step, carry, candidates)
    return best_params, best_l2, is_prior


def _where(pred, a, b):
    return jax.tree.map(lambda u, v: jnp.where(pred, u, v), a, b)


def _output_weights(params):
    return "w" if "w" in params else "w2"


def _output_bias(params):
    return "b" if "b" in params else "b2"


def _prior(params, y, num_classes):
    """`params` made the label prior: output weights 0, output bias the log
    of the add-alpha class frequencies of y, (n_c + alpha) / (n + C alpha)
    (the minimiser of the fit's objective without weights, see `_fit`)."""
    counts = jnp.sum(jax.nn.one_hot(y, num_classes, dtype=params[_output_bias(params)].dtype), 0)
    out = dict(params)
    out[_output_weights(params)] = jnp.zeros_like(params[_output_weights(params)])
    out[_output_bias(params)] = jnp.log(counts + _ALPHA) - jnp.log(
        y.shape[0] + num_classes * _ALPHA
    )
    return out


def _standardize(z):
    """Z z-scored per column with the statistics of all N rows.

    All rows, not the training half's: the labels play no part, so each
    half's cross-entropy is still that of a classifier fitted without its
    labels; and a column that is almost constant on the training half (a
    rarely active ReLU) can no longer blow up on the other half. With the
    statistics of all N rows no value is more than (N - 1) / sqrt(N)
    standard deviations from the mean.

    A column whose spread is below float32 resolution of its mean (constant,
    up to the rounding of the mean) gets scale 1, i.e. is only centred:
    dividing by a standard deviation of 0, or of a rounding error, would give
    NaN or blow rounding up to +-1; a constant feature carries nothing.
    """
    mean = jnp.mean(z, axis=0)
    std = jnp.std(z, axis=0)
    scale = jnp.where(std > _CONSTANT_RTOL * jnp.abs(mean), std, 1.0)
    scale = jnp.where(scale > 0, scale, 1.0)
    return (z - mean) / scale


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


def _fit(params, x, y, l2, config, active=True, gtol=_GTOL):
    """`params` moved towards the minimum of the penalised mean CE.

    The objective is mean CE + l2 * |weights|^2 / n - alpha / n * sum over
    classes of log softmax(output bias): a Gaussian prior on the weights and
    a Dirichlet prior on softmax(bias), alpha pseudo-counts per class, so a
    class absent from (x, y) keeps a probability of about alpha / n instead
    of its bias running to -inf (without weights the minimiser is `_prior`).

    Full-batch L-BFGS from `params` for at most `config.steps` iterations,
    fewer once no gradient component exceeds `gtol` (or the objective is
    not finite); none if `active` is False (a traced flag, so the call vmaps
    and scans).

    L-BFGS runs on the weights times s = sqrt(1 + 2 l2 / n). The penalty's
    curvature 2 l2 / n (200 for l2 = 10,000 on n = 100) against that of the
    unpenalised biases (<= 1/2) made the problem so badly conditioned that
    the biases barely moved and the fit stopped short of its minimum; in the
    scaled weights the penalty's curvature is below 2.
    """
    n = x.shape[0]
    scale = jnp.sqrt(1.0 + 2.0 * l2 / n)
    bias = _output_bias(params)

    def rescale(params, factor):
        return {k: v * factor if k.startswith("w") else v for k, v in params.items()}

    def objective(scaled):
        params = rescale(scaled, 1.0 / scale)
        penalty = sum(jnp.sum(v * v) for k, v in params.items() if k.startswith("w"))
        bias_prior = -_ALPHA * jnp.sum(jax.nn.log_softmax(params[bias]))
        return _mean_ce(params, x, y) + (l2 * penalty + bias_prior) / n

    opt = optax.lbfgs(
        learning_rate=config.learning_rate,
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=_LINESEARCH_STEPS, initial_guess_strategy="one"
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
        new_grad = optax.tree.get(state, "grad")
        gmax = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(new_grad)]))
        # A NaN comparison is False, so a NaN objective also stops the fit.
        done = ~(gmax > gtol) | ~jnp.isfinite(new_value)
        return scaled, state, it + 1, done

    scaled = rescale(params, scale)
    carry = (scaled, opt.init(scaled), jnp.int32(0), ~jnp.asarray(active))
    scaled, *_ = jax.lax.while_loop(cond, body, carry)
    return rescale(scaled, 1.0 / scale)
