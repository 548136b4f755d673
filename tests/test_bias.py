"""Paper-2 bias metrics: docs/methods.md §9–10 test vectors, NaN rules, independent computations, a planted simulation."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from fairprune_jax.analysis import bias as B
from fairprune_jax.analysis import bias_identification as BI
from fairprune_jax.analysis import bias_softmax as BSM


# ------------------------------------------------------------------------------------------------ thresholds
def test_calibrated_threshold_science_vector():
    z = np.array([2.0, -1.0, 0.5, 3.0, -2.0])
    y = np.array([1, 0, 1, 1, 0])
    tau = B.calibrate_thresholds(z, y)
    assert tau == 0.5
    assert B.predict(z, tau).sum() == 2  # k − 1 positives: strict >


def test_predict_is_strict_and_broadcasts_per_attribute_and_seed():
    z = np.array([[0.0, 1.0], [0.5, 1.0], [-0.1, 2.0]])
    np.testing.assert_array_equal(B.predict(z), [[0, 1], [1, 1], [0, 1]])  # 0 > 0 is false
    np.testing.assert_array_equal(B.predict(z, [0.5, 1.0]), [[0, 0], [0, 0], [0, 1]])
    zs = np.stack([z, z + 1.0])  # [S=2, N, A]
    out = B.predict(zs, np.array([[0.5, 1.0], [1.5, 2.0]]))  # one τ row per seed
    np.testing.assert_array_equal(out, np.stack([B.predict(z, [0.5, 1.0])] * 2))


def test_calibration_k_zero_guard_and_stacked_seeds():
    z = np.array([[2.0, -1.0], [0.5, 3.0], [-2.0, 0.0]])
    y = np.array([[1, 0], [0, 0], [1, 0]])
    tau = B.calibrate_thresholds(z, y)
    np.testing.assert_array_equal(tau, [0.5, np.inf])  # k = 2 → 2nd largest; k = 0 → +inf
    assert B.predict(z, tau)[:, 1].sum() == 0
    zs = np.stack([z, 2 * z])
    np.testing.assert_array_equal(B.calibrate_thresholds(zs, y), [[0.5, np.inf], [1.0, np.inf]])


def test_group_thresholds_by_hand():
    z = np.array([3.0, 1.0, 2.0, -1.0, 0.0, 4.0])
    y = np.array([1, 0, 1, 1, 1, 0])
    g = np.array([0, 0, 0, 1, 1, 1])
    tau = B.calibrate_thresholds_by_group(z, y, g)
    # group 0 logits [3, 1, 2], k = 2 → 2; group 1 logits [-1, 0, 4], k = 2 → 0
    np.testing.assert_array_equal(tau, [2.0, 0.0])
    np.testing.assert_array_equal(B.predict_by_group(z, tau, g), [1, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="val_groups"):
        B.calibrate_thresholds_by_group(z, y, g[:-1])


# ------------------------------------------------------------------------------------------------ basic metrics
def test_accuracy_predpos_prevalence_by_hand():
    yhat = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    y = np.array([[1, 1], [0, 1], [0, 0], [1, 1]])
    np.testing.assert_allclose(B.accuracy(yhat, y), [0.5, 0.75])
    np.testing.assert_allclose(B.positive_rate(yhat), [0.5, 0.5])
    pf, nf = B.train_prevalence(y, [1, 1, 0, 0])
    np.testing.assert_allclose(pf, [0.5, 1.0])
    np.testing.assert_allclose(nf, [0.5, 0.5])
    with pytest.raises(ValueError, match="labels"):
        B.accuracy(yhat, y[:3])


def test_auc_matches_bruteforce_pairs_with_ties():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, size=(60, 3)).astype(float)  # many ties
    y = rng.integers(0, 2, size=(60, 3))
    got = B.auc(s, y)
    for a in range(3):
        pos, neg = s[y[:, a] == 1, a], s[y[:, a] == 0, a]
        diff = pos[:, None] - neg[None, :]
        want = ((diff > 0) + 0.5 * (diff == 0)).mean()
        assert got[a] == pytest.approx(want)
    assert np.isnan(B.auc([0.1, 0.2], [1, 1]))
    assert B.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------------ bias amplification
def _ba_setup():
    """G = 1: 40 positives of 200; G = 0: 60 of 200; 50 predicted positives per group."""
    g = np.r_[np.ones(200), np.zeros(200)].astype(int)
    y = np.zeros(400, int)
    y[:40] = 1
    y[200:260] = 1
    yhat = np.zeros(400, int)
    yhat[:50] = 1
    yhat[200:250] = 1
    return yhat, y, g


def test_ba_science_vectors():
    yhat, y, g = _ba_setup()
    assert B.bias_amplification(yhat, y, g, 0.30, 0.10) == pytest.approx(0.10)
    assert B.bias_amplification(yhat, y, g, 0.10, 0.30) == pytest.approx(-0.10)
    assert np.isnan(B.bias_amplification(yhat, y, g, 0.20, 0.19))
    assert B.bias_amplification_reasons(yhat, y, g, 0.20, 0.19) == B.BA_SMALL_GAP


def test_ba_nan_rules_and_vectorisation():
    yhat, y, g = _ba_setup()
    few = y.copy()
    few[9:40] = 0  # G = 1 keeps 9 positives
    nopred = np.zeros_like(yhat)
    yh = np.stack([yhat, yhat, nopred], 1)
    yy = np.stack([y, few, y], 1)
    pf, nf = np.array([0.3, 0.3, 0.3]), np.array([0.1, 0.1, 0.1])
    ba = B.bias_amplification(yh, yy, g, pf, nf)
    assert ba[0] == pytest.approx(0.10) and np.isnan(ba[1]) and np.isnan(ba[2])
    assert list(B.bias_amplification_reasons(yh, yy, g, pf, nf)) == ["", B.BA_FEW_POSITIVES, B.BA_NO_PREDICTED]
    # exactly 10 positives is eligible; min(pf, nf) = 0 with pf > 0 is an infinite gap (eligible)
    ten = y.copy()
    ten[10:40] = 0
    assert not np.isnan(B.bias_amplification(yhat, ten, g, 0.3, 0.1))
    assert not np.isnan(B.bias_amplification(yhat, y, g, 0.3, 0.0))
    assert np.isnan(B.bias_amplification(yhat, y, g, 0.0, 0.0))
    # stacked seeds [S, N, A] against labels [N, A]
    st = B.bias_amplification(np.stack([yh, yh]), yy, g, pf, nf)
    assert st.shape == (2, 3)
    np.testing.assert_array_equal(np.isnan(st), np.isnan(np.stack([ba, ba])))


def test_ba_mask_drops_samples():
    yhat, y, g = _ba_setup()
    keep = np.ones(400, int)
    keep[:10] = 0  # drop 10 predicted positives of G = 1, all true positives
    # Σ_S Ŷ / Σ Ŷ = 40/90, Σ_S Y / Σ Y = 30/90
    assert B.bias_amplification(yhat, y, g, 0.3, 0.1, mask=keep) == pytest.approx(10 / 90)


def test_bba_by_hand_and_tau_zero():
    logits = np.array([1.0, 0.0, 2.0, -1.0, 3.0, 0.2])
    y = np.array([1, 1, 0, 0, 1, 0])
    trig = np.array([1, 1, 1, 0, 0, 0])
    # Ŷ = [1,0,1,0,1,1]: Σ_B Ŷ/ΣŶ = 2/4, Σ_B Y/ΣY = 2/3
    assert B.trigger_bias_amplification(logits, y, trig) == pytest.approx(0.5 - 2 / 3)
    assert np.isnan(B.bba(np.zeros(6, int), y, trig))


# ------------------------------------------------------------------------------------------------ uncertainty, R², ECE
def test_uncertainty_science_vector():
    assert B.uncertainty([-3.0, -2.0, 0.0, 1.0, 2.5]) == pytest.approx(0.6)
    z = np.array([[-3.0, 0.1], [-2.0, 0.1], [0.0, 5.0], [1.0, 5.0], [2.5, 5.0]])
    np.testing.assert_allclose(B.uncertainty(z), [0.6, 0.4])
    # σ = [.047, .119, .5, .731, .924]: band .45 ⇔ p ∈ (.05, .95) → .8; band .3 ⇔ p ∈ (.2, .8) → .4
    assert B.uncertainty([-3.0, -2.0, 0.0, 1.0, 2.5], band=0.45) == pytest.approx(0.8)
    assert B.uncertainty([-3.0, -2.0, 0.0, 1.0, 2.5], band=0.3) == pytest.approx(0.4)


def test_interdependence_science_vectors():
    f = np.array(list(itertools.product([0, 1], repeat=3)))
    np.testing.assert_allclose(B.interdependence(f).r2, 0.0, atol=1e-12)
    dup = np.c_[f[:, 0], f[:, 0], f[:, 1]]
    np.testing.assert_allclose(B.interdependence(dup).r2[:2], 1.0, atol=1e-9)
    ab = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    and_ = np.c_[ab, ab[:, 0] & ab[:, 1]]
    np.testing.assert_allclose(B.interdependence(and_).r2, [0.5, 0.5, 2 / 3], atol=1e-6)


def test_interdependence_constant_columns_and_lstsq():
    x = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    r = B.interdependence(x, constant="nan")
    assert np.isnan(r.r2[0]) and r.reason[0] == "constant_target" and r.n_constant == 1
    assert r.reason[1] == "" and np.isfinite(r.r2[1])
    assert B.interdependence(np.ones((5, 1))).reason[0] == "no_predictors"
    rng = np.random.default_rng(2)
    m = rng.integers(0, 2, size=(2, 200, 4)).astype(float)
    m[..., 3] = np.maximum(m[..., 0], m[..., 1])  # correlated column
    got = B.interdependence(m).r2
    assert got.shape == (2, 4)
    for s in range(2):
        for j in range(4):
            yj = m[s, :, j]
            xj = np.c_[np.ones(200), np.delete(m[s], j, axis=1)]
            beta = np.linalg.lstsq(xj, yj, rcond=None)[0]
            want = 1 - ((yj - xj @ beta) ** 2).sum() / ((yj - yj.mean()) ** 2).sum()
            assert got[s, j] == pytest.approx(want, abs=1e-9)


def test_ece_science_vector_and_eleventh_bin():
    assert B.ece([0.05, 0.15, 0.15, 0.95, 0.95], [0, 0, 1, 1, 1]) == pytest.approx(0.17)
    # p = 1 is its own bin: .5·|1 − 0| + .5·|.92 − 1| = .54 (merged with bin .9 it would be .46)
    assert B.ece([1.0, 0.92], [0, 1]) == pytest.approx(0.54)
    p = np.array([[0.05, 1.0], [0.15, 0.92], [0.15, 0.92], [0.95, 1.0], [0.95, 1.0]])
    y = np.array([[0, 0], [0, 1], [1, 1], [1, 0], [1, 0]])
    np.testing.assert_allclose(B.ece(np.stack([p, p]), y), [[0.17, 0.6 * 1 + 0.4 * 0.08]] * 2)
    with pytest.raises(ValueError, match="probs"):
        B.ece([1.2], [1])


def test_group_error_rates_by_hand():
    yhat = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    y = np.array([1, 1, 0, 0, 1, 0, 0, 1])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ge = B.group_error_rates(yhat, y, g)
    np.testing.assert_allclose(ge.fpr, [0.5, 0.5])  # g0: 1 FP of 2 negatives; g1: 1 of 2
    np.testing.assert_allclose(ge.fnr, [0.5, 0.5])
    ge2 = B.group_error_rates(np.c_[yhat, np.ones(8, int)], np.c_[y, y], g)
    np.testing.assert_allclose(ge2.fpr, [[0.5, 1.0], [0.5, 1.0]])
    np.testing.assert_allclose(ge2.fnr, [[0.5, 0.0], [0.5, 0.0]])
    np.testing.assert_allclose(ge2.delta_fpr, [0.0, 0.0])
    np.testing.assert_allclose(B.relative_change([0.3, 0.1], [0.2, 0.2]), [0.5, -0.5])


# ------------------------------------------------------------------------------------------------ softmax analogues
def test_softmax_uncertainty_and_argmax():
    z = np.array([[5.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 9.0], [0.0, 2.0, 0.0]])
    np.testing.assert_array_equal(BSM.argmax_predictions(z), np.eye(3, dtype=int)[[0, 0, 2, 1]])
    conf = special.softmax(z, axis=1).max(1)
    assert BSM.softmax_uncertainty(z) == pytest.approx((conf < 0.9).mean())
    np.testing.assert_allclose(BSM.softmax_uncertainty(z, [0, 1, 2, 1]), [0.0, 1.0, 0.0])


def test_class_offsets_match_predicted_to_true_counts():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=400)
    z = 2.0 * np.eye(4)[labels] + rng.normal(size=(400, 4))
    z[:, 0] += 1.5  # class 0 over-predicted
    b = BSM.calibrate_class_offsets(z, labels)
    before = BSM.argmax_predictions(z).sum(0)
    after = BSM.argmax_predictions(BSM.apply_class_offsets(z, b)).sum(0)
    true = np.bincount(labels, minlength=4)
    assert np.abs(after - true).sum() < np.abs(before - true).sum() / 4
    assert b[0] < b[1:].min()
    bs = BSM.calibrate_class_offsets(np.stack([z, z]), labels)  # stacked seeds
    np.testing.assert_allclose(bs, [b, b])


def test_logit_interdependence_and_softmax_metrics_consistency():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(300, 3))
    z[:, 2] = z[:, 0] - z[:, 1]
    np.testing.assert_allclose(B.logit_interdependence(z).r2, 1.0, atol=1e-9)
    labels = rng.integers(0, 3, size=300)
    g = rng.integers(0, 2, size=300)
    pf, nf = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    m = BSM.softmax_metrics(z, labels, g, pf, nf, triggered=g)
    ba = B.bias_amplification(BSM.argmax_predictions(z), BSM.one_hot(labels, 3), g, pf, nf)
    np.testing.assert_array_equal(np.isnan(m["ba"]), np.isnan(ba))
    np.testing.assert_allclose(m["ba"][~np.isnan(ba)], ba[~np.isnan(ba)])
    assert np.isnan(m["ba"][1])  # pf = nf
    rec = [(z[labels == c].argmax(1) == c).mean() for c in range(3)]
    np.testing.assert_allclose(m["recall"], rec)
    assert set(m) >= {"acc", "recall", "predpos", "ba", "uncertainty", "ece", "r2_logits", "bba"}


def test_multilabel_metrics_bundle():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=(200, 3))
    z = 2 * (y - 0.5) + rng.normal(size=(2, 200, 3))
    g = rng.integers(0, 2, size=200)
    m = B.multilabel_metrics(z, y, g, [0.5, 0.4, 0.3], [0.3, 0.4, 0.5], triggered=g)
    assert all(v.shape == (2, 3) for v in m.values())
    np.testing.assert_allclose(m["acc"], B.accuracy(B.predict(z), y))
    np.testing.assert_allclose(m["dfpr"], m["fpr_g1"] - m["fpr_g0"])
    assert np.isnan(m["ba"][:, 1]).all()
    f = B.metrics_frame(m, ["a", "b", "c"])
    assert len(f) == len(m) * 6 and set(f.columns) == {"seed", "attribute", "metric", "value"}


# ------------------------------------------------------------------------------------------------ aggregation
def test_aggregate_nan_mean_then_seeds():
    v = np.array([[0.1, np.nan, 0.3], [np.nan, np.nan, np.nan], [0.5, 0.5, np.nan]])
    a = B.aggregate(v)
    assert a.mean == pytest.approx(0.35) and a.sd == pytest.approx(np.std([0.2, 0.5], ddof=1))
    assert (a.n_seeds, a.n_seeds_defined, a.n_nan, a.n_values) == (3, 2, 5, 9)
    t = B.aggregate_metrics({"ba": v, "acc": np.ones((3, 3))})
    assert list(t["metric"]) == ["ba", "acc"] and t.loc[1, "sd"] == 0.0


# ------------------------------------------------------------------------------------------------ populations + criteria
DENSE = np.array([[1, 1, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]]).T  # [S=3, N=6]
SPARSE = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 1], [1, 1, 1]]).T
P_BAR = np.array([0.97, 0.45, 0.30, 0.02, 0.92, 0.55])


def test_interdependence_constant_column_follows_the_authors_rule_by_default():
    # sklearn: LinearRegression fits a constant target by its mean; r2_score of a constant y_true is 1.0 when the
    # prediction is exact, else 0.0. Never / always predicted binary columns are reproduced exactly: R² = 1.
    x = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    r = B.interdependence(x)
    np.testing.assert_array_equal(r.r2[[0, 3]], [1.0, 1.0])
    assert list(r.reason) == ["constant_target", "", "", "constant_target"] and r.n_constant == 2
    nan = B.interdependence(x, constant="nan")
    np.testing.assert_array_equal(nan.r2[1:3], r.r2[1:3])  # the rule only touches constant columns
    assert np.isnan(nan.r2[[0, 3]]).all() and nan.n_constant == 2
    # the mean over attributes: constant columns count as 1 (authors) or are left out (nan)
    assert B.aggregate(r.r2).mean == pytest.approx((2 + r.r2[1] + r.r2[2]) / 4)
    assert B.aggregate(nan.r2).mean == pytest.approx((r.r2[1] + r.r2[2]) / 2)
    # exactness, as sklearn: a constant 0.1 whose float mean is 0.10000000000000002 is not reproduced -> 0.0
    z = np.c_[np.full(3, 0.1), [0.0, 1.0, 3.0], [2.0, 0.0, 1.0]]
    assert np.mean(z[:, 0]) != 0.1 and B.logit_interdependence(z).r2[0] == 0.0
    assert B.logit_interdependence(z, constant="nan").r2[0] != B.logit_interdependence(z).r2[0]
    # stacked models: one count per model
    st = B.interdependence(np.stack([x, np.c_[x[:, 1:3], x[:, 1:3]]]))
    np.testing.assert_array_equal(st.n_constant, [2, 0])
    assert st.r2.shape == (2, 4) and np.all(st.r2[0, [0, 3]] == 1.0)
    with pytest.raises(ValueError, match="constant: expected one of"):
        B.interdependence(x, constant="one")


def test_bad_predictions_and_probabilities_are_refused_naming_the_argument():
    yhat, y, g = _ba_setup()
    with pytest.raises(ValueError, match="yhat: expected binary"):
        B.bias_amplification(yhat * 0.9, y, g, 0.30, 0.10)  # probabilities passed as predictions
    with pytest.raises(ValueError, match="yhat: expected binary"):
        B.bias_amplification_reasons(np.where(yhat == 1, 0.7, 0.2), y, g, 0.30, 0.10)
    with pytest.raises(ValueError, match="yhat: expected binary"):
        B.bba(yhat * 0.5, y, g)
    logits = np.array([-3.0, 0.2, 2.5])
    for fn in (BI.susceptibility_flags, BI.susceptibility_score):
        with pytest.raises(ValueError, match=r"p_bar: expected probabilities in \[0, 1\], got -3 \(logits"):
            fn(logits)
        with pytest.raises(ValueError, match="p_bar: expected probabilities"):
            fn([0.2, np.nan])
        fn(np.array([0.0, 0.5, 1.0]))  # the bounds are fine


def test_cie_science_vector():
    ch = BI.identify_cies(DENSE, SPARSE, labels=[1, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(ch.dense_mode, [1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(ch.sparse_mode, [1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(ch.cie, [0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(ch.harmful, [0, 1, 0, 0, 0, 0])  # sample 5: sparse right, dense wrong
    u = BI.susceptibility_flags(P_BAR)
    np.testing.assert_array_equal(u, [0, 1, 1, 0, 0, 1])
    sc = BI.flag_scores(u, ch.cie)
    assert sc["precision"] == pytest.approx(2 / 3) and sc["recall"] == 1.0 and sc["f1"] == pytest.approx(0.8)
    assert sc["flagged_fraction"] == 0.5 and sc["enrichment"] == np.inf


def test_cies_multilabel_ties_and_classes():
    stacked = np.stack([DENSE, SPARSE], -1)  # [S, N, A=2]
    ch = BI.identify_cies(stacked, stacked[..., ::-1])
    np.testing.assert_array_equal(ch.cie[:, 0], [0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(BI.modal_binary([[0, 1], [1, 0]]), [1, 1])  # ties → 1
    np.testing.assert_array_equal(BI.modal_class([[0, 2, 1], [1, 2, 1], [2, 0, 0], [1, 0, 0]], 3), [1, 2, 1])
    d = np.array([[0, 2, 1], [0, 2, 1], [1, 0, 1]])
    s = np.array([[0, 1, 2], [1, 1, 2], [1, 1, 2]])
    pie = BI.identify_cies(d, s, labels=[0, 2, 2], num_classes=3)
    np.testing.assert_array_equal(pie.cie, [1, 1, 1])
    np.testing.assert_array_equal(pie.harmful, [1, 1, 0])
    with pytest.raises(ValueError, match="sparse_preds"):
        BI.identify_cies(DENSE, SPARSE[:, :5])


def test_flag_metrics_enrichment_auroc_and_groups():
    u = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    c = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    sc = BI.flag_scores(u, c, score)
    assert sc["precision"] == 0.5 and sc["recall"] == pytest.approx(2 / 3)
    assert sc["enrichment"] == pytest.approx(0.5 / (1 / 6))
    assert sc["auroc"] == pytest.approx((7 + 7 + 5) / 21)  # positives beat 7, 7, 5 of 7 negatives
    t = BI.evaluate_flags(np.c_[u, u], np.c_[c, c], np.c_[score, score], groups=np.r_[np.ones(5), np.zeros(5)],
                          names=["x", "y"], per_attribute=True)
    assert len(t) == 9
    row = t[(t.attribute == "all") & (t.subset == "g=0")].iloc[0]
    assert row.n == 10 and row.n_cie == 0 and np.isnan(row.precision)
    np.testing.assert_array_equal(BI.disagreement_flags([[0, 1, 1], [0, 1, 0]]), [False, False, True])


def test_attribute_regression_against_numpy_hc3_and_spearman():
    rng = np.random.default_rng(6)
    n = 12
    t = pd.DataFrame({"dense_uncertainty": rng.uniform(size=n), "dense_r2": rng.uniform(size=n),
                      "prevalence": rng.uniform(size=n), "group_gap": rng.uniform(size=n)})
    t["delta_ba"] = 0.3 * t.dense_uncertainty - 0.1 * t.group_gap + 0.05 * rng.normal(size=n)
    t.loc[3, "dense_r2"] = np.nan  # dropped
    r = BI.attribute_regression(t)
    d = t.dropna()
    x = np.c_[np.ones(len(d)), d[list(BI.DENSE_PREDICTORS)].to_numpy()]
    yv = d.delta_ba.to_numpy()
    xtx_inv = np.linalg.inv(x.T @ x)
    beta = xtx_inv @ x.T @ yv
    e = yv - x @ beta
    h = np.einsum("ij,jk,ik->i", x, xtx_inv, x)
    cov = xtx_inv @ (x.T * (e / (1 - h)) ** 2) @ x @ xtx_inv
    ols = r[r.method == "ols_hc3"]
    np.testing.assert_allclose(ols.estimate, beta, rtol=1e-8)
    np.testing.assert_allclose(ols.std_err, np.sqrt(np.diag(cov)), rtol=1e-8)
    assert (ols.n_units == n - 1).all()
    sp = r[(r.method == "spearman") & (r.term == "dense_uncertainty")].iloc[0]
    assert sp.estimate == pytest.approx(stats.spearmanr(d.dense_uncertainty, d.delta_ba).statistic)
    few = BI.attribute_regression(t.iloc[:5])
    assert few[few.method == "ols_hc3"].estimate.isna().all() and "too few" in few.note.iloc[0]
    with pytest.raises(ValueError, match="missing"):
        BI.attribute_regression(t, predictors=BI.DELTA_PREDICTORS)


def test_attribute_table_seed_means():
    names = ["a", "b"]
    t = BI.attribute_table(names, ba_dense=[[0.0, np.nan], [0.2, np.nan]], ba_sparse=[[0.3, 0.1], [0.5, np.nan]],
                           dense_uncertainty=[[0.1, 0.2], [0.3, 0.4]], dense_r2=[0.5, 0.6], prevalence=[0.1, 0.4],
                           pf=[0.3, 0.2], nf=[0.1, 0.4], sparse_uncertainty=[0.4, 0.4], sparse_r2=[0.7, 0.6])
    np.testing.assert_allclose(t.delta_ba, [0.3, np.nan])
    np.testing.assert_allclose(t.group_gap, [0.2, 0.2])
    np.testing.assert_allclose(t.rel_group_gap, [2.0, 1.0])
    np.testing.assert_allclose(t.delta_uncertainty, [0.2, 0.1])
    assert list(t.n_seeds_ba_dense) == [2, 0] and list(t.n_seeds_ba_sparse) == [2, 1]


# ------------------------------------------------------------------------------------------------ countermeasure
def test_group_calibration_removes_group_shift():
    rng = np.random.default_rng(7)
    n = 4000
    g = rng.integers(0, 2, size=n)
    y = (rng.uniform(size=n) < 0.3).astype(int)
    z = 3.0 * (y - 0.5) + rng.normal(size=n) + 1.5 * g  # group 1 pushed up

    def split(a):
        return a[: n // 2, None], a[n // 2:, None]

    (zv, zt), (yv, yt), (gv, gt) = split(z), split(y), split(g)
    tau = {"default": 0.0, "global": B.calibrate_thresholds(zv, yv),
           "group": B.calibrate_thresholds_by_group(zv, yv, gv[:, 0])}
    yhat = {k: B.predict(zt, t) for k, t in tau.items() if k != "group"}
    yhat["group"] = B.predict_by_group(zt, tau["group"], gt[:, 0])
    ba = {k: float(B.bias_amplification(v, yt, gt[:, 0], 0.35, 0.25)[0]) for k, v in yhat.items()}
    assert ba["default"] > 0.1 and abs(ba["group"]) < 0.04
    assert abs(float(B.positive_rate(yhat["global"])[0]) - yt.mean()) < 0.03


# ------------------------------------------------------------------------------------------------ planted simulation
def _simulate(levels=(0.0, 0.5, 1.0, 2.0), n=3000, seeds=5):
    """Dense logits: a known susceptible 15% near 0 (|z| = .3), 10% moderately sure (|z| = 2.5, not flagged),
    the rest sure (|z| = 4). Pruned = dense + noise (sd .4·level) + a shift toward G = 1 of .25·(level + level²)."""
    rng = np.random.default_rng(8)
    y = (rng.uniform(size=n) < 0.4).astype(int)
    g = rng.integers(0, 2, size=n)  # test: independent of y
    u = rng.uniform(size=n)
    susc = u < 0.15
    base = np.where(y == 1, 1.0, -1.0) * np.select([susc, u < 0.25], [0.3, 2.5], 4.0)
    dense = base + 0.1 * rng.normal(size=(seeds, n))
    sparse = {lv: base + 0.4 * lv * rng.normal(size=(seeds, n)) + 0.25 * (lv + lv**2) * (2 * g - 1)
              for lv in levels}
    return y, g, susc, dense, sparse


def test_planted_bias_grows_and_dense_uncertainty_finds_cies():
    y, g, susc, dense, sparse = _simulate()
    pf, nf = 0.5, 0.3  # train link: S = {G = 1}
    ba = [np.nanmean(B.bias_amplification(B.predict(sparse[lv][..., None]), y[:, None], g, pf, nf))
          for lv in sorted(sparse)]
    ba_dense = np.nanmean(B.bias_amplification(B.predict(dense[..., None]), y[:, None], g, pf, nf))
    assert abs(ba[0] - ba_dense) < 0.01
    assert np.all(np.diff(ba) > 0.01), ba

    ch = BI.identify_cies(B.predict(dense), B.predict(sparse[2.0]), labels=y)
    assert ch.cie.sum() > 50 and ch.cie[susc].mean() > 3 * ch.cie[~susc].mean()
    p_bar = BI.dense_mean_probability(dense)
    u = BI.susceptibility_flags(p_bar)
    np.testing.assert_array_equal(u, susc)  # the known subset is exactly what the band flags
    res = BI.evaluate_flags(u, ch.cie, BI.susceptibility_score(p_bar), groups=g)
    overall = res[res.subset == "all"].iloc[0]
    rand = B.auc(np.random.default_rng(9).uniform(size=y.size), ch.cie.astype(float))
    assert overall.auroc > 0.7 and overall.auroc - rand > 0.15
    assert overall.enrichment > 3 and overall.precision > 2 * ch.cie.mean()

    # attenuation: giving flagged samples the dense prediction shrinks the bias increase
    tab = BI.attenuation_table(B.predict(dense[..., None]), B.predict(sparse[2.0][..., None]), y[:, None], g,
                               pf, nf, u, names=["a"])
    summ = BI.attenuation_summary(tab).set_index(["variant", "attribute"])
    assert summ.loc[("full", "a"), "delta_ba"] > 0.02
    assert summ.loc[("dense_fill", "a"), "delta_ba"] < 0.5 * summ.loc[("full", "a"), "delta_ba"]
    assert ("exclude", "mean") in summ.index
