"""Tests, verdicts, Holm and seed plans of the claims protocol against independent computations, and the per-seed
estimands (vectorised) against scipy row by row."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from fairprune_jax.analysis import decisions as D
from fairprune_jax.analysis import estimands as E
from fairprune_jax.analysis import planning


def _power_t(n: int, d: float, alpha: float, two_sample: bool = False) -> float:
    """Two-sided t power by the noncentral t, written out (one-sample: df n−1, nc d√n; two-sample equal n:
    df 2n−2, nc d√(n/2))."""
    df, nc = (2 * n - 2, d * np.sqrt(n / 2)) if two_sample else (n - 1, d * np.sqrt(n))
    q = sps.t.isf(alpha / 2, df)
    return sps.nct.sf(q, df, nc) + sps.nct.cdf(-q, df, nc)


def test_t_test_and_tost_by_hand():
    x = np.array([0.12, 0.31, -0.05, 0.22, 0.18, 0.09])
    t = D.t_test(x, 0.0, margin=0.3)
    n, m, sd = len(x), x.mean(), x.std(ddof=1)
    se, df = sd / np.sqrt(n), n - 1
    q = sps.t.isf(0.025, df)
    assert (t.estimate, t.ci_low, t.ci_high, t.se) == pytest.approx((m, m - q * se, m + q * se, se))
    assert t.p == pytest.approx(2 * sps.t.sf(abs(m / se), df))
    p_lo, p_hi = sps.t.sf((m + 0.3) / se, df), sps.t.cdf((m - 0.3) / se, df)
    assert t.p_tost == pytest.approx(max(p_lo, p_hi))
    assert (t.t_low, t.t_high) == pytest.approx(((m + 0.3) / se, (m - 0.3) / se))
    assert np.isnan(D.t_test(x, 0.0).p_tost) and np.isnan(D.t_test([1.0], 0.0).p)


def test_welch_and_normal_tests_by_hand():
    a, b = np.array([1.1, 1.4, 0.9, 1.3, 1.2]), np.array([0.7, 1.0, 0.5, 0.9])
    t = D.welch_test(a, b, margin=0.5)
    va, vb = a.var(ddof=1) / 5, b.var(ddof=1) / 4
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 3)
    d = a.mean() - b.mean()
    assert (t.estimate, t.se, t.df) == pytest.approx((d, se, df))
    assert t.p == pytest.approx(2 * sps.t.sf(d / se, df))
    assert t.p_tost == pytest.approx(max(sps.t.sf((d + 0.5) / se, df), sps.t.cdf((d - 0.5) / se, df)))
    z = D.normal_test(0.6, 0.02, 0.5, margin=0.05)
    assert z.p == pytest.approx(2 * sps.norm.sf(5.0)) and z.p_tost == pytest.approx(sps.norm.cdf((0.1 - 0.05) / 0.02))


def test_cells_test_is_bonferroni_of_the_best_cell():
    rng = np.random.default_rng(0)
    v = rng.normal([0.1, 0.5, 1.5], 0.3, size=(6, 3))
    c = D.cells_test(v, ["90%", "95%", "99%"], 0.0, margin=0.2)
    ps = [sps.ttest_1samp(v[:, j], 0.0).pvalue for j in range(3)]
    assert c.p == pytest.approx(min(1, 3 * min(ps)))
    assert c.estimate == pytest.approx(v[:, int(np.argmin(ps))].mean())
    assert c.p_tost == pytest.approx(max(x.p_tost for x in c.cells))


@pytest.mark.parametrize("direction,est,p,q,want", [
    (">", 2.0, 0.01, np.nan, "reproduced"), (">", 0.5, 0.01, np.nan, "not reproduced"),
    ("<", 0.5, 0.01, 0.01, "reproduced"), ("<", 1.0, 0.4, 0.01, "equivalent"), (">", 1.1, 0.4, 0.2, "undecided"),
    (">", 1.1, np.nan, np.nan, "undecided")])
def test_four_verdicts(direction, est, p, q, want):
    assert D.verdict(direction, est, 1.0, p, q) == want


def test_holm_matches_statsmodels_and_keeps_nans():
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.2])
    got = D.holm(p)
    want = multipletests(p[np.isfinite(p)], method="holm")[1]
    np.testing.assert_allclose(got[np.isfinite(p)], want)
    assert np.isnan(got[1])
    np.testing.assert_allclose(E.holm(np.stack([p, p])), np.stack([got, got]))


@pytest.mark.parametrize("effect,sd", [(0.5, 1.0), (0.3, 0.4), (-0.2, 0.5)])
def test_seed_plans_match_an_independent_power_calculation(effect, sd):
    x = np.random.default_rng(1).standard_normal(5)
    x = (x - x.mean()) / x.std(ddof=1) * sd + effect  # exactly this mean and sd
    t = D.t_test(x, 0.0)
    pl = planning.plan(t, alpha=0.05)
    d = abs(effect) / sd
    n = next(n for n in range(2, 10000) if _power_t(n, d, 0.05) >= 0.8)
    assert pl.seeds_needed == n and pl.route == "difference"
    assert _power_t(5, pl.mde / sd, 0.05) == pytest.approx(0.8, abs=1e-4)
    # Welch: equal seeds in both runs, pooled sd
    w = D.welch_test(x + 1.0, x - effect + 1.0)
    pw = planning.plan(w, alpha=0.01)
    dw = abs(effect) / sd
    n2 = next(n for n in range(2, 10000) if _power_t(n, dw, 0.01, two_sample=True) >= 0.8)
    assert pw.seeds_needed == n2


def test_equivalence_route_when_the_effect_is_inside_the_margin():
    x = np.array([0.02, -0.05, 0.04, 0.01, -0.03, 0.0])
    t = D.t_test(x, 0.0, margin=0.1)
    pl = planning.plan(t, alpha=0.05)
    assert pl.route == "equivalence"
    sd = x.std(ddof=1)
    assert planning.tost_power(x.mean(), sd, int(pl.seeds_needed), 0.1, 0.05) >= 0.8
    assert planning.tost_power(x.mean(), sd, int(pl.seeds_needed) - 1, 0.1, 0.05) < 0.8
    # the approximation against simulation at the planned seeds
    rng = np.random.default_rng(2)
    n = int(pl.seeds_needed)
    sims = rng.normal(x.mean(), sd, (4000, n))
    m, se = sims.mean(1), sims.std(1, ddof=1) / np.sqrt(n)
    c = sps.t.isf(0.05, n - 1)
    hit = ((m + 0.1) / se > c) & ((m - 0.1) / se < -c)
    assert hit.mean() == pytest.approx(planning.tost_power(x.mean(), sd, n, 0.1, 0.05), abs=0.03)


def test_vectorised_summaries_match_scipy_row_by_row():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 6)) + 0.3
    x[2, 4] = np.nan
    s = E.t_summary(x, null=0.1)
    for i, row in enumerate(x):
        r = row[np.isfinite(row)]
        tt = sps.ttest_1samp(r, 0.1)
        ci = tt.confidence_interval()
        assert (s["p"][i], s["ci_low"][i], s["ci_high"][i]) == pytest.approx((tt.pvalue, ci.low, ci.high))
    y = rng.standard_normal((7, 4))
    w = E.welch_summary(x, y)
    for i in range(7):
        tt = sps.ttest_ind(x[i][np.isfinite(x[i])], y[i], equal_var=False)
        assert (w["p"][i], w["df"][i]) == pytest.approx((tt.pvalue, tt.df))


def test_per_seed_statistics():
    a = np.array([[[1.0, 2.0, 4.0], [2.0, -20.0, 8.0]]])  # [S=1, C=2, J=3]
    s = [0.9, 0.95, 0.99]
    assert E.seed_mean(a)[0] == pytest.approx(np.mean(a))
    assert E.seed_median(a)[0] == pytest.approx(np.median(a))
    assert E.seed_log_median(a)[0] == pytest.approx(np.log(np.median(a)))
    np.testing.assert_allclose(E.seed_cells(a)[0], [1.5, -9.0, 6.0])
    x = -np.log1p(-np.array(s))
    assert E.seed_trend_ols(a, s)[0] == pytest.approx(np.polyfit(x, [1.5, -9.0, 6.0], 1)[0])
    flat_x = np.repeat([s], 2, 0).ravel()
    assert E.seed_trend_kendall(a, s)[0] == pytest.approx(sps.kendalltau(flat_x, a.ravel()).statistic)
    # −∞ (α_t ≤ 0 on the log-excess scale) ranks lowest for the median
    assert E.seed_median(np.array([[[-np.inf, 0.2, 0.5]]]))[0] == pytest.approx(0.2)
    assert E.median_of_diffs(a[:, :1], a[:, 1:])[0] == pytest.approx(np.median([-1.0, 22.0, -4.0]))
    assert E.log_ratio(a[:, :1], a[:, 1:])[0] == pytest.approx(np.log(2.0) - np.log(2.0))


def test_network_array_places_values_and_drops_flagged():
    t = pd.DataFrame({"seed": [0, 0, 1, 1], "criterion": ["mp", "up", "mp", "up"], "requested_sparsity": [0.9] * 4,
                      "alpha": [1.0, 2.0, 3.0, 4.0], "flagged": [False, False, True, False]})
    seeds, arr = E.network_array(t, "alpha", criteria=["mp", "up"], sparsities=[0.9, 0.95])
    assert list(seeds) == [0, 1] and arr.shape == (2, 2, 2)
    np.testing.assert_array_equal(arr[:, :, 0], [[1.0, 2.0], [np.nan, 4.0]])
    assert np.isnan(arr[:, :, 1]).all()
