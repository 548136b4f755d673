"""MobileNetV1 (Howard et al. 2017) with BatchNorm: conv3 stride 2, 13 depthwise-separable blocks, global
average pool, head. Depthwise kernels ([3, 3, 1, C]) are conv kernels and so prunable like every other."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fairprune_jax.models.layers import BatchNorm, Conv, Dense

# (pointwise filters, depthwise stride) of the 13 separable blocks
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    """Width multiplier `alpha` scales every layer's filters. BN γ = 1 (torchvision-style, paper 2's code)."""

    alpha: float = 1.0
    blocks: Sequence[tuple[int, int]] = BLOCKS
    num_outputs: int = 40

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bn = lambda name: BatchNorm(train, name=name, uniform_scale_init=False)  # noqa: E731
        width = max(8, int(32 * self.alpha))
        x = Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False, name="conv_0")(x)
        x = nn.relu(bn("bn_0")(x))
        for i, (filters, stride) in enumerate(self.blocks):
            c = x.shape[-1]
            x = Conv(c, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=False,
                     feature_group_count=c, name=f"block{i}_dw")(x)
            x = nn.relu(bn(f"block{i}_dw_bn")(x))
            x = Conv(max(8, int(filters * self.alpha)), (1, 1), padding="VALID", use_bias=False,
                     name=f"block{i}_pw")(x)
            x = nn.relu(bn(f"block{i}_pw_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_outputs, name="head")(x)
