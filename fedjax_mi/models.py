"""LeNet as a flax linen module returning logits and the fc-84 representation.

The convolutions are written as patches + one matmul ("patches" formulation):
under `jax.vmap` over a stacked worker axis, XLA:CPU lowers a vmapped
`conv_general_dilated` to a grouped convolution, which is slow inside
`lax.scan` (jax-ml/jax#12868), while the vmapped matmul is a batched GEMM.
Both formulations compute the same function from the same parameters
(`tests/test_models.py` checks it); docs/performance.md, "Training step", has the timings.
"""

import math
from typing import Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ConvImpl = Literal["patches", "xla", "toeplitz", "s2d"]
InputScale = Literal["unit", "symmetric"]
# Initialisation schemes (`--init`): flax's defaults (lecun_normal kernels,
# zero biases) or PyTorch's default for nn.Conv2d / nn.Linear (`torch_init`).
INITS = ("flax", "torch")
INPUT_SCALES = ("unit", "symmetric")


def torch_init(key: jax.Array, params: chex.ArrayTree) -> chex.ArrayTree:
    """PyTorch's default initialisation of the same parameter shapes: every
    kernel and bias of a layer ~ U(-1/sqrt(fan_in), +1/sqrt(fan_in)), with
    fan_in = in_channels * kh * kw for a (kh, kw, C, F) conv kernel and
    in_features for an (in, out) dense kernel (kaiming_uniform with
    a = sqrt(5) for weights, and PyTorch's bias rule).

    Args:
        key: PRNG key; layer i's kernel and bias use fold_in(key, i) split in two.
        params: {layer: {"kernel", "bias"}} as `LeNet.init` returns (values unused).

    Returns:
        A tree of the same structure, shapes and dtypes.
    """
    out = {}
    for i, (name, layer) in enumerate(sorted(params.items())):
        kernel = layer["kernel"]
        bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
        k_kernel, k_bias = jax.random.split(jax.random.fold_in(key, i))
        out[name] = {
            "kernel": jax.random.uniform(k_kernel, kernel.shape, kernel.dtype, -bound, bound),
            "bias": jax.random.uniform(
                k_bias, layer["bias"].shape, layer["bias"].dtype, -bound, bound
            ),
        }
    return out


def init_params(
    key: jax.Array, model: nn.Module, sample_x: jax.Array, init: str = "flax"
) -> chex.ArrayTree:
    """Initial parameters of `model` under scheme `init` (one of `INITS`)."""
    params = model.init(key, sample_x)["params"]
    if init == "torch":
        return torch_init(key, params)
    if init != "flax":
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return params


def conv_valid(x: jax.Array, kernel: jax.Array, impl: ConvImpl = "patches") -> jax.Array:
    """A stride-1 'VALID' 2-D convolution (cross-correlation).

    Args:
        x: (B, H, W, C) input.
        kernel: (k, k, C, F) kernel, HWIO.
        impl: "patches" (slices + einsum), "xla" (`lax.conv_general_dilated`)
            "toeplitz" (`conv_toeplitz`: one GEMM per output row) or "s2d"
            (`conv_s2d`: XLA's convolution on 2x2 pixel blocks).

    Returns:
        (B, H - k + 1, W - k + 1, F).
    """
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    if impl == "toeplitz":
        return conv_toeplitz(x, kernel)
    if impl == "s2d":
        return conv_s2d(x, kernel)
    k = kernel.shape[0]
    b, h, w = x.shape[0], x.shape[1] - k + 1, x.shape[2] - k + 1
    # Patch features ordered (kh, kw, c) to match the HWIO kernel's reshape;
    # one 2-D matmul measured 2x faster than a 5-D einsum on XLA:CPU.
    patches = jnp.concatenate(
        [x[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)], axis=-1
    )
    out = patches.reshape(-1, patches.shape[-1]) @ kernel.reshape(-1, kernel.shape[-1])
    return out.reshape(b, h, w, kernel.shape[-1])


def toeplitz_matrix(kernel: jax.Array, width: int) -> jax.Array:
    """The row-Toeplitz form of a (k, k, C, F) HWIO kernel for inputs `width`
    pixels wide: (k * width * C, (width - k + 1) * F), so that `k` stacked
    input rows (k, width, C), flattened, times it give one output row
    (width - k + 1, F). Entry [(i, w, c), (v, f)] = kernel[i, w - v, c, f]
    where 0 <= w - v < k, else 0."""
    k, _, c, f = kernel.shape
    out_w = width - k + 1
    # shift[j, w, v] = 1 where w == v + j: a constant, so only the kernel is traced.
    shift = (
        np.arange(width)[None, :, None]
        == np.arange(out_w)[None, None, :] + np.arange(k)[:, None, None]
    )
    t = jnp.einsum("jwv,ijcf->iwcvf", shift.astype(kernel.dtype), kernel)
    return t.reshape(k * width * c, out_w * f)


