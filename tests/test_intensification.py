"""δ, α_{t,c}, α_t and variants: docs/methods.md §7 vectors, the recall-table → long-table path, edge cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairprune_jax import evaluate
from fairprune_jax.analysis import intensification as I

R0 = [.90, .80, .70, .60]
RT = [.92, .78, .66, .52]


def test_balanced_vector_all_variants():
    out = I.alpha_from_vectors(R0, RT)
    assert out["a0"] == pytest.approx(.75) and out["at"] == pytest.approx(.72)
    np.testing.assert_allclose(out["d0"], [0.2, 0.0666667, -0.0666667, -0.2], atol=1e-7)
    np.testing.assert_allclose(out["dt"], [0.2777778, 0.0833333, -0.0833333, -0.2777778], atol=1e-7)
    np.testing.assert_allclose(out["alpha_c"], [1.3888889, 1.25, 1.25, 1.3888889], atol=1e-7)
    assert out["alpha"] == pytest.approx(1.375, abs=1e-9)
    assert out["v1"] == pytest.approx(1.32, abs=1e-9)
    assert out["v2"] == pytest.approx(1.375, abs=1e-9)
    assert out["v2_intercept"] == pytest.approx(-0.375, abs=1e-9)
    assert out["v3"] == pytest.approx(1.3194444, abs=1e-7)
    assert out["v4"] == 1.0
    assert not out["dropped"] and out["reason"] == ""


def test_unbalanced_vector():
    out = I.alpha_from_vectors(R0, RT, n=[100, 300, 100, 100])
    assert out["a0"] == pytest.approx(.7666667, abs=1e-7) and out["at"] == pytest.approx(.74)
    assert out["alpha"] == pytest.approx(1.3648649, abs=1e-7)
    assert out["v2"] == pytest.approx(1.3675676, abs=1e-7)
    assert out["v2_intercept"] == pytest.approx(-0.3648649, abs=1e-7)


def _counts_for(recalls, n):
    """A K×K confusion with the given per-class recall (misses go to the next class)."""
    k = len(n)
    c = np.zeros((k, k), np.int64)
    for i, (r, ni) in enumerate(zip(recalls, n)):
        hit = int(round(r * ni))
        c[i, i] = hit
        c[i, (i + 1) % k] = ni - hit
    return c


@pytest.mark.parametrize("n, expect", [([100] * 4, (1.375, 1.375)), ([100, 300, 100, 100], (1.3648649, 1.3675676))])
def test_vectors_through_recall_table_and_long_table(n, expect):
    counts = np.stack([_counts_for(R0, n), _counts_for(RT, n)])[None, None]  # [S=1, M=1, P=2, K, K]
    rt = evaluate.recall_table(counts, dataset="toy", model="m", criteria=["MP"], seeds=[0],
                               requested_sparsity=[0.0, 0.5], actual_sparsity=[0.0, 0.49])
    long = I.long_table(rt)
    assert len(long) == 4 and set(long.columns) >= set(I.LONG_COLUMNS)
    assert (long["t"] == 0.49).all() and not long["shared_dense"].any()
    np.testing.assert_allclose(long["alpha_c"], long["dt"] / long["d0"])
    a = I.alpha(long)
    assert len(a) == 1
    assert a["alpha"].iloc[0] == pytest.approx(expect[0], abs=1e-7)
    assert a["v2"].iloc[0] == pytest.approx(expect[1], abs=1e-7)


def _recall_df(r0, rt, *, seed=0, criterion="MP", dense_criterion=None, n=None, level=1, dataset="d"):
    k = len(r0)
    n = np.full(k, 100) if n is None else np.asarray(n)
    rows = []
    w = n / max(n.sum(), 1)

    def acc(r):
        return float(np.nansum(w * np.nan_to_num(r)))

    for crit, lev, req, r in [(dense_criterion or criterion, 0, 0.0, r0), (criterion, level, 0.5, rt)]:
        r = np.asarray(r, float)
        for c in range(k):
            rows.append(dict(dataset=dataset, model="m", criterion=crit, seed=seed, level=lev, requested_sparsity=req,
                             actual_sparsity=req * 0.98, **{"class": c}, n=int(n[c]), recall=r[c], accuracy=acc(r)))
    return pd.DataFrame(rows)


def test_alpha_matches_independent_least_squares():
    rng = np.random.default_rng(1)
    frames = []
    for s in range(5):
        r0 = rng.uniform(.5, .95, 10)
        rt = np.clip(r0 + rng.normal(0, .05, 10), 0, 1)
        frames.append(_recall_df(r0, rt, seed=s))
    long = I.long_table(pd.concat(frames, ignore_index=True))
    a = I.alpha(long).set_index("seed")
    for s, f in long.groupby("seed"):
        x, y = f["d0"].to_numpy(), f["dt"].to_numpy()
        slope = np.linalg.lstsq(x[:, None], y, rcond=None)[0][0]
        assert a.loc[s, "alpha"] == pytest.approx(slope, rel=1e-10)
        X = np.column_stack([np.ones_like(x), f["r0"] / f["a0"]])
        icpt, sl = np.linalg.lstsq(X, f["rt"] / f["at"], rcond=None)[0]
        assert a.loc[s, "v2"] == pytest.approx(sl, rel=1e-9) and a.loc[s, "v2_intercept"] == pytest.approx(icpt)
        u0, ut = f["r0"] - f["a0"], f["rt"] - f["at"]
        assert a.loc[s, "v1"] == pytest.approx((u0 * ut).sum() / (u0 ** 2).sum(), rel=1e-10)


def test_absent_class_is_excluded_with_reason():
    r0 = [.9, .8, np.nan, .7, .6]
    rt = [.92, .78, np.nan, .66, .52]
    n = [100, 100, 0, 100, 100]
    long = I.long_table(_recall_df(r0, rt, n=n))
    row = long[long["class"] == 2].iloc[0]
    assert np.isnan(row["d0"]) and "absent" in row["reason"]
    a = I.alpha(long).iloc[0]
    assert a["alpha"] == pytest.approx(1.375, abs=1e-9)  # the four present classes are the §2 vector
    assert a["n_classes_used"] == 4 and a["n_classes_absent"] == 1 and "absent" in a["reason"]


def test_zero_d0_class_gets_weight_zero_and_all_zero_drops_network():
    # class 2 has recall equal to the dense accuracy: δ0 = 0, α_c NaN, α unchanged by its δt
    r0 = [.9, .75, .75, .6]
    long = I.long_table(_recall_df(r0, [.95, .70, .60, .55]))
    assert np.isnan(long.loc[long["class"] == 1, "alpha_c"]).all()
    d0, dt = long["d0"].to_numpy(), long["dt"].to_numpy()
    a = I.alpha(long).iloc[0]
    assert a["alpha"] == pytest.approx((d0 * dt).sum() / (d0 ** 2).sum())
    # every class at the accuracy: Σδ0² = 0 → NaN, dropped, counted
    flat = I.alpha(I.long_table(_recall_df([.8] * 4, [.9, .7, .8, .8]))).iloc[0]
    assert np.isnan(flat["alpha"]) and flat["dropped"] and "dropped" in flat["reason"]
    assert np.isnan(flat["v1"]) and np.isnan(flat["v2"])


def test_near_chance_and_one_class_flags():
    r0 = [.9, .8, .7, .6]
    chance = I.alpha(I.long_table(_recall_df(r0, [.40, .30, .20, .05]))).iloc[0]  # a_t = .2375 ≤ 1.5/4
    assert chance["near_chance"] and chance["flagged"] and "near chance" in chance["reason"]
    assert np.isfinite(chance["alpha"])  # flagged, still computed: reported with and without
    one = I.alpha(I.long_table(_recall_df(r0, [1.0, 0, 0, 0]))).iloc[0]
    assert one["one_class"] and one["flagged"]
    ok = I.alpha(I.long_table(_recall_df(r0, [.92, .78, .66, .52]), chance=1.0)).iloc[0]
    assert not ok["flagged"]


def test_shared_dense_pairing_and_trajectories():
    r0, rt_mp, rt_up = [.9, .8, .7, .6], [.92, .78, .66, .52], [.9, .8, .7, .6]
    shared = pd.concat([_recall_df(r0, rt_mp, dense_criterion="dense"),
                        _recall_df(r0, rt_up, criterion="UP", dense_criterion="dense")])
    shared = shared.drop_duplicates(["criterion", "level", "class"])  # one shared dense network
    long = I.long_table(shared)
    assert set(long["criterion"]) == {"mp", "up"} and long["shared_dense"].all()  # labels normalised
    assert set(long["traj"]) == {"d|m|0"}
    a = I.alpha(long).set_index("criterion")
    assert a.loc["mp", "alpha"] == pytest.approx(1.375) and a.loc["up", "alpha"] == pytest.approx(1.0)
    own = I.long_table(_recall_df(r0, rt_mp))
    assert not own["shared_dense"].any() and set(own["traj"]) == {"d|m|mp|0"}


def test_missing_or_ambiguous_dense_raises():
    df = _recall_df([.9, .8], [.9, .7])
    with pytest.raises(ValueError, match="no dense network"):
        I.long_table(df[df["level"] > 0])
    with pytest.raises(ValueError, match="several dense"):
        I.long_table(pd.concat([df, df[df["level"] == 0]]))
    with pytest.raises(ValueError, match="missing column"):
        I.long_table(df.drop(columns="accuracy"))
    with pytest.raises(ValueError, match="no pruned"):
        I.long_table(df[df["level"] == 0])
