"""Run (or resume) the recall-distortion study from a config, then write its report (same as the
``fairprune-sweep`` console script).

    python -m experiments.sweep --config=mnist [--workdir=workdirs/mnist] [--fresh]
    python -m experiments.sweep --config=configs/mnist_wd.py:smoke --config.num_seeds=3

``--config`` is a packaged config's name (``--help`` lists them) or a config file's path. Results go to the workdir
incrementally; rerunning the same command resumes. The logic is `fairprune_jax.cli`.
"""
from fairprune_jax import cli

if __name__ == "__main__":
    cli.sweep()
