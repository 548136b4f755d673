"""Rebuild a bias-study report from stored results: ``python -m experiments.bias_report --workdir=...`` (the same
as ``fairprune-report``, which recognises the study from the workdir's config)."""
from fairprune_jax import cli

if __name__ == "__main__":
    cli.report()
