"""Recovery budget as a moderator on Fashion-MNIST (an extension; docs/methods.md §6): the default sweep's dense models
and one-shot masks (MP, UP at 50–98%), fine-tuned for 0, 1, 2 and 5 epochs at lr .01 and .1, with and without
momentum .9. Every setting starts from the same masks; epochs 1 and 2 are read off the 5-epoch run (the same data
order and a constant learning rate make them the 1- and 2-epoch runs). Variant "smoke": seconds, for tests.

    fairprune-sweep --config=fashion_mnist_budget
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import fashion_mnist, mnist_budget
from fairprune_jax.studies import schema


#: The same experiment as `mnist_budget` (its `changes`), on the Fashion-MNIST default sweep.
changes = mnist_budget.changes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.finish(changes(fashion_mnist.get_config()), variant)
