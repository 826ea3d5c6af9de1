"""What is measured at an eval point.

For every model — each worker's local model and the average of the workers,
stacked as M = K + 1 models — on every local dataset (D = K of them): the
representation Z (fc-84 activation) of the local samples; for every chosen
estimator (`--mi`, docs/estimators.md) its I(X;Z) and I(Z;Y) in bits and
their floors (the same estimates with the pairing shuffled); accuracy; and
the classifier bounds on I(Z;Y) that the model's own head gives for free
(Barber–Agakov from its cross-entropy, Fano from its accuracy). On the
test split: accuracy and the head's bounds.

One jitted function: a forward pass of each model over all measured images
(models in sequence, images in chunks, to bound memory), then each
estimator vmapped over models and datasets. Every (model, dataset) pair
uses the same key at an eval point (common random numbers), so differences
between models are not estimator noise. The X side of an EDGE I(X;Z)
estimate depends on the dataset and key only: under the vmap over models it
stays unbatched, so XLA computes its projection once per dataset per eval
point, not once per model.
"""

import ast
import dataclasses
from typing import Callable, NamedTuple, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_mi import federated
from fedjax_mi import mi
from fedjax_mi.mi import bounds, kde

# The estimators a study can record, by their `--mi` names.
ESTIMATORS = ("edge_reference", "quantile", "knn", "probe", "kde")
# Default for new runs: the most accurate estimator of each quantity on the
# validation tasks (docs/estimators.md, "Which estimator for which
# question"): KDE for I(X;Z) (the only well-defined one for a deterministic
# network) and the probe for I(Z;Y).
DEFAULT_MI = "probe,kde"


@dataclasses.dataclass(frozen=True)
class StudyEstimator:
    """One `--mi` estimator: its configs for I(X;Z) and I(Z;Y) (None: it
    does not define that quantity for a deterministic network)."""

    name: str
    xz: Optional[mi.Config]
    zy: Optional[mi.Config]


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """Estimator settings of a study (the `--mi`, `--edge_*` and `--kde_*` flags)."""

    mi: str = DEFAULT_MI
    edge_version: str = "4.2.0"
    edge_xz: str = ""
    edge_zy: str = ""
    kde_noise_var: float = kde.KDE.noise_var
    kde_relative: bool = True
    # M = 5,000 query rows: RMS error <= 0.021 bits at N = 25,000 against all
    # N rows (docs/estimators.md, "KDE"); all rows when N <= 5,000.
    kde_queries: Optional[int] = 5000


