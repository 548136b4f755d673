"""Run (or resume) the recall-distortion study from a config.

    python -m experiments.sweep --config=configs/mnist.py [--workdir=workdirs/mnist] [--fresh]
    python -m experiments.sweep --config=configs/mnist.py:smoke --config.num_seeds=3

Results go to the workdir incrementally; rerunning the same command resumes. A workdir made with another config
is refused unless --fresh (which moves the old one aside).
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from fairprune_jax import recall_study

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (default: config.workdir or workdirs/<dataset>[-<variant>]).")
_FRESH = flags.DEFINE_bool("fresh", False, "Move an existing workdir with a different config aside and start afresh.")
flags.mark_flags_as_required(["config"])


def default_workdir(config) -> str:
    return config.workdir or f"workdirs/{config.dataset}" + (f"-{config.variant}" if config.variant else "")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO; progress comes from tqdm
    recall_study.run(config, workdir=_WORKDIR.value or default_workdir(config), fresh=_FRESH.value)


if __name__ == "__main__":
    app.run(main)
