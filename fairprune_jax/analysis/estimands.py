"""Per-seed statistics of the claims (docs/methods.md §14): one value per seed from a run's networks, so that seeds
are the unit of every interval. The same functions serve the claims table and the simulation that chose them
(`analysis.simulation`, `benchmarks/simulate_claims.py`), on arrays [..., S, C, J] (seeds × criteria × sparsities;
NaN marks a missing, flagged or undefined network).

Candidates (the simulation's names), for a regime's sparsities and structured criteria:

- ``mean``: mean α_t over the seed's networks (the original claims table);
- ``median``: median α_t over the seed's networks (robust to a minority of collapsed networks);
- ``log_median``: its logarithm (α_t grows geometrically with sparsity; NaN when the median is not positive);
- ``cells`` / ``cells_log``: mean over criteria at each sparsity, or the log of their median, one value per cell
  (tested per cell, Holm over the cells);
- ``trend_ols`` / ``trend_log`` / ``trend_kendall``: the seed's OLS slope of α_t (mean over criteria), or of the log
  of its median over criteria, on log(1/(1 − s)), or its Kendall τ between sparsity and α_t over the networks of
  the whole grid (the RQ1 claim that α_t rises);
- ``log_excess_mean`` / ``log_excess_median``: mean or median of log(α_t/α_null); a network with α_t ≤ 0 is
  undefined for the mean and ranks lowest (−∞) for the median;
- comparisons of criteria a − b, paired by seed: ``mean_diff``, ``median_diff`` (difference of the two medians),
  ``median_of_diffs`` (median over sparsities of the difference at each sparsity), ``log_ratio`` (log of the ratio
  of the two medians), ``cells_diff`` and ``cells_log_ratio`` (the difference, or the log ratio, at each sparsity).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps


def network_array(table: pd.DataFrame, value: str, *, criteria: Sequence[str], sparsities: Sequence[float],
                  exclude_flagged: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(seeds, array [S, C, J]) of `value` per network of an `intensification.alpha`-like table; flagged networks
    (when `exclude_flagged`) and absent ones are NaN. Sparsities are matched on `requested_sparsity`."""
    t = table[table["criterion"].isin(criteria)]
    if exclude_flagged and "flagged" in t:
        t = t[~t["flagged"].astype(bool)]
    seeds = np.array(sorted(table["seed"].unique()))
    spars = np.asarray(sparsities, float)
    out = np.full((len(seeds), len(criteria), len(spars)), np.nan)
    si = {s: i for i, s in enumerate(seeds)}
    ci = {c: i for i, c in enumerate(criteria)}
    for row in t[["seed", "criterion", "requested_sparsity", value]].itertuples(index=False):
        j = np.flatnonzero(np.isclose(spars, float(row[2])))
        if len(j):
            out[si[row[0]], ci[row[1]], j[0]] = float(row[3])
    return seeds, out


def _flat(a: np.ndarray) -> np.ndarray:
    """[..., S, C, J] → [..., S, C·J]."""
    return a.reshape(*a.shape[:-2], -1)


def seed_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the seed's networks (NaN ignored; NaN when none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(_flat(np.where(np.isfinite(a), a, np.nan)), -1)


def seed_median(a: np.ndarray) -> np.ndarray:
    """Median over the seed's networks: NaN ignored, −∞ ranks lowest (NaN when none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(_flat(a), -1)


def seed_log_median(a: np.ndarray) -> np.ndarray:
    """log of `seed_median` (NaN where the median is not positive): the seed's typical α_t on the scale on which it
    grows."""
    m = seed_median(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m > 0, np.log(np.where(m > 0, m, 1.0)), np.nan)


def seed_cells(a: np.ndarray) -> np.ndarray:
    """[..., S, J]: mean over criteria at each sparsity."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.where(np.isfinite(a), a, np.nan), -2)


