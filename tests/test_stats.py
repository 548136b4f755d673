"""Statistics of E[α_t]: docs/methods.md §8 vectors, edge cases, and planted-effect simulations with known truth."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from fairprune_jax.analysis import intensification as I
from fairprune_jax.analysis import pooled as P
from fairprune_jax.analysis import stats as S

TRUTH = {1: 0.8, 2: 1.3}  # planted E[α_t]: de-intensification at low sparsity, intensification at high


def test_tier_a_vector():
    r = S.tier_a([1.375, 1.2, 1.5])
    assert r["mean"] == pytest.approx(1.3583333, abs=1e-7)
    assert r["sd"] == pytest.approx(0.1506928, abs=1e-7)
    assert r["ci_low"] == pytest.approx(0.9839916, abs=1e-7)
    assert r["ci_high"] == pytest.approx(1.7326751, abs=1e-7)
    assert r["p"] == pytest.approx(.0542, abs=5e-5)
    assert r["verdict"] == "inconclusive"


def test_tier_a_edge_cases():
    one = S.tier_a([1.4])
    assert np.isnan(one["ci_low"]) and one["verdict"] == "inconclusive" and "fewer than two" in one["reason"]
    flat = S.tier_a([1.2, 1.2, np.nan, 1.2])
    assert flat["n"] == 3 and flat["ci_low"] == flat["ci_high"] == pytest.approx(1.2)
    assert flat["verdict"] == "inconclusive" and "zero variance" in flat["reason"]
    assert S.verdict(1.01, 1.3) == "intensification" and S.verdict(.7, .99) == "de-intensification"
    assert S.verdict(.9, 1.1) == "inconclusive" and S.verdict(np.nan, np.nan) == "inconclusive"


def _welch_long(x, y, *, accuracy_shift=0.0):
    """A long table whose class-0 Welch samples are exactly x (dense) and y (pruned)."""
    rows = []
    for s, (xi, yi) in enumerate(zip(x, y)):
        a0 = .5 + accuracy_shift * s
        at = .4 - accuracy_shift * s
        for c, (r0, rt) in enumerate([(a0 + xi, at + yi), (a0 - xi, at - yi)]):
            rows.append(dict(dataset="d", model="m", criterion="MP", level=1, seed=s, **{"class": c},
                             r0=r0, a0=a0, rt=rt, at=at))
    return pd.DataFrame(rows)


def test_welch_vector():
    x, y = [.02, .03, .025], [-.01, 0, -.02]
    w = S.welch_per_class(_welch_long(x, y), accuracy="own")
    row = w[w["class"] == 0].iloc[0]
    assert row["t_stat"] == pytest.approx(5.4222, abs=1e-4)
    assert row["df"] == pytest.approx(2.9412, abs=1e-4)
    assert row["p"] == pytest.approx(.01295, abs=1e-5)
    # population-mean accuracy: constant accuracies give the same samples
    w2 = S.welch_per_class(_welch_long(x, y))
    assert w2.loc[w2["class"] == 0, "t_stat"].iloc[0] == pytest.approx(5.4222, abs=1e-4)
    # BH across the family (two classes here) against statsmodels directly
    np.testing.assert_allclose(w["p_bh"], multipletests(w["p"], method="fdr_bh")[1])


def test_welch_population_mean_accuracy_option_differs_from_own():
    x, y = [.02, .03, .025, .01], [-.01, 0, -.02, .0]
    own = S.welch_per_class(_welch_long(x, y, accuracy_shift=.01), accuracy="own")
    pop = S.welch_per_class(_welch_long(x, y, accuracy_shift=.01))
    # own: samples are x and y exactly; population: r − ā where ā is the seed mean
    assert own.loc[0, "t_stat"] == pytest.approx(5.0, rel=.5)
    a0 = .5 + .01 * np.arange(4)
    at = .4 - .01 * np.arange(4)
    xx = a0 + np.array(x) - a0.mean()
    yy = at + np.array(y) - at.mean()
    from scipy.stats import ttest_ind

    assert pop.loc[0, "t_stat"] == pytest.approx(ttest_ind(xx, yy, equal_var=False).statistic)
    one = S.welch_per_class(_welch_long(x[:1], y[:1]))
    assert one["p"].isna().all() and (one["reason"] != "").all()


def test_welch_with_a_class_missing_for_some_seeds():
    x, y = [.02, .03, .025, .04], [-.01, 0, -.02, .01]
    long = _welch_long(x, y)
    long.loc[(long["seed"] == 3) & (long["class"] == 0), ["r0", "rt"]] = np.nan
    long.loc[long["class"] == 1, ["r0", "rt"]] = np.nan  # absent everywhere
    w = S.welch_per_class(long, accuracy="own").set_index("class")
    from scipy.stats import ttest_ind

    assert w.loc[0, "n_dense"] == 3
    assert w.loc[0, "t_stat"] == pytest.approx(ttest_ind(x[:3], y[:3], equal_var=False).statistic)
    assert np.isnan(w.loc[1, "p"]) and "fewer than two" in w.loc[1, "reason"]


def _simulate(n_sims, *, n_seeds=8, k=10, tau=0.05, noise=0.015, seed=0, levels=TRUTH):
    """Recall tables with a planted E[α_t] per level: δ_t = (α + u_s) δ_0 + ε, balanced classes.

    Each simulation is its own `dataset` so one call analyses all of them.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for sim in range(n_sims):
        for s in range(n_seeds):
            a0 = rng.uniform(.7, .85)
            d0 = rng.normal(0, .08, k)
            d0 -= d0.mean()  # balanced: accuracy = mean recall
            r0 = a0 * (1 + d0)
            base = dict(dataset=f"sim{sim}", model="m", criterion="MP", seed=s)
            for c in range(k):
                rows.append({**base, "level": 0, "requested_sparsity": 0.0, "actual_sparsity": 0.0, "class": c,
                             "n": 1000, "recall": r0[c], "accuracy": r0.mean()})
            for lev, alpha in levels.items():
                at = a0 - .02 * lev
                eps = rng.normal(0, noise, k)
                dt = (alpha + tau * rng.standard_normal()) * d0 + eps - eps.mean()
                rt = at * (1 + dt)
                for c in range(k):
                    rows.append({**base, "level": lev, "requested_sparsity": .4 * lev,
                                 "actual_sparsity": .4 * lev, "class": c, "n": 1000, "recall": rt[c],
                                 "accuracy": rt.mean()})
    return pd.DataFrame(rows)


