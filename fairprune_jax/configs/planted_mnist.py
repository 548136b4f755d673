"""Bias study on planted-attribute MNIST (docs/methods.md §10): 13 attributes (10 classes + even, ≥5, loop), a 4×4
corner trigger planted on 95% of the 'even' digits and 5% of the others in training, at .5/.5 on test;
LeNet-300-100, 5 seeds, GMP post-training to 50–99% with Adam 1e-4 (a few minutes on a 2-core CPU).
Variant "smoke": seconds, for tests.

    fairprune-bias --config=planted_mnist
"""
from __future__ import annotations

import ml_collections

from fairprune_jax import configs
from fairprune_jax.studies import schema


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant in configs.MOVED["planted_mnist"]:
        return configs.moved("planted_mnist", variant)
    return study("planted_mnist", variant)


def study(dataset: str, variant: str = "") -> ml_collections.ConfigDict:
    """The planted bias study's settings on ``dataset`` (planted Fashion-MNIST uses them as they are)."""
    c = schema.bias_config(dataset)
    c.models = ("lenet_300_100",)  # any registered model (sigmoid head)
    c.num_seeds = 5  # odd: CIEs use modal predictions
    c.data.planted.p1, c.data.planted.p0 = 0.95, 0.05  # training P(g=1 | a*=1), P(g=1 | a*=0): strong link
    c.data.planted.test_p1, c.data.planted.test_p0 = 0.5, 0.5  # test planting independent of the labels
    c.train.epochs = 5
    c.train.optimizer = schema.optimizer("sgd", 0.05, momentum=0.9)
    c.prune.protocol = "gmp"
    c.prune.criteria = ("mp",)
    c.prune.sparsities = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
    c.finetune.epochs = 4
    c.finetune.optimizer = schema.optimizer("adam", 1e-4)  # paper 2's post-training GMP fine-tunes with Adam 1e-4
    return schema.finish(c, variant)
