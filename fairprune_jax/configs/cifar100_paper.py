"""Paper 1's protocol on CIFAR-100 (docs/methods.md §6): the reference recipe (160 epochs per level) with iterative
pruning, rewinding to initialisation, levels 1–15, 11 seeds, ResNet-20, ResNet-56 and VGG-16 with BatchNorm.
Days on a CPU; meant for accelerators. Variant "smoke": seconds, for tests.

    fairprune-sweep --config=cifar100_paper
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import cifar10_paper, cifar100
from fairprune_jax.studies import schema


#: The same experiment as `cifar10_paper` (its `changes`), on the CIFAR-100 default.
changes = cifar10_paper.changes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = schema.finish(changes(cifar100.get_config()), variant)
    if variant == "smoke":
        c.data.max_train_examples = 512
        c.train.chunk = 0
        c.finetune.chunk = 0
    return c
