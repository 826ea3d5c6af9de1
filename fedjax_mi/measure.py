"""What is measured at an eval point.

For every model — each worker's local model and the average of the workers,
stacked as M = K + 1 models — on every local dataset (D = K of them): the
representation Z (fc-84 activation) of the local samples, I(X;Z) and I(Z;Y)
with EDGE (bits), the estimator's floor for both (the same estimates with the
pairing shuffled), and accuracy; and each model's accuracy on the test split.

One jitted function: a forward pass of each model over all measured images
(models in sequence, images in chunks, to bound memory), then EDGE vmapped
over models and datasets. Every (model, dataset) pair uses the
same EDGE key at an eval point (common random numbers), so differences
between models are not estimator noise of different projections.
"""

import ast
import dataclasses
from typing import Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_mi import edge, federated


class Measurement(NamedTuple):
    """Metrics of M models on D local datasets (model M-1 is the average).

    Attributes:
      mi_xz: (M, D) I(X;Z) in bits.
      mi_zy: (M, D) I(Z;Y) in bits.
      acc: (M, D) accuracy on the measured local samples.
      test_acc: (M,) accuracy on the (measured part of the) test split.
      mi_xz_floor, mi_zy_floor: (M, D) the same estimates with Z (resp. the
        labels) shuffled against the other side: the estimator's floor, what
        it reads for a pair with no information (`edge.shuffle_baseline`
        with one shuffle; same EDGE key as the estimate).
    """
    mi_xz: jax.Array
    mi_zy: jax.Array
    acc: jax.Array
    test_acc: jax.Array
    mi_xz_floor: jax.Array
    mi_zy_floor: jax.Array


def models_to_measure(params: chex.ArrayTree) -> chex.ArrayTree:
    """Stack the K local models and their average: leading axis K + 1."""
    avg = federated.average(params)
    return jax.tree.map(lambda p, a: jnp.concatenate([p, a[None]], axis=0), params, avg)


# EDGE.md §5: the author's own keywords for the last hidden layer.
PAPER_XZ = dict(U=20, L_ensemble=10, gamma=(0.2, 1.4), epsilon_vector="range")
PAPER_ZY = dict(U=10, L_ensemble=10, gamma=(1e-4, 0.52), epsilon=(0.2, 0.2),
                epsilon_vector="range")


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


def paper_edge_configs(mode: str = "reference", version: str = "4.2.0", xz_options=(),
                       zy_options=()) -> tuple[edge.EdgeConfig, edge.EdgeConfig]:
    """EDGE configs for (I(X;Z), I(Z;Y)).

    "reference": how the EDGE author's own deep-learning analysis called it
    for the last hidden layer (EDGE.md §5: gamma_xt 1.4, gamma_ty 0.52);
    options are the reference's keywords (`EdgeConfig.reference`) and
    replace those settings. "default": the project's default estimator for
    both; options are `EdgeConfig` fields. Options: (name, value) pairs, as
    `parse_edge_options` returns. Raises ValueError or TypeError on a bad
    mode, name or value.
    """
    if mode == "default":
        fields = {f.name for f in dataclasses.fields(edge.EdgeConfig)}
        for name, _ in tuple(xz_options) + tuple(zy_options):
            if name not in fields:
                raise TypeError(f"unknown EdgeConfig field {name!r}; known: {sorted(fields)}")
        return edge.EdgeConfig(**dict(xz_options)), edge.EdgeConfig(**dict(zy_options))
    if mode != "reference":
        raise ValueError(f"EDGE mode must be 'reference' or 'default', got {mode!r}")
    xz = edge.EdgeConfig.reference(version, **{**PAPER_XZ, **dict(xz_options)})
    zy = edge.EdgeConfig.reference(version, **{**PAPER_ZY, **dict(zy_options)})
    return xz, zy


