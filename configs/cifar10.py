"""Recall distortion on CIFAR-10 through tensorflow-datasets (needs network the first time, and TensorFlow to
prepare: `pip install -e ".[tfds_full]"`). Variants: "" (ResNet-20, one-shot grid), "smoke", "paper".

    python -m experiments.sweep --config=configs/cifar10.py
"""
from __future__ import annotations

import ml_collections

from configs import common

NUM_CLASSES = 10


def cifar(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """Reference CIFAR protocol (SCIENCE.md §5): SGD momentum .9, lr .1 ×.1 at epochs 80 and 120, 160 epochs,
    batch 128, coupled weight decay 1e-4, flip + pad-4 crop augmentation, ResNet-20/56 and VGG-16 with BatchNorm."""
    c.variant = variant
    c.data.route = "tfds"
    c.data.download = True
    c.models = ("resnet20",)
    c.train.epochs = 160
    c.train.optimizer = common.sgd(0.1, momentum=0.9, weight_decay=1e-4)
    c.train.schedule.name = "step"
    c.train.schedule.boundaries = (80, 120)
    c.train.chunk = 4
    c.train.augment = c.finetune.augment = "flip_crop"
    c.finetune.epochs = 10
    c.finetune.optimizer = common.sgd(0.01, momentum=0.9, weight_decay=1e-4)
    c.finetune.chunk = 8
    c.eval.chunk = 8
    c.eval.batch_size = 1000
    if variant == "smoke":
        c = common.smoke(c)
        c.data.max_train_examples = 512
        c.train.chunk = 0
        c.finetune.chunk = 0
        return c
    if variant == "paper":
        c = common.paper(c)
        c.models = ("resnet20", "resnet56", "vgg16")
        c.train.epochs = 160
        c.train.chunk = 4
        return c
    if variant:
        raise ValueError(f"config variant: unknown {variant!r}; use '', 'smoke' or 'paper'")
    return c


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return cifar(common.recall_config("cifar10"), variant)
