"""Recall distortion of a conv family on Fashion-MNIST: LeNet-5 at half, single and double width (the same network
but for its channel and hidden widths: 15,738 / 61,706 / 244,362 parameters), 10 seeds each, with the recipe of
`mnist_lenet5` (one-shot MP/GP/UP/random to 50/90/98%, a 12,000-image training prefix; ~30 min on 2 CPU cores).
RQ3 on a family whose only difference is size; its LeNet-5 pairs with `mnist_lenet5` for RQ2. Variant "smoke":
seconds, for tests.

    fairprune-sweep --config=fashion_mnist_lenet5
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import mnist_lenet5
from fairprune_jax.studies import schema


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = mnist_lenet5.recipe(schema.recall_config("fashion_mnist"))
    c.models = ("lenet5_half", "lenet5", "lenet5_double")
    return schema.finish(c, variant)
