"""The recall-distortion report: statistics of stored results → `report.md` + PNG plots.

Everything here reads only the tidy recall table, so a report can be rebuilt at any time
(`python -m experiments.report --workdir=...`), and several workdirs (e.g. MNIST and Fashion-MNIST) can be pooled
so the pooled regression can answer RQ2 (task difficulty) as well.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
from scipy import stats as sps
from tqdm.auto import tqdm

from fairprune_jax.analysis import budget as budget_lib
from fairprune_jax.analysis import plots as P
from fairprune_jax.analysis.recall_tiers import ANALYSIS_STEPS, Analysis, analyze
from fairprune_jax.report import budget as budget_report
from fairprune_jax.report import runs
from fairprune_jax.report import writer as W
from fairprune_jax.studies import recall_layout
from fairprune_jax.studies.layout import TOTAL_STAGE

RECALL_TABLE = recall_layout.RECALL


_pct = W.pct


def reading(an: Analysis) -> list[str]:
    """Plain-language findings generated from the numbers (no claim is written by hand)."""
    out = []
    a = an.tier_a[an.tier_a["subset"] == "all"] if "subset" in an.tier_a else an.tier_a
    for (ds, model, crit), g in a.groupby(["dataset", "model", "criterion"]):
        g = g.sort_values("t_mean")
        parts = [f"{_pct(r.t_mean)}: {r.mean:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}] → {r.verdict}"
                 for r in g.itertuples()]
        trend = ""
        if len(g) >= 3 and g["mean"].notna().sum() >= 3:
            rho, p = sps.spearmanr(g["t_mean"], g["mean"], nan_policy="omit")
            trend = f" Spearman ρ(t, E[α_t]) = {rho:.2f} (p = {p:.3f})."
        out.append(f"- **{ds} / {model} / {crit}**: E[α_t] by sparsity: " + "; ".join(parts) + "." + trend)
    tab = an.pooled.table
    for rq, moderator in (("RQ1", "level"), ("RQ2", "dataset"), ("RQ3", "model"), ("RQ4", "criterion")):
        rows = tab[tab["moderator"] == moderator]
        if rows.empty:
            reason = "only one value in these results" if moderator in an.pooled.dropped_moderators or \
                an.long[moderator].nunique() < 2 else "not estimated"
            out.append(f"- **{rq}** (`d0:C({moderator})`): {reason}.")
            continue
        bits = []
        sparsity_of = (an.long.groupby("level")["requested_sparsity"].first().to_dict() if moderator == "level"
                       else {})
        for r in rows.itertuples():
            level_name = r.term.split("[T.")[-1].rstrip("]") if "[T." in r.term else r.term
            if moderator == "level" and level_name.lstrip("-").isdigit() and int(level_name) in sparsity_of:
                level_name = f"{level_name} ({_pct(sparsity_of[int(level_name)])})"
            sign = ("more intensification" if r.ci_low > 0 else "less intensification" if r.ci_high < 0
                    else "no clear difference")
            bits.append(f"{level_name}: {r.coef:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] ({sign})")
        levels = sorted(an.long[moderator].unique(), key=str)
        named = {r.term.split("[T.")[-1].rstrip("]") for r in rows.itertuples() if "[T." in r.term}
        ref = [str(v) for v in levels if str(v) not in named]
        if moderator == "level" and len(ref) == 1 and ref[0].lstrip("-").isdigit():
            ref = [f"{ref[0]} ({_pct(sparsity_of.get(int(ref[0]), float('nan')))})"]
        ref_s = f" vs reference {ref[0]}" if len(ref) == 1 else ""
        out.append(f"- **{rq}** (`d0:C({moderator})`{ref_s}): " + "; ".join(bits) + ".")
    w = an.welch
    if not w.empty:
        sig = w[w["reject_bh"].fillna(False).astype(bool)]
        lost = sig[sig["t_stat"] > 0]
        out.append(f"- **Per-class Welch tests** (BH q=.05): {len(sig)} of {len(w)} class × cell tests reject; "
                   f"{len(lost)} of them are classes losing relative recall (t > 0).")
    return out


# ------------------------------------------------------------------------------------------------ render

def criterion_labels(an: Analysis, labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Criterion -> column label of the summary grids, in column order: ``labels`` (the runs' criteria in config
    order, as they name them), then any other criterion of the table in capitals."""
    seen = list(dict.fromkeys(c for c in an.recall["criterion"].str.strip().str.lower() if c != "dense"))
    out = {c: lab for c, lab in (labels or {}).items() if c in seen}
    out.update({c: c.upper() for c in sorted(set(seen) - set(out))})
    return out


