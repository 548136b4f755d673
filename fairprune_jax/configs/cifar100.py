"""Recall distortion on CIFAR-100 through tensorflow-datasets (the reference code has no CIFAR-100 run): the reference CIFAR recipe (docs/methods.md
§6) with ResNet-20 and the one-shot grid. Needs network access the first time, and TensorFlow to prepare the data:
`pip install -e ".[tfds_full]"`. Variant "smoke": seconds on 512 training images, for tests.

    fairprune-sweep --config=cifar100
"""
from __future__ import annotations

import ml_collections

from fairprune_jax import configs
from fairprune_jax.configs import cifar10


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant in configs.MOVED["cifar100"]:
        return configs.moved("cifar100", variant)
    return cifar10.recipe("cifar100", variant)  # the values are in configs/cifar10.py
