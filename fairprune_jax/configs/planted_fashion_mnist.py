"""Bias study on planted-attribute Fashion-MNIST (docs/methods.md §10): 12 attributes (10 classes + footwear,
upper body), the trigger planted on 95% of 'upper_body' items and 5% of the others in training, at .5/.5 on test;
the planted-MNIST settings otherwise.
Variant "smoke": seconds, for tests.

    fairprune-bias --config=planted_fashion_mnist
"""
from __future__ import annotations

import ml_collections

from fairprune_jax import configs
from fairprune_jax.configs import planted_mnist


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant in configs.MOVED["planted_fashion_mnist"]:
        return configs.moved("planted_fashion_mnist", variant)
    return planted_mnist.study("planted_fashion_mnist", variant)  # the values are in configs/planted_mnist.py
