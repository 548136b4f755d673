"""Small convolutional nets without normalisation: LeNet-5 (the CPU-scale conv net of docs/methods.md §6) and
Conv-2/4/6 (Frankle & Carbin, "The Lottery Ticket Hypothesis", their CIFAR-10 conv ladder)."""
from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax

from fairprune_jax.models.layers import Conv, Dense, max_pool as _max_pool

class LeNet5(nn.Module):
    """conv5-6 (SAME), max-pool 2, conv5-16 (VALID), max-pool 2, 120, 84, head; ReLU.

    On 28×28 inputs the first SAME conv plays the role of LeNet-5's 32×32 padding, so the flattened feature
    map is 5×5×16 = 400 as in the original. `width` multiplies every hidden width (6, 16, 120, 84, rounded): a
    family of LeNet-5s that differ in size only (the registry's lenet5_half / lenet5 / lenet5_double).
    """

    num_outputs: int = 10
    width: float = 1.0
    min_size: ClassVar[int] = 12  # pool 2, VALID conv 5, pool 2 must leave at least 1x1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        if min(x.shape[1:3]) < self.min_size:
            raise ValueError(f"lenet5 needs images of at least {self.min_size}x{self.min_size} pixels, got "
                             f"{x.shape[1]}x{x.shape[2]} (upsample them, or use an MLP such as mlp_100_30)")
        w = lambda n: max(1, round(n * self.width))  # noqa: E731
        x = _max_pool(nn.relu(Conv(w(6), (5, 5), padding="SAME", name="conv_0")(x)))
        x = _max_pool(nn.relu(Conv(w(16), (5, 5), padding="VALID", name="conv_1")(x)))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(Dense(w(120), name="hidden_0")(x))
        x = nn.relu(Dense(w(84), name="hidden_1")(x))
        return Dense(self.num_outputs, name="head")(x)


class ConvNet(nn.Module):
    """Frankle & Carbin Conv-n: pairs of 3×3 SAME convs (64, 128, 256 filters) each followed by max-pool 2,
    then FC 256, 256 and the head; ReLU, no dropout, no normalisation."""

    stages: Sequence[int] = (64,)  # filters per conv pair: Conv-2 (64,), Conv-4 (64, 128), Conv-6 (64, 128, 256)
    hidden: Sequence[int] = (256, 256)
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        i = 0
        for filters in self.stages:
            for _ in range(2):
                x = nn.relu(Conv(filters, (3, 3), name=f"conv_{i}")(x))
                i += 1
            x = _max_pool(x)
        x = x.reshape((x.shape[0], -1))
        for j, width in enumerate(self.hidden):
            x = nn.relu(Dense(width, name=f"hidden_{j}")(x))
        return Dense(self.num_outputs, name="head")(x)
