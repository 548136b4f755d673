"""The planted_fashion_mnist bias study with a weak planted link: training P(g=1 | a*=1) = .65, P(g=1 | a*=0) = .35.
Variant "smoke": seconds, for tests.

    fairprune-bias --config=planted_fashion_mnist_weak
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import planted_fashion_mnist, planted_mnist_weak
from fairprune_jax.studies import schema


#: The same weak link as `planted_mnist_weak` (its `changes`).
changes = planted_mnist_weak.changes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.finish(changes(planted_fashion_mnist.get_config()), variant)