def summary_tables(an: Analysis, labels: Mapping[str, str] | None = None) -> list[str]:
    """Per (dataset, model): E[α_t] [95% CI] with a verdict mark and mean accuracy, sparsity × criterion (the
    compact tables the README quotes); columns in the order and with the names of ``labels``."""
    a = an.tier_a[an.tier_a["subset"] == "all"] if "subset" in an.tier_a else an.tier_a
    acc = an.accuracy
    names = criterion_labels(an, labels)
    crits = list(names.values())
    lines = []
    for (ds, model), g in a.groupby(["dataset", "model"], sort=False):
        g = g.assign(sparsity=g["requested_sparsity"].map(_pct), crit=g["criterion"].map(names),
                     cell=[W.alpha_cell(r) for r in g.itertuples()])
        order = g.sort_values("requested_sparsity")["sparsity"].unique()
        alpha = W.grid(g, "sparsity", "crit", "cell", index_order=order,
                       column_order=[c for c in crits if c in set(g["crit"])])
        n = int(g["n_seeds"].max())
        lines += [f"### {ds} / {model}: E[α_t] (mean over {n} seeds, 95% t-interval; ▲ intensification, "
                  "▼ de-intensification, · inconclusive)", "", _md(alpha), ""]
        ag = acc[(acc["dataset"] == ds) & (acc["model"] == model)]
        dense = ag[ag["criterion"] == "dense"]["accuracy"]
        ag = ag[ag["criterion"] != "dense"].assign(sparsity=lambda d: d["requested"].map(_pct),
                                                    crit=lambda d: d["criterion"].map(names),
                                                    acc=lambda d: d["accuracy"].map(lambda x: f"{x:.4f}"))
        accuracy = W.grid(ag, "sparsity", "crit", "acc", index_order=order,
                          column_order=[c for c in crits if c in set(ag["crit"])])
        dense_s = f"; dense {dense.iloc[0]:.4f}" if len(dense) else ""
        lines += [f"Test accuracy (mean over seeds{dense_s}):", "", _md(accuracy), ""]
    return lines


_md = W.markdown_table


def plots(an: Analysis) -> dict[str, Any]:
    """The report's figures: file name -> a callable returning the matplotlib figure."""
    return {"alpha.png": lambda: P.plot_alpha(an.tier_a, title="E[α_t] (Tier A, 95% CI)"),
            "accuracy.png": lambda: P.plot_accuracy(an.recall, title="Test accuracy"),
            "class_deviation.png": lambda: P.plot_class_deviation(
                an.long, title="Per-class recall − accuracy, dense vs most-pruned")}


