"""The planted_fashion_mnist bias study with a weak planted link: training P(g=1 | a*=1) = .65, P(g=1 | a*=0) = .35.
Variant "smoke": seconds, for tests.

    fairprune-bias --config=planted_fashion_mnist_weak
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import planted_fashion_mnist
from fairprune_jax.studies import schema


def changes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What this experiment changes in the strong-link default."""
    c.data.planted.p1, c.data.planted.p0 = 0.65, 0.35
    c.variant = "weak"
    return c


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.finish(changes(planted_fashion_mnist.get_config()), variant)
