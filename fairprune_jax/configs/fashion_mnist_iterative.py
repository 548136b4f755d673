"""Paper 1's iterative protocol on Fashion-MNIST at a stated shorter budget: levels 1–15 (20% per level), rewinding to
initialisation, 10 epochs per level instead of 40, 5 seeds, MP and UP (18 minutes measured for MNIST on 2 CPU
cores). Variant "smoke": seconds, for tests.

    fairprune-sweep --config=fashion_mnist_iterative
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import fashion_mnist, mnist_iterative
from fairprune_jax.studies import schema


#: The same experiment as `mnist_iterative` (its `changes`), on the Fashion-MNIST default sweep.
changes = mnist_iterative.changes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.finish(changes(fashion_mnist.get_config()), variant)
