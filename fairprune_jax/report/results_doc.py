"""The results document (``docs/results.md``): one generated page over stored workdirs.

    fairprune-report --results --workdir=workdirs/mnist --workdir=workdirs/planted_mnist --out=docs/results.md

Per workdir: the command that made it (recorded by the run; for a workdir of an earlier version, a command that
gives its stored config: a packaged config plus the overrides that differ), its incomplete-run banner if any, its
report's summary sections (each report rebuilt from its tables first, so the document says what the reports say)
and its plots (copied next to the document); then the claims table of all of them (`report.claims`). Workdirs are
named by their folder name, never by where they lie on this machine, so the document can be committed.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import tempfile
from typing import Any, Sequence

import pandas as pd

from fairprune_jax import configs
from fairprune_jax.config_fingerprint import config_diff
from fairprune_jax.report import build, runs
from fairprune_jax.report import claims as claims_report
from fairprune_jax.report import claims_prose
from fairprune_jax.report import writer as W
from fairprune_jax.results import atomic_write
from fairprune_jax.studies import schema
from fairprune_jax.studies.layout import COMMANDS_FILE, TOTAL_STAGE

#: The report sections a document quotes, per kind of report (by their headings).
SECTIONS = {"recall": ("## Summary",), "budget": ("## Reading (generated from the numbers below)",),
            "bias": ("## Reading (generated from the numbers)", "## Metrics against sparsity (τ = 0)")}
COMMAND = {"recall": "fairprune-sweep", "bias": "fairprune-bias"}
FIGURES_DIR = "results"
#: The README's generated summary sits between these markers (`update_readme`).
README_MARKERS = ("<!-- results-summary:start -->", "<!-- results-summary:end -->")


def section(text: str, heading: str) -> list[str]:
    """The lines of ``text`` from the line ``heading`` up to the next heading of the same level (exclusive)."""
    lines = text.splitlines()
    if heading not in lines:
        return []
    start = lines.index(heading)
    level = heading.split(" ", 1)[0] + " "
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(level)), len(lines))
    return lines[start:end]


def quote(arg: str) -> str:
    """A shell word for ``arg``: as is when safe, in double quotes when that suffices (overrides such as
    ``--config.models=('mlp_100_30',)`` stay readable), else `shlex.quote`."""
    if re.fullmatch(r"[\w@%+=:,./-]+", arg):
        return arg
    if not re.search(r'["$`\\!]', arg):
        return f'"{arg}"'
    return shlex.quote(arg)


def _value(text: str) -> str:
    """A stored config value (canonical JSON) as a command-line override value."""
    v = json.loads(text)
    if isinstance(v, list):
        v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    return v if isinstance(v, str) else repr(v)


def reconstructed_command(wd: Any, name: str) -> str:
    """A command giving the stored config of ``wd``: the packaged config of its study and dataset with the fewest
    differing fields, plus an override per field that differs (fields that never change results left out)."""
    stored = runs.config_of(wd).to_dict()
    study = stored.get("study", "recall")
    best = None
    for candidate in configs.names():
        cfg = configs.get(candidate).to_dict()
        if cfg.get("study") != study or cfg.get("dataset") != stored.get("dataset"):
            continue
        diffs = config_diff(cfg, stored, schema.IGNORED_FIELDS)
        if best is None or len(diffs) < len(best[1]):
            best = (candidate, diffs)
    if best is None:
        return ""
    overrides = [f"--config.{k}={_value(new)}" for k, _, new in best[1] if new != "<absent>"]
    return " ".join([COMMAND.get(study, "fairprune-sweep"), f"--config={best[0]}",
                     *(quote(o) for o in overrides), f"--workdir=workdirs/{name}"])


_WORKDIR_ARG = re.compile(r"""--workdir(?:=|\s+)(?:'[^']*'|"[^"]*"|\S+)""")


def commands(wd: Any, name: str) -> tuple[list[str], bool]:
    """(command lines, recorded?) of a workdir, its ``--workdir`` written as ``workdirs/<name>`` (a recorded
    command names where the workdir was then, which may be another machine's path or a copy's origin)."""
    recorded = wd.read_json(COMMANDS_FILE)  # verified against its .sha256 when it has one
    if recorded is None:
        return [c for c in [reconstructed_command(wd, name)] if c], False
    lines = [_WORKDIR_ARG.sub(f"--workdir=workdirs/{name}", e["command"]) for e in recorded]
    return list(dict.fromkeys(_relative(c, {pathlib.Path(wd.path): f"workdirs/{name}"}) for c in lines)), True


def compute_lines(wd: Any) -> list[str]:
    """The budget a workdir's numbers cost: wall time per kind of stage (``dense``, ``prune`` ...) summed over every
    recorded attempt in its ``timings.json``, on the machine that ran it (none when nothing was recorded)."""
    per: dict[str, float] = {}
    for stage, seconds in wd.stage_seconds().items():
        kind = stage.split(".")[0]
        per[kind] = per.get(kind, 0.0) + seconds
    whole = per.pop(TOTAL_STAGE, 0.0)  # each run's wall time, stages and all in between
    total = whole or sum(per.values())
    if not total:
        return []
    parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05 * 60)
    return [f"Compute: {total / 60:.1f} min of wall time recorded in its `timings.json` ({parts} min), summed over "
            "every run of the commands above (resumes included).", ""]


def _relative(text: str, names: dict[pathlib.Path, str]) -> str:
    """``text`` with every workdir path replaced by its name (longest paths first)."""
    for path in sorted(names, key=lambda p: -len(str(p))):
        text = text.replace(str(path.resolve()), names[path]).replace(str(path), names[path])
    return text