def test_planted_effect_tier_a_recovers_truth_and_covers_nominally():
    n_sims = 200
    alpha = I.alpha(I.long_table(_simulate(n_sims)))
    summ = S.summarize(alpha, flagged="include")
    assert len(summ) == n_sims * len(TRUTH)
    truth = summ["level"].map(TRUTH)
    covered = (summ["ci_low"] <= truth) & (truth <= summ["ci_high"])
    assert 0.90 <= covered.mean() <= 0.985
    for lev, a in TRUTH.items():
        sel = summ["level"] == lev
        assert summ.loc[sel, "mean"].mean() == pytest.approx(a, abs=0.01)
        want = "intensification" if a > 1 else "de-intensification"
        assert (summ.loc[sel, "verdict"] == want).mean() > 0.9
    # Holm across the cells of the call, against statsmodels directly
    np.testing.assert_allclose(summ["p_holm"], multipletests(summ["p"], method="holm")[1])


def test_planted_effect_mixed_model_recovers_truth():
    n_sims = 25
    long = I.long_table(_simulate(n_sims, seed=1, levels={2: 1.3}))
    mm = S.mixed_model(long)
    assert len(mm) == n_sims and (mm["method"] == "mixedlm").all()
    assert mm["alpha"].mean() == pytest.approx(1.3, abs=0.03)
    covered = ((mm["ci_low"] <= 1.3) & (1.3 <= mm["ci_high"])).mean()
    assert covered >= 0.8
    assert (mm["verdict"] == "intensification").mean() > 0.9
    assert np.allclose(mm["z"], (mm["alpha"] - 1) / mm["se"])


