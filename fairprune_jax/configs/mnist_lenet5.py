"""Recall distortion of a conv net on MNIST: LeNet-5, 10 seeds, one-shot MP/GP/UP/random pruning to 50/90/98% with
one fine-tuning epoch, trained on the first 12,000 training images (~9 min on 2 CPU cores). The MNIST half of the
RQ2 pair with `fashion_mnist_lenet5`, whose recipe it shares. Variant "smoke": seconds, for tests.

    fairprune-sweep --config=mnist_lenet5
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.studies import schema


def recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The conv sweeps' recipe, sized to a budget of about 30 minutes per sweep on 2 CPU cores: a LeNet-5 model-epoch
    on the full 60,000 images takes about 40 s here, so the sweeps train on a 12,000-image prefix (small batches:
    more steps for the same images) and fine-tune once. Dense LeNet-5 reaches about 97% on MNIST, 85% on
    Fashion-MNIST."""
    c.num_seeds = 10
    c.data.max_train_examples = 12000
    c.train.epochs = 6
    c.train.batch_size = 32
    c.train.optimizer = schema.sgd(0.01, momentum=0.9)
    c.prune.protocol = "one_shot"
    c.prune.criteria = ("mp", "gp", "up", "random")
    c.prune.sparsities = (0.5, 0.9, 0.98)  # one low-sparsity cell, two high (docs/methods.md §14's regimes)
    c.prune.lambda_up = 5e-4
    c.finetune.epochs = 1
    c.finetune.batch_size = 32
    c.finetune.optimizer = schema.sgd(0.01, momentum=0.9)  # the training rate: at a tenth, one epoch leaves 98% at ~45%
    c.variant = "lenet5"
    return c


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = recipe(schema.recall_config("mnist"))
    c.models = ("lenet5",)
    return schema.finish(c, variant)
