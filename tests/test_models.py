"""fedjax_mi.models: LeNet's shapes and parameter count, the convolution
formulations agree and all equal an independent numpy forward pass;
PyTorch's initialisation and the symmetric input scale."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mi import models
from helpers.shared import FAN_IN


@pytest.mark.parametrize("channels", [1, 3])
def test_lenet_shapes(channels):
    # Shapes only: traced, not compiled (eval_shape).
    model = models.LeNet(num_classes=10)
    x = jnp.zeros((4, 32, 32, channels))
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    logits, z = jax.eval_shape(model.apply, {"params": params}, x)
    chex.assert_shape(logits, (4, 10))
    chex.assert_shape(z, (4, 84))
    chex.assert_shape(params["Conv_0"]["kernel"], (5, 5, channels, 6))
    chex.assert_shape(params["Conv_1"]["kernel"], (5, 5, 6, 16))
    chex.assert_shape(params["Dense_0"]["kernel"], (400, 120))


def numpy_conv(x, kernel):
    """'VALID' cross-correlation in float64 numpy over sliding windows."""
    windows = np.lib.stride_tricks.sliding_window_view(
        np.asarray(x, np.float64), kernel.shape[:2], axis=(1, 2)
    )
    return np.einsum("bhwcij,ijcf->bhwf", windows, np.asarray(kernel, np.float64))


@pytest.mark.parametrize("impl", ["patches", "xla", "toeplitz", "s2d"])
@pytest.mark.parametrize("k", [5, 3])
def test_conv_formulations_equal_numpy(impl, k):
    # Even H and W (conv_s2d's condition), a non-square input, odd kernels.
    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.normal(size=(3, 12, 10, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 4, 7)), jnp.float32)
    # float32 sums of up to 100 products of unit normals against float64:
    # 1e-4 relative covers the reordering of the accumulation.
    chex.assert_trees_all_close(
        models.conv_valid(x, kernel, impl), numpy_conv(x, kernel), rtol=1e-4, atol=1e-4
    )


def test_toeplitz_matrix_entries():
    # Entry [(i, w, c), (v, f)] = kernel[i, w - v, c, f] inside the band, 0 outside.
    kernel = np.arange(3 * 3 * 2 * 2, dtype=np.float32).reshape(3, 3, 2, 2) + 1
    t = np.asarray(models.toeplitz_matrix(jnp.asarray(kernel), 5)).reshape(3, 5, 2, 3, 2)
    for i, w, c, v, f in np.ndindex(*t.shape):
        expected = kernel[i, w - v, c, f] if 0 <= w - v < 3 else 0.0
        assert t[i, w, c, v, f] == expected, (i, w, c, v, f)


def test_s2d_rejects_odd_shapes():
    with pytest.raises(ValueError, match="even H, W"):
        models.conv_s2d(jnp.zeros((1, 7, 8, 3)), jnp.zeros((5, 5, 3, 6)))


def test_measure_forward_chunk_per_backend():
    from fedjax_mi import measure

    assert measure.forward_chunk(500, "cpu") == 50
    assert measure.forward_chunk(20, "cpu") == 20
    assert measure.forward_chunk(5000, "gpu") == 5000


def test_measure_conv_impl_per_backend():
    assert models.measure_conv_impl("cpu") == ("s2d", "s2d")
    assert models.measure_conv_impl("gpu") == ("xla", "xla")
    assert models.measure_conv_impl() == models.measure_conv_impl(jax.default_backend())


def test_max_pool_matches_reduce_window():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 6, 3)), jnp.float32)
    expected = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    chex.assert_trees_all_equal(models.max_pool_2x2(x), expected)


def numpy_params(rng, model, x, bias_sd):
    """Parameters of `model` for inputs like x, drawn with numpy (the shapes
    traced, nothing compiled): kernels at unit fan-in scale, biases N(0, bias_sd^2)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    return jax.tree.map(
        lambda s: jnp.asarray(
            rng.normal(
                0.0, 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else bias_sd, s.shape
            ),
            jnp.float32,
        ),
        shapes,
    )


