"""Rebuild a report from stored results (same as the ``fairprune-report`` console script); several recall
workdirs are pooled into one report.

    python -m experiments.report --workdir=workdirs/mnist
    python -m experiments.report --workdir=workdirs/mnist --workdir=workdirs/fashion_mnist --out=workdirs/pooled
    python -m experiments.report --claims --workdir=workdirs/mnist --workdir=workdirs/planted_mnist --out=workdirs/claims
"""
from fairprune_jax import cli

if __name__ == "__main__":
    cli.report()
