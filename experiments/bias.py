"""Run (or resume) the bias study, then write its report (same as the ``fairprune-bias`` console script).

    python -m experiments.bias --config=planted_mnist[:smoke] [--workdir=...] [--fresh]

The logic is `fairprune_jax.cli`.
"""
from fairprune_jax import cli

if __name__ == "__main__":
    cli.bias()
