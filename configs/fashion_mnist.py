"""Recall distortion on Fashion-MNIST (shipped offline; harder than MNIST, balanced test set). Variants: "" (default, ~5 min on 2 CPU cores), "smoke", "paper".

    python -m experiments.sweep --config=configs/fashion_mnist.py[:smoke|:paper] [--config.num_seeds=11 ...]
"""
from __future__ import annotations

import ml_collections

from fairprune_jax.studies import schema


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.with_variant(schema.recall_config("fashion_mnist"), variant)
