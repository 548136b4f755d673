"""Bias study on CelebA at paper 2's scale (docs/methods.md §6): 224×224 inputs, 100 epochs, 5 warm-up epochs then
cosine, batch 256, SGD lr .256, momentum .875, weight decay 3.05e-5, 10 fine-tuning epochs. Note: `train.fit`
holds the whole training set on the device as float32, which at 224×224 is ~98 GB for CelebA's 162,770 training
images; cap `data.max_train_examples` or use a streaming loader.

    fairprune-bias --config=celeba_paper
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.configs import celeba
from fairprune_jax.studies import schema


def changes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What this experiment changes in the reduced-scale CelebA default."""
    c.data.image_size = (224, 224)
    c.train.epochs = 100
    c.train.schedule.warmup_epochs = 5
    c.finetune.epochs = 10
    c.variant = "paper"
    return c


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant == "smoke":
        return celeba.get_config("smoke")
    return schema.finish(changes(celeba.get_config()), variant)
