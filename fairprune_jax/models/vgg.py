"""CIFAR VGG-11/16 as in open_lth (`cifar_vgg_11/16`): 3×3 convs with bias, each followed by BatchNorm and
ReLU, max-pool 2 at 'M', global average pool, one linear head."""
from __future__ import annotations

from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from fairprune_jax.models.layers import BatchNorm, Conv, Dense, max_pool

PLANS: dict[int, tuple[Union[int, str], ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
}


class VGG(nn.Module):
    """open_lth's CIFAR VGG. open_lth ends with AvgPool2d(2) on the 2×2 map of a 32×32 input; the global mean
    used here is the same there and also works on other input sizes."""

    plan: Sequence[Union[int, str]] = PLANS[16]
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        i = 0
        for item in self.plan:
            if item == "M":
                x = max_pool(x)
                continue
            x = Conv(int(item), (3, 3), padding=((1, 1), (1, 1)), name=f"conv_{i}")(x)
            x = nn.relu(BatchNorm(train, name=f"bn_{i}")(x))
            i += 1
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_outputs, name="head")(x)
