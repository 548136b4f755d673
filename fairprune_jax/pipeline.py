"""A study and its report in one call: what the console scripts run, and the entry point for notebooks.

    from fairprune_jax import configs, pipeline
    summary = pipeline.run(configs.get("mnist", "smoke"), workdir="workdirs/mnist-smoke")
    print(summary.text)   # the report's terminal summary; summary.report is report.md

The study (`studies.runner` with `studies.recall` or `studies.bias`, chosen by ``config.study``) computes and
commits its units; the report (`report.recall` / `report.bias`) is built afterwards from the stored tables only, so
`build_report` rebuilds it at any time.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

from fairprune_jax import multihost, results
from fairprune_jax.report import build
from fairprune_jax.studies import bias as bias_study
from fairprune_jax.studies import recall as recall_study
from fairprune_jax.studies import runner

STUDIES = (recall_study.STUDY, bias_study.STUDY)  # imported for their registration with the runner
build_report = build.report  # (re)build a stored workdir's report: (report path, terminal summary)

#: Entry points per study (for messages): the console script that runs it.
COMMANDS = {"recall": "fairprune-sweep", "bias": "fairprune-bias"}
#: The timing stage of each study's report (`timings.json`).
REPORT_STAGE = {"recall": "analysis+report", "bias": "report"}


def run(config: Any, *, workdir: str | os.PathLike | None = None, fresh: bool = False, report: bool = True,
        log: Callable[[str], None] | None = None, command: str = "", study: str | None = None
        ) -> runner.RunSummary:
    """Run (or resume) the study of ``config`` into ``workdir``, then build its report (``report=True``, process 0
    only). ``study`` (e.g. "recall"): refuse a config of another study, naming the command that runs it."""
    config = runner.normalize(config)
    name = str(config.get("study", "recall"))
    if study is not None and name != study:
        raise ValueError(f"config.study: {name!r} — this config is for the {name} study; run it with "
                         f"{COMMANDS.get(name, 'its own command')}")
    summary = runner.run(name, config, workdir=workdir, fresh=fresh, log=log, command=command)
    if not report or not multihost.is_primary():
        return summary
    wd = results.Workdir.existing(summary.workdir)
    t0 = time.perf_counter()
    with wd.stage_timer(REPORT_STAGE[name]):
        path, text = build.REPORTS[name](wd, None, bool(config.get("progress", True)))
    seconds = {**summary.seconds, "report": time.perf_counter() - t0}
    return dataclasses.replace(summary, report=path, text=text(), seconds=seconds)


def workdir_of(summary: runner.RunSummary) -> results.Workdir:
    """The workdir a run wrote, opened for reading."""
    return results.Workdir.existing(summary.workdir)
