"""Bias study on planted-attribute Fashion-MNIST (SCIENCE.md §7): 12 attributes (10 classes + footwear, upper body),
the trigger planted on 95% of 'upper_body' items and 5% of the others in training, at .5/.5 on test.

Variants: "" (default, as planted_mnist), "smoke" (seconds, for tests), "weak" (.65/.35).
"""
from fairprune_jax import bias_study


def get_config(variant: str = ""):
    c = bias_study.base_config("planted_fashion_mnist")
    if variant == "smoke":
        return bias_study.smoke(c)
    if variant == "weak":
        c.data.planted.p1, c.data.planted.p0 = 0.65, 0.35
    elif variant:
        raise ValueError(f"variant: unknown variant {variant!r}; use '', 'smoke' or 'weak'")
    c.variant = variant
    return c
