"""Run (or resume) the bias study: ``python -m experiments.bias --config=configs/planted_mnist.py[:smoke]``.

Flags: ``--config`` (an ml_collections config file with ``get_config(variant)``; fields can be overridden, e.g.
``--config.num_seeds=7``), ``--workdir`` (overrides ``config.workdir``; default ``workdirs/<dataset>[-<variant>]``),
``--fresh`` (move an existing workdir aside and start over). Rerunning the same command resumes: finished units are
skipped. Everything is in `fairprune_jax.bias_study`.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from fairprune_jax import bias_study

_CONFIG = config_flags.DEFINE_config_file("config", None, "Bias-study config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (overrides config.workdir).")
_FRESH = flags.DEFINE_bool("fresh", False, "Move an existing workdir aside and start over.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _CONFIG.value
    try:
        bias_study.validate_config(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    bias_study.run(cfg, workdir=_WORKDIR.value, fresh=_FRESH.value)


if __name__ == "__main__":
    app.run(main)