def render(an: Analysis, *, title: str, header: Sequence[str], images: Sequence[str], timings: pd.DataFrame | None,
           image_prefix: str = "", labels: Mapping[str, str] | None = None) -> str:
    """The report as markdown."""
    a = an.tier_a
    cols_a = ["dataset", "model", "criterion", "level", "requested_sparsity", "t_mean", "n_seeds", "mean", "ci_low",
              "ci_high", "p", "p_holm", "verdict", "reason"]
    all_a = a[a["subset"] == "all"][cols_a] if "subset" in a else a[cols_a]
    clean_a = a[a["subset"] != "all"][cols_a] if "subset" in a else pd.DataFrame()
    cols_b = ["dataset", "model", "criterion", "level", "alpha", "ci_low", "ci_high", "p", "tau2", "method",
              "verdict", "reason"]
    b = an.tier_b[[c for c in cols_b if c in an.tier_b]]
    acc = an.accuracy[["dataset", "model", "criterion", "level", "requested", "t", "n_seeds", "accuracy", "ci_low",
                       "ci_high"]]
    dropped = int(an.alpha["dropped"].sum()) if "dropped" in an.alpha else 0
    flagged = int(an.alpha["flagged"].sum()) if "flagged" in an.alpha else 0
    drop_null = lambda t: t.drop(columns=[c for c in ("null",) if c in t])  # noqa: E731
    pooled_tab, pooled_all_tab = drop_null(an.pooled.table), drop_null(an.pooled_all.table)
    welch = an.welch
    welch_sum = (welch.assign(reject=welch["reject_bh"].fillna(False).astype(bool), lost=welch["t_stat"] > 0)
                 .groupby(["dataset", "model", "criterion", "level"], as_index=False)
                 .agg(classes=("class", "count"), rejected=("reject", "sum"),
                      rejected_losing=("reject", lambda s: int((s & welch.loc[s.index, "t_stat"].gt(0)).sum())))
                 if not welch.empty else pd.DataFrame())
    notes = [f"- {W.diverged_words(len(an.diverged))}", *EXTENSION_NOTES]
    lines = [f"# {title}", "", *header, "", "## Notes", "", *notes, "",
             "## Summary", "", *summary_tables(an, labels),
             "## Reading (generated from the numbers below)", "", *reading(an), "",
             "## E[α_t] per cell (Tier A: mean over seeds, 95% t-interval, t-test vs 1, Holm across cells)", "",
             "α_t is the through-origin slope of δ_t on δ_0 over the classes of one network (docs/methods.md §7). "
             "Verdict: intensification if the 95% CI lies above 1, de-intensification if below, else inconclusive.",
             "", _md(all_a),
             "", f"Networks dropped (Σδ0² ≈ 0): {dropped}; flagged (near chance or one-class predictors): {flagged}.",
             ""]
    if not clean_a.empty:
        lines += ["Without flagged networks:", "", _md(clean_a), ""]
    lines += ["## E[α_t] per cell (Tier B: mixed model, random slope per seed)", "", _md(b), ""]
    if not an.bootstrap.empty:
        lines += ["## Seed-bootstrap intervals of E[α_t]", "", _md(an.bootstrap), ""]
    lines += ["## Pooled moderated slope (Tier C: OLS clustered by trajectory)", "",
              f"Formula: `{an.pooled.formula}`; {an.pooled.n_clusters} clusters; flagged (near-chance or one-class) "
              f"networks excluded ({flagged} flagged). A positive `d0:X` coefficient means more intensification "
              "than the reference level.", "", _md(pooled_tab), ""]
    for note in an.pooled.notes:
        lines.append(f"- {note}")
    lines += ["", "With every network, flagged ones included:", "", _md(pooled_all_tab), ""]
    lines += ["", "## Accuracy", "", _md(acc), "",
              "## Per-class Welch tests of (recall − accuracy), dense vs pruned (BH within each model × criterion)", "",
              _md(welch_sum), ""]
    if images:
        lines += ["## Plots", ""] + [f"![{n}]({image_prefix}{n})" for n in images] + [""]
    if timings is not None and not timings.empty:
        lines += ["## Time per stage (this machine, all runs of this workdir)", "", _md(timings, ".1f"), ""]
    return "\n".join(lines)


EXTENSION_NOTES = (
    "- Where this library extends the specification: the near-chance and one-class flags also consult the dense "
    "partner of each network; with fewer than 2 seeds Tier B gives a pooled estimate without an interval; a "
    "MixedLM that does not converge falls back to OLS clustered by seed (its `method` column says which).",
)


UNREPORTED_STAGES = ("analysis+report", TOTAL_STAGE)  # still running while the report is written


def timings_table(stage_seconds: dict[str, float]) -> pd.DataFrame:
    df = pd.DataFrame(sorted(stage_seconds.items()), columns=["stage", "seconds"])
    return pd.concat([df, pd.DataFrame([{"stage": "total", "seconds": df["seconds"].sum()}])], ignore_index=True)