def test_mixed_model_edge_cases(monkeypatch):
    long = I.long_table(_simulate(1, n_seeds=4, seed=2, levels={2: 1.3}))
    # one seed: estimate only, interval undefined, inconclusive
    one = S.mixed_model(long[long["seed"] == 0]).iloc[0]
    assert one["method"] == "pooled_ols" and np.isnan(one["ci_low"]) and one["verdict"] == "inconclusive"
    assert np.isfinite(one["alpha"]) and "fewer than two seeds" in one["reason"]
    # no seed-to-seed slope variation at all: τ² ≈ 0 is flagged, the fit equals pooled OLS
    exact = long.assign(dt=1.3 * long["d0"] + 1e-3 * np.sin(np.arange(len(long))))
    row = S.mixed_model(exact).iloc[0]
    assert row["tau2_zero"] and "τ²≈0" in row["reason"]
    x, y = exact["d0"].to_numpy(), exact["dt"].to_numpy()
    assert row["alpha"] == pytest.approx((x * y).sum() / (x * x).sum(), rel=1e-4)

    # a failing fit falls back to pooled OLS with seed-clustered errors and says so
    def boom(cell):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(S, "_fit_mixed", boom)
    fb = S.mixed_model(long).iloc[0]
    assert fb["method"] == "pooled_ols_cluster_seed" and "LinAlgError" in fb["reason"]
    assert fb["ci_low"] < fb["alpha"] < fb["ci_high"]


def test_summarize_reports_with_and_without_flagged_and_counts_dropped():
    alpha = pd.DataFrame({"dataset": "d", "model": "m", "criterion": "MP", "level": 1, "seed": range(6),
                          "t": .5, "alpha": [1.2, 1.3, 1.25, 5.0, np.nan, 1.22],
                          "flagged": [False, False, False, True, False, False]})
    summ = S.summarize(alpha)
    assert list(summ["subset"]) == ["all", "unflagged"]
    allr, unf = summ.iloc[0], summ.iloc[1]
    assert allr["n_seeds"] == 5 and unf["n_seeds"] == 4 and allr["n_dropped"] == 1 and allr["n_flagged"] == 1
    assert unf["mean"] == pytest.approx(np.mean([1.2, 1.3, 1.25, 1.22]))
    assert "dropped" in allr["reason"] and "excluded" in unf["reason"]
    assert unf["verdict"] == "intensification"
    single = S.summarize(alpha[alpha["seed"] == 0], flagged="include").iloc[0]
    assert np.isnan(single["ci_low"]) and single["verdict"] == "inconclusive"