def conv_toeplitz(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv_valid` as one dense GEMM per output row: the k input rows under
    it, flattened (k * W * C), times `toeplitz_matrix` (mostly zeros: the
    GEMM does (W / k)x the convolution's multiply-adds, but with wide
    operands instead of the 3-channel first layer's thin ones).

    x: (B, H, W, C), kernel (k, k, C, F) -> (B, H - k + 1, W - k + 1, F)."""
    k, f = kernel.shape[0], kernel.shape[-1]
    b, h, w, c = x.shape
    out_h, out_w = h - k + 1, w - k + 1
    rows = jnp.concatenate(
        [x[:, i : i + out_h].reshape(b, out_h, w * c) for i in range(k)], axis=-1
    )
    out = rows.reshape(b * out_h, k * w * c) @ toeplitz_matrix(kernel, w)
    return out.reshape(b, out_h, out_w, f)


def conv_s2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv_valid` by space-to-depth: 2x2 pixel blocks become channels
    (H/2, W/2, 4C), the k x k kernel becomes a ceil(k/2)-wide one from 4C
    to 4F channels (each output channel group one of the 2x2 output
    positions of a block), XLA's convolution runs on that, and the result
    goes back to pixels. The 3-channel first LeNet layer becomes a
    12 -> 24-channel one, which XLA:CPU vectorises better; it does
    (k + 1)^2 / k^2 = 1.44x the multiply-adds for k = 5.

    x: (B, H, W, C) with H, W even; kernel (k, k, C, F) with k odd
    -> (B, H - k + 1, W - k + 1, F). Raises ValueError on other shapes."""
    k, _, c, f = kernel.shape
    b, h, w, _ = x.shape
    if h % 2 or w % 2 or k % 2 == 0:
        raise ValueError(
            f"conv_s2d needs even H, W and an odd kernel, got {x.shape}, {kernel.shape}"
        )
    half = (k + 1) // 2
    blocks = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(b, h // 2, w // 2, 4 * c)
    # tap[u, s, a, i] = 1 where kernel row i = 2u + s - a links input
    # sub-row s of block row p + u to output sub-row a of block row p.
    u, s_, a, i = np.meshgrid(*(np.arange(n) for n in (half, 2, 2, k)), indexing="ij")
    tap = (i == 2 * u + s_ - a).astype(np.float32)
    big = jnp.einsum("usai,vtbj,ijcf->uvstcabf", tap, tap, kernel)
    out = jax.lax.conv_general_dilated(
        blocks,
        big.reshape(half, half, 4 * c, 4 * f),
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    oh, ow = out.shape[1], out.shape[2]
    out = out.reshape(b, oh, ow, 2, 2, f).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, 2 * oh, 2 * ow, f)


def measure_conv_impl(backend: str | None = None) -> tuple[ConvImpl, ConvImpl]:
    """The (first, second) layer formulations of the measurement's forward
    passes on `backend` (default `jax.default_backend()`): the fastest
    measured there (docs/performance.md, "Measurement forward pass").

    On the CPU, space-to-depth in both layers (the row-Toeplitz GEMM does
    6.4x the first layer's multiply-adds and measured slower than XLA's
    convolution). Elsewhere XLA's convolution, the form timed on an H100;
    `benchmarks/measure_forward.py` compares all of them on any backend.
    """
    backend = jax.default_backend() if backend is None else backend
    return ("s2d", "s2d") if backend == "cpu" else ("xla", "xla")


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, by reshape (cheaper to differentiate on CPU
    than `reduce_window`'s select-and-scatter). (B, H, W, C) -> (B, H/2, W/2, C)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Conv(nn.Module):
    """'VALID' convolution with the parameters of `flax.linen.Conv`."""

    features: int
    kernel_size: int = 5
    impl: ConvImpl = "patches"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (self.kernel_size, self.kernel_size, x.shape[-1], self.features),
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv_valid(x, kernel, self.impl) + bias


class LeNet(nn.Module):
    """LeNet-5 as in the study: conv 6@5x5, pool, conv 16@5x5, pool, fc 120,
    fc 84, fc 10; ReLU activations and max pooling (docs/design.md §1).

    Input: (B, 32, 32, C) float images in [0, 1] (any C); `input_scale`
    "symmetric" maps them to [-1, 1] first (2x - 1, as PyTorch's CIFAR-10
    tutorial normalises), "unit" leaves them. Output: `(logits, z)` with
    logits (B, num_classes) and z (B, 84), the fc-84 activation (the
    representation Z whose mutual information the study measures).

    >>> import jax, jax.numpy as jnp
    >>> model = LeNet()
    >>> x = jnp.zeros((2, 32, 32, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> logits, z = model.apply({"params": params}, x)
    >>> logits.shape, z.shape
    ((2, 10), (2, 84))
    """

    num_classes: int = 10
    # One formulation for both layers, or a pair (first layer, second layer).
    conv_impl: ConvImpl | tuple[ConvImpl, ConvImpl] = "patches"
    input_scale: InputScale = "unit"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.input_scale == "symmetric":
            x = 2.0 * x - 1.0
        elif self.input_scale != "unit":
            raise ValueError(f"input_scale must be one of {INPUT_SCALES}, got {self.input_scale!r}")
        impls = (self.conv_impl,) * 2 if isinstance(self.conv_impl, str) else self.conv_impl
        x = max_pool_2x2(nn.relu(Conv(6, impl=impls[0])(x)))
        x = max_pool_2x2(nn.relu(Conv(16, impl=impls[1])(x)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(120)(x))
        z = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(z), z
