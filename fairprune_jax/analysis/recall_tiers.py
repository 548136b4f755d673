"""Every tier of the recall-distortion statistics on a tidy recall table, in one call (`analyze`).

The statistics themselves are `fairprune_jax.analysis.intensification` (δ, α_t, flags) and
`fairprune_jax.analysis.stats` (Tier A/B/C, bootstrap, Welch + BH); this module only orchestrates them for a
study's table: it leaves diverged networks out of every tier (and lists them), picks the moderators and the
reference levels, and computes the accuracy table. The report (`fairprune_jax.report.recall`) only renders.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from fairprune_jax.analysis import intensification, stats
from fairprune_jax.analysis import pooled as tier_c

#: The steps `analyze` reports to its ``progress`` callback, in order (a status bar's total).
ANALYSIS_STEPS = ("α_t per network", "Tier A", "Tier B (mixed models)", "seed bootstrap", "pooled OLS",
                  "pooled OLS, every network", "Welch tests", "accuracy")

@dataclasses.dataclass(frozen=True)
class Analysis:
    """All tables of the report."""

    recall: pd.DataFrame  # tidy rows, one per model × class
    long: pd.DataFrame  # §3 long table
    alpha: pd.DataFrame  # one row per pruned network: α_t and variants
    tier_a: pd.DataFrame  # E[α_t] per cell, t-interval, verdict (all networks, and without flagged ones)
    tier_b: pd.DataFrame  # mixed model per cell
    bootstrap: pd.DataFrame  # seed-bootstrap intervals per cell
    pooled: Any  # pooled.PooledOLS, flagged (near-chance / one-class) networks excluded
    pooled_all: Any  # pooled.PooledOLS with every network
    welch: pd.DataFrame  # per-class Welch tests with BH
    accuracy: pd.DataFrame  # accuracy per cell
    diverged: pd.DataFrame  # one row per diverged network (excluded from every statistic above)


def analyze(recall: pd.DataFrame, *, level: float = 0.95, bootstrap: int = 2000, chance: float = 1.5,
            welch_q: float = 0.05, seed: int = 0, progress: Callable[[str], None] | None = None) -> Analysis:
    """Run every tier of docs/methods.md §8 on a tidy recall table (`evaluate.recall_table`, concatenated).

    Networks flagged ``diverged`` (the divergence guard) are left out of every tier and listed in ``diverged``.
    ``progress`` is called with the name of each step (`ANALYSIS_STEPS`) as it finishes (a status line: the
    whole analysis takes minutes on a default sweep)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        return _analyze(recall, level=level, bootstrap=bootstrap, chance=chance, welch_q=welch_q, seed=seed,
                        progress=progress or (lambda step: None))


def _analyze(recall: pd.DataFrame, *, level: float, bootstrap: int, chance: float, welch_q: float,
             seed: int, progress: Callable[[str], None]) -> Analysis:
    net_cols = ["dataset", "model", "criterion", "seed", "level", "requested_sparsity"]
    bad = recall["diverged"].astype(bool) if "diverged" in recall else pd.Series(False, index=recall.index)
    diverged = (recall[bad].groupby(net_cols, as_index=False).agg(epoch=("diverged_epoch", "first"))
                if bad.any() else pd.DataFrame(columns=net_cols + ["epoch"]))
    recall = recall[~bad].reset_index(drop=True)
    long = intensification.long_table(recall, chance=chance)
    alpha = intensification.alpha(long)
    progress(ANALYSIS_STEPS[0])
    tier_a = stats.summarize(alpha, level=level)
    progress(ANALYSIS_STEPS[1])
    tier_b = stats.mixed_model(long, level=level)
    progress(ANALYSIS_STEPS[2])
    boot = stats.bootstrap_alpha(alpha, n_resamples=bootstrap, level=level, seed=seed) if bootstrap else pd.DataFrame()
    progress(ANALYSIS_STEPS[3])
    moderators = [m for m in ("level", "criterion", "dataset", "model") if long[m].nunique() > 1]
    clusters = long["traj"].nunique() if "traj" in long else 0
    reference = {"level": int(long["level"].min())}
    if "mp" in set(long["criterion"]):
        reference["criterion"] = "mp"  # docs/methods.md §8: C(algo, Treatment('MP'))
    # Near-chance and one-class networks make δ explode (docs/methods.md §7): the headline fit leaves them out, the
    # report shows the fit with them as well.
    pooled_kw = dict(moderators=moderators or ("level",), reference=reference, level=level,
                     bootstrap=bootstrap if clusters < 30 else 0, seed=seed)
    pooled = tier_c.pooled_ols(long, exclude_flagged=True, **pooled_kw)
    progress(ANALYSIS_STEPS[4])
    pooled_all = tier_c.pooled_ols(long, exclude_flagged=False, **pooled_kw)
    progress(ANALYSIS_STEPS[5])
    welch = stats.welch_per_class(long, q=welch_q)
    progress(ANALYSIS_STEPS[6])
    acc = accuracy_table(recall, level=level)
    progress(ANALYSIS_STEPS[7])
    return Analysis(recall, long, alpha, tier_a, tier_b, boot, pooled, pooled_all, welch, acc, diverged)


CELL = ("dataset", "model", "criterion", "level")


def accuracy_table(recall: pd.DataFrame, *, level: float = 0.95, keys: Sequence[str] = CELL) -> pd.DataFrame:
    """Mean test accuracy (and realised sparsity) per cell `keys` (default (dataset, model, criterion, level); the
    budget analysis adds its setting columns) with a t-interval over seeds."""
    keys = list(keys)
    nets = recall.groupby([*keys, "seed"], as_index=False).agg(
        accuracy=("accuracy", "first"), t=("actual_sparsity", "first"), requested=("requested_sparsity", "first"))
    rows = []
    for cell, g in nets.groupby(keys):
        n = len(g)
        sd = g["accuracy"].std(ddof=1) if n > 1 else np.nan
        half = sps.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n) if n > 1 else np.nan
        rows.append(dict(zip(keys, cell), requested=g["requested"].iloc[0],
                         t=g["t"].mean(), n_seeds=n, accuracy=g["accuracy"].mean(), sd=sd,
                         ci_low=g["accuracy"].mean() - half, ci_high=g["accuracy"].mean() + half))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- reading
