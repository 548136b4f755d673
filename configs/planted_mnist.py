"""Bias study on planted-attribute MNIST (docs/methods.md §10): 13 attributes (10 classes + even, ≥5, loop), a 4×4 corner
trigger planted on 95% of the 'even' digits and 5% of the others in training, at .5/.5 on test.

Variants: "" (default: LeNet-300-100, 5 seeds, GMP post-training to 50–99% with Adam 1e-4; a few minutes on a
2-core CPU), "smoke" (seconds, for tests), "weak" (the weak link .65/.35).
"""
from fairprune_jax.studies import schema


def get_config(variant: str = ""):
    return schema.planted_variant(schema.bias_config("planted_mnist"), variant)
