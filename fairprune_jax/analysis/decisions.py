"""Tests and verdicts of the claims table (docs/methods.md §14): a difference test against the claim's null, an
equivalence test (TOST) within the claim kind's margin, four verdicts, and Holm's adjustment within a family.

Every test works on per-seed values (seeds are the unit): one-sample or paired t (`scipy.stats.ttest_1samp`; TOST
by `statsmodels` `DescrStatsW.ttost_mean`), Welch between two runs (`scipy.stats.ttest_ind(equal_var=False)`; TOST
by `statsmodels.stats.weightstats.ttost_ind(usevar="unequal")`), a normal test from an estimate and its standard
error (the AUROC), and per-sparsity cells (each a t; the claim's p is Bonferroni's m·min p, shown with the most
significant cell's interval at level 1 − .05/m; its TOST p the largest of the cells' — equivalence needs every
cell).

Verdicts at level α: **reproduced** (difference p < α, estimate on the claimed side), **not reproduced** (p < α, on
the other side), **equivalent** (no difference shown and TOST p < α: the effect lies within ±margin of the null),
**undecided** otherwise. Holm's adjustment is applied to the difference p-values of a family and, separately, to
its TOST p-values.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
ALPHA = 0.05
REPRODUCED, NOT_REPRODUCED, EQUIVALENT, UNDECIDED = "reproduced", "not reproduced", "equivalent", "undecided"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, EQUIVALENT, UNDECIDED)


@dataclasses.dataclass(frozen=True)
class Test:
    """A claim's test on its analysis scale. `n` and `sd` are per run (two entries for Welch); `t_low`/`t_high` are
    the TOST statistics against null − margin and null + margin (for the sequential mode)."""

    kind: str  # "t", "welch", "normal", "cells"
    estimate: float
    ci_low: float
    ci_high: float
    se: float
    df: float
    p: float
    p_tost: float
    null: float
    margin: float
    n: tuple[int, ...]
    sd: tuple[float, ...]
    t: float = np.nan
    t_low: float = np.nan
    t_high: float = np.nan
    cells: tuple["Test", ...] = ()
    labels: tuple[str, ...] = ()  # cell names
    cell: str = ""  # the cell shown (the most significant one)

    @property
    def seeds(self) -> int:
        return int(min(self.n)) if self.n else 0


def _finite(x: Sequence[float]) -> np.ndarray:
    x = np.asarray(x, float)
    return x[np.isfinite(x)]


def _nan_test(kind: str, null: float, margin: float, n: tuple[int, ...], estimate: float = np.nan,
              sd: tuple[float, ...] = ()) -> Test:
    return Test(kind, estimate, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, null, margin, n,
                sd or tuple(np.nan for _ in n))


def t_test(values: Sequence[float], null: float, margin: float = np.nan, level: float = LEVEL) -> Test:
    """One-sample (or paired, on differences) t of the mean against `null`, its interval, and TOST within
    ±`margin` (NaN without a margin). Fewer than two values or zero spread: NaN statistics."""
    x = _finite(values)
    n = len(x)
    mean = float(x.mean()) if n else np.nan
    if n < 2 or float(np.std(x, ddof=1)) == 0:
        return _nan_test("t", null, margin, (n,), mean, (float(np.std(x, ddof=1)) if n > 1 else np.nan,))
    sd = float(np.std(x, ddof=1))
    res = sps.ttest_1samp(x, null)
    ci = res.confidence_interval(confidence_level=level)
    se = sd / np.sqrt(n)
    p_tost, t_lo, t_hi = np.nan, np.nan, np.nan
    if np.isfinite(margin) and margin > 0:
        from statsmodels.stats.weightstats import DescrStatsW

        p_tost, lower, upper = DescrStatsW(x).ttost_mean(null - margin, null + margin)
        t_lo, t_hi = float(lower[0]), float(upper[0])
    return Test("t", mean, float(ci.low), float(ci.high), se, float(n - 1), float(res.pvalue), float(p_tost), null,
                margin, (n,), (sd,), float(res.statistic), t_lo, t_hi)


def welch_test(a: Sequence[float], b: Sequence[float], margin: float = np.nan, level: float = LEVEL) -> Test:
    """Welch's t of mean(a) − mean(b) against 0, its interval, and TOST within ±`margin`."""
    a, b = _finite(a), _finite(b)
    n = (len(a), len(b))
    est = float(a.mean() - b.mean()) if len(a) and len(b) else np.nan
    sds = tuple(float(np.std(x, ddof=1)) if len(x) > 1 else np.nan for x in (a, b))
    if min(n) < 2 or not all(np.isfinite(sds)) or sds[0] + sds[1] == 0:
        return _nan_test("welch", 0.0, margin, n, est, sds)
    res = sps.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=level)
    se = float(np.sqrt(sds[0] ** 2 / n[0] + sds[1] ** 2 / n[1]))
    p_tost, t_lo, t_hi = np.nan, np.nan, np.nan
    if np.isfinite(margin) and margin > 0:
        from statsmodels.stats.weightstats import ttost_ind

        p_tost, lower, upper = ttost_ind(a, b, -margin, margin, usevar="unequal")
        t_lo, t_hi = float(lower[0]), float(upper[0])
    return Test("welch", est, float(ci.low), float(ci.high), se, float(res.df), float(res.pvalue), float(p_tost),
                0.0, margin, n, sds, float(res.statistic), t_lo, t_hi)