def test_pooled_ols_recovers_moderators_and_matches_lstsq():
    rng = np.random.default_rng(5)
    rows = []
    effect = {("mp", 1): .8, ("mp", 2): 1.3, ("up", 1): .7, ("up", 2): 1.2}
    for s in range(12):
        d0 = rng.normal(0, .1, 10)
        for (crit, lev), a in effect.items():
            dt = a * d0 + rng.normal(0, .01, 10)
            for c in range(10):
                rows.append(dict(dataset="mnist", model="m", criterion=crit, level=lev, seed=s,
                                 traj=f"mnist|m|{s}", d0=d0[c], dt=dt[c]))
    long = pd.DataFrame(rows)
    fit = P.pooled_ols(long, bootstrap=200, seed=3)
    tab = fit.table.set_index("term")
    assert fit.dropped_moderators == ["dataset", "model"] and fit.n_clusters == 12
    assert tab.loc["d0", "coef"] == pytest.approx(.8, abs=.02)
    lev_term = [t for t in tab.index if "C(level)" in t][0]
    crit_term = [t for t in tab.index if "C(criterion" in t][0]
    assert "Treatment('mp')" in crit_term and "up" in crit_term
    assert tab.loc[lev_term, "coef"] == pytest.approx(.5, abs=.02) and tab.loc[lev_term, "rq"] == "RQ1"
    assert tab.loc[crit_term, "coef"] == pytest.approx(-.1, abs=.02) and tab.loc[crit_term, "rq"] == "RQ4"
    assert tab.loc[lev_term, "verdict"] == "intensification"
    assert tab.loc[crit_term, "verdict"] == "de-intensification"
    assert (tab["boot_low"] <= tab["coef"]).all() and (tab["coef"] <= tab["boot_high"]).all()
    # independent least squares on a hand-built design
    d0 = long["d0"].to_numpy()
    X = np.column_stack([d0, d0 * (long["level"] == 2), d0 * (long["criterion"] == "up")])
    coef = np.linalg.lstsq(X, long["dt"].to_numpy(), rcond=None)[0]
    np.testing.assert_allclose(tab.loc[["d0", lev_term, crit_term], "coef"], coef, rtol=1e-8)
    # RQ4 by ratio: the criterion × level interaction
    inter = P.pooled_ols(long, criterion_by_level=True)
    tab2 = inter.table.set_index("term")
    both = [t for t in tab2.index if "C(criterion" in t and "C(level" in t]
    assert len(both) == 1 and tab2.loc[both[0], "moderator"] == "criterion:level" and tab2.loc[both[0], "rq"] == "RQ4"
    assert tab2.loc[both[0], "coef"] == pytest.approx(0.0, abs=.06)  # planted effects are additive (se ≈ .02)


def test_bootstrap_alpha_is_seeded_and_handles_edges():
    alpha = pd.DataFrame({"dataset": "d", "model": "m", "criterion": "MP", "level": [1] * 6 + [2],
                          "seed": list(range(6)) + [0], "alpha": [1.2, 1.3, 1.25, 1.4, 1.1, 1.22, 1.5]})
    a = S.bootstrap_alpha(alpha, n_resamples=999, seed=4)
    b = S.bootstrap_alpha(alpha, n_resamples=999, seed=4)
    pd.testing.assert_frame_equal(a, b)
    r = a.iloc[0]
    assert r["boot_low"] < r["mean"] < r["boot_high"] and r["n_seeds"] == 6
    assert r["verdict"] == "intensification"
    assert np.isnan(a.iloc[1]["boot_low"]) and "fewer than two" in a.iloc[1]["reason"]
    c = S.bootstrap_alpha(alpha, n_resamples=999, seed=5)
    assert c.iloc[0]["boot_low"] != r["boot_low"]


def _with_undefined_network(long, seed=99):
    """`long` plus one network per (criterion, level) of a new seed whose dense δ0 is ~0 (Σδ0² = K·1e-18 < 1e-12)
    and whose δt is large noise: docs/methods.md §7 drops it, so no tier may see it."""
    rng = np.random.default_rng(seed)
    bad = long[long["seed"] == long["seed"].iloc[0]].copy()
    bad["seed"] = seed
    bad["traj"] = bad["traj"].astype(str) + f"|bad{seed}"
    bad["d0"] = 1e-9
    bad["r0"] = bad["a0"] * (1 + bad["d0"])
    bad["dt"] = rng.normal(0, 0.3, len(bad))
    bad["rt"] = bad["at"] * (1 + bad["dt"])
    return pd.concat([long, bad], ignore_index=True)