def _names(workdirs: Sequence[Any]) -> dict[pathlib.Path, str]:
    """Workdir -> a name unique in the document (its folder name, numbered when two share one)."""
    out: dict[pathlib.Path, str] = {}
    for wd in workdirs:
        base, n = pathlib.Path(wd.path).name, 1
        name = base
        while name in out.values():
            n += 1
            name = f"{base}-{n}"
        out[pathlib.Path(wd.path)] = name
    return out


def _kind(wd: Any, report: str) -> str:
    if runs.study_of(wd) == "bias":
        return "bias"
    return "budget" if report.startswith("# Recovery budget") else "recall"


def _demote(lines: list[str]) -> list[str]:
    """Headings one level deeper (a report's ## becomes the document's ###); the report's own image links are
    dropped (the document shows every figure after the sections, copied next to it)."""
    return ["#" + line if line.startswith("#") else line for line in lines if not line.startswith("![")]


def build_document(paths: Sequence[pathlib.Path], out: pathlib.Path
                   ) -> tuple[str, dict[pathlib.Path, bytes], pd.DataFrame | None]:
    """(document text, figures to write: path -> bytes, claims table or None) of the workdirs, their reports
    rebuilt first."""
    runs.check_distinct(paths)
    workdirs = [runs.open_workdir(p) for p in paths]
    names = _names(workdirs)
    shown = out.as_posix() if not out.is_absolute() else out.name  # never a path of this machine
    stamp = " ".join(["fairprune-report --results", *(f"--workdir=workdirs/{names[pathlib.Path(wd.path)]}"
                                                      for wd in workdirs), f"--out={shown}"])
    lines = ["# Results", "",
             f"Generated by `{stamp}` from the stored workdirs below (every section is quoted from their reports, "
             "each rebuilt from its tables first); do not edit it by hand, rebuild it.", ""]
    figures: dict[pathlib.Path, bytes] = {}
    for wd in workdirs:
        name = names[pathlib.Path(wd.path)]
        build.report(wd, progress=False)
        report = (pathlib.Path(wd.path) / W.REPORT).read_text(encoding="utf-8")
        title = report.splitlines()[0].lstrip("# ").strip()
        made, recorded = commands(wd, name)
        lines += [f"## {name}: {title}", ""]
        if made:
            lines += [("Made by:" if recorded else "Made by an earlier version, which did not record its command; "
                       "this command gives its config:"), "", "```", *made, "```", ""]
        lines += compute_lines(wd)
        missing = runs.missing_units(wd)
        if missing:
            lines += [f"> **Incomplete run: {len(missing)} units missing** ({', '.join(missing)}).", ""]
        for heading in SECTIONS[_kind(wd, report)]:
            lines += _demote(section(report, heading)) + [""]
        for image in re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", report):
            src = pathlib.Path(wd.path) / image
            if src.is_file():
                rel = pathlib.PurePosixPath(FIGURES_DIR, name, pathlib.Path(image).name)
                figures[out.parent / rel] = src.read_bytes()
                lines += [f"![{name}: {pathlib.Path(image).stem}]({rel})", ""]
    lines += ["## Claims of the two reference studies", ""]
    table = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            claims_report.write([pathlib.Path(wd.path) for wd in workdirs], pathlib.Path(tmp))
            claims = (pathlib.Path(tmp) / "claims.md").read_text(encoding="utf-8").splitlines()[1:]
            table = pd.read_csv(pathlib.Path(tmp) / W.TABLES_DIR / "claims.csv")
            mapping = {p: f"workdirs/{n}" for p, n in names.items()}
            lines += _demote([_relative(line, mapping) for line in claims])
        except ValueError as e:
            lines += [f"No claim could be tested on these workdirs ({e})."]
    return "\n".join(lines).rstrip("\n") + "\n", figures, table


def readme_summary(table: pd.DataFrame, document: str) -> list[str]:
    """The README's results summary: the claims table's verdict counts and per-claim verdicts
    (`claims_prose.summary_lines`), with the document they come from."""
    return [f"From the claims table of [{document}]({document}):", "",
            *[f"- {line}" for line in claims_prose.summary_lines(table)]]


def update_readme(readme: pathlib.Path, lines: Sequence[str]) -> None:
    """Replace what lies between the README's results-summary markers with ``lines`` (ValueError when the markers
    are missing or out of order)."""
    text = readme.read_text(encoding="utf-8")
    start, end = (text.find(m) for m in README_MARKERS)
    if not 0 <= start < end:
        raise ValueError(f"--readme: {readme} has no {README_MARKERS[0]} ... {README_MARKERS[1]} block")
    head, tail = text[:start + len(README_MARKERS[0])], text[end:]
    atomic_write(readme, (head + "\n" + "\n".join(lines) + "\n" + tail).encode("utf-8"))


def write(paths: Sequence[pathlib.Path], out: pathlib.Path, readme: pathlib.Path | None = None) -> str:
    """Write the document to ``out`` and its figures next to it, and with ``readme`` the README's generated
    summary; returns a one-line summary."""
    if readme is not None and not readme.is_file():
        raise ValueError(f"--readme: {readme} does not exist")
    text, figures, table = build_document(paths, out)
    for path, data in figures.items():
        atomic_write(path, data)
    atomic_write(out, text.encode("utf-8"))
    if readme is not None:
        if table is None:
            raise ValueError("--readme: no claim could be tested on these workdirs; the README is left as it is")
        rel = os.path.relpath(out.resolve(), readme.resolve().parent)
        update_readme(readme, readme_summary(table, pathlib.PurePath(rel).as_posix()))
    return f"results: {out} ({len(paths)} workdirs, {len(figures)} figures)" + (
        f"; summary in {readme}" if readme is not None else "")