def chunked_forward(model: nn.Module, params: chex.ArrayTree, x: jax.Array,
                    chunk: int) -> tuple[jax.Array, jax.Array]:
    """Logits (n, classes) and z (n, 84) of one model on uint8 images
    (n, H, W, C), `chunk` images at a time (padded to a multiple of it)."""
    n = x.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    xp = xp.reshape((-1, chunk) + x.shape[1:])
    logits, z = jax.lax.map(
        lambda xc: model.apply({"params": params}, federated.scale_images(xc)), xp)
    return (logits.reshape(-1, logits.shape[-1])[:n], z.reshape(-1, z.shape[-1])[:n])


def make_measure(model: nn.Module, edge_xz: edge.EdgeConfig, edge_zy: edge.EdgeConfig,
                 chunk: int = 500) -> Callable:
    """The jitted eval-point measurement:
    `(key, params, local_x, local_y, test_x, test_y) -> Measurement`, with
    params stacked over K workers, local_x (D, m, H, W, C) uint8, local_y
    (D, m) int, test_x (T, H, W, C) uint8, test_y (T,) int."""
    return jax.jit(_measure_fn(model, edge_xz, edge_zy, chunk))


def make_sweep_measure(model: nn.Module, edge_xz: edge.EdgeConfig, edge_zy: edge.EdgeConfig,
                       chunk: int = 500) -> Callable:
    """The measurement of R runs, one after the other (`lax.map`: each run's
    forwards already fill the device):
    `(keys (R,), params (R, K, ...), local_x (G, D, m, ...), local_y (G, D, m),
    groups (R,), test_x, test_y) -> Measurement` with a leading R axis."""
    one = _measure_fn(model, edge_xz, edge_zy, chunk)

    @jax.jit
    def measure(keys, params, local_x, local_y, groups, test_x, test_y):
        return jax.lax.map(lambda a: one(a[0], a[1], local_x[a[2]], local_y[a[2]], test_x, test_y),
                           (keys, params, groups))

    return measure


def _measure_fn(model, edge_xz, edge_zy, chunk):

    def mi_pair(key, x, y, z):
        x_flat = federated.scale_images(x).reshape(x.shape[0], -1)
        # One shuffle per eval point, shared by every model and dataset.
        perm = jax.random.permutation(jax.random.fold_in(key, 1), x.shape[0])
        # Each estimate and its floor are one vmapped call (one traced
        # estimator; the unshuffled side is unbatched, so computed once).
        # Labels go on the first side, as in the reference analysis (EDGE.md §5).
        xz = jax.vmap(lambda zs: edge.mutual_information(key, x_flat, zs, edge_xz))(
            jnp.stack([z, z[perm]]))
        zy = jax.vmap(lambda ys: edge.mutual_information(key, ys, z, edge_zy))(
            jnp.stack([y, y[perm]]))
        return xz[0], zy[0], xz[1], zy[1]

    def measure(key, params, local_x, local_y, test_x, test_y):
        stacked = models_to_measure(params)
        num_datasets, m = local_y.shape
        # One forward pass per model over every local and test image: models
        # in sequence (lax.map), images in chunks; measured faster on CPU than
        # vmapping over models and datasets (BUILD_NOTES.md).
        images = jnp.concatenate([local_x.reshape((-1,) + local_x.shape[2:]), test_x])
        logits, z = jax.lax.map(lambda p: chunked_forward(model, p, images, chunk), stacked)
        correct = jnp.argmax(logits, -1) == jnp.concatenate([local_y.reshape(-1), test_y])
        num_local = num_datasets * m
        acc = correct[:, :num_local].reshape(-1, num_datasets, m).mean(-1)
        test_acc = correct[:, num_local:].mean(-1)
        z_local = z[:, :num_local].reshape(-1, num_datasets, m, z.shape[-1])
        over_datasets = jax.vmap(mi_pair, in_axes=(None, 0, 0, 0))
        mi_xz, mi_zy, floor_xz, floor_zy = jax.vmap(over_datasets, in_axes=(None, None, None, 0))(
            key, local_x, local_y, z_local)
        return Measurement(mi_xz, mi_zy, acc, test_acc, floor_xz, floor_zy)

    return measure
