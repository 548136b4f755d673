"""Rebuild the recall-distortion report from stored results; several workdirs are pooled into one report.

    python -m experiments.report --workdir=workdirs/mnist
    python -m experiments.report --workdir=workdirs/mnist --workdir=workdirs/fashion_mnist --out=workdirs/pooled
"""
from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging

from fairprune_jax import recall_report, results

_WORKDIR = flags.DEFINE_multi_string("workdir", None, "Workdir(s) of finished or partial sweeps.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: the workdir; required for several workdirs).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    wds = [results.Workdir.existing(p) for p in _WORKDIR.value]
    if len(wds) == 1:
        print(recall_report.build_report(wds[0], out=Path(_OUT.value) if _OUT.value else None))
        return
    if not _OUT.value:
        raise app.UsageError("--out is required when pooling several workdirs")
    print(recall_report.pooled_report(wds, Path(_OUT.value)))


if __name__ == "__main__":
    app.run(main)
