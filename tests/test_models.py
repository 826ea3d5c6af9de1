"""LeNet: shapes, and the two convolution formulations agree."""

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
    # z is the output of the fc-84 layer after its ReLU.
    assert bool(jnp.all(z >= 0))
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
