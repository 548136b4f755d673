"""One runner for every study: a study declares its validator, how it prepares (loads data), and its units; the
runner owns the run.

A unit is ``(key, compute, commit)`` plus ``done`` (whether its results are already committed) and a ``stage``
(for the counts of what was computed and skipped). The runner validates the config, claims the workdir
(`spine.claim`: lock, fingerprint guard; the study's ``prepare`` runs under the lock before anything is written),
then pulls the study's units one at a time from ``units(context)``, skipping the committed ones, so a killed run
resumes where it stopped. Every unit sees one `Context`; every run returns one `RunSummary`; every line a run
prints goes through ``context.log`` (stderr by default; only process 0 of a multi-process run speaks). Reports are
built by the caller (`fairprune_jax.pipeline`, the entry points), never by a study.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import sys
import time
from typing import Any, Callable, Iterable

import ml_collections

from fairprune_jax import multihost, results
from fairprune_jax.studies import schema, spine
from fairprune_jax.studies.layout import COMMANDS_FILE, TOTAL_STAGE, Registry


@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of work: skipped when ``done()``; else ``commit(compute())``, whose atomic writes mark it done."""

    key: str
    stage: str
    done: Callable[[], bool]
    compute: Callable[[], Any]
    commit: Callable[[Any], None] = lambda result: None


@dataclasses.dataclass(frozen=True)
class Context:
    """What every unit of a run reads. ``spec``, ``keys``, ``seeds`` and ``block`` are set per model / seed block
    (`dataclasses.replace`); ``memo`` is one dict shared by those copies (e.g. a restored dense population)."""

    config: Any
    workdir: results.Workdir
    data: Any
    log: Callable[[str], None]
    progress: spine.Progress
    spec: Any = None
    keys: Any = None
    seeds: tuple[int, ...] = ()
    block: Any = None
    memo: dict = dataclasses.field(default_factory=dict)

    @property
    def checkpoints(self) -> pathlib.Path:
        """The one checkpoint folder of a workdir: ``<workdir>/checkpoints``."""
        return self.workdir.path / "checkpoints"

    @property
    def mesh(self) -> Any:
        return spine.mesh_of(self.config)

    def remember(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per run for ``name`` (kept in ``memo``)."""
        if name not in self.memo:
            self.memo[name] = make()
        return self.memo[name]


@dataclasses.dataclass(frozen=True)
class Study:
    """A study as the runner sees it.

    ``validate(config)``: raise ValueError ``config.<field>: ...`` for any bad value (before anything is written);
    ``prepare(config, path)``: load the data and check what depends on it, under the workdir's lock, before the
    workdir is opened; ``start(context)``: record what the run holds (meta files) and say what runs;
    ``units(context)``: the units, in order; ``tables``: the result tables it writes; ``growable``: config fields
    a workdir may raise without a new workdir (recorded in config.json, not fingerprinted)."""

    name: str
    validate: Callable[[Any], None]
    prepare: Callable[[Any, pathlib.Path], Any]
    units: Callable[[Context], Iterable[Unit]]
    start: Callable[[Context], None] = lambda context: None
    tables: tuple[str, ...] = ()
    growable: tuple[str, ...] = ()

    @property
    def ignore(self) -> tuple[str, ...]:
        """Config fields left out of the workdir's fingerprint."""
        return schema.IGNORED_FIELDS + self.growable


STUDIES: Registry[Study] = Registry("study")


def register(study: Study) -> Study:
    """Add a study (``config.study`` names it)."""
    return STUDIES.add(study.name, study)


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What one run did: units computed and skipped and wall seconds, per stage; the report (when the caller built
    one) and its terminal summary."""

    workdir: pathlib.Path
    study: str
    computed: dict[str, int]
    skipped: dict[str, int]
    seconds: dict[str, float]
    report: pathlib.Path | None = None
    text: str = ""

    def line(self) -> str:
        """One line: what this run computed and skipped, and its seconds per stage."""
        fmt = lambda d: ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "nothing"  # noqa: E731
        return (f"this run: computed {fmt(self.computed)}; skipped {fmt(self.skipped)}; seconds "
                + (", ".join(f"{k}={v:.1f}" for k, v in self.seconds.items()) or "none"))


def stderr_log(text: str) -> None:
    """The run's one output channel: a line on stderr (stdout is left to results)."""
    print(text, file=sys.stderr, flush=True)


def normalize(config: Any) -> ml_collections.ConfigDict:
    """The config in today's names (`schema.upgrade`, warning once about earlier names) as a ConfigDict."""
    config = schema.upgrade(config)
    return config if isinstance(config, ml_collections.ConfigDict) else ml_collections.ConfigDict(config)


def record_command(wd: results.Workdir, command: str) -> None:
    """Append the command line of this run to ``commands.json`` (what `report.results` stamps documents with)."""
    if not command or not multihost.is_primary():
        return
    done = wd.read_json(COMMANDS_FILE, default=[])
    entry = {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    wd.write_json(COMMANDS_FILE, [*done, entry])


def run(study: Study | str, config: Any, *, workdir: str | os.PathLike | None = None, fresh: bool = False,
        log: Callable[[str], None] | None = None, command: str = "") -> RunSummary:
    """Run (or resume) ``study`` on ``config`` into ``workdir`` (default: ``config.workdir`` or
    ``workdirs/<dataset>[-<variant>]``). Idempotent: committed units are skipped. ``command``: the command line,
    recorded in the workdir."""
    study = STUDIES[study] if isinstance(study, str) else study
    config = normalize(config)
    study.validate(config)
    multihost.initialize(config.get("distributed", None))  # several processes (pods, launch.py); off by default
    log = log or stderr_log
    if not multihost.is_primary():
        log = lambda text: None  # noqa: E731 - process 0 speaks for the run
    path = pathlib.Path(workdir).expanduser() if workdir else spine.default_workdir(config)
    computed: collections.Counter = collections.Counter()
    skipped: collections.Counter = collections.Counter()
    seconds: collections.Counter = collections.Counter()
    t_start = time.perf_counter()
    with spine.claim(path, config, fresh=fresh, ignore=study.ignore, log=log,
                     prepare=lambda: study.prepare(config, path.expanduser().absolute())) as (wd, data):
        wd.record_timing("data", time.perf_counter() - t_start)
        record_command(wd, command)
        progress = spine.Progress(bool(config.get("progress", True)) and multihost.is_primary())
        ctx = Context(config, wd, data, log, progress)
        study.start(ctx)
        for unit in study.units(ctx):
            if unit.done():
                skipped[unit.stage] += 1
                continue
            t0 = time.perf_counter()
            unit.commit(unit.compute())
            computed[unit.stage] += 1
            seconds[unit.stage] += time.perf_counter() - t0
        wd.mark_done("run")
        wd.record_timing(TOTAL_STAGE, time.perf_counter() - t_start)
    summary = RunSummary(wd.path, study.name, dict(computed), dict(skipped), dict(seconds))
    log(summary.line())
    return summary