def test_undefined_networks_are_dropped_from_every_tier_and_counted_once():
    long = I.long_table(_simulate(1, n_seeds=5, seed=11, levels={1: .8, 2: 1.3}))
    up = long.assign(criterion="up", dt=0.9 * long["dt"] + 0.01 * np.sin(np.arange(len(long))))
    clean = pd.concat([long, up], ignore_index=True)
    dirty = _with_undefined_network(clean)
    assert I.undefined_networks(dirty).sum() == (dirty["seed"] == 99).sum()
    # Tier A: alpha marks the network dropped, summarize counts it
    a = I.alpha(dirty)
    assert a.loc[a["seed"] == 99, "dropped"].all() and not a.loc[a["seed"] != 99, "dropped"].any()
    summ = S.summarize(a, flagged="include")
    assert (summ["n_dropped"] == 1).all()
    # Tier B: the same fit as without the network, which is counted once per cell
    mm_c, mm_d = S.mixed_model(clean), S.mixed_model(dirty)
    assert (mm_d["n_dropped"] == 1).all() and (mm_c["n_dropped"] == 0).all()
    assert mm_d["reason"].str.contains("1 network\\(s\\) with Σδ0² < 1e-12").all()
    for c in ("alpha", "se", "ci_low", "ci_high", "tau2", "n_obs", "n_seeds"):
        np.testing.assert_allclose(mm_d[c].to_numpy(float), mm_c[c].to_numpy(float), rtol=1e-10)
    # Tier C: same coefficients, errors and clusters; one network per (criterion, level) of seed 99 = 4
    pc, pd_ = P.pooled_ols(clean), P.pooled_ols(dirty)
    assert pd_.n_dropped == 4 and pc.n_dropped == 0 and pd_.n_clusters == pc.n_clusters
    assert any("4 network(s) with Σδ0²" in n for n in pd_.notes)
    pd.testing.assert_frame_equal(pd_.table, pc.table, rtol=1e-10)
    # Welch: same samples, tests and BH
    wc, wd = S.welch_per_class(clean), S.welch_per_class(dirty)
    assert (wd["n_dropped"] == 1).all() and (wc["n_dropped"] == 0).all()
    for c in ("n_dense", "n_pruned", "t_stat", "df", "p", "p_bh"):
        np.testing.assert_allclose(wd[c].to_numpy(float), wc[c].to_numpy(float), rtol=1e-10)
    # a cell whose every network is undefined keeps its rows, with the reason
    only_bad = dirty[dirty["seed"] == 99]
    row = S.mixed_model(only_bad).iloc[0]
    assert row["n_dropped"] == 1 and row["n_obs"] == 0 and "no usable classes" in row["reason"]
    w = S.welch_per_class(only_bad)
    assert len(w) == 2 * 2 * 10 and w["p"].isna().all() and (w["n_dropped"] == 1).all()


def test_criterion_labels_are_normalised_at_the_table_boundary():
    long = I.long_table(_simulate(1, n_seeds=6, seed=12, levels={1: .8, 2: 1.3}))
    up = long.assign(criterion="up", dt=1.1 * long["dt"] + 0.01 * np.cos(np.arange(len(long))))
    lower = pd.concat([long, up], ignore_index=True)
    shouted = lower.assign(criterion=lower["criterion"].map({"mp": " MP", "up": "Up "}))
    want = P.pooled_ols(lower)
    assert any("Treatment('mp')" in t for t in want.table["term"])
    for table, ref in ((shouted, None), (shouted, {"criterion": "MP"}), (lower, {"criterion": " Mp"})):
        got = P.pooled_ols(table, reference=ref)
        pd.testing.assert_frame_equal(got.table, want.table)
        assert not any("not among" in n for n in got.notes)
    for fn in (S.mixed_model, S.welch_per_class):
        pd.testing.assert_frame_equal(fn(shouted), fn(lower))
    assert set(S.summarize(I.alpha(shouted))["criterion"]) == {"mp", "up"}
    assert set(S.bootstrap_alpha(I.alpha(shouted), n_resamples=99)["criterion"]) == {"mp", "up"}
    assert I.normalise_labels(pd.DataFrame({"criterion": [" GP", "mp", 3]}))["criterion"].tolist() == ["gp", "mp", 3]
