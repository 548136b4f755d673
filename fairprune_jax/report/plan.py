"""Seed plans and the sequential mode (docs/methods.md §14).

`plan_markdown` (``experiments.report --plan --workdir=...``): per workdir, its undecided claims with the seeds each
needs at 80% power and the exact command that extends the workdir to that many seeds (raising
``--config.num_seeds`` on an existing workdir trains only the new seeds).

`run_sequential` (``experiments.report --sequential --workdir=... --out=... --seed_chunk=5 --max_seeds=30``): add
seeds in looks until every claim of the workdirs decides or the cap is reached, with the group-sequential
boundaries of `analysis.sequential`. The design (first look, chunk, cap, workdirs) is fixed in `sequential.json`
at the first call and refused if changed; every call replays all looks from the stored tables, so the mode resumes
after any interruption and its decisions can be checked from the tables alone.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from fairprune_jax import configs, results
from fairprune_jax.analysis import claims as C
from fairprune_jax.analysis import decisions as D
from fairprune_jax.analysis import sequential as S
from fairprune_jax.report import claims as R
from fairprune_jax.config_fingerprint import config_diff
from fairprune_jax.report import claims_prose as P
from fairprune_jax.report import runs
from fairprune_jax.report import writer as W

DESIGN_FILE = "sequential.json"


# ---------------------------------------------------------------------------------------------- commands

def _cli_value(text: str) -> str:
    """A canonical JSON value as a ``--config.x=`` value (lists as tuple literals)."""
    v = json.loads(text)
    if isinstance(v, list):
        return repr(tuple(v))
    if isinstance(v, bool):
        return str(v)
    return str(v)


def _quote(text: str) -> str:
    """A shell word: as is when safe, in double quotes when that suffices (tuples: ``"('a',)"``), else shlex."""
    if re.fullmatch(r"[A-Za-z0-9_./:=,+-]+", text):
        return text
    if not any(ch in text for ch in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def config_name(cfg: Any) -> tuple[str, str]:
    """(packaged config file name, variant) a stored run was made with: an experiment that earlier versions named
    as a variant (``mnist`` + ``wd``) is its own file now (``mnist_wd``)."""
    variant = str(cfg.get("variant", "") or "")
    name = str(cfg.dataset)
    moved = configs.MOVED.get(name, {}).get(variant)
    return (moved, "") if moved else (name, variant)


def config_file(cfg: Any) -> str:
    """The config file (and variant) a stored run was made with, as ``--config=`` takes it."""
    name, variant = config_name(cfg)
    return f"configs/{name}.py" + (f":{variant}" if variant else "")


def rerun_command(path: str | Path, num_seeds: int) -> str:
    """The command that extends the workdir at `path` to `num_seeds` seeds: its study's entry point, its config
    file and variant, an override for every stored field that differs from that file's defaults, and
    ``--config.num_seeds``."""
    wd = results.Workdir.existing(path)
    cfg = runs.config_of(wd)
    doc = wd.read_json(results.CONFIG_FILE)
    study = "bias" if cfg.get("study", "recall") == "bias" else "sweep"
    spec = config_file(cfg)
    overrides: list[str] = []
    try:
        base = configs.get(*config_name(cfg))
        # fields that never change the stored numbers are left out, except the analysis (it changes the report)
        ignore = tuple(f for f in doc.get("ignore", ()) if f != "analysis") + ("num_seeds", "variant", "workdir")
        for field, _, new in config_diff(base, cfg.to_dict(), ignore=ignore):
            overrides.append(_quote(f"--config.{field}={_cli_value(new)}"))
    except (OSError, ImportError, AttributeError, ValueError, KeyError):
        overrides.append("<the --config.* overrides this workdir was made with>")
    return " ".join(["python", "-m", f"experiments.{study}", f"--config={spec}", _quote(f"--workdir={path}"),
                     *overrides, f"--config.num_seeds={int(num_seeds)}"])


def plan_markdown(table: pd.DataFrame, workdirs: Sequence[str | Path], *, max_seeds: int = 100,
                  command: Callable[[str, int], str] = lambda p, n: rerun_command(p, n)) -> str:
    """Per workdir: its rows (verdict, seeds needed), the seed counts that decide them, and the commands."""
    lines = ["# Seed plan", "", "Seeds each undecided claim needs to decide its observed effect at 80% power, from the "
             "observed per-seed spread, at the level Holm would give it next (docs/methods.md §14). A plan rests on "
             "estimates; `--sequential` adds seeds in looks with error control instead.", ""]
    for wd in map(str, workdirs):
        rows = table[table["workdirs"].str.split(" | ", regex=False).apply(lambda ws: any(_of(w, wd) for w in ws))]
        if rows.empty:
            continue
        seeds_now = int(rows["seeds"].max())
        lines += [f"## `{wd}`", "", W.markdown_table(pd.DataFrame({
            "claim": rows["statement"], "null": rows["null"], "verdict": rows["verdict"].map(P.MARK),
            "seeds now": rows["seeds"], "seeds needed": [_need(x) for x in rows["seeds_needed"]],
            "by": rows["route"].replace("", "—")})), ""]
        need = rows.loc[rows["verdict"] == D.UNDECIDED, "seeds_needed"].astype(float)
        feasible = sorted({int(n) for n in need if np.isfinite(n) and n <= max_seeds})
        beyond = int(((~np.isfinite(need)) | (need > max_seeds)).sum())
        if not len(need):
            lines += ["Every claim of this workdir decides already.", ""]
            continue
        for n in feasible:
            k = int((need <= n).sum())
            lines += [f"- {n} seeds would decide {k} of the {len(need)} undecided rows:", "",
                      f"      {command(wd, max(n, seeds_now))}", ""]
        if beyond:
            lines += [f"- {beyond} undecided row(s) would need more than {max_seeds} seeds (or cannot be planned).",
                      ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _of(name: str, workdir: str) -> bool:
    """Whether a claims row's run name is the workdir or one model of it (``<workdir> [<model>]``)."""
    return name == workdir or name.startswith(f"{workdir} [")


