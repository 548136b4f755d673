"""Rebuild a report from stored results (same as the ``fairprune-report`` console script); several recall
workdirs are pooled into one report; the claims table and the results document cover several workdirs.

    python -m experiments.report --workdir=workdirs/mnist
    python -m experiments.report --workdir=workdirs/mnist --workdir=workdirs/fashion_mnist --out=workdirs/pooled
    python -m experiments.report --claims --workdir=workdirs/mnist --workdir=workdirs/planted_mnist --out=workdirs/claims
    python -m experiments.report --results --workdir=workdirs/mnist --workdir=workdirs/planted_mnist --out=docs/results.md
"""
from fairprune_jax import cli

if __name__ == "__main__":
    cli.report()
