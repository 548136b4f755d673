"""Run (or resume) the recall-distortion study from a config (same as the ``fairprune-sweep`` console script).

    python -m experiments.sweep --config=configs/mnist.py [--workdir=workdirs/mnist] [--fresh]
    python -m experiments.sweep --config=configs/mnist.py:smoke --config.num_seeds=3

Results go to the workdir incrementally; rerunning the same command resumes. The logic is `fairprune_jax.cli`.
"""
from fairprune_jax import cli

if __name__ == "__main__":
    cli.sweep()