def header_lines(cfg: Any) -> list[str]:
    """What was run, from the stored config (in today's names, `report.runs.config_of`)."""
    p = cfg.prune
    grid = recall_layout.protocol(cfg).describe(cfg)
    imb = cfg.data.imbalance
    imb_s = (f"; underrepresented classes {tuple(imb.classes)} kept at {tuple(imb.fractions)}" if imb.classes else "")
    return [f"- dataset **{cfg.dataset}**{imb_s}; models {', '.join(cfg.models)}; "
            f"{cfg.num_seeds} seeds (base seed {cfg.seed}); dense shared across criteria (paired design)",
            f"- protocol **{p.protocol}**; criteria {', '.join(p.criteria)}; {grid}; λ_UP = {p.lambda_up:g}; "
            f"output layer {'excluded' if cfg.exclude_output else 'pruned'} for every criterion",
            f"- dense training: {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, {cfg.train.optimizer.name} "
            f"lr {cfg.train.optimizer.lr:g} momentum {cfg.train.optimizer.momentum:g} wd "
            f"{cfg.train.optimizer.weight_decay:g}; fine-tuning: {cfg.finetune.epochs} epochs, "
            f"{cfg.finetune.optimizer.name} lr {cfg.finetune.optimizer.lr:g}"]


def analysis_progress(enabled: bool | None) -> tuple[Any, Callable[[str], None]]:
    """A status bar over the analysis steps (`recall_tiers.ANALYSIS_STEPS`) and the callback that advances it;
    ``enabled`` None shows it on a terminal only."""
    bar = tqdm(total=len(ANALYSIS_STEPS), desc="analysis", unit="step", disable=None if enabled is None
               else not enabled, dynamic_ncols=True, leave=False)

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    return bar, step


def build_report(wd, *, out: Path | None = None, progress: bool | None = None) -> str:
    """Analyse a workdir's stored results and write `report.md` + PNGs; returns a terminal summary.

    A workdir whose pruned units have not started (only the dense rows) is refused with one line; one with some
    units missing gets the incomplete-run banner naming them. ``progress``: the analysis status bar (None: on a
    terminal only)."""
    recall = wd.read_table(RECALL_TABLE)
    if recall.empty:
        raise ValueError(f"{wd.path}: no results yet (table {RECALL_TABLE!r} is empty); run the sweep first")
    cfg = runs.config_of(wd)
    pruned = recall[recall["criterion"] != "dense"]
    if pruned.empty:
        raise ValueError(f"{wd.path}: only the dense models are evaluated; no pruned unit has finished yet (rerun "
                         "the sweep's command to continue it)")
    if "diverged" in pruned and pruned["diverged"].all():
        n = pruned.groupby(["model", "criterion", "seed", "level"]).ngroups
        raise ValueError(f"{wd.path}: every pruned network diverged ({n} networks, flagged in table "
                         f"{RECALL_TABLE!r}); nothing to analyse — lower config.finetune.optimizer.lr")
    run = runs.describe(wd, cfg)
    warning = W.incomplete_warning(runs.expected_units(wd, cfg)[1], wd.keys(RECALL_TABLE))
    timings = timings_table({k: v for k, v in wd.stage_seconds().items() if k not in UNREPORTED_STAGES})
    return _analyse_and_write(recall, cfg, out or wd.path, scope=f": {cfg.dataset}",
                              header=[*warning, *header_lines(cfg)], timings=timings, labels=run.labels,
                              progress=progress)


def _analyse_and_write(recall: pd.DataFrame, cfg: Any, out: Path, *, scope: str, header: Sequence[str],
                       timings: pd.DataFrame | None, labels: Mapping[str, str] | None = None,
                       progress: bool | None = None) -> str:
    """Analyse a recall table with `cfg.analysis`'s settings and write its report: the budget report for a budget
    sweep, the recall report otherwise. `scope` ends the title (": mnist", " (pooled)")."""
    a = cfg.analysis
    if budget_lib.is_budget_table(recall):
        ban = budget_lib.analyze(recall, level=float(a.level), chance=float(a.chance_factor),
                                 bootstrap=int(a.bootstrap), seed=int(cfg.seed))
        return budget_report.write(ban, out, title=f"Recovery budget and recall distortion{scope}", header=header,
                                   timings=timings)
    bar, step = analysis_progress(progress)
    with bar:
        an = analyze(recall, level=float(a.level), bootstrap=int(a.bootstrap), chance=float(a.chance_factor),
                     welch_q=float(a.welch_q), seed=int(cfg.seed), progress=step)
    return write(an, out, title=f"Recall distortion under pruning{scope}", header=header, timings=timings,
                 labels=labels)


