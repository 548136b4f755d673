"""Fully connected models: LeNet-300-100 (paper 1) and the smaller MLP 100-30 (the CPU-scale RQ3 ladder)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from fairprune_jax.models.layers import Dense


class MLP(nn.Module):
    """ReLU MLP on flattened inputs; hidden layers are `hidden_i`, the output layer is `head`."""

    hidden: Sequence[int]
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or normalisation
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            x = nn.relu(Dense(width, name=f"hidden_{i}")(x))
        return Dense(self.num_outputs, name="head")(x)
