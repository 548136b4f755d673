"""Reading stored runs for the reports: a workdir's config in today's names, its typed description
(`analysis.run.RunDescription`), its missing units, and the checks every multi-workdir command shares."""
from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import ml_collections

from fairprune_jax.analysis.run import AnalysisSettings, RunDescription, Training
from fairprune_jax.results import Workdir
from fairprune_jax.studies import bias_layout, recall_layout, schema


def open_workdir(path: str | os.PathLike | Workdir) -> Workdir:
    """A stored workdir (ValueError naming the path when it is none)."""
    if isinstance(path, Workdir):
        return path
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"workdir {p} does not exist")
    return Workdir.existing(p)


def config_of(wd: Any) -> ml_collections.ConfigDict:
    """The stored config in today's names (`schema.upgrade`: workdirs of earlier versions read as well)."""
    return schema.upgrade(wd.config, warn=False)


def study_of(wd: Any) -> str:
    return str(wd.config.get("study", "recall"))


def seed_blocks(wd: Any, config: Any) -> list[recall_layout.SeedBlock]:
    """The seed blocks a recall workdir holds (one block for workdirs of earlier versions)."""
    recorded = wd.read_json(recall_layout.SEED_BLOCKS_FILE)  # verified against its .sha256
    return recall_layout.seed_blocks(recorded, int(config.num_seeds))


def expected_units(wd: Any, config: Any) -> tuple[str, list[str]]:
    """(table, keys) of the units a finished run holds: the recall table's parts, or the bias metrics' parts."""
    if study_of(wd) == "bias":
        return "metrics", bias_layout.expected_units(config)
    return recall_layout.RECALL, recall_layout.expected_units(config, seed_blocks(wd, config))


def missing_units(wd: Any, config: Any | None = None) -> list[str]:
    """The units of ``wd`` not committed yet, in run order."""
    config = config if config is not None else config_of(wd)
    table, keys = expected_units(wd, config)
    done = set(wd.keys(table))
    return [k for k in keys if k not in done]


def _training(section: Any) -> Training:
    opt = section.optimizer
    return Training(int(section.epochs), int(section.batch_size), str(opt.name), float(opt.lr),
                    float(opt.get("momentum", 0.0)), float(opt.get("weight_decay", 0.0)))


def describe(wd: Any, config: Any | None = None) -> RunDescription:
    """The typed description of a stored run: from its config, its ``criteria`` table (labels, controls; workdirs
    of earlier versions: capitals, and random as the one control) and its committed units."""
    config = config if config is not None else config_of(wd)
    criteria = tuple(config.prune.criteria)
    labels = {c: c.upper() for c in criteria}
    controls = tuple(c for c in criteria if c == "random")
    if study_of(wd) == "recall" and wd.has(recall_layout.CRITERIA, recall_layout.CRITERIA_KEY):
        table = wd.read_table(recall_layout.CRITERIA)
        labels = dict(zip(table["criterion"], table["label"]))
        controls = tuple(table.loc[table["control"].astype(bool), "criterion"])
    p = config.prune
    a = config.get("analysis", None)
    analysis = AnalysisSettings(float(a.chance_factor), int(a.bootstrap), float(a.level),
                                float(a.welch_q)) if a is not None else AnalysisSettings()
    seeds = tuple(int(config.seed) + i for i in range(int(config.num_seeds)))
    return RunDescription(
        name=str(wd.path), study=study_of(wd), dataset=str(config.dataset), models=tuple(config.models),
        criteria=criteria, labels=labels, controls=controls, protocol=str(p.protocol),
        sparsities=tuple(float(s) for s in p.get("sparsities", ())), levels=int(p.get("levels", 0) or 0),
        seeds=seeds, exclude_output=bool(config.exclude_output), train=_training(config.train),
        finetune=_training(config.finetune), analysis=analysis,
        missing_units=tuple(missing_units(wd, config)), variant=str(config.get("variant", "")))


def check_distinct(paths: Sequence[Any]) -> None:
    """Refuse a workdir given twice (every multi-workdir command)."""
    seen: set[pathlib.Path] = set()
    for p in paths:
        path = pathlib.Path(getattr(p, "path", p)).expanduser().resolve()
        if path in seen:
            raise ValueError(f"--workdir: {getattr(p, 'path', p)} is given twice")
        seen.add(path)


def incomplete_lines(workdirs: Sequence[Any]) -> list[str]:
    """The banner of a report built on several workdirs: one line per workdir with missing units."""
    out = []
    for wd in workdirs:
        if not hasattr(wd, "keys"):  # a stand-in holding tables only (tests), not a workdir
            continue
        missing = missing_units(wd)
        if missing:
            out.append(f"> **Incomplete run: `{wd.path}` misses {len(missing)} units** ({', '.join(missing)}); "
                       "rerun its command to finish it, then rebuild this report.")
    return out + [""] if out else []
