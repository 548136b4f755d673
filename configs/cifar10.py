"""Recall distortion on CIFAR-10 through tensorflow-datasets (needs network the first time, and TensorFlow to
prepare: `pip install -e ".[tfds_full]"`). Variants: "" (ResNet-20, one-shot grid), "smoke", "paper".

    python -m experiments.sweep --config=configs/cifar10.py
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.studies import schema


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.cifar_variant(schema.recall_config("cifar10"), variant)
