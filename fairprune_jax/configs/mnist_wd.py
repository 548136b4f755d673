"""UP's premise on MNIST (docs/methods.md §4): the default sweep with coupled weight decay 5e-4 in dense
training AND fine-tuning, λ_UP equal to that decay, and 10 seeds. Variant "smoke": seconds, for tests.

    fairprune-sweep --config=mnist_wd
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import mnist
from fairprune_jax.studies import schema


def changes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What this experiment changes in the default sweep."""
    c.num_seeds = 10
    c.train.optimizer.weight_decay = 5e-4
    c.finetune.optimizer.weight_decay = 5e-4
    c.prune.lambda_up = 5e-4
    c.variant = "wd"
    return c


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.finish(changes(mnist.get_config()), variant)
