"""Recall distortion on Fashion-MNIST (shipped offline; harder than MNIST, balanced test set): the MNIST sweep's
settings (LeNet-300-100, 5 seeds, one-shot MP/GP/UP/random to 30–99%, 2 fine-tuning epochs; ~5 min on 2 CPU
cores). Variant "smoke": seconds, for tests.

    fairprune-sweep --config=fashion_mnist
"""
from __future__ import annotations

import ml_collections

from fairprune_jax import configs
from fairprune_jax.studies import schema


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant in configs.MOVED["fashion_mnist"]:
        return configs.moved("fashion_mnist", variant)
    c = schema.recall_config("fashion_mnist")
    c.models = ("lenet_300_100",)
    c.num_seeds = 5
    c.train.epochs = 8
    c.train.batch_size = 128
    c.train.optimizer = schema.sgd(0.1)
    c.prune.protocol = "one_shot"
    c.prune.criteria = ("mp", "gp", "up", "random")
    c.prune.sparsities = (0.3, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
    c.prune.lambda_up = 5e-4
    c.finetune.epochs = 2
    c.finetune.optimizer = schema.sgd(0.01)
    return schema.finish(c, variant)
