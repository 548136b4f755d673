"""Paper 1's protocol on Fashion-MNIST (docs/methods.md §6): iterative pruning with rewinding to initialisation, levels
1–15 (20% of the remaining weights per level), full retraining (40 epochs, SGD lr .1) at every level, 11 seeds,
MP/GP/UP/random. Hours on a CPU. Variant "smoke": seconds, for tests.

    fairprune-sweep --config=fashion_mnist_paper
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import fashion_mnist, mnist_paper
from fairprune_jax.studies import schema


#: The same experiment as `mnist_paper` (its `changes`), on the Fashion-MNIST default sweep.
changes = mnist_paper.changes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.finish(changes(fashion_mnist.get_config()), variant)
