"""Layers with the reference code's (PyTorch-style) initialisation, and the lowerings of convolution and pooling.

Kernels use an *untruncated* He-normal init (Flax's default He init is truncated); biases are U(±1/√fan_in),
which needs the fan-in and so cannot be expressed as a plain Flax bias initialiser.

Lowerings. A convolution is computed by one of `CONV_LOWERINGS`: "xla" (`lax.conv_general_dilated`) or "patches"
(im2col: the kh·kw shifted, strided slices of the padded input concatenated on the channel axis, times the kernel
reshaped to [kh·kw·in, out], one GEMM; depthwise convolutions are kh·kw shifted multiply-adds). Both compute the same
sums in a different order. XLA's CPU backend runs small-channel convolutions, and above all their gradients, far
below its GEMM rate, so "patches" is the default on CPU and "xla" elsewhere (`default_conv_lowering`);
`conv_lowering(name)` overrides it while a function is traced (benchmarks/bench_conv.py measures both). Pooling
`max_pool` of non-overlapping windows is a max of strided slices whose gradient goes to the first maximum of each
window in row-major order, exactly like the gradient of `lax.reduce_window` (select-and-scatter), which XLA's CPU
backend runs slowly.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # 'normal' is untruncated in JAX


def _uniform_bias(fan_in: int):
    bound = 1.0 / math.sqrt(max(fan_in, 1))

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Dense(nn.Module):
    """Fully connected layer: kernel [in, out] (He-normal), bias U(±1/√in)."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", he_normal, (fan_in, self.features))
        y = x @ kernel
        if self.use_bias:
            y = y + self.param("bias", _uniform_bias(fan_in), (self.features,))
        return y


# ----------------------------------------------------------------------------------------------- lowerings

Padding = Any  # "SAME" | "VALID" | ((lo, hi), (lo, hi))
ConvLowering = Callable[[jax.Array, jax.Array, tuple[int, int], Padding, int], jax.Array]


def conv_xla(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding,
             groups: int = 1) -> jax.Array:
    """NHWC x HWIO convolution by XLA's convolution operation."""
    return jax.lax.conv_general_dilated(x, kernel, window_strides=tuple(strides), padding=padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def _shifted_slices(x: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int],
                    padding: Padding) -> tuple[list[jax.Array], tuple[int, int]]:
    """The kh·kw slices [B, oh, ow, C] of the padded input seen by each kernel tap (row-major), and (oh, ow)."""
    kh, kw = kernel_hw
    sh, sw = strides
    pads = (jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding) if isinstance(padding, str)
            else [tuple(p) for p in padding])
    if any(lo or hi for lo, hi in pads):
        x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    b, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    slices = [jax.lax.slice(x, (0, i, j, 0), (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c), (1, sh, sw, 1))
              for i in range(kh) for j in range(kw)]
    return slices, (oh, ow)


def conv_patches(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding,
                 groups: int = 1) -> jax.Array:
    """The convolution of `conv_xla` as one GEMM on im2col patches: [B·oh·ow, kh·kw·in] x [kh·kw·in, out].

    The patch columns are ordered (tap row, tap column, channel), the order of the HWIO kernel reshaped, so
    the GEMM sums exactly the products the convolution sums. Depthwise convolutions (groups = in = out) are
    the sum over taps of slice × kernel tap; other grouped convolutions fall back to `conv_xla`.
    """
    kh, kw, ci, co = kernel.shape
    cin = x.shape[-1]
    depthwise = groups == cin == co and ci == 1 and groups > 1
    if groups != 1 and not depthwise:
        return conv_xla(x, kernel, strides, padding, groups)
    slices, (oh, ow) = _shifted_slices(x, (kh, kw), strides, padding)
    if depthwise:
        taps = kernel.reshape(kh * kw, co)
        out = slices[0] * taps[0]
        for t in range(1, kh * kw):
            out = out + slices[t] * taps[t]
        return out
    patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
    b = x.shape[0]
    out = patches.reshape(b * oh * ow, kh * kw * ci) @ kernel.reshape(kh * kw * ci, co)
    return out.reshape(b, oh, ow, co)


CONV_LOWERINGS: dict[str, ConvLowering] = {"xla": conv_xla, "patches": conv_patches}
_CONV_LOWERING: contextvars.ContextVar[str | None] = contextvars.ContextVar("conv_lowering", default=None)