def parse_mi(text: str) -> tuple[str, ...]:
    """'kde, probe' -> ('kde', 'probe'); 'none' or '' -> (). Raises ValueError."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimators {unknown}; choose from {list(ESTIMATORS)} or 'none'")
    if len(set(names)) < len(names):
        raise ValueError(f"an estimator is listed twice in {text!r}")
    return names


def parse_edge_options(text: str) -> tuple[tuple[str, object], ...]:
    """'U=30; gamma=(0.2, 2); epsilon_vector=fixed' -> (("U", 30), ...).

    Items are separated by ';'; each value is a Python literal (number,
    tuple, True/False, None) or else a bare string. Raises ValueError on an
    item without '='.
    """
    items = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected NAME=VALUE items separated by ';', got {item!r}")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = value.strip()
        items.append((name.strip(), parsed))
    return tuple(items)


def paper_edge_configs(
    version: str = "4.2.0", xz_options=(), zy_options=()
) -> tuple[mi.EdgeReference, mi.EdgeReference]:
    """EDGE reference configs for (I(X;Z), I(Z;Y)) as the EDGE author's own
    deep-learning analysis called it for the last hidden layer
    (docs/estimators.md, "EDGE reference mode"); options are the reference's
    keywords, (name, value) pairs as `parse_edge_options` returns, and
    replace those settings. Raises ValueError or TypeError on a bad name or value.
    """
    return (
        mi.EdgeReference.paper_xz(version, **dict(xz_options)),
        mi.EdgeReference.paper_zy(version, **dict(zy_options)),
    )


def study_estimators(settings: StudySettings, num_classes: int) -> tuple[StudyEstimator, ...]:
    """The configs of every estimator `settings.mi` names, in its order.
    Raises ValueError or TypeError on a bad setting."""
    names = parse_mi(settings.mi)
    out = []
    for name in names:
        if name == "edge_reference":
            xz, zy = paper_edge_configs(
                settings.edge_version,
                parse_edge_options(settings.edge_xz),
                parse_edge_options(settings.edge_zy),
            )
        elif name == "quantile":
            xz, zy = mi.EdgeQuantile(), mi.EdgeQuantile()
        elif name == "knn":
            # KSG's I(X;Z) is infinite for a deterministic network (and its
            # 3,072-dim neighbour search would dominate the run): not recorded.
            xz, zy = None, mi.MixedKNN()
        elif name == "probe":
            xz, zy = None, mi.Probe(num_classes=num_classes)
        else:
            xz = zy = mi.KDE(
                noise_var=settings.kde_noise_var,
                relative=settings.kde_relative,
                queries=settings.kde_queries,
            )
        out.append(StudyEstimator(name, xz, zy))
    return tuple(out)


def primary(estimators: tuple[StudyEstimator, ...], quantity: str) -> Optional[str]:
    """Name of the first estimator defining `quantity` ("xz" or "zy"): its
    values are also recorded as plain `mi_xz` / `mi_zy` (and floors)."""
    return next((e.name for e in estimators if getattr(e, quantity) is not None), None)


class Measurement(NamedTuple):
    """Metrics of M models on D local datasets (model M-1 is the average).

    Attributes:
      acc: (M, D) accuracy on the measured local samples.
      test_acc: (M,) accuracy on the (measured part of the) test split.
      head: (M, D) Barber–Agakov bound H(Y) - CE of the model's own head (bits).
      fano: (M, D) Fano bound implied by the accuracy (bits).
      test_head, test_fano: (M,) the same on the test split.
      mi: {field: (M, D)} every estimator's values in bits, named
        `mi_<xz|zy>_<estimator>`, `..._floor` (pairing shuffled) and, for
        KDE, `..._lower` (the Bhattacharyya value; the plain field is the KL one).
      mi_xz, mi_zy, mi_xz_floor, mi_zy_floor: (M, D) the primary estimator's
        values (`primary`); NaN where no estimator defines the quantity.
      interp_acc, interp_loss: (A, D) accuracy and mean cross-entropy (nats)
        of (1 - a) w0 + a w1 for a in `INTERP_ALPHAS` (workers 0 and 1) on
        each local dataset; NaN with a single worker.
      weight_distance: () ||w0 - w1|| / ||w0|| over all parameters; NaN with
        a single worker.
      test_mi: {field: (M,)} the label estimators' `mi_zy_<estimator>` fields
        (with `..._floor` and KDE's `..._lower`) on the test split.
      test_mi_zy, test_mi_zy_floor: (M,) the primary label estimator's on the
        test split.
      test_interp_acc, test_interp_loss: (A,) the interpolants on the test split.
    """

    acc: jax.Array
    test_acc: jax.Array
    head: jax.Array
    fano: jax.Array
    test_head: jax.Array
    test_fano: jax.Array
    mi: dict
    mi_xz: jax.Array
    mi_zy: jax.Array
    mi_xz_floor: jax.Array
    mi_zy_floor: jax.Array
    interp_acc: jax.Array
    interp_loss: jax.Array
    weight_distance: jax.Array
    test_mi: dict
    test_mi_zy: jax.Array
    test_mi_zy_floor: jax.Array
    test_interp_acc: jax.Array
    test_interp_loss: jax.Array


# Points of the linear path between local models 0 and 1 that are measured
# (linear mode connectivity: Frankle, Dziugaite, Roy, Carbin, "Linear mode
# connectivity and the lottery ticket hypothesis", 2020).
INTERP_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def interpolate(params: chex.ArrayTree, alphas: jax.Array) -> chex.ArrayTree:
    """(1 - a) w0 + a w1 of workers 0 and 1 of `params` (leading axis K >= 2)
    for each a of `alphas` (A,): a tree with leading axis A."""
    return jax.tree.map(
        lambda p: (
            (1.0 - alphas).reshape((-1,) + (1,) * (p.ndim - 1)) * p[0]
            + alphas.reshape((-1,) + (1,) * (p.ndim - 1)) * p[1]
        ),
        params,
    )


def weight_distance(params: chex.ArrayTree) -> jax.Array:
    """||w0 - w1|| / ||w0|| over all parameters of workers 0 and 1 (a () float)."""
    leaves = jax.tree.leaves(params)
    diff = sum(jnp.sum(jnp.square(p[1] - p[0])) for p in leaves)
    return jnp.sqrt(diff / sum(jnp.sum(jnp.square(p[0])) for p in leaves))


def models_to_measure(params: chex.ArrayTree) -> chex.ArrayTree:
    """Stack the K local models and their average: leading axis K + 1."""
    avg = federated.average(params)
    return jax.tree.map(lambda p, a: jnp.concatenate([p, a[None]], axis=0), params, avg)


# On the CPU the forward passes run at most this many images at a time: the
# activations then stay in cache, 2x faster per image than 500 at a time
# (docs/performance.md, "Measurement forward pass").
CPU_FORWARD_CHUNK = 50


def forward_chunk(eval_chunk: int, backend: Optional[str] = None) -> int:
    """Images per forward chunk for `--eval_chunk` (a memory bound) on
    `backend` (default `jax.default_backend()`): at most CPU_FORWARD_CHUNK
    on the CPU, `eval_chunk` elsewhere."""
    backend = jax.default_backend() if backend is None else backend
    return min(eval_chunk, CPU_FORWARD_CHUNK) if backend == "cpu" else eval_chunk


def chunked_forward(
    model: nn.Module, params: chex.ArrayTree, x: jax.Array, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """Logits (n, classes) and z (n, 84) of one model on uint8 images
    (n, H, W, C), `chunk` images at a time (padded to a multiple of it)."""
    n = x.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    xp = xp.reshape((-1, chunk) + x.shape[1:])
    logits, z = jax.lax.map(
        lambda xc: model.apply({"params": params}, federated.scale_images(xc)), xp
    )
    return (logits.reshape(-1, logits.shape[-1])[:n], z.reshape(-1, z.shape[-1])[:n])


def make_measure(
    model: nn.Module, estimators: tuple[StudyEstimator, ...], chunk: int = 500
) -> Callable:
    """The jitted eval-point measurement:
    `(key, params, local_x, local_y, test_x, test_y) -> Measurement`, with
    params stacked over K workers, local_x (D, m, H, W, C) uint8, local_y
    (D, m) int, test_x (T, H, W, C) uint8, test_y (T,) int."""
    return jax.jit(_measure_fn(model, estimators, chunk))


def make_sweep_measure(
    model: nn.Module, estimators: tuple[StudyEstimator, ...], chunk: int = 500
) -> Callable:
    """The measurement of R runs, one after the other (`lax.map`: each run's
    forwards already fill the device):
    `(keys (R,), params (R, K, ...), local_x (G, D, m, ...), local_y (G, D, m),
    groups (R,), test_x, test_y) -> Measurement` with a leading R axis."""
    one = _measure_fn(model, estimators, chunk)

    @jax.jit
    def measure(keys, params, local_x, local_y, groups, test_x, test_y):
        return jax.lax.map(
            lambda a: one(a[0], a[1], local_x[a[2]], local_y[a[2]], test_x, test_y),
            (keys, params, groups),
        )

    return measure


def pair_estimates(
    estimators: tuple[StudyEstimator, ...], key: jax.Array, x: jax.Array, y: jax.Array, z: jax.Array
) -> dict:
    """Every estimator's fields for one model on one dataset (bits).

    x: (m, H, W, C) uint8 images, y: (m,) labels, z: (m, 84) the model's
    representation of x. One shuffle per eval point, shared by every model,
    dataset and estimator; each estimate and its floor are one vmapped
    call (the unshuffled side is unbatched, so computed once). Labels go
    on the first side, as in the EDGE author's analysis.
    """
    perm = _floor_permutation(key, y.shape[0])
    x_flat = federated.scale_images(x).reshape(x.shape[0], -1)
    out = {}
    for est in estimators:
        if isinstance(est.xz, mi.KDE):
            # I(X; Z+e) needs Z alone: shuffling X changes nothing, no floor.
            b = kde.xz_bounds(key, z, est.xz)
            out[f"mi_xz_{est.name}"], out[f"mi_xz_{est.name}_lower"] = b.upper, b.lower
        elif est.xz is not None:
            v = jax.vmap(lambda zs: mi.estimate_traced(key, x_flat, zs, est.xz))(
                jnp.stack([z, z[perm]])
            )
            out[f"mi_xz_{est.name}"], out[f"mi_xz_{est.name}_floor"] = v[0], v[1]
        out.update(_zy_fields(est, key, y, z, perm))
    return out


def label_estimates(
    estimators: tuple[StudyEstimator, ...], key: jax.Array, y: jax.Array, z: jax.Array
) -> dict:
    """The I(Z;Y) fields of `pair_estimates` alone (the test split, whose
    images no I(X;Z) estimate is asked of): y (n,) labels, z (n, 84)."""
    perm = _floor_permutation(key, y.shape[0])
    out = {}
    for est in estimators:
        out.update(_zy_fields(est, key, y, z, perm))
    return out


def _floor_permutation(key: jax.Array, n: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, 1), n)


def _zy_fields(est: StudyEstimator, key, y, z, perm) -> dict:
    """`mi_zy_<name>`, its floor (labels permuted by `perm`) and KDE's lower value."""
    ys = jnp.stack([y, y[perm]])
    if isinstance(est.zy, mi.KDE):
        b = jax.vmap(lambda yy: kde.zy_bounds(key, yy, z, est.zy))(ys)
        return {
            f"mi_zy_{est.name}": b.upper[0],
            f"mi_zy_{est.name}_floor": b.upper[1],
            f"mi_zy_{est.name}_lower": b.lower[0],
        }
    if est.zy is None:
        return {}
    v = jax.vmap(lambda yy: mi.estimate_traced(key, yy, z, est.zy))(ys)
    return {f"mi_zy_{est.name}": v[0], f"mi_zy_{est.name}_floor": v[1]}


def head_bounds(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Barber–Agakov, Fano) lower bounds on I(Z;Y) in bits from a model's own
    head: logits (n, C) and labels (n,)."""
    num_classes = logits.shape[-1]
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    entropy = bounds.label_entropy(labels, num_classes)
    return bounds.barber_agakov(logits, labels), bounds.fano(accuracy, entropy, num_classes)


def interpolation(
    model: nn.Module,
    params: chex.ArrayTree,
    images: jax.Array,
    labels: jax.Array,
    chunk: int,
    measured_logits: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(accuracy (A, n), cross-entropy in nats (A, n), weight distance ()) of
    the `INTERP_ALPHAS` interpolants of workers 0 and 1 of `params` on each of
    the n uint8 `images` (n, H, W, C) with `labels` (n,): per image, so a
    caller takes the mean over each dataset's images; NaN when K < 2.

    `measured_logits` (K + 1, n, classes) are the logits of the measured
    models (the K workers, then their average) on the same images. The
    interpolants that are measured models already are not run again: a = 0
    is w0 and a = 1 is w1 exactly, and with K = 2, a = 0.5 is the average
    (0.5 w0 + 0.5 w1 rounds as (w0 + w1) / 2). Only the others (0.25 and
    0.75 with K = 2) cost forward passes."""
    num_workers = jax.tree.leaves(params)[0].shape[0]
    num_alphas, n = len(INTERP_ALPHAS), labels.shape[0]
    if num_workers < 2:
        nan = jnp.full((num_alphas, n), jnp.nan, jnp.float32)
        return nan, nan, jnp.float32(jnp.nan)
    known = {0.0: 0, 1.0: 1}
    if num_workers == 2:
        known[0.5] = 2
    new = [a for a in INTERP_ALPHAS if a not in known]
    path = interpolate(params, jnp.asarray(new, jnp.float32))
    new_logits, _ = jax.lax.map(lambda p: chunked_forward(model, p, images, chunk), path)
    logits = jnp.stack(
        [
            measured_logits[known[a]] if a in known else new_logits[new.index(a)]
            for a in INTERP_ALPHAS
        ]
    )
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[None, :, None], -1)[..., 0]
    return correct, ce, weight_distance(params)


