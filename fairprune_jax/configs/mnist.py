"""Recall distortion on MNIST (shipped offline): LeNet-300-100, 5 seeds, one-shot MP/GP/UP/random pruning to
30–99% with 2 epochs of fine-tuning (~5 min on 2 CPU cores). Variant "smoke": seconds, for tests.

    fairprune-sweep --config=mnist            (or python -m experiments.sweep --config=configs/mnist.py)
"""
from __future__ import annotations

import ml_collections

from fairprune_jax import configs
from fairprune_jax.studies import schema


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant in configs.MOVED["mnist"]:
        return configs.moved("mnist", variant)
    c = schema.recall_config("mnist")
    c.models = ("lenet_300_100",)
    c.num_seeds = 5
    c.train.epochs = 8
    c.train.batch_size = 128
    c.train.optimizer = schema.sgd(0.1)  # the reference LeNet recipe: SGD lr .1, no momentum, no weight decay
    c.prune.protocol = "one_shot"
    c.prune.criteria = ("mp", "gp", "up", "random")
    c.prune.sparsities = (0.3, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
    c.prune.lambda_up = 5e-4
    c.finetune.epochs = 2
    c.finetune.optimizer = schema.sgd(0.01)  # fine-tuning at a tenth of the training learning rate
    return schema.finish(c, variant)
