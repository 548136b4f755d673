"""Seed planning for the claims table (docs/methods.md §14): the smallest effect each row can detect with its seeds,
and the seeds it needs to decide its observed effect at 80% power, from its observed per-seed spread.

Power is that of the row's own test, two-sided at the row's planning level α_plan (the level Holm would give it next
in its family: α / (rows of the family not yet rejected)):

- one-sample / paired t: `statsmodels.stats.power.TTestPower` with effect size d = |estimate − null| / sd;
- Welch between two runs: `TTestIndPower` (equal seeds in both runs) with d = |difference| / √((sd_a² + sd_b²)/2);
- a normal statistic (the AUROC): its standard error scales as 1/√seeds;
- per-sparsity cells: the most promising cell at α_plan / m, its seeds scaled up by the share of the run's seeds
  that have a value in that cell.

A row whose observed effect lies inside its equivalence margin can also decide by TOST: its seeds are the fewest
with TOST power ≥ 80% at the observed effect (the noncentral-t approximation P(T_low > c) + P(T_high < −c) − 1);
the row needs the smaller of the two routes. The observed effect and spread are estimates, so a plan is a guide
(the sequential mode, `analysis.sequential`, keeps the error rates whatever the plan's accuracy).
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from fairprune_jax.analysis.decisions import Test

POWER = 0.8
MAX_SEEDS = 100_000


class Plan(NamedTuple):
    """Smallest detectable effect (analysis scale) at the current seeds, and the seeds needed and by which test."""

    mde: float
    seeds_needed: float  # per run; NaN when nothing can be planned (no spread), inf when the effect is 0
    route: str  # "difference", "equivalence" or ""


def _ceil(x: float) -> float:
    return float(math.ceil(x - 1e-9)) if np.isfinite(x) else x


def _solve(fn, **kw) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(fn(**kw))
        except (ValueError, RuntimeError, ZeroDivisionError):
            return np.nan


def _t_seeds(d: float, alpha: float, power: float, welch: bool) -> float:
    """Seeds (per run) for a two-sided t test of effect size d at `alpha` with `power`."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if not np.isfinite(d):
        return np.nan
    if d <= 0:
        return np.inf
    solver = TTestIndPower() if welch else TTestPower()
    n = _solve(solver.solve_power, effect_size=d, alpha=alpha, power=power, alternative="two-sided")
    return max(_ceil(n), 2.0) if np.isfinite(n) else np.nan


def tost_power(effect: float, sd: float, n: int, margin: float, alpha: float) -> float:
    """Approximate power of the one-sample TOST at true effect `effect` (relative to the null) with n seeds."""
    if n < 2 or not (sd > 0):
        return 0.0
    se, df = sd / np.sqrt(n), n - 1
    c = sps.t.isf(alpha, df)
    lo = sps.nct.sf(c, df, (effect + margin) / se)
    hi = sps.nct.cdf(-c, df, (effect - margin) / se)
    return float(max(0.0, lo + hi - 1.0))


def _tost_seeds(effect: float, sd: float, margin: float, alpha: float, power: float, welch: bool) -> float:
    if not (np.isfinite(margin) and margin > 0 and abs(effect) < margin and sd > 0):
        return np.inf
    scale = np.sqrt(2.0) if welch else 1.0  # a difference of two means: variance sd²(1/n + 1/n)
    lo, hi = 2, 4
    while tost_power(effect, sd * scale, hi, margin, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > MAX_SEEDS:
            return np.inf
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tost_power(effect, sd * scale, mid, margin, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return float(hi)


def spread(test: Test) -> float:
    """The per-seed sd behind a row's effect size (pooled for Welch)."""
    sd = np.asarray(test.sd, float)
    return float(np.sqrt(np.mean(sd ** 2))) if len(sd) else np.nan


def plan(test: Test, alpha: float, power: float = POWER) -> Plan:
    """`Plan` of one row's test at planning level `alpha`."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if test.kind == "cells":
        m = max(len(test.cells), 1)
        full = max((c.seeds for c in test.cells), default=0)
        plans = []
        for c in test.cells:  # a cell missing some seeds' values (α_t ≤ 0 on a log scale) needs more seeds per run
            p = plan(c, alpha / m, power)
            scale = full / c.seeds if c.seeds else np.nan
            plans.append(p._replace(seeds_needed=_ceil(p.seeds_needed * scale) if np.isfinite(scale)
                                    else np.nan))
        need = [p.seeds_needed for p in plans if np.isfinite(p.seeds_needed)]
        best = min(plans, key=lambda p: p.seeds_needed if np.isfinite(p.seeds_needed) else np.inf) if plans \
            else Plan(np.nan, np.nan, "")
        mde = float(np.nanmin([p.mde for p in plans])) if plans else np.nan
        return Plan(mde, min(need) if need else best.seeds_needed, best.route)
    effect = test.estimate - test.null
    if test.kind == "normal":
        n0 = test.seeds
        z = sps.norm.isf(alpha / 2) + sps.norm.ppf(power)
        mde = z * test.se
        need = n0 * (z * test.se / abs(effect)) ** 2 if effect and n0 else np.inf
        return Plan(mde, max(_ceil(need), 2.0), "difference")
    sd = spread(test)
    welch = test.kind == "welch"
    if not (np.isfinite(sd) and sd > 0) or test.seeds < 2:
        return Plan(np.nan, np.nan, "")
    if welch:
        n1, n2 = test.n
        d = _solve(TTestIndPower().solve_power, nobs1=n1, ratio=n2 / n1, alpha=alpha, power=power,
                   alternative="two-sided")
    else:
        d = _solve(TTestPower().solve_power, nobs=test.seeds, alpha=alpha, power=power, alternative="two-sided")
    mde = d * sd
    diff = _t_seeds(abs(effect) / sd, alpha, power, welch)
    eq = _tost_seeds(effect, sd, test.margin, alpha, power, welch)
    if np.isfinite(eq) and (not np.isfinite(diff) or eq < diff):
        return Plan(mde, eq, "equivalence")
    return Plan(mde, diff, "difference")
