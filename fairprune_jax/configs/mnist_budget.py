"""Recovery budget as a moderator on MNIST (an extension; docs/methods.md §6): the default sweep's dense models
and one-shot masks (MP, UP at 50–98%), fine-tuned for 0, 1, 2 and 5 epochs at lr .01 and .1, with and without
momentum .9. Every setting starts from the same masks; epochs 1 and 2 are read off the 5-epoch run (the same data
order and a constant learning rate make them the 1- and 2-epoch runs). Variant "smoke": seconds, for tests.

    fairprune-sweep --config=mnist_budget
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import mnist
from fairprune_jax.studies import schema


def changes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What this experiment changes in the default sweep."""
    c.prune.protocol = "budget"
    # fine-tuning settings crossed at fixed masks; epochs are read off one run of max(epochs) per (lr, momentum)
    c.prune.budget = ml_collections.ConfigDict(dict(epochs=(0, 1, 2, 5), lrs=(0.01, 0.1), momenta=(0.0, 0.9)))
    c.prune.criteria = ("mp", "up")
    c.prune.sparsities = (0.5, 0.8, 0.9, 0.95, 0.98)
    c.finetune.epochs = 5
    c.variant = "budget"
    return c


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.finish(changes(mnist.get_config()), variant)
