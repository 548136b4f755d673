"""Each study's report builder, by study name: what `fairprune_jax.pipeline` runs after a study, what
``fairprune-report`` rebuilds, and what the results document assembles."""
from __future__ import annotations

import os
import pathlib
from typing import Callable

from fairprune_jax import results
from fairprune_jax.report import bias as bias_report
from fairprune_jax.report import recall as recall_report
from fairprune_jax.report import runs

Summary = Callable[[], str]


def _recall(wd: results.Workdir, out: pathlib.Path | None, progress: bool | None) -> tuple[pathlib.Path, Summary]:
    text = recall_report.build_report(wd, out=out, progress=progress)
    return (out or wd.path) / "report.md", lambda: text


def _bias(wd: results.Workdir, out: pathlib.Path | None, progress: bool | None) -> tuple[pathlib.Path, Summary]:
    if out:
        raise ValueError("--out: a bias-study report is written into its workdir; drop --out")
    path = bias_report.write_report(wd)
    return path, lambda: bias_report.terminal_summary(wd) + f"\nreport: {path}"


#: Study name -> its report builder ``(workdir, out, progress) -> (report path, terminal summary)``; the summary
#: is a callable, read once the report's own timing is recorded.
REPORTS: dict[str, Callable[..., tuple[pathlib.Path, Summary]]] = {"recall": _recall, "bias": _bias}


def report(workdir: str | os.PathLike | results.Workdir, *, out: str | os.PathLike | None = None,
           progress: bool | None = None) -> tuple[pathlib.Path, str]:
    """(Re)build the report of a stored workdir from its tables; returns (report path, terminal summary)."""
    wd = runs.open_workdir(workdir)
    path, summary = REPORTS[runs.study_of(wd)](wd, pathlib.Path(out) if out else None, progress)
    return path, summary()