def default_conv_lowering(platform: str | None = None) -> str:
    """"patches" on CPU (the default backend unless `platform` says), "xla" on accelerators."""
    platform = jax.default_backend() if platform is None else platform
    return "patches" if platform == "cpu" else "xla"


def current_conv_lowering() -> str:
    """The lowering `Conv` uses now: the innermost `conv_lowering` context, else `default_conv_lowering()`."""
    return _CONV_LOWERING.get() or default_conv_lowering()


@contextlib.contextmanager
def conv_lowering(name: str | None) -> Iterator[None]:
    """Within the block (while a function is traced), `Conv` computes with `CONV_LOWERINGS[name]`; None = the
    default. A jitted function traced inside the block keeps the lowering it was traced with, so functions
    compiled for different lowerings must be different functions (train/evaluate key their caches on it)."""
    if name is not None and name not in CONV_LOWERINGS:
        raise ValueError(f"conv lowering: unknown {name!r}; known: {', '.join(CONV_LOWERINGS)}")
    token = _CONV_LOWERING.set(name)
    try:
        yield
    finally:
        _CONV_LOWERING.reset(token)


@jax.custom_vjp
def _max_pool_2x2(x: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]), jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


def _max_pool_2x2_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _max_pool_2x2(x), x


def _max_pool_2x2_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    """The cotangent goes to the first maximum of each window in row-major order (select-and-scatter's rule)."""
    m = _max_pool_2x2(x)
    taken = jnp.zeros(m.shape, jnp.bool_)
    parts = []
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        first = (x[:, i::2, j::2] == m) & ~taken
        taken = taken | first
        parts.append(jnp.where(first, g, jnp.zeros((), g.dtype)))
    b, h2, w2, c = m.shape
    grid = jnp.stack(parts, axis=0).reshape(2, 2, b, h2, w2, c)  # [i, j, b, h, w, c]
    return (grid.transpose(2, 3, 0, 4, 1, 5).reshape(b, 2 * h2, 2 * w2, c),)


_max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Max-pool NHWC with a `window`×`window` window, stride `window`, VALID (trailing rows/columns that fill no
    window are dropped). Equal to `nn.max_pool(x, (w, w), strides=(w, w))` in value and gradient; 2×2 windows are a
    max of four strided slices, other sizes `nn.max_pool`."""
    if window != 2:
        return nn.max_pool(x, (window, window), strides=(window, window))
    h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
    if (h, w) != x.shape[1:3]:
        x = x[:, :h, :w]
    return _max_pool_2x2(x)


# ----------------------------------------------------------------------------------------------- layers


class Conv(nn.Module):
    """2-D convolution, NHWC, kernel [kh, kw, in, out] (He-normal), bias U(±1/√fan_in); computed by the lowering
    in force (`current_conv_lowering`)."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    feature_group_count: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kh, kw = self.kernel_size
        shape = (kh, kw, in_features // self.feature_group_count, self.features)
        fan_in = kh * kw * shape[2]
        kernel = self.param("kernel", he_normal, shape)
        lower = CONV_LOWERINGS[current_conv_lowering()]
        y = lower(x, kernel, tuple(self.strides), self.padding, self.feature_group_count)
        if self.use_bias:
            y = y + self.param("bias", _uniform_bias(fan_in), (self.features,))
        return y


def uniform_scale(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """BatchNorm γ ~ U[0, 1), as the reference code (open_lth) initialises it."""
    return jax.random.uniform(key, shape, dtype)


def BatchNorm(train: bool, name: str | None = None, *, uniform_scale_init: bool = True) -> nn.BatchNorm:
    """BatchNorm with the reference settings: Flax momentum 0.9 (= PyTorch 0.1), ε 1e-5, γ ~ U[0,1), β = 0.

    `uniform_scale_init=False` gives γ = 1 (torchvision's init, used by paper 2's ResNet-18/MobileNet code).
    Batch statistics in train mode, running averages otherwise. Under `jax.vmap` over models every model
    normalises with its own batch statistics (no `axis_name`), so BN state is per seed. Flax updates the
    running variance with the biased batch variance (PyTorch uses the unbiased one; a ≤ 1/B difference).
    """
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        scale_init=uniform_scale if uniform_scale_init else nn.initializers.ones, name=name)