def seed_cells_log(a: np.ndarray) -> np.ndarray:
    """[..., S, J]: log of the median over criteria at each sparsity (NaN where it is not positive)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(a, -2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(med > 0, np.log(np.where(med > 0, med, 1.0)), np.nan)


def log_scale(sparsities: Sequence[float]) -> np.ndarray:
    """x = log(1/(1 − s)): α_t grows roughly linearly in it (geometrically in the sparsity index)."""
    return -np.log1p(-np.asarray(sparsities, float))


def seed_trend_ols(a: np.ndarray, sparsities: Sequence[float]) -> np.ndarray:
    """[..., S]: OLS slope of the criterion mean at each sparsity on `log_scale(sparsities)`."""
    y = seed_cells(a)
    x = np.broadcast_to(log_scale(sparsities), y.shape)
    ok = np.isfinite(y)
    n = ok.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        xm = np.where(ok, x, 0).sum(-1) / n
        ym = np.where(ok, y, 0).sum(-1) / n
        xc, yc = np.where(ok, x - xm[..., None], 0), np.where(ok, y - ym[..., None], 0)
        return np.where(n >= 2, (xc * yc).sum(-1) / (xc * xc).sum(-1), np.nan)


def seed_trend_kendall(a: np.ndarray, sparsities: Sequence[float]) -> np.ndarray:
    """[..., S]: Kendall's τ-b between sparsity and value over the seed's networks (−∞ ranks lowest)."""
    x = np.broadcast_to(np.asarray(sparsities, float), a.shape)
    xf, yf = _flat(x), _flat(a)
    ok = ~np.isnan(yf)
    dx = np.sign(xf[..., :, None] - xf[..., None, :])
    with np.errstate(invalid="ignore"):
        dy = np.sign(yf[..., :, None] - yf[..., None, :])
    dy = np.where(np.isnan(dy), 0.0, dy)  # −∞ vs −∞: a tie
    pair = ok[..., :, None] & ok[..., None, :]
    iu = np.triu(np.ones(dx.shape[-2:], bool), 1)
    pair = pair & iu
    s = (dx * dy * pair).sum((-1, -2))
    tx = ((dx != 0) & pair).sum((-1, -2))
    ty = ((dy != 0) & pair).sum((-1, -2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((tx > 0) & (ty > 0), s / np.sqrt(tx * ty), np.nan)


def seed_trend_log(a: np.ndarray, sparsities: Sequence[float]) -> np.ndarray:
    """[..., S]: OLS slope of log(median over criteria) at each sparsity on `log_scale(sparsities)` (a sparsity
    whose median is not positive is left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(a, -2)  # [..., S, J]
    with np.errstate(divide="ignore", invalid="ignore"):
        logm = np.where(med > 0, np.log(np.where(med > 0, med, 1.0)), np.nan)
    return seed_trend_ols(logm[..., None, :], sparsities)


def diff_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., S]: the seed's mean of a minus its mean of b (arrays [..., S, 1, J])."""
    return seed_mean(a) - seed_mean(b)


def diff_median(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., S]: the seed's median of a minus its median of b (−∞ − −∞ is NaN: left out)."""
    with np.errstate(invalid="ignore"):
        return seed_median(a) - seed_median(b)


def log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., S]: log of the seed's median of a over its median of b (NaN unless both are positive)."""
    return seed_log_median(a) - seed_log_median(b)


def cells_log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., S, J]: log(a/b) at each sparsity (one criterion each; NaN unless both are positive)."""
    return seed_cells_log(a) - seed_cells_log(b)


def median_of_diffs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., S]: median over sparsities of a − b at the same sparsity (±∞ − ±∞ left out)."""
    with np.errstate(invalid="ignore"):
        d = a - b
    return seed_median(d)


# ---------------------------------------------------------------------------------------------- inference

def t_summary(x: np.ndarray, null: float = 0.0, level: float = 0.95) -> dict[str, np.ndarray]:
    """Vectorised one-sample t over the last axis (NaN ignored): mean, sd, n, ci_low, ci_high, p (two-sided vs
    `null`). Matches `scipy.stats.ttest_1samp` row by row; fewer than two values or sd = 0 give NaN."""
    x = np.where(np.isfinite(x), x, np.nan)
    n = np.isfinite(x).sum(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, -1)
        sd = np.nanstd(x, -1, ddof=1)
    df = np.maximum(n - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where((n >= 2) & (sd > 0), sd / np.sqrt(n), np.nan)
        q = sps.t.ppf(0.5 + level / 2, df)
        t = (mean - null) / se
    p = 2 * sps.t.sf(np.abs(t), df)
    return dict(mean=mean, sd=sd, n=n, se=se, df=np.where(n >= 2, n - 1, np.nan), ci_low=mean - q * se,
                ci_high=mean + q * se, t=t, p=p)


def welch_summary(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """Vectorised Welch t of mean(x) − mean(y) over the last axes (NaN ignored), as `scipy.stats.ttest_ind`
    with `equal_var=False`."""
    sx, sy = t_summary(x), t_summary(y)
    vx, vy = sx["sd"] ** 2 / sx["n"], sy["sd"] ** 2 / sy["n"]
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(vx + vy)
        df = (vx + vy) ** 2 / (vx ** 2 / (sx["n"] - 1) + vy ** 2 / (sy["n"] - 1))
        est = sx["mean"] - sy["mean"]
        t = est / se
    q = sps.t.ppf(0.5 + level / 2, df)
    return dict(mean=est, se=se, df=df, ci_low=est - q * se, ci_high=est + q * se, t=t,
                p=2 * sps.t.sf(np.abs(t), df))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p over the last axis (vectorised `multipletests(method="holm")`; NaN stays NaN and is not
    counted)."""
    p = np.asarray(p, float)
    ok = np.isfinite(p)
    m = ok.sum(-1, keepdims=True)
    order = np.argsort(np.where(ok, p, np.inf), -1)
    ps = np.take_along_axis(np.where(ok, p, np.inf), order, -1)
    rank = np.arange(p.shape[-1])
    with np.errstate(invalid="ignore"):
        scaled = np.where(np.isfinite(ps), ps * (m - rank), np.inf)
    adj = np.minimum(1.0, np.maximum.accumulate(scaled, -1))
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, -1)
    return np.where(ok, out, np.nan)
