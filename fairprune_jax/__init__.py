"""fairprune_jax: per-class recall distortion and bias of pruned networks, many seeds at once."""

__version__ = "0.1.0"
