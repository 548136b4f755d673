"""Recovery budget as a moderator of recall distortion (an extension; docs/methods.md §8): the statistics of a
budget-protocol recall table (`fairprune_jax.studies.budget`).

Every budget setting is paired with the same dense networks, so each setting's networks get their own long table
(`intensification.long_table` of the dense rows plus that setting's rows) and α_t; the settings are then stacked
with their budget columns. Two Tier C fits (`pooled.pooled_ols`, errors clustered by trajectory = seed):

- `by_setting`: `dt ~ 0 + d0 + d0:C(level) + d0:C(criterion) + d0:C(setting)`, reference setting 'none' (no
  fine-tuning): how each budget moves the slope relative to the pruned, un-tuned network;
- `factors`: the fine-tuned settings only, with the budget's three factors as separate moderators
  (`d0:C(ft_epochs) + d0:C(ft_lr) + d0:C(ft_momentum)`, references: the smallest epochs and lr, no momentum).

Budget sweeps of several datasets or models pooled into one table (`report.recall.pooled_report`) add dataset and
model as moderators of both fits; moderators with one level are dropped.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

BUDGET_COLUMNS = ("setting", "ft_epochs", "ft_lr", "ft_momentum")


@dataclasses.dataclass(frozen=True)
class BudgetAnalysis:
    """The tables of a budget report."""

    long: pd.DataFrame  # long table, every setting stacked, with the budget columns
    alpha: pd.DataFrame  # one row per (setting, network)
    tier_a: pd.DataFrame  # E[α_t] per (setting, criterion, level)
    accuracy: pd.DataFrame  # mean accuracy with a t-interval per (setting, criterion, level)
    by_setting: Any  # pooled.PooledOLS, flagged networks excluded, reference setting 'none'
    factors: Any  # pooled.PooledOLS on fine-tuned settings, budget factors as moderators (None if < 2 levels)
    diverged: pd.DataFrame  # networks left out by the divergence guard


def is_budget_table(recall: pd.DataFrame) -> bool:
    """Whether a recall table comes from the budget protocol (it has a `setting` column with values)."""
    return "setting" in recall.columns and recall["setting"].notna().any()


def stacked_long(recall: pd.DataFrame, *, chance: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table, α_t table) of every setting, each paired with the shared dense rows (`setting` NaN)."""
    from fairprune_jax.analysis import intensification

    missing = [c for c in BUDGET_COLUMNS if c not in recall.columns]
    if missing:
        raise ValueError(f"recall: missing budget column(s) {missing}")
    dense = recall[recall["setting"].isna()]
    longs, alphas = [], []
    for setting, rows in recall[recall["setting"].notna()].groupby("setting", sort=False):
        info = {c: rows[c].iloc[0] for c in BUDGET_COLUMNS}
        long = intensification.long_table(pd.concat([dense, rows], ignore_index=True), chance=chance)
        longs.append(long.assign(**info))
        alphas.append(intensification.alpha(long).assign(**info))
    if not longs:
        raise ValueError("recall: no pruned rows with a budget setting")
    return pd.concat(longs, ignore_index=True), pd.concat(alphas, ignore_index=True)


def analyze(recall: pd.DataFrame, *, level: float = 0.95, chance: float = 1.5, bootstrap: int = 0,
            seed: int = 0) -> BudgetAnalysis:
    """Every table of the budget report from a budget-protocol recall table (diverged networks left out)."""
    import warnings

    from fairprune_jax.analysis import recall_tiers, stats
    from fairprune_jax.analysis import pooled as tier_c

    bad = recall["diverged"].astype(bool) if "diverged" in recall else pd.Series(False, index=recall.index)
    net_cols = ["dataset", "model", "criterion", "seed", "level", "setting"]
    diverged = (recall[bad].groupby(net_cols, as_index=False, dropna=False).size() if bad.any()
                else pd.DataFrame(columns=net_cols + ["size"]))
    recall = recall[~bad].reset_index(drop=True)
    long, alpha = stacked_long(recall, chance=chance)
    by = (*BUDGET_COLUMNS, "dataset", "model", "criterion", "level")
    tier_a = stats.summarize(alpha, by=by, level=level)
    acc = recall_tiers.accuracy_table(recall[recall["setting"].notna()], level=level,
                                      keys=(*BUDGET_COLUMNS, "dataset", "model", "criterion", "level"))
    reference = {"level": int(long["level"].min()), "setting": "none", "criterion": "mp"}
    kw = dict(level=level, bootstrap=bootstrap, seed=seed, exclude_flagged=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        moderators = [m for m in ("dataset", "model", "level", "criterion", "setting") if long[m].nunique() > 1]
        by_setting = tier_c.pooled_ols(long, moderators=moderators, reference=reference, **kw)
        tuned = long[long["ft_epochs"] > 0]
        factor_mods = [m for m in ("dataset", "model", "level", "criterion", "ft_epochs", "ft_lr", "ft_momentum")
                       if tuned[m].nunique() > 1]
        factors = None
        if any(m.startswith("ft_") for m in factor_mods):
            ref = {"level": reference["level"], "criterion": "mp", "ft_epochs": int(tuned["ft_epochs"].min()),
                   "ft_lr": float(tuned["ft_lr"].min()), "ft_momentum": float(tuned["ft_momentum"].min())}
            factors = tier_c.pooled_ols(tuned, moderators=factor_mods, reference=ref, **kw)
    return BudgetAnalysis(long, alpha, tier_a, acc, by_setting, factors, diverged)

