"""Recall distortion on CIFAR-100 through tensorflow-datasets (network needed the first time); same protocol as
`configs/cifar10.py` (the reference code has no CIFAR-100 run). Variants: "", "smoke", "paper"."""
from __future__ import annotations

import ml_collections

from fairprune_jax.studies import schema


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return schema.cifar_variant(schema.recall_config("cifar100"), variant)