def _need(x: float) -> str:
    return "—" if not np.isfinite(x) and np.isnan(x) else ("∞" if not np.isfinite(x) else str(int(x)))


def write_plan(workdirs: Sequence[Path], out: Path | None, *, max_seeds: int = 100) -> str:
    """The plan of the workdirs: printed, and with `out` written to `plan.md` and `tables/plan.csv`."""
    recall_runs, bias_runs = R.load(workdirs)
    table = C.build(recall_runs, bias_runs)
    text = plan_markdown(table, workdirs, max_seeds=max_seeds)
    if out is not None:
        W.atomic_write(out / "plan.md", text.encode())
        W.atomic_write(out / W.TABLES_DIR / "plan.csv", table.to_csv(index=False).encode())
    return text


# ---------------------------------------------------------------------------------------------- sequential

def _row_key(r: Any) -> str:
    """A row's identity across looks: claim, workdirs and setting without its seed count."""
    return f"{r.claim} | {r.workdirs} | {re.sub(r'[0-9]+ seeds', 'N seeds', r.setting)}"


def looks_table(recall_runs: Sequence[C.RecallRun], bias_runs: Sequence, design: S.Design) -> pd.DataFrame:
    """Every row's statistics at every look the stored seeds reach (the runs restricted to their first n_k seeds):
    key, paper, look, seeds, t, t_low, t_high. The AUROC row (pooled over seeds) takes no part."""
    have = min([len(r.seeds) for r in recall_runs] + [m["seed"].nunique() for _, m, _ in bias_runs])
    frames = []
    for k, n in enumerate(design.looks):
        if n > have:
            break
        rr = [r.first(n) for r in recall_runs]
        br = [(d, m[m["seed"].isin(sorted(m["seed"].unique())[:n])], i.iloc[:0]) for d, m, i in bias_runs]
        rows: list[dict] = []
        for run in rr:
            rows += C.regime_rows(run) + C.criterion_rows(run)
        rows += C.dataset_rows(rr) + C.model_rows(rr)
        for d, m, i in br:
            rows += C.bias_rows(d, m, i)
        for r in rows:
            t = r["_test"]
            frames.append(dict(key=_row_key(pd.Series(r)), paper=r["paper"], look=k, seeds=n, t=t.t, t_low=t.t_low,
                               t_high=t.t_high, cells=max(len(t.cells), 1)))
    return pd.DataFrame(frames)


def replay(looks: pd.DataFrame, design: S.Design) -> pd.DataFrame:
    """The sequential decisions per row (one family per paper): key, paper, decision, look, seeds."""
    out = []
    for paper, g in looks.groupby("paper", sort=False):
        hyps = []
        for key, h in g.groupby("key", sort=False):
            h = h.sort_values("look")
            hyps.append(S.Hypothesis(key, h["t"].tolist(), h["t_low"].tolist(), h["t_high"].tolist(),
                                     int(h["cells"].max())))
        for key, (decision, k) in S.decide(design, hyps).items():
            out.append(dict(key=key, paper=paper, decision=decision, look=k,
                            seeds=design.looks[k] if k >= 0 else np.nan))
    return pd.DataFrame(out)


