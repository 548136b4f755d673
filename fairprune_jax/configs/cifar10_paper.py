"""Paper 1's protocol on CIFAR-10 (docs/methods.md §6): the reference recipe (160 epochs per level) with iterative
pruning, rewinding to initialisation, levels 1–15, 11 seeds, ResNet-20, ResNet-56 and VGG-16 with BatchNorm.
Days on a CPU; meant for accelerators. Variant "smoke": seconds, for tests.

    fairprune-sweep --config=cifar10_paper
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import cifar10
from fairprune_jax.studies import schema


def changes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What this experiment changes in the CIFAR default."""
    c.models = ("resnet20", "resnet56", "vgg16")
    c.num_seeds = 11
    c.prune.protocol = "iterative"
    c.prune.levels = 15
    c.prune.fraction = 0.2
    c.prune.rewind_step = 0
    c.variant = "paper"
    return c


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = schema.finish(changes(cifar10.get_config()), variant)
    if variant == "smoke":
        c.data.max_train_examples = 512
        c.train.chunk = 0
        c.finetune.chunk = 0
    return c
