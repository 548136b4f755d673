"""Rebuild a bias-study report from stored results: ``python -m experiments.bias_report --workdir=...``.

Reads only the workdir's tables (no data, no models) and rewrites ``report.md`` and the PNGs there.
"""
from __future__ import annotations

from absl import app, flags

from fairprune_jax import bias_study_report

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a bias-study run.")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    path = bias_study_report.write_report(_WORKDIR.value)
    print(bias_study_report.terminal_summary(_WORKDIR.value))
    print(f"report: {path}")


if __name__ == "__main__":
    app.run(main)
