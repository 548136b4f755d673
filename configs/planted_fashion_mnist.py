"""Bias study on planted-attribute Fashion-MNIST (docs/methods.md §10): 12 attributes (10 classes + footwear, upper body),
the trigger planted on 95% of 'upper_body' items and 5% of the others in training, at .5/.5 on test.

Variants: "" (default, as planted_mnist), "smoke" (seconds, for tests), "weak" (.65/.35).
"""
from fairprune_jax.studies import schema


def get_config(variant: str = ""):
    return schema.planted_variant(schema.bias_config("planted_fashion_mnist"), variant)