def normal_test(estimate: float, se: float, null: float, margin: float = np.nan, level: float = LEVEL,
                n: int = 0) -> Test:
    """z test of an estimate with a known standard error (the AUROC's Hanley–McNeil), and its TOST."""
    if not (np.isfinite(estimate) and np.isfinite(se) and se > 0):
        return _nan_test("normal", null, margin, (n,), estimate)
    z = sps.norm.isf((1 - level) / 2)
    stat = (estimate - null) / se
    p = float(2 * sps.norm.sf(abs(stat)))
    p_tost, t_lo, t_hi = np.nan, np.nan, np.nan
    if np.isfinite(margin) and margin > 0:
        t_lo, t_hi = (estimate - null + margin) / se, (estimate - null - margin) / se
        p_tost = float(max(sps.norm.sf(t_lo), sps.norm.cdf(t_hi)))
    return Test("normal", estimate, estimate - z * se, estimate + z * se, se, np.inf, p, p_tost, null, margin, (n,),
                (np.nan,), stat, t_lo, t_hi)


def cells_test(values: np.ndarray, labels: Sequence[str], null: float, margin: float = np.nan,
               level: float = LEVEL) -> Test:
    """Per-cell t tests of per-seed values [S, J]: the claim's p is min(1, m·min p) (Holm's first step, Bonferroni),
    its TOST p the largest cell TOST p; estimate and interval are the most significant cell's, at level
    1 − (1 − level)/m (simultaneous, Bonferroni)."""
    values = np.asarray(values, float)
    m = values.shape[1]
    cells = tuple(t_test(values[:, j], null, margin, level) for j in range(m))
    ps = np.array([c.p for c in cells])
    if not np.isfinite(ps).any():
        return dataclasses.replace(_nan_test("cells", null, margin, (values.shape[0],)), cells=cells,
                                   labels=tuple(labels))
    best = int(np.nanargmin(ps))
    wide = t_test(values[:, best], null, margin, 1 - (1 - level) / m)
    ok = all(np.isfinite(c.p_tost) for c in cells)
    p_tost = float(np.max([c.p_tost for c in cells])) if ok else np.nan
    t_low = float(np.min([c.t_low for c in cells])) if ok else np.nan  # equivalence needs every cell: the worst
    t_high = float(np.max([c.t_high for c in cells])) if ok else np.nan
    return dataclasses.replace(wide, kind="cells", p=float(min(1.0, m * ps[best])), p_tost=p_tost, t_low=t_low,
                               t_high=t_high, cells=cells, labels=tuple(labels), cell=str(labels[best]))


def verdict(direction: str, test_estimate: float, null: float, p: float, p_tost: float,
            alpha: float = ALPHA) -> str:
    """One of `VERDICTS` from a difference p, a TOST p and the claimed direction ('>' or '<')."""
    if np.isfinite(p) and p < alpha:
        above = test_estimate > null
        return REPRODUCED if above == (direction == ">") else NOT_REPRODUCED
    if np.isfinite(p_tost) and p_tost < alpha:
        return EQUIVALENT
    return UNDECIDED


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels `multipletests`), NaN kept and not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, float)
    out = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[ok] = multipletests(p[ok], method="holm")[1]
    return out
