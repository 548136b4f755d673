"""ResNets with BatchNorm: the CIFAR ResNet-20/32/56 of open_lth (paper 1) and an ImageNet-style ResNet-18
(torchvision layout, paper 2's CelebA model; here with any number of sigmoid or softmax outputs)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fairprune_jax.models.layers import BatchNorm, Conv, Dense


class BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN + shortcut, ReLU. The shortcut is a 1×1 conv + BN (both prunable/normalised as
    usual) when the stride or width changes, the identity otherwise. Convs have no bias (BN follows)."""

    features: int
    strides: int = 1
    bn_scale_uniform: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = (self.strides, self.strides)
        bn = lambda name: BatchNorm(train, name=name, uniform_scale_init=self.bn_scale_uniform)  # noqa: E731
        y = Conv(self.features, (3, 3), strides=s, padding=((1, 1), (1, 1)), use_bias=False, name="conv_0")(x)
        y = nn.relu(bn("bn_0")(y))
        y = Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv_1")(y)
        y = bn("bn_1")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1), strides=s, padding="VALID", use_bias=False, name="shortcut_conv")(x)
            x = bn("shortcut_bn")(x)
        return nn.relu(x + y)


class CifarResNet(nn.Module):
    """open_lth `cifar_resnet_D[_W]`: conv3 (W filters)-BN-ReLU, three stages of (D−2)/6 basic blocks with
    W, 2W, 4W filters (stride 2 entering stages 2 and 3), global average pool, head."""

    depth: int = 20
    width: int = 16
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 2) % 6:
            raise ValueError(f"CifarResNet.depth: {self.depth} is not 6n+2")
        n = (self.depth - 2) // 6
        x = Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv_0")(x)
        x = nn.relu(BatchNorm(train, name="bn_0")(x))
        for stage in range(3):
            for b in range(n):
                strides = 2 if (stage > 0 and b == 0) else 1
                x = BasicBlock(self.width * 2 ** stage, strides, name=f"stage{stage}_block{b}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_outputs, name="head")(x)


class ResNet(nn.Module):
    """ImageNet-layout ResNet with basic blocks (ResNet-18: (2, 2, 2, 2)): conv7 stride 2-BN-ReLU, max-pool 3
    stride 2, four stages (64, 128, 256, 512 filters), global average pool, head. BN γ = 1 as torchvision
    (paper 2's code uses torchvision's ResNet-18), unlike the open_lth models (γ ~ U[0,1))."""

    blocks: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    num_outputs: int = 40

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv(self.width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False, name="conv_0")(x)
        x = nn.relu(BatchNorm(train, name="bn_0", uniform_scale_init=False)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, n in enumerate(self.blocks):
            for b in range(n):
                strides = 2 if (stage > 0 and b == 0) else 1
                x = BasicBlock(self.width * 2 ** stage, strides, bn_scale_uniform=False,
                               name=f"stage{stage}_block{b}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_outputs, name="head")(x)