def _subprocess(cmd: str) -> None:
    """Run a planned command with this interpreter (its output shows the sweep's progress)."""
    print(f"sequential: {cmd}", file=sys.stderr, flush=True)
    args = shlex.split(cmd)
    if args and args[0] == "python":
        args[0] = sys.executable
    done = subprocess.run(args)
    if done.returncode:
        raise ValueError(f"sequential: the command exited {done.returncode}: {cmd}")


def run_sequential(workdirs: Sequence[Path], out: Path, *, chunk: int, cap: int, alpha: float = D.ALPHA,
                   runner: Callable[[str], None] = _subprocess,
                   command: Callable[[str, int], str] = lambda p, n: rerun_command(p, n)) -> str:
    """Add seeds in looks until every row decides or `cap` seeds are reached (module docstring)."""
    recall_runs, bias_runs = R.load(workdirs)
    first = min([len(r.seeds) for r in recall_runs] + [m["seed"].nunique() for _, m, _ in bias_runs])
    want = dict(first=first, chunk=int(chunk), cap=int(cap), alpha=float(alpha),
                workdirs=[os.path.realpath(p) for p in workdirs])
    state = out / DESIGN_FILE
    if state.exists():
        have = json.loads(state.read_text())
        if {k: have.get(k) for k in want if k != "first"} != {k: v for k, v in want.items() if k != "first"}:
            raise ValueError(f"{state}: holds another sequential design ({have}); use another --out or the same "
                             "--seed_chunk, --max_seeds and workdirs")
        want["first"] = int(have["first"])
    else:
        W.atomic_write(state, (json.dumps(want, indent=2) + "\n").encode())
    design = S.Design(want["first"], want["chunk"], want["cap"], want["alpha"])
    while True:
        looks = looks_table(recall_runs, bias_runs, design)
        decisions = replay(looks, design)
        done_look = int(looks["look"].max()) if len(looks) else -1
        open_rows = decisions[decisions["decision"] == "open"]
        if open_rows.empty or done_look == len(design.looks) - 1:
            break
        n_next = design.looks[done_look + 1]
        for wd in workdirs:
            runner(command(str(wd), n_next))
        recall_runs, bias_runs = R.load(workdirs)
        if min([len(r.seeds) for r in recall_runs] + [m["seed"].nunique() for _, m, _ in bias_runs]) < n_next:
            raise ValueError(f"sequential: the workdirs did not reach {n_next} seeds after extending them")
    text = sequential_markdown(looks, decisions, design, workdirs)
    W.atomic_write(out / "sequential.md", text.encode())
    W.atomic_write(out / W.TABLES_DIR / "sequential_looks.csv", looks.to_csv(index=False).encode())
    W.atomic_write(out / W.TABLES_DIR / "sequential.csv", decisions.to_csv(index=False).encode())
    counts = decisions["decision"].value_counts().to_dict()
    return f"sequential: {out / 'sequential.md'} (looks at {list(design.looks)}; decisions {counts})"


def sequential_markdown(looks: pd.DataFrame, decisions: pd.DataFrame, design: S.Design,
                        workdirs: Sequence[str | Path]) -> str:
    """The sequential report: design, boundaries, and each row's decision with the look it was taken at."""
    fam = decisions.groupby("paper").size().to_dict()
    bounds = pd.DataFrame({"look": range(1, len(design.looks) + 1), "seeds": design.looks,
                           "information": [f"{t:.3f}" for t in design.fractions]})
    for paper, m in fam.items():
        bounds[f"|t| bound, paper {paper} (α/{m})"] = design.t_bounds(design.alpha / m)
    lines = ["# Sequential seeds", "", f"Workdirs: {', '.join(f'`{w}`' for w in workdirs)}. Looks at "
             f"{', '.join(map(str, design.looks))} seeds (chunk {design.chunk}, cap {design.cap}); Lan–DeMets "
             f"O'Brien–Fleming spending at α = {design.alpha:g} per paper, Holm within a paper (a rejection frees "
             "its share at the same look), equivalence by two one-sided tests at the same boundaries.", "",
             W.markdown_table(bounds), "", "Boundaries shown are those at the first step of Holm (every claim open).",
             "", W.markdown_table(decisions.assign(seeds=decisions["seeds"].map(
                 lambda x: "—" if not np.isfinite(x) else str(int(x))))), ""]
    return "\n".join(lines)
