"""The recovery-budget report: E[α_t] by fine-tuning budget at fixed masks, and the pooled regression with the
budget as a factor (`fairprune_jax.analysis.budget`), rendered to `report.md` + a plot."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fairprune_jax.analysis.budget import BudgetAnalysis
from fairprune_jax.report import writer as W
from fairprune_jax.report.writer import plt

def pairs(an: BudgetAnalysis) -> list[tuple[str, str]]:
    """The (dataset, model) pairs of the analysis, in order of appearance (several when workdirs were pooled)."""
    return list(dict.fromkeys(zip(an.tier_a["dataset"].astype(str), an.tier_a["model"].astype(str))))


def _rows(table: pd.DataFrame, pair: tuple[str, str] | None, criterion: str | None = None) -> pd.DataFrame:
    """The rows of one (dataset, model) pair and of one criterion, each when given."""
    keep = pd.Series(True, index=table.index)
    if pair is not None:
        keep &= (table["dataset"].astype(str) == pair[0]) & (table["model"].astype(str) == pair[1])
    if criterion is not None:
        keep &= table["criterion"] == criterion
    return table[keep]


def alpha_grid(an: BudgetAnalysis, criterion: str, pair: tuple[str, str] | None = None) -> pd.DataFrame:
    """E[α_t] [95% CI] and a verdict mark, one row per setting, one column per sparsity, for one criterion (of one
    (dataset, model) pair when given)."""
    a = _rows(an.tier_a[an.tier_a["subset"] == "all"], pair, criterion)
    a = a.sort_values(["ft_epochs", "ft_lr", "ft_momentum", "requested_sparsity"])
    out = a.assign(cell=[W.alpha_cell(r) if np.isfinite(r.mean) else "–" for r in a.itertuples()],
                   sparsity=a["requested_sparsity"].map(W.pct))
    return W.grid(out, "setting", "sparsity", "cell")


def accuracy_grid(an: BudgetAnalysis, criterion: str, pair: tuple[str, str] | None = None) -> pd.DataFrame:
    """Mean accuracy, one row per setting, one column per sparsity (of one (dataset, model) pair when given)."""
    a = _rows(an.accuracy, pair, criterion).sort_values(["ft_epochs", "ft_lr", "ft_momentum", "requested"])
    a = a.assign(sparsity=a["requested"].map(W.pct), acc=a["accuracy"].map(lambda x: f"{x:.4f}"))
    return W.grid(a, "setting", "sparsity", "acc")


def reading(an: BudgetAnalysis) -> list[str]:
    """Findings generated from the numbers: how many cells each setting leaves intensified / de-intensified, and
    the budget terms of the pooled fits."""
    a = an.tier_a[an.tier_a["subset"] == "all"].sort_values(["ft_epochs", "ft_lr", "ft_momentum"], kind="stable")
    pooled = len(pairs(an)) > 1
    out = []
    for (ds, model, setting), g in a.groupby(["dataset", "model", "setting"], sort=False):
        v = g["verdict"].value_counts()
        name = f"{ds} / {model} / {setting}" if pooled else setting
        out.append(f"- **{name}**: {int(v.get('intensification', 0))} of {len(g)} cells intensify, "
                   f"{int(v.get('de-intensification', 0))} de-intensify (95% t-intervals); mean E[α_t] over cells "
                   f"{g['mean'].mean():.2f}.")
    for name, fit in (("by setting (reference: no fine-tuning)", an.by_setting), ("budget factors", an.factors)):
        if fit is None:
            continue
        t = fit.table[fit.table["moderator"].astype(str).str.startswith(("setting", "ft_"))]
        bits = [f"{r.term.split('[T.')[-1].rstrip(']')} ({r.moderator}): {r.coef:+.3f} [{r.ci_low:+.3f}, "
                f"{r.ci_high:+.3f}]" for r in t.itertuples()]
        if bits:
            out.append(f"- **Pooled slope, {name}**: " + "; ".join(bits) + ".")
    return out


def plot(an: BudgetAnalysis):
    """E[α_t] against fine-tuning epochs: one panel per sparsity, one colour per (lr, momentum), one line style per
    criterion; each line starts at the un-tuned network (0 epochs). Symmetric-log y axis (un-tuned α_t can be < 0)."""
    a = an.tier_a[an.tier_a["subset"] == "all"]
    sparsities = sorted(a["requested_sparsity"].unique())
    runs = sorted({(r.ft_lr, r.ft_momentum) for r in a[a["ft_epochs"] > 0].itertuples()})
    colours = plt.get_cmap("tab10")
    styles = dict(zip(dict.fromkeys(a["criterion"]), ("-", "--", ":", "-.")))
    rows = pairs(an)
    fig, axes = plt.subplots(len(rows), len(sparsities), figsize=(3.2 * len(sparsities), 3.4 * len(rows)),
                             squeeze=False, sharey=True)
    for (i, pair), (j, sp) in itertools.product(enumerate(rows), enumerate(sparsities)):
        ax = axes[i][j]
        cell = _rows(a[a["requested_sparsity"] == sp], pair)
        for crit, style in styles.items():
            c = cell[cell["criterion"] == crit]
            base = c[c["ft_epochs"] == 0]
            for k, (lr, mom) in enumerate(runs):
                line = pd.concat([base, c[(c["ft_lr"] == lr) & (c["ft_momentum"] == mom) & (c["ft_epochs"] > 0)]])
                line = line.sort_values("ft_epochs")
                ax.plot(line["ft_epochs"], line["mean"], style, marker="o", ms=3, lw=1, color=colours(k),
                        label=f"{crit.upper()} lr {lr:g} m {mom:g}")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yscale("symlog", linthresh=1.0)
        if len(rows) == 1:
            ax.set_title(W.pct(sp))
        else:
            ax.set_title(f"{pair[0]} / {pair[1]}: {W.pct(sp)}", fontsize=8)
        ax.set_xlabel("fine-tuning epochs")
    for row in axes:
        row[0].set_ylabel("E[α_t]")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    return fig


def render(an: BudgetAnalysis, *, title: str, header: Sequence[str], timings: pd.DataFrame | None) -> str:
    lines = [f"# {title}", "", *header, "",
             "This moderator is an extension: neither reference study varies the recovery budget.", "",
             f"- Diverged networks (excluded): {len(an.diverged)}.", "",
             "## Reading (generated from the numbers below)", "", *reading(an), ""]
    rows = pairs(an)
    for pair, c in itertools.product(rows, dict.fromkeys(an.tier_a["criterion"])):
        name = f"{pair[0]} / {pair[1]} / {c.upper()}" if len(rows) > 1 else c.upper()
        lines += [f"## {name}: E[α_t] by budget (mean over seeds, 95% t-interval; ▲ intensification, "
                  "▼ de-intensification, · inconclusive)", "", W.markdown_table(alpha_grid(an, c, pair)), "",
                  f"Accuracy ({name}):", "", W.markdown_table(accuracy_grid(an, c, pair)), ""]
    for name, fit in (("by setting, reference: no fine-tuning", an.by_setting),
                      ("fine-tuned settings, budget factors", an.factors)):
        if fit is None:
            continue
        lines += [f"## Pooled moderated slope ({name})", "", f"Formula: `{fit.formula}`; {fit.n_clusters} clusters; "
                  "flagged networks excluded.", "", W.markdown_table(fit.table.drop(columns=["null"])), ""]
        lines += [f"- {n}" for n in fit.notes] + [""]
    lines += ["## Plots", "", "![alpha by budget](plots/budget_alpha.png)", ""]
    if timings is not None and not timings.empty:
        lines += ["## Time per stage (this machine, all runs of this workdir)", "", W.markdown_table(timings, ".1f"),
                  ""]
    return "\n".join(lines)


def write(an: BudgetAnalysis, out: Path, *, title: str, header: Sequence[str], timings: pd.DataFrame | None) -> str:
    """report.md, plots/budget_alpha.png and tables/*.csv into `out`; returns a terminal summary."""
    text = render(an, title=title, header=header, timings=timings)
    tables: dict[str, Any] = {"alpha_networks": an.alpha, "alpha_tier_a": an.tier_a, "accuracy": an.accuracy,
                              "pooled_ols_by_setting": an.by_setting.table, "diverged_networks": an.diverged}
    if an.factors is not None:
        tables["pooled_ols_budget_factors"] = an.factors.table
    path = W.write(out, text, tables=tables, plots={"budget_alpha.png": lambda: plot(an)})
    return f"report: {path}\n" + "\n".join(reading(an))
