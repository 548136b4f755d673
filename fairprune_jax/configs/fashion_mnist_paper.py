"""Paper 1's protocol on Fashion-MNIST (docs/methods.md §6): iterative pruning with rewinding to initialisation, levels
1–15 (20% of the remaining weights per level), full retraining (40 epochs, SGD lr .1) at every level, 11 seeds,
MP/GP/UP/random. Hours on a CPU. Variant "smoke": seconds, for tests.

    fairprune-sweep --config=fashion_mnist_paper
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import fashion_mnist
from fairprune_jax.studies import schema


def changes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What this experiment changes in the default sweep."""
    c.num_seeds = 11
    c.train.epochs = 40
    c.train.chunk = 0
    c.prune.protocol = "iterative"
    c.prune.levels = 15
    c.prune.fraction = 0.2
    c.prune.rewind_step = 0
    c.variant = "paper"
    return c


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.finish(changes(fashion_mnist.get_config()), variant)