# Every formulation alone is checked against numpy below; here a mixed pair.
@pytest.mark.parametrize("impl", ["xla", ("s2d", "xla")])
def test_lenet_impls_agree_on_same_params(impl):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(size=(5, 32, 32, 3)), jnp.float32)
    params = numpy_params(rng, models.LeNet(conv_impl="patches"), x, 0.1)
    chex.assert_trees_all_equal_shapes(
        params, jax.eval_shape(models.LeNet(conv_impl=impl).init, jax.random.key(1), x)["params"]
    )
    out_patches = models.LeNet(conv_impl="patches").apply({"params": params}, x)
    out_other = models.LeNet(conv_impl=impl).apply({"params": params}, x)
    chex.assert_trees_all_close(out_patches, out_other, rtol=1e-4, atol=1e-5)


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


@pytest.mark.parametrize("conv_impl", ["patches", "xla", "toeplitz", "s2d"])
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
        lambda s: jnp.asarray(
            rng.normal(
                0.0, 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.5, s.shape
            ),
            jnp.float32,
        ),
        shapes,
    )
    logits, z = model.apply({"params": params}, jnp.asarray(x))
    ref_logits, ref_z = numpy_lenet(params, x)
    # float32 sums of up to 400 products against float64: 1e-4 relative
    # (absolute 1e-4 for values near zero) covers the rounding.
    chex.assert_trees_all_close((logits, z), (ref_logits, ref_z), rtol=1e-4, atol=1e-4)
    zero = float(np.mean(ref_z == 0.0))
    assert 0.2 < zero < 0.8, zero  # the ReLU is exercised both ways
    assert float(np.mean(np.asarray(z) == 0.0)) > 0.2
    assert float(np.std(ref_logits)) > 0.1  # the outputs are not near-constant


def test_lenet_parameter_count_by_hand():
    from fedjax_mi import models

    params = jax.eval_shape(
        models.LeNet(num_classes=10).init, jax.random.key(0), jnp.zeros((1, 32, 32, 1))
    )["params"]
    # conv 5x5x1x6 + 6, conv 5x5x6x16 + 16, fc 400x120 + 120, 120x84 + 84, 84x10 + 10.
    hand = (
        (5 * 5 * 1 * 6 + 6)
        + (5 * 5 * 6 * 16 + 16)
        + (400 * 120 + 120)
        + (120 * 84 + 84)
        + (84 * 10 + 10)
    )
    assert hand == 61706 == sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def test_torch_init_bounds_and_moments():
    """Every weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)): inside the
    bound, reaching close to it, and with the uniform law's mean 0 and
    variance b^2/3 (within 5 standard errors)."""
    model = models.LeNet()
    # jitted: op by op, flax compiles one small program per initialiser shape.
    init = jax.jit(models.init_params, static_argnums=(1, 3))
    params = init(jax.random.key(3), model, jnp.zeros((1, 32, 32, 3)), "torch")
    assert set(params) == set(FAN_IN)
    for name, fan_in in FAN_IN.items():
        b = 1.0 / math.sqrt(fan_in)
        for part in ("kernel", "bias"):
            w = np.asarray(params[name][part], np.float64).ravel()
            assert np.abs(w).max() <= b, (name, part)
            n = w.size
            # The largest |w| of n uniform draws falls below b(1 - 5/n) with probability e^-5.
            assert np.abs(w).max() >= b * (1 - 5.0 / n), (name, part)
            assert abs(w.mean()) <= 5 * b / math.sqrt(3 * n), (name, part)
            var_se = math.sqrt(4.0 / 45.0) * b * b / math.sqrt(n)  # sd of w^2 / sqrt(n)
            assert abs(np.mean(w * w) - b * b / 3) <= 5 * var_se, (name, part)
    # flax: zero biases (only that leaf is returned: XLA drops the other draws).
    flax_bias = jax.jit(
        lambda key: models.init_params(key, model, jnp.zeros((1, 32, 32, 3)), "flax")["Dense_0"][
            "bias"
        ]
    )(jax.random.key(3))
    assert flax_bias.shape == (120,) and np.all(np.asarray(flax_bias) == 0)


def test_symmetric_input_scale_is_the_unit_model_on_2x_minus_1():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(3, 32, 32, 3)), jnp.float32)
    params = numpy_params(rng, models.LeNet(), x, 0.1)  # any parameters
    sym = models.LeNet(input_scale="symmetric").apply({"params": params}, x)
    unit = models.LeNet().apply({"params": params}, 2 * x - 1)
    np.testing.assert_array_equal(np.asarray(sym[0]), np.asarray(unit[0]))
