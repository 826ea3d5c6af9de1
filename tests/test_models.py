"""LeNet: shapes, the two convolution formulations agree, and both equal an
independent numpy forward pass."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mi import models


@pytest.mark.parametrize("channels", [1, 3])
def test_lenet_shapes(channels):
    model = models.LeNet(num_classes=10)
    x = jnp.zeros((4, 32, 32, channels))
    params = model.init(jax.random.key(0), x)["params"]
    logits, z = model.apply({"params": params}, x)
    chex.assert_shape(logits, (4, 10))
    chex.assert_shape(z, (4, 84))
    chex.assert_shape(params["Conv_0"]["kernel"], (5, 5, channels, 6))
    chex.assert_shape(params["Conv_1"]["kernel"], (5, 5, 6, 16))
    chex.assert_shape(params["Dense_0"]["kernel"], (400, 120))


def test_patches_conv_equals_xla_conv():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 12, 11, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(5, 5, 4, 7)), jnp.float32)
    # float32 sums of 100 products of unit normals: 1e-4 relative covers the
    # reordering of the accumulation.
    chex.assert_trees_all_close(models.conv_valid(x, kernel, "patches"),
                                models.conv_valid(x, kernel, "xla"), rtol=1e-4, atol=1e-4)


def test_max_pool_matches_reduce_window():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 6, 3)), jnp.float32)
    expected = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    chex.assert_trees_all_equal(models.max_pool_2x2(x), expected)


def test_lenet_impls_agree_on_same_params():
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(5, 32, 32, 3)), jnp.float32)
    params = models.LeNet(conv_impl="patches").init(jax.random.key(1), x)["params"]
    out_patches = models.LeNet(conv_impl="patches").apply({"params": params}, x)
    out_xla = models.LeNet(conv_impl="xla").apply({"params": params}, x)
    chex.assert_trees_all_close(out_patches, out_xla, rtol=1e-4, atol=1e-5)


def numpy_lenet(params, x):
    """LeNet's forward pass in float64 numpy, written from its definition:
    'VALID' 5x5 cross-correlations over sliding windows, ReLU, 2x2 max pools
    as the maximum of the four strided sub-grids, flatten in (H, W, C) order,
    three dense layers. Returns (logits, z)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    relu = lambda a: np.maximum(a, 0.0)

    def conv(h, layer):
        windows = np.lib.stride_tricks.sliding_window_view(h, (5, 5), axis=(1, 2))
        return np.einsum("bhwcij,ijcf->bhwf", windows, layer["kernel"]) + layer["bias"]

    def pool(h):
        return np.maximum.reduce([h[:, i::2, j::2] for i in (0, 1) for j in (0, 1)])

    def dense(h, layer):
        return h @ layer["kernel"] + layer["bias"]

    h = pool(relu(conv(np.asarray(x, np.float64), p["Conv_0"])))
    h = pool(relu(conv(h, p["Conv_1"])))
    h = relu(dense(h.reshape(h.shape[0], -1), p["Dense_0"]))
    z = relu(dense(h, p["Dense_1"]))
    return dense(z, p["Dense_2"]), z


@pytest.mark.parametrize("conv_impl", ["patches", "xla"])
def test_lenet_forward_equals_numpy_reference(conv_impl):
    """Random inputs and random parameters with non-zero biases: both
    formulations compute the numpy forward pass, and z is the fc-84 layer
    after its ReLU (about half its entries exactly zero, the rest positive)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(6, 32, 32, 3)).astype(np.float32)
    model = models.LeNet(conv_impl=conv_impl)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    # Kernels at unit fan-in scale, biases of the same order: pre-activations
    # of either sign at every layer, so every ReLU cuts.
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(np.prod(s.shape[:-1]))
                                         if len(s.shape) > 1 else 0.5, s.shape), jnp.float32),
        shapes)
    logits, z = model.apply({"params": params}, jnp.asarray(x))
    ref_logits, ref_z = numpy_lenet(params, x)
    # float32 sums of up to 400 products against float64: 1e-4 relative
    # (absolute 1e-4 for values near zero) covers the rounding.
    chex.assert_trees_all_close((logits, z), (ref_logits, ref_z), rtol=1e-4, atol=1e-4)
    zero = float(np.mean(ref_z == 0.0))
    assert 0.2 < zero < 0.8, zero  # the ReLU is exercised both ways
    assert float(np.mean(np.asarray(z) == 0.0)) > 0.2
    assert float(np.std(ref_logits)) > 0.1  # the outputs are not near-constant
