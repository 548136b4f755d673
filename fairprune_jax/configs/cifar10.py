"""Recall distortion on CIFAR-10 through tensorflow-datasets: the reference CIFAR recipe (docs/methods.md
§6) with ResNet-20 and the one-shot grid. Needs network access the first time, and TensorFlow to prepare the data:
`pip install -e ".[tfds_full]"`. Variant "smoke": seconds on 512 training images, for tests.

    fairprune-sweep --config=cifar10
"""
from __future__ import annotations

import ml_collections

from fairprune_jax import configs
from fairprune_jax.studies import schema


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant in configs.MOVED["cifar10"]:
        return configs.moved("cifar10", variant)
    return recipe("cifar10", variant)


def recipe(dataset: str, variant: str = "") -> ml_collections.ConfigDict:
    """The reference CIFAR recipe on ``dataset`` (CIFAR-100 uses it as it is)."""
    c = schema.recall_config(dataset)
    c.data.route = "tfds"
    c.data.download = True
    c.models = ("resnet20",)
    # SGD momentum .9, lr .1 ×.1 at epochs 80 and 120, 160 epochs, batch 128, coupled weight decay 1e-4,
    # flip + pad-4 crop augmentation
    c.train.epochs = 160
    c.train.optimizer = schema.sgd(0.1, momentum=0.9, weight_decay=1e-4)
    c.train.schedule.name = "step"
    c.train.schedule.boundaries = (80, 120)
    c.train.chunk = 4
    c.train.augment = "flip_crop"
    c.finetune.epochs = 10
    c.finetune.optimizer = schema.sgd(0.01, momentum=0.9, weight_decay=1e-4)
    c.finetune.chunk = 8
    c.finetune.augment = "flip_crop"
    c.eval.chunk = 8
    c.eval.batch_size = 1000
    c = schema.finish(c, variant)
    if variant == "smoke":
        c.data.max_train_examples = 512
        c.train.chunk = 0
        c.finetune.chunk = 0
    return c