def write(an: Analysis, out: Path, *, title: str, header: Sequence[str], timings: pd.DataFrame | None,
          labels: Mapping[str, str] | None = None) -> str:
    """Write report.md, plots/*.png and tables/*.csv into `out` (`report.writer`); returns a terminal summary."""
    figures = plots(an)
    text = render(an, title=title, header=header, images=list(figures), timings=timings, image_prefix="plots/",
                  labels=labels)
    tables = {"alpha_networks": an.alpha, "alpha_tier_a": an.tier_a, "alpha_tier_b": an.tier_b,
              "pooled_ols": an.pooled.table, "pooled_ols_all_networks": an.pooled_all.table, "welch": an.welch,
              "accuracy": an.accuracy, "diverged_networks": an.diverged}
    path = W.write(out, text, tables=tables, plots=figures)
    a = an.tier_a[an.tier_a["subset"] == "all"] if "subset" in an.tier_a else an.tier_a
    counts = a["verdict"].value_counts().to_dict()
    return (f"report: {path}\n"
            f"cells: {len(a)}; verdicts: {json.dumps(counts)}\n" + "\n".join(reading(an)))


def _check_poolable(workdirs: Sequence[Any], frames: Sequence[pd.DataFrame]) -> None:
    """Refuse what cannot be pooled, naming the workdirs: one given twice, budget sweeps mixed with others, or two
    holding networks of the same dataset, model and seed (their dense networks would collide)."""
    runs.check_distinct(workdirs)
    kinds = [budget_lib.is_budget_table(f) for f in frames]
    if any(kinds) and not all(kinds):
        b, r = kinds.index(True), kinds.index(False)
        raise ValueError(f"--workdir: {workdirs[b].path} holds a recovery-budget sweep and {workdirs[r].path} does "
                         "not; pool budget sweeps only with each other")
    owner: dict[tuple, int] = {}
    for i, f in enumerate(frames):
        for key in f[["dataset", "model", "seed"]].drop_duplicates().itertuples(index=False):
            j = owner.setdefault(tuple(key), i)
            if j != i:
                raise ValueError(f"--workdir: {workdirs[j].path} and {workdirs[i].path} both hold networks of "
                                 f"dataset={key[0]}, model={key[1]}, seed {key[2]}; pool runs that differ in "
                                 "dataset or model")


def pooled_report(workdirs: Sequence[Any], out: Path, *, progress: bool | None = None) -> str:
    """One report over several workdirs (e.g. MNIST + Fashion-MNIST) so RQ2/RQ3 have several levels; budget
    sweeps pool into one budget report, with dataset and model as moderators where they vary. Workdirs with missing
    units are named in a banner at the top."""
    frames = [wd.read_table(RECALL_TABLE) for wd in workdirs]
    _check_poolable(workdirs, frames)
    recall = pd.concat(frames, ignore_index=True)
    configs = [runs.config_of(wd) for wd in workdirs]
    header = [*runs.incomplete_lines(workdirs), f"Pooled over {len(workdirs)} workdirs:"]
    header += [f"- `{wd.path}`" for wd in workdirs]
    labels: dict[str, str] = {}
    for wd, cfg in zip(workdirs, configs):
        header += header_lines(cfg)
        if hasattr(wd, "keys"):
            labels.update({c: lab for c, lab in runs.describe(wd, cfg).labels.items() if c not in labels})
    return _analyse_and_write(recall, configs[0], out, scope=" (pooled)", header=header, timings=None,
                              labels=labels or None, progress=progress)
