"""Layers with the reference code's (PyTorch-style) initialisation.

Kernels use an *untruncated* He-normal init (Flax's default He init is truncated); biases are U(±1/√fan_in),
which needs the fan-in and so cannot be expressed as a plain Flax bias initialiser.
"""
from __future__ import annotations

import math
from typing import Sequence

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


class Conv(nn.Module):
    """2-D convolution, NHWC, kernel [kh, kw, in, out] (He-normal), bias U(±1/√fan_in)."""

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
        y = jax.lax.conv_general_dilated(
            x, kernel, window_strides=self.strides, padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.feature_group_count)
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
