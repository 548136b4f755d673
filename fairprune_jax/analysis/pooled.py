"""Tier C of the recall-distortion statistics (docs/methods.md §8): one pooled OLS over every network.

`pooled_ols` fits `dt ~ 0 + d0 + d0:C(level) + d0:C(criterion) + d0:C(dataset) + d0:C(model)` with statsmodels,
errors clustered by trajectory; moderators with one level are dropped; an optional cluster bootstrap over seeds
refits by least squares. The table boundary (labels normalised, undefined α_t dropped and counted) and the verdicts
are `stats`'s, shared with Tiers A and B.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from fairprune_jax.analysis import intensification
from fairprune_jax.analysis.stats import (RQ_OF_MODERATOR, _drop_undefined, _dropped_reason, _long_table,
                                          drop_flagged, verdict)


class PooledOLS(NamedTuple):
    """Tier C fit: the tidy coefficient table, the statsmodels result, and what was dropped or noted."""

    table: pd.DataFrame  # term, moderator, rq, coef, se, z, p, ci_low, ci_high, null, verdict[, boot_low, boot_high]
    result: Any
    formula: str
    n_clusters: int
    dropped_moderators: list[str]
    notes: list[str]
    n_dropped: int = 0  # networks with Σδ0² < 1e-12 (α_t undefined) left out, each counted once


def pooled_ols(long_df: pd.DataFrame, *, moderators: Sequence[str] = ("level", "criterion", "dataset", "model"),
               reference: dict[str, Any] | None = None, criterion_by_level: bool = False, cluster: str = "traj",
               exclude_flagged: bool = False, level: float = 0.95, bootstrap: int = 0, seed: int = 0
               ) -> PooledOLS:
    """Tier C: `dt ~ 0 + d0 + Σ d0:C(moderator)` with errors clustered on `cluster` (RQ1–RQ4).

    A moderator with one level is dropped (named in `dropped_moderators`). `reference` gives treatment
    references (default {"criterion": "mp"} when that level exists). `criterion_by_level` adds
    `d0:C(criterion):C(level)` (RQ4 by ratio). `bootstrap` > 0 adds a cluster bootstrap over seeds (percentile
    intervals, numpy Generator seeded by `seed`), advisable with fewer than about 30 clusters.
    A positive d0:X coefficient means more intensification than the reference; the `d0` row is α of the reference
    cell (null 1), moderator rows have null 0. Criterion labels (and a criterion reference) are normalised, so
    'MP' is the reference 'mp'. Networks with Σδ0² < 1e-12 (α_t undefined) are dropped: `n_dropped` and a note.
    """
    import statsmodels.formula.api as smf

    need = ["d0", "dt", cluster, "seed", *moderators]
    missing = [c for c in need if c not in long_df.columns]
    if missing:
        raise ValueError(f"long_df: missing column(s) {missing}")
    ref = {"criterion": "mp"} if reference is None else dict(reference)
    ref = {m: v.strip().lower() if m in intensification.LABEL_COLUMNS and isinstance(v, str) else v
           for m, v in ref.items()}
    df, keys = _long_table(long_df, ())
    if exclude_flagged:
        df = drop_flagged(df)
    df, n_drop = _drop_undefined(df, keys)
    df = df[np.isfinite(df["d0"].to_numpy(float)) & np.isfinite(df["dt"].to_numpy(float))].reset_index(drop=True)
    if df.empty:
        raise ValueError("long_df: no row with finite d0 and dt")
    terms, dropped, notes, factor = ["d0"], [], [_dropped_reason(n_drop)] if n_drop else [], {}
    for m in moderators:
        levels = sorted(df[m].dropna().unique().tolist(), key=str)
        if len(levels) < 2:
            dropped.append(m)
            notes.append(f"moderator {m!r} dropped: one level only ({levels[0] if levels else 'none'})")
            continue
        if m in ref and ref[m] in levels:
            factor[m] = f"C({m}, Treatment({ref[m]!r}))"
        else:
            factor[m] = f"C({m})"
            if m in ref:
                notes.append(f"reference {ref[m]!r} not among {m} levels; using {levels[0]!r}")
        terms.append(f"d0:{factor[m]}")
    if criterion_by_level:
        if "criterion" in factor and "level" in factor:
            # the same factor spellings as the main terms, so patsy codes the interaction with reduced rank
            terms.append(f"d0:{factor['criterion']}:{factor['level']}")
        else:
            notes.append("criterion_by_level ignored: criterion or level is not a moderator with several levels")
    formula = "dt ~ 0 + " + " + ".join(terms)
    groups = pd.factorize(df[cluster])[0]
    n_clusters = int(groups.max() + 1)
    model = smf.ols(formula, df)
    if n_clusters >= 2:
        res = model.fit(cov_type="cluster", cov_kwds={"groups": groups})
        if n_clusters < 30:
            notes.append(f"only {n_clusters} clusters: cluster-robust errors are optimistic; see the bootstrap")
    else:
        res = model.fit()
        notes.append("one cluster: errors not clustered")
    ci = res.conf_int(alpha=1 - level)
    names = list(res.params.index)
    tab = pd.DataFrame({"term": names, "coef": res.params.to_numpy(), "se": res.bse.to_numpy(),
                        "z": res.tvalues.to_numpy(), "ci_low": ci[0].to_numpy(), "ci_high": ci[1].to_numpy()})
    tab["null"] = [1.0 if t == "d0" else 0.0 for t in names]
    tab["z"] = (tab["coef"] - tab["null"]) / tab["se"]
    tab["p"] = 2 * sps.norm.sf(np.abs(tab["z"]))

    def moderator(term: str) -> str:
        if term == "d0":
            return ""
        if "C(criterion" in term and "C(level" in term:
            return "criterion:level"
        for m in moderators:
            if f"C({m}" in term:
                return m
        return ""

    tab["moderator"] = [moderator(t) for t in names]
    tab["rq"] = [RQ_OF_MODERATOR.get(m, "RQ4" if m == "criterion:level" else "") for m in tab["moderator"]]
    tab["verdict"] = [verdict(lo, hi, nu) for lo, hi, nu in zip(tab["ci_low"], tab["ci_high"], tab["null"])]
    if bootstrap > 0:
        tab["boot_low"], tab["boot_high"], n_bad = _cluster_bootstrap(res, df, bootstrap, seed, level)
        if n_bad:
            notes.append(f"{n_bad} of {bootstrap} bootstrap draws rank-deficient and skipped")
    cols = ["term", "moderator", "rq", "coef", "se", "z", "p", "ci_low", "ci_high", "null", "verdict"]
    cols += [c for c in ("boot_low", "boot_high") if c in tab]
    return PooledOLS(tab[cols], res, formula, n_clusters, dropped, notes, n_drop)


def _cluster_bootstrap(res: Any, df: pd.DataFrame, n_boot: int, seed: int, level: float):
    """Percentile intervals from resampling seeds with replacement and refitting by least squares."""
    exog, endog = np.asarray(res.model.exog), np.asarray(res.model.endog)
    rows = np.asarray(res.model.data.row_labels)
    seeds = df.loc[rows, "seed"].to_numpy()
    uniq = np.unique(seeds)
    by_seed = [np.flatnonzero(seeds == s) for s in uniq]
    rng = np.random.default_rng(seed)
    p = exog.shape[1]
    draws, bad = [], 0
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([by_seed[i] for i in pick])
        x, y = exog[idx], endog[idx]
        coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
        if rank < p:
            bad += 1
            continue
        draws.append(coef)
    if not draws:
        nan = np.full(p, np.nan)
        return nan, nan, bad
    d = np.asarray(draws)
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi, bad
