"""Bias study on CelebA (paper 2) at a reduced scale for one accelerator: 40 attributes, protected Male / Young /
Chubby / Pale_Skin (true labels), official train / validation / test partition through TFDS (`celeb_a`;
preparing it needs network access and TensorFlow the first time: `pip install -e ".[tfds_full]"` and
`--config.data.download=True`). ResNet18 at 64×64, 3 seeds, 10 epochs of paper-2 SGD, GMP post-training to
80–99.5% with Adam 1e-4. Variant "smoke": tiny images and an MLP, for the TFDS mock-data test.

    fairprune-bias --config=celeba
"""
from __future__ import annotations

import ml_collections

from fairprune_jax import configs
from fairprune_jax.studies import schema


def paper_sgd(lr: float = 0.256) -> ml_collections.ConfigDict:
    """Paper 2's SGD: momentum .875, weight decay 3.05e-5."""
    return schema.sgd(lr, momentum=0.875, weight_decay=3.05e-5)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant in configs.MOVED["celeba"]:
        return configs.moved("celeba", variant)
    c = schema.bias_config("celeb_a")
    c.models = ("resnet18",)
    c.num_seeds = 3
    c.data.image_size = (64, 64)
    c.data.protected = ("Male", "Young", "Chubby", "Pale_Skin")
    c.train.batch_size = 256
    c.train.optimizer = paper_sgd()
    c.train.schedule.name = "cosine"
    c.train.schedule.warmup_epochs = 1
    c.train.epochs = 10
    c.finetune.batch_size = 256
    c.finetune.epochs = 4
    c.finetune.optimizer = schema.optimizer("adam", 1e-4)
    c.prune.protocol = "gmp"
    c.prune.criteria = ("mp",)
    c.prune.sparsities = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
    c.eval.batch_size = 1000
    if variant == "smoke":  # tiny images and an MLP, for the TFDS mock-data test
        c.models = ("mlp_100_30",)
        c.data.image_size = (16, 16)
        c.train.batch_size = 16
        c.train.epochs = 1
        c.train.optimizer = paper_sgd(0.05)
        c.train.schedule.name = "constant"
        c.train.schedule.warmup_epochs = 0
        c.finetune.batch_size = 16
        c.finetune.epochs = 1
        c.prune.sparsities = (0.5, 0.9)
        c.eval.batch_size = 256
        c.variant = "smoke"
        return c
    return schema.finish(c, variant)
