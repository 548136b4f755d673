"""UP's premise on Fashion-MNIST (docs/methods.md §4): the default sweep with coupled weight decay 5e-4 in dense
training AND fine-tuning, λ_UP equal to that decay, and 10 seeds. Variant "smoke": seconds, for tests.

    fairprune-sweep --config=fashion_mnist_wd
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import fashion_mnist, mnist_wd
from fairprune_jax.studies import schema


#: The same experiment as `mnist_wd` (its `changes`), on the Fashion-MNIST default sweep.
changes = mnist_wd.changes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.finish(changes(fashion_mnist.get_config()), variant)