def _measure_fn(model, estimators, chunk):
    xz_name, zy_name = primary(estimators, "xz"), primary(estimators, "zy")

    def measure(key, params, local_x, local_y, test_x, test_y):
        stacked = models_to_measure(params)
        num_datasets, m = local_y.shape
        # One forward pass per model over every local and test image: models
        # in sequence (lax.map), images in chunks; measured faster on CPU than
        # vmapping over models and datasets (docs/performance.md).
        images = jnp.concatenate([local_x.reshape((-1,) + local_x.shape[2:]), test_x])
        logits, z = jax.lax.map(lambda p: chunked_forward(model, p, images, chunk), stacked)
        num_local = num_datasets * m
        all_y = jnp.concatenate([local_y.reshape(-1), test_y])
        correct = jnp.argmax(logits, -1) == all_y
        acc = correct[:, :num_local].reshape(-1, num_datasets, m).mean(-1)
        test_acc = correct[:, num_local:].mean(-1)
        local_logits = logits[:, :num_local].reshape(-1, num_datasets, m, logits.shape[-1])
        head, fano = jax.vmap(jax.vmap(head_bounds), in_axes=(0, None))(local_logits, local_y)
        test_head, test_fano = jax.vmap(head_bounds, in_axes=(0, None))(
            logits[:, num_local:], test_y
        )
        z_local = z[:, :num_local].reshape(-1, num_datasets, m, z.shape[-1])
        one = lambda x, y, zz: pair_estimates(estimators, key, x, y, zz)
        over_datasets = jax.vmap(one, in_axes=(0, 0, 0))
        fields = jax.vmap(over_datasets, in_axes=(None, None, 0))(local_x, local_y, z_local)
        test_fields = jax.vmap(lambda zz: label_estimates(estimators, key, test_y, zz))(
            z[:, num_local:]
        )
        nan = jnp.full(acc.shape, jnp.nan, acc.dtype)
        get = lambda name, f=fields, nan=nan: f[name] if name in f else nan
        get_test = lambda name: get(name, test_fields, nan[:, 0])
        correct, ce, distance = interpolation(model, params, images, all_y, chunk, logits)
        per_dataset = lambda v: v[:, :num_local].reshape(-1, num_datasets, m).mean(-1)
        return Measurement(
            acc,
            test_acc,
            head,
            fano,
            test_head,
            test_fano,
            fields,
            get(f"mi_xz_{xz_name}"),
            get(f"mi_zy_{zy_name}"),
            get(f"mi_xz_{xz_name}_floor"),
            get(f"mi_zy_{zy_name}_floor"),
            per_dataset(correct),
            per_dataset(ce),
            distance,
            test_fields,
            get_test(f"mi_zy_{zy_name}"),
            get_test(f"mi_zy_{zy_name}_floor"),
            correct[:, num_local:].mean(-1),
            ce[:, num_local:].mean(-1),
        )

    return measure
