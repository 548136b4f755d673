"""Recall distortion on MNIST (shipped offline). Variants: "" (default, ~5 min on 2 CPU cores), "smoke", "paper".

    python -m experiments.sweep --config=configs/mnist.py[:smoke|:paper] [--config.num_seeds=11 ...]
"""
from __future__ import annotations

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return common.with_variant(common.recall_config("mnist"), variant)
