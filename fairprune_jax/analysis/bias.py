"""Bias in pruned models (paper 2, Iofinova et al. CVPR 2023): metrics, CIEs and dense-only criteria.

Implements docs/methods.md §9–10 exactly. Everything takes plain numpy (or jax) arrays, so the planted MNIST data
(`fairprune_jax.planted`) and CelebA (the data layer) go through the same code.

Conventions
-----------
* Multi-label arrays are ``[..., N, A]`` (optional leading model axes such as seeds, then samples, then attributes);
  a 1-D array ``[N]`` is one attribute and gives a scalar. Labels ``[N, A]`` broadcast against predictions
  ``[S, N, A]``; groups ``G`` are ``[N]`` ints in {0, 1} (the TRUE protected label).
* Thresholds live on the LOGIT scale and predictions are ``1[z > tau]`` (strict).
* Every metric returns a per-attribute vector ``[..., A]``; aggregate with `aggregate` (nan-mean over attributes,
  then mean ± sd over seeds, counting NaNs).
* Softmax (multi-class) analogues: predictions are one-hot argmax columns, so every per-attribute metric applies to
  classes as "attributes"; see `softmax_metrics`.
* Populations (`identify_cies`) and dense criteria take predictions stacked over seeds: ``[S, N]`` or ``[S, N, A]``.
"""
from __future__ import annotations

import warnings
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import special, stats

# Reason codes for NaN bias amplification.
BA_OK = ""
BA_FEW_POSITIVES = "few_test_positives"
BA_SMALL_GAP = "small_train_group_gap"
BA_NO_PREDICTED = "no_predicted_positives"

CONSTANT_RULES = ("authors", "nan")  # R² of a constant prediction column: see `interdependence`
DENSE_PREDICTORS = ("dense_uncertainty", "dense_r2", "prevalence", "group_gap")
DELTA_PREDICTORS = ("delta_uncertainty", "delta_r2")


# ----------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------
def _attr(x, name: str, dtype=None) -> tuple[np.ndarray, bool]:
    """As ``[..., N, A]``; a 1-D ``[N]`` becomes ``[N, 1]`` and the caller squeezes the result."""
    x = np.asarray(x, dtype=dtype)
    if x.ndim == 0:
        raise ValueError(f"{name}: expected an array with a sample axis, got a scalar")
    if x.ndim == 1:
        return x[:, None], True
    return x, False


def _out(v: np.ndarray, squeeze: bool):
    v = np.asarray(v)
    if squeeze:
        v = v[..., 0]
    return v[()] if v.ndim == 0 else v


def _check_tail(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"{nb}: shape {b.shape} does not match {na} {a.shape} on the [N, A] axes")


def _binary(x: np.ndarray, name: str) -> np.ndarray:
    if not np.all((x == 0) | (x == 1)):
        raise ValueError(f"{name}: expected binary values in {{0, 1}}")
    return x


def _probabilities(p, name: str) -> np.ndarray:
    """``p`` as floats; ValueError naming it unless every value lies in [0, 1] (logits passed by mistake)."""
    x = np.asarray(p, dtype=float)
    bad = ~((x >= 0) & (x <= 1))
    if np.any(bad):
        raise ValueError(f"{name}: expected probabilities in [0, 1], got {float(x[bad].ravel()[0]):g} (logits? use "
                         "dense_mean_probability)")
    return x


def _groups(groups, n: int, name: str = "groups") -> np.ndarray:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {g.shape}")
    return _binary(g, name).astype(bool)


def _sample_mask(mask, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Broadcast a ``[N]`` or ``[..., N, A]`` validity mask to ``shape`` (float)."""
    if mask is None:
        return np.ones(shape[-2:], dtype=float)
    m = np.asarray(mask)
    if m.ndim == 1:
        if m.shape[0] != shape[-2]:
            raise ValueError(f"{name}: expected {shape[-2]} samples, got {m.shape[0]}")
        m = m[:, None]
    return _binary(m, name).astype(float)


def _vec(v, a: int, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    if v.ndim == 0:
        return np.full(a, float(v))
    if v.shape[-1] != a:
        raise ValueError(f"{name}: expected {a} attributes on the last axis, got shape {v.shape}")
    return v


def _div(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num, dtype=float) / np.asarray(den, dtype=float)


def sigmoid(logits) -> np.ndarray:
    """σ(z), numerically stable."""
    return special.expit(np.asarray(logits, dtype=float))


# ----------------------------------------------------------------------------------------------------------------
# thresholds
# ----------------------------------------------------------------------------------------------------------------
def predict(logits, tau=0.0) -> np.ndarray:
    """Ŷ = 1[z > τ] (strict) on the logit scale; τ scalar, ``[A]`` or ``[..., A]`` (one per leading model)."""
    z = np.asarray(logits, dtype=float)
    t = np.asarray(tau, dtype=float)
    if t.ndim >= 1 and z.ndim >= 2:
        t = np.expand_dims(t, -2)
    return (z > t).astype(np.int32)


def calibrate_thresholds(val_logits, val_labels) -> np.ndarray:
    """Group-agnostic τ_a = k_a-th largest validation logit, k_a = round(Σ Yval_a); k = 0 gives +inf [D].

    With strict `>`, validation then has k − 1 predicted positives (ties aside). Returns ``[..., A]``.
    """
    z, sq = _attr(val_logits, "val_logits", float)
    y, _ = _attr(val_labels, "val_labels", float)
    _check_tail(z, y, "val_logits", "val_labels")
    n = z.shape[-2]
    k = np.rint(y.sum(axis=-2)).astype(np.int64)
    k = np.broadcast_to(k, z.shape[:-2] + z.shape[-1:])
    if n == 0:
        return _out(np.full(k.shape, np.inf), sq)
    desc = -np.sort(-z, axis=-2)
    idx = np.clip(k - 1, 0, n - 1)
    tau = np.take_along_axis(desc, idx[..., None, :], axis=-2)[..., 0, :]
    return _out(np.where(k == 0, np.inf, tau), sq)


def calibrate_thresholds_by_group(val_logits, val_labels, val_groups) -> np.ndarray:
    """Per-group τ_{a,g}: `calibrate_thresholds` within each group of the validation set. Returns ``[..., 2, A]``."""
    z, sq = _attr(val_logits, "val_logits", float)
    y, _ = _attr(val_labels, "val_labels", float)
    _check_tail(z, y, "val_logits", "val_labels")
    g = _groups(val_groups, z.shape[-2], "val_groups")
    taus = [np.asarray(calibrate_thresholds(z[..., sel, :], y[..., sel, :])) for sel in (~g, g)]
    tau = np.stack(taus, axis=-2)
    return tau[..., 0] if sq else tau


def predict_by_group(logits, tau_by_group, groups) -> np.ndarray:
    """Ŷ = 1[z > τ_{a, g(n)}] with ``tau_by_group`` ``[..., 2, A]`` from `calibrate_thresholds_by_group`."""
    z, sq = _attr(logits, "logits", float)
    t = np.asarray(tau_by_group, dtype=float)
    if sq:
        t = t[..., None]
    if t.shape[-2] != 2:
        raise ValueError(f"tau_by_group: expected [..., 2, A], got {t.shape}")
    g = _groups(groups, z.shape[-2]).astype(np.int64)
    tn = np.take(t, g, axis=-2)  # [..., N, A]
    return _out((z > tn).astype(np.int32), sq)


# ----------------------------------------------------------------------------------------------------------------
# basic metrics
# ----------------------------------------------------------------------------------------------------------------
def accuracy(yhat, labels) -> np.ndarray:
    """mean 1[Ŷ = Y] per attribute."""
    p, sq = _attr(yhat, "yhat")
    y, _ = _attr(labels, "labels")
    _check_tail(p, y, "yhat", "labels")
    return _out((p == y).mean(axis=-2), sq)


def positive_rate(yhat) -> np.ndarray:
    """predpos = mean Ŷ per attribute."""
    p, sq = _attr(yhat, "yhat", float)
    return _out(p.mean(axis=-2), sq)


def auc(scores, labels) -> np.ndarray:
    """ROC AUC per attribute by the Mann–Whitney rank formula (average ranks for ties); NaN if one class is absent.

    AUC = (Σ_{y=1} rank − n1(n1+1)/2) / (n1 n0). Rank-invariant: probabilities or logits give the same value
    (up to σ saturating to exact ties for |z| ≳ 37).
    """
    s, sq = _attr(scores, "scores", float)
    y, _ = _attr(labels, "labels", float)
    _check_tail(s, y, "scores", "labels")
    y = np.broadcast_to(_binary(y, "labels"), s.shape)
    r = stats.rankdata(s, axis=-2)
    n1 = y.sum(axis=-2)
    n0 = s.shape[-2] - n1
    u = (r * y).sum(axis=-2) - n1 * (n1 + 1) / 2
    out = _div(u, n1 * n0)
    return _out(np.where((n1 > 0) & (n0 > 0), out, np.nan), sq)


def train_prevalence(labels, groups) -> tuple[np.ndarray, np.ndarray]:
    """(pf, nf): prevalence of each attribute among g = 1 and among g = 0 (use the TRAINING split). NaN if empty."""
    y, sq = _attr(labels, "labels", float)
    g = _groups(groups, y.shape[-2])
    pf = _div(y[..., g, :].sum(axis=-2), g.sum())
    nf = _div(y[..., ~g, :].sum(axis=-2), (~g).sum())
    return _out(pf, sq), _out(nf, sq)


# ----------------------------------------------------------------------------------------------------------------
# bias amplification
# ----------------------------------------------------------------------------------------------------------------
def _ba_parts(yhat, labels, groups, pf, nf, mask, min_positives, min_rel_gap):
    p, sq = _attr(yhat, "yhat", float)
    y, _ = _attr(labels, "labels", float)
    _check_tail(p, y, "yhat", "labels")
    _binary(p, "yhat")  # probabilities passed as predictions would give a "soft" BA
    _binary(y, "labels")
    g1 = _groups(groups, p.shape[-2])[:, None]
    a = p.shape[-1]
    pf, nf = _vec(pf, a, "pf"), _vec(nf, a, "nf")
    m = _sample_mask(mask, p.shape)
    p, y = p * m, y * m
    y = np.broadcast_to(y, np.broadcast_shapes(y.shape, p.shape))
    s = np.where(np.expand_dims(pf > nf, -2), g1, ~g1)  # [N, A] (or [..., N, A] for per-model pf)
    pos1 = (y * g1).sum(axis=-2)
    pos0 = (y * ~g1).sum(axis=-2)
    sum_p, sum_y = p.sum(axis=-2), y.sum(axis=-2)
    ba = _div((p * s).sum(axis=-2), sum_p) - _div((y * s).sum(axis=-2), sum_y)
    rel_gap = _div(np.abs(pf - nf), np.minimum(pf, nf))
    few = (pos1 < min_positives) | (pos0 < min_positives)
    small = ~(rel_gap >= min_rel_gap)  # NaN gap (e.g. pf = nf = 0) is ineligible
    nopred = sum_p == 0
    shape = ba.shape
    reason = np.full(shape, BA_OK, dtype=object)
    reason = np.where(np.broadcast_to(nopred, shape), BA_NO_PREDICTED, reason)
    reason = np.where(np.broadcast_to(small, shape), BA_SMALL_GAP, reason)
    reason = np.where(np.broadcast_to(few, shape), BA_FEW_POSITIVES, reason)
    ba = np.where(reason == BA_OK, ba, np.nan).astype(float)
    return ba, reason, sq


def bias_amplification(yhat, labels, groups, pf, nf, *, mask=None, min_positives: int = 10,
                       min_rel_gap: float = 0.1) -> np.ndarray:
    """BA_{a,g} = Σ_S Ŷ_a/Σ Ŷ_a − Σ_S Y_a/Σ Y_a on the test set, S = {G=1} if pf > nf else {G=0}.

    ``yhat`` must be binary predictions (ValueError otherwise, e.g. for probabilities); ``groups`` is the TRUE
    protected label; ``pf``/``nf`` the TRAIN prevalence of a where g = 1 / g = 0.
    NaN if a group has < ``min_positives`` test positives (Y_a = 1), if |pf − nf|/min(pf, nf) < ``min_rel_gap``, or
    if Σ Ŷ_a = 0 (reasons: `bias_amplification_reasons`). ``mask`` (``[N]`` or ``[..., N, A]``, optional) drops
    samples, e.g. for the exclusion attenuation. BA may be negative.
    """
    ba, _, sq = _ba_parts(yhat, labels, groups, pf, nf, mask, min_positives, min_rel_gap)
    return _out(ba, sq)


def bias_amplification_reasons(yhat, labels, groups, pf, nf, *, mask=None, min_positives: int = 10,
                               min_rel_gap: float = 0.1) -> np.ndarray:
    """Why each BA is NaN: '' (defined), 'few_test_positives', 'small_train_group_gap', 'no_predicted_positives'."""
    _, reason, sq = _ba_parts(yhat, labels, groups, pf, nf, mask, min_positives, min_rel_gap)
    return _out(reason, sq)


def bba(yhat, labels, triggered) -> np.ndarray:
    """Trigger bias amplification Σ_B Ŷ/Σ Ŷ − Σ_B Y/Σ Y, B = triggered samples; no eligibility filter.

    The multi-label definition uses τ = 0 always: use `trigger_bias_amplification` on logits. This core form takes
    predictions so the softmax analogue (one-hot argmax) can use it. NaN only when Σ Ŷ = 0 or Σ Y = 0.
    """
    p, sq = _attr(yhat, "yhat", float)
    y, _ = _attr(labels, "labels", float)
    _check_tail(p, y, "yhat", "labels")
    _binary(p, "yhat")
    b = _groups(triggered, p.shape[-2], "triggered")[:, None]
    out = _div((p * b).sum(-2), p.sum(-2)) - _div((y * b).sum(-2), y.sum(-2))
    return _out(out, sq)


def trigger_bias_amplification(logits, labels, triggered) -> np.ndarray:
    """BBA of the multi-label head at τ = 0 (never calibrated), per attribute."""
    return bba(predict(logits, 0.0), labels, triggered)


# ----------------------------------------------------------------------------------------------------------------
# uncertainty, interdependence, calibration, group errors
# ----------------------------------------------------------------------------------------------------------------
def uncertainty(logits, band: float = 0.4) -> np.ndarray:
    """mean 1[|σ(z) − .5| < band] per attribute, on raw (uncalibrated) probabilities; band .4 ⇔ p ∈ (.1, .9)."""
    z, sq = _attr(logits, "logits", float)
    return _out((np.abs(special.expit(z) - 0.5) < band).mean(axis=-2), sq)


class Interdependence(NamedTuple):
    r2: np.ndarray  # [..., A] in-sample R² (NaN where undefined)
    reason: np.ndarray  # [..., A] '' or a note: 'constant_target' (R² by the chosen rule), 'no_predictors' (NaN)
    n_constant: np.ndarray | int = 0  # [...] number of constant target columns (never or always predicted)


def _r2_one(y: np.ndarray, x: np.ndarray, constant: str) -> tuple[float, str]:
    if x.shape[1] == 0:
        return np.nan, "no_predictors"
    if np.ptp(y) == 0:
        if constant == "nan":
            return np.nan, "constant_target"
        # sklearn's LinearRegression fits a constant target by its mean (all slopes 0), and r2_score of a constant
        # y_true is 1.0 when the predictions reproduce it exactly, else 0.0
        return (1.0 if np.array_equal(np.full_like(y, np.mean(y)), y) else 0.0), "constant_target"
    x = x[:, np.ptp(x, axis=0) > 0]  # constant predictors are absorbed by the intercept
    if x.shape[1] == 0:
        return 0.0, ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank-deficient designs (duplicated columns) are expected
        res = sm.OLS(y, sm.add_constant(x, has_constant="add")).fit()
    return float(res.rsquared), ""


def interdependence(columns, *, constant: str = "authors") -> Interdependence:
    """In-sample R² of OLS with intercept (statsmodels) of each column on the other A − 1 columns.

    Multi-label head: pass the binary predictions Ŷ ``[..., N, A]`` on the test set. Constant predictors are
    dropped (they are collinear with the intercept). A constant target column (never or always predicted) gets
    reason 'constant_target' and, with ``constant="authors"`` (default, docs/methods.md §9), the authors' value:
    sklearn's ``LinearRegression().score``, i.e. 1.0 when the fit (its mean) reproduces the column exactly, else
    0.0; with ``constant="nan"`` it is NaN, so nan-means leave it out. ``n_constant`` ``[...]`` counts the constant
    columns per model, to report next to R².
    """
    if constant not in CONSTANT_RULES:
        raise ValueError(f"constant: expected one of {CONSTANT_RULES}, got {constant!r}")
    c, _ = _attr(columns, "columns", float)
    lead = c.shape[:-2]
    flat = c.reshape((-1,) + c.shape[-2:])
    a = c.shape[-1]
    r2 = np.full((flat.shape[0], a), np.nan)
    reason = np.full((flat.shape[0], a), "", dtype=object)
    for i, m in enumerate(flat):
        for j in range(a):
            r2[i, j], reason[i, j] = _r2_one(m[:, j], np.delete(m, j, axis=1), constant)
    n_constant = (np.ptp(flat, axis=-2) == 0).sum(axis=-1) if flat.shape[-2] else np.full(flat.shape[0], a)
    return Interdependence(r2.reshape(lead + (a,)), reason.reshape(lead + (a,)),
                           _out(n_constant.reshape(lead), False))


def logit_interdependence(logits, *, constant: str = "authors") -> Interdependence:
    """Softmax analogue: R² of each LOGIT column regressed (OLS + intercept) on the other K − 1 logits.

    The one-hot argmax columns always sum to 1, so their R² is degenerate (= 1); docs/methods.md §10 says to regress
    the logits instead, which is what this does. ``constant`` as in `interdependence`.
    """
    return interdependence(logits, constant=constant)


def ece(probs, labels, n_bins: int = 10) -> np.ndarray:
    """Expected calibration error per attribute: bins b = floor(n_bins·p)/n_bins (p = 1 is its own extra bin),
    ECE = Σ_b (n_b/N) |mean_b p − mean_b y|."""
    p, sq = _attr(probs, "probs", float)
    y, _ = _attr(labels, "labels", float)
    _check_tail(p, y, "probs", "labels")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs: values must lie in [0, 1]")
    y = np.broadcast_to(y, p.shape)
    nb = n_bins + 1
    b = np.floor(p * n_bins).astype(np.int64)
    n = p.shape[-2]
    pt = np.moveaxis(p, -2, -1).reshape(-1, n)
    yt = np.moveaxis(y, -2, -1).reshape(-1, n)
    bt = np.moveaxis(b, -2, -1).reshape(-1, n) + nb * np.arange(pt.shape[0])[:, None]
    size = nb * pt.shape[0]
    sp = np.bincount(bt.ravel(), pt.ravel(), minlength=size)
    sy = np.bincount(bt.ravel(), yt.ravel(), minlength=size)
    out = np.abs(sp - sy).reshape(-1, nb).sum(axis=1) / n
    return _out(out.reshape(p.shape[:-2] + (p.shape[-1],)), sq)


class GroupErrors(NamedTuple):
    fpr: np.ndarray  # [..., 2, A]: FPR_{a,g} for g = 0, 1
    fnr: np.ndarray  # [..., 2, A]
    delta_fpr: np.ndarray  # [..., A]: FPR_{a,1} − FPR_{a,0}
    delta_fnr: np.ndarray  # [..., A]


def group_error_rates(yhat, labels, groups) -> GroupErrors:
    """[R] Hooker et al.: FPR_{a,g} = #(Ŷ=1,Y=0,G=g)/#(Y=0,G=g), FNR likewise; Δ = group 1 − group 0."""
    p, sq = _attr(yhat, "yhat", float)
    y, _ = _attr(labels, "labels", float)
    _check_tail(p, y, "yhat", "labels")
    g1 = _groups(groups, p.shape[-2])[:, None]
    fpr, fnr = [], []
    for gm in (~g1, g1):
        neg, pos = (1 - y) * gm, y * gm
        fpr.append(_div((p * neg).sum(-2), np.broadcast_to(neg.sum(-2), p.shape[:-2] + p.shape[-1:])))
        fnr.append(_div(((1 - p) * pos).sum(-2), np.broadcast_to(pos.sum(-2), p.shape[:-2] + p.shape[-1:])))
    fpr, fnr = np.stack(fpr, -2), np.stack(fnr, -2)
    d_fpr, d_fnr = fpr[..., 1, :] - fpr[..., 0, :], fnr[..., 1, :] - fnr[..., 0, :]
    if sq:
        return GroupErrors(fpr[..., 0], fnr[..., 0], _out(d_fpr, True), _out(d_fnr, True))
    return GroupErrors(fpr, fnr, d_fpr, d_fnr)


def relative_change(sparse, dense) -> np.ndarray:
    """(sparse − dense)/dense elementwise (per group / attribute); inf or NaN where dense = 0."""
    return _div(np.asarray(sparse, float) - np.asarray(dense, float), dense)


# ----------------------------------------------------------------------------------------------------------------
# softmax (multi-class) analogues
# ----------------------------------------------------------------------------------------------------------------
def one_hot(labels, num_classes: int) -> np.ndarray:
    """``[..., N]`` int → ``[..., N, K]`` int32 indicator columns."""
    lab = np.asarray(labels)
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"labels: values must lie in [0, {num_classes})")
    return (lab[..., None] == np.arange(num_classes)).astype(np.int32)


def argmax_predictions(logits) -> np.ndarray:
    """Ŷ_{n,c} = 1[argmax_k z_{n,k} = c] as ``[..., N, K]`` one-hot int32."""
    z = np.asarray(logits, dtype=float)
    return one_hot(z.argmax(axis=-1), z.shape[-1])


def softmax_uncertainty(logits, labels=None, *, threshold: float = 0.9):
    """Softmax uncertainty 1[max softmax < threshold]: its mean over samples (``[...]``), or, given true
    ``labels`` ``[N]``, its mean within each true class (``[..., K]``, NaN for an absent class)."""
    z = np.asarray(logits, dtype=float)
    flag = special.softmax(z, axis=-1).max(axis=-1) < threshold  # [..., N]
    if labels is None:
        return _out(flag.mean(axis=-1), False)
    oh = one_hot(labels, z.shape[-1]).astype(float)
    if oh.shape[0] != z.shape[-2]:
        raise ValueError(f"labels: expected {z.shape[-2]} samples, got {oh.shape[0]}")
    return _div(np.einsum("...n,nk->...k", flag.astype(float), oh), oh.sum(0))


def calibrate_class_offsets(val_logits, val_labels, *, num_iters: int = 50) -> np.ndarray:
    """Per-class logit offsets fitted on validation by b_c += log(true_c/pred_c), iterated to a fixed point.

    true_c and pred_c are the validation counts of class c and of argmax(z + b) = c; counts are floored at 1 so an
    absent class gives a finite step [D]. Returns ``[..., K]``; apply with `apply_class_offsets`.
    """
    z = np.asarray(val_logits, dtype=float)
    k = z.shape[-1]
    true_c = np.maximum(one_hot(val_labels, k).sum(axis=0), 1).astype(float)
    if np.asarray(val_labels).shape[0] != z.shape[-2]:
        raise ValueError("val_labels: number of samples does not match val_logits")
    b = np.zeros(z.shape[:-2] + (k,))
    for _ in range(num_iters):
        pred_c = np.maximum(argmax_predictions(z + b[..., None, :]).sum(axis=-2), 1)
        step = np.log(true_c / pred_c)
        if not np.any(step):
            break
        b = b + step
    return b


def apply_class_offsets(logits, offsets) -> np.ndarray:
    """z + b, with offsets ``[..., K]`` broadcast over the sample axis."""
    return np.asarray(logits, float) + np.expand_dims(np.asarray(offsets, float), -2)


# ----------------------------------------------------------------------------------------------------------------
# one-call metric bundles (for the sweep)
# ----------------------------------------------------------------------------------------------------------------
def multilabel_metrics(logits, labels, groups, pf, nf, *, tau=0.0, triggered=None,
                       with_interdependence: bool = True) -> dict[str, np.ndarray]:
    """All §6 metrics of a multi-label head at thresholds ``tau`` (0 or calibrated). Returns name → ``[..., A]``.

    Keys: acc, auc (of P), predpos, ba, uncertainty, ece, fpr_g0, fpr_g1, fnr_g0, fnr_g1, dfpr, dfnr,
    r2 (interdependence of Ŷ), and bba (τ = 0 regardless of ``tau``) when ``triggered`` is given.
    """
    z, sq = _attr(logits, "logits", float)
    y, _ = _attr(labels, "labels")
    yhat = predict(z, tau)
    prob = special.expit(z)
    ge = group_error_rates(yhat, y, groups)
    out = {
        "acc": accuracy(yhat, y),
        "auc": auc(prob, y),
        "predpos": positive_rate(yhat),
        "ba": bias_amplification(yhat, y, groups, pf, nf),
        "uncertainty": uncertainty(z),
        "ece": ece(prob, y),
        "fpr_g0": ge.fpr[..., 0, :], "fpr_g1": ge.fpr[..., 1, :],
        "fnr_g0": ge.fnr[..., 0, :], "fnr_g1": ge.fnr[..., 1, :],
        "dfpr": ge.delta_fpr, "dfnr": ge.delta_fnr,
    }
    if with_interdependence and z.shape[-1] >= 2:
        out["r2"] = interdependence(yhat).r2
    if triggered is not None:
        out["bba"] = trigger_bias_amplification(z, y, triggered)
    return {k: _out(v, sq) for k, v in out.items()}


def softmax_metrics(logits, labels, groups, pf, nf, *, offsets=None, triggered=None,
                    with_interdependence: bool = True) -> dict[str, np.ndarray]:
    """Softmax analogues per class (classes act as attributes): returns name → ``[..., K]``.

    Ŷ = one-hot argmax of z (+ ``offsets`` from `calibrate_class_offsets`); pf/nf are per-class TRAIN prevalences
    per group (`train_prevalence(one_hot(train_labels, K), g_train)`). Keys: acc (one-vs-rest), recall, predpos,
    ba, uncertainty (1[max softmax < .9] within each true class), ece (one-vs-rest softmax probabilities),
    r2_logits (`logit_interdependence`, uncalibrated logits), bba when ``triggered`` is given.
    """
    z = np.asarray(logits, dtype=float)
    k = z.shape[-1]
    if offsets is not None:
        z = apply_class_offsets(z, offsets)
    y = one_hot(labels, k)
    yhat = argmax_predictions(z)
    out = {
        "acc": accuracy(yhat, y),
        "recall": _div((yhat * y).sum(-2), y.sum(-2)),
        "predpos": positive_rate(yhat),
        "ba": bias_amplification(yhat, y, groups, pf, nf),
        "uncertainty": softmax_uncertainty(z, labels),
        "ece": ece(special.softmax(z, axis=-1), y),
    }
    if with_interdependence:
        out["r2_logits"] = logit_interdependence(np.asarray(logits, float)).r2
    if triggered is not None:
        out["bba"] = bba(yhat, y, triggered)
    return out


def metrics_frame(metrics: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy table (seed, attribute, metric, value) from name → ``[S, A]`` (or ``[A]``) arrays."""
    rows = []
    for metric, v in metrics.items():
        v = np.asarray(v, dtype=float)
        v = v[None] if v.ndim == 1 else v
        if v.ndim != 2:
            raise ValueError(f"metrics[{metric!r}]: expected [S, A] or [A], got shape {v.shape}")
        attrs = list(names) if names is not None else [str(i) for i in range(v.shape[1])]
        if len(attrs) != v.shape[1]:
            raise ValueError(f"names: {len(attrs)} names for {v.shape[1]} attributes of {metric!r}")
        for s in range(v.shape[0]):
            rows += [(s, attrs[a], metric, v[s, a]) for a in range(v.shape[1])]
    return pd.DataFrame(rows, columns=["seed", "attribute", "metric", "value"])


# ----------------------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------------------
class Aggregate(NamedTuple):
    mean: float  # mean over seeds of the per-seed nan-mean over attributes
    sd: float  # sd (ddof=1) over seeds with a defined value; NaN with < 2 such seeds
    n_seeds: int
    n_seeds_defined: int  # seeds with at least one non-NaN attribute
    n_nan: int  # NaN (seed, attribute) values
    n_values: int  # all (seed, attribute) values


def aggregate(values) -> Aggregate:
    """nan-mean over attributes, then mean ± sd over seeds, counting NaNs. ``values`` ``[S, A]`` or ``[A]``."""
    v = np.asarray(values, dtype=float)
    v = v[None] if v.ndim == 1 else v
    if v.ndim != 2:
        raise ValueError(f"values: expected [S, A] or [A], got shape {v.shape}")
    defined = ~np.isnan(v).all(axis=1)
    per_seed = np.full(v.shape[0], np.nan)
    if defined.any():
        per_seed[defined] = np.nanmean(v[defined], axis=1)
    d = per_seed[defined]
    mean = float(d.mean()) if d.size else np.nan
    sd = float(d.std(ddof=1)) if d.size >= 2 else np.nan
    return Aggregate(mean, sd, v.shape[0], int(defined.sum()), int(np.isnan(v).sum()), int(v.size))


def aggregate_metrics(metrics: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One `aggregate` row per metric (name → ``[S, A]``)."""
    rows = [{"metric": k, **aggregate(v)._asdict()} for k, v in metrics.items()]
    return pd.DataFrame(rows, columns=["metric", *Aggregate._fields])


# ----------------------------------------------------------------------------------------------------------------
# populations: PIEs / CIEs
# ----------------------------------------------------------------------------------------------------------------
def modal_binary(preds) -> np.ndarray:
    """Modal binary prediction over the seed axis 0 of ``[S, ...]``; ties go to 1 (the larger label)."""
    p = _binary(np.asarray(preds), "preds")
    return (2 * p.sum(axis=0, dtype=np.int64) >= p.shape[0]).astype(np.int32)


def modal_class(preds, num_classes: int) -> np.ndarray:
    """Modal class over the seed axis 0 of ``[S, ...]`` int predictions; ties go to the larger class index."""
    p = np.asarray(preds)
    counts = (p[..., None] == np.arange(num_classes)).sum(axis=0)
    return (num_classes - 1 - np.argmax(counts[..., ::-1], axis=-1)).astype(np.int32)


class Changes(NamedTuple):
    dense_mode: np.ndarray
    sparse_mode: np.ndarray
    cie: np.ndarray  # bool: modal predictions differ
    harmful: np.ndarray | None  # bool: sparse mode wrong and dense mode right (None without labels)


def identify_cies(dense_preds, sparse_preds, labels=None, *, num_classes: int | None = None) -> Changes:
    """CIEs (PIEs for classes) for all seeds at once: samples (or sample-attribute pairs) whose modal prediction over
    the pruned population differs from the dense population's.

    ``dense_preds`` ``[S_d, N]`` / ``[S_d, N, A]`` binary, or ``[S_d, N]`` class indices with ``num_classes``;
    ``sparse_preds`` likewise with its own seed count (extra leading axes after the seed axis, e.g. sparsities,
    broadcast). Ties: binary → 1, classes → larger index; use odd population sizes to avoid them.
    """
    mode = (lambda x: modal_binary(x)) if num_classes is None else (lambda x: modal_class(x, num_classes))
    d, s = np.asarray(dense_preds), np.asarray(sparse_preds)
    if d.ndim < 2 or s.ndim < d.ndim or d.shape[1:] != s.shape[s.ndim - d.ndim + 1:]:
        raise ValueError(f"sparse_preds: shape {s.shape} does not end with the dense sample shape {d.shape[1:]}")
    dm = mode(d)
    sm_ = mode(s)
    cie = dm != sm_
    harmful = None
    if labels is not None:
        y = np.asarray(labels)
        harmful = cie & (sm_ != y) & (dm == y)
    return Changes(dm, sm_, cie, harmful)


# ----------------------------------------------------------------------------------------------------------------
# dense-model criteria [R]
# ----------------------------------------------------------------------------------------------------------------
def dense_mean_probability(dense_logits) -> np.ndarray:
    """p̄ = mean over dense seeds (axis 0) of σ(z): ``[S, N(, A)]`` → ``[N(, A)]``."""
    return special.expit(np.asarray(dense_logits, dtype=float)).mean(axis=0)


def susceptibility_flags(p_bar, band: float = 0.4) -> np.ndarray:
    """U = 1[|p̄ − .5| < band] (band .4 default; .3/.45 variants); ``p_bar`` outside [0, 1] is a ValueError."""
    return np.abs(_probabilities(p_bar, "p_bar") - 0.5) < band


def disagreement_flags(dense_preds) -> np.ndarray:
    """Variant U: the dense seeds (axis 0) do not all agree."""
    p = np.asarray(dense_preds)
    return np.any(p != p[:1], axis=0)


def susceptibility_score(p_bar) -> np.ndarray:
    """Continuous score −|p̄ − .5| (higher = more susceptible), used for the AUROC; ``p_bar`` in [0, 1]."""
    return -np.abs(_probabilities(p_bar, "p_bar") - 0.5)


def flag_scores(flags, cie, score=None) -> dict[str, float]:
    """Precision P(CIE|U), recall P(U|CIE), F1, flagged fraction, enrichment P(CIE|U)/P(CIE|¬U), AUROC of score."""
    u = np.asarray(flags).astype(bool).ravel()
    c = np.asarray(cie).astype(bool).ravel()
    if u.shape != c.shape:
        raise ValueError(f"flags: {u.size} values vs cie {c.size}")
    tp = float(np.sum(u & c))
    prec = _div(tp, u.sum())[()] if u.sum() else np.nan
    rec = _div(tp, c.sum())[()] if c.sum() else np.nan
    f1 = np.nan if np.isnan(prec) or np.isnan(rec) else (0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    p_not = _div(np.sum(~u & c), np.sum(~u))[()] if np.sum(~u) else np.nan
    enrich = _div(prec, p_not)[()] if not (np.isnan(prec) or np.isnan(p_not)) else np.nan
    out = {"n": int(u.size), "n_cie": int(c.sum()), "n_flagged": int(u.sum()),
           "flagged_fraction": float(u.mean()) if u.size else np.nan,
           "precision": float(prec), "recall": float(rec), "f1": float(f1), "enrichment": float(enrich),
           "auroc": np.nan}
    if score is not None:
        s = np.asarray(score, float).ravel()
        if s.shape != c.shape:
            raise ValueError(f"score: {s.size} values vs cie {c.size}")
        out["auroc"] = float(auc(s, c.astype(float))) if u.size else np.nan
    return out


def evaluate_flags(flags, cie, score=None, groups=None, *, names: Sequence[str] | None = None,
                   per_attribute: bool = False) -> pd.DataFrame:
    """Evaluate susceptibility flags U against CIEs, overall and by group (and per attribute if asked).

    ``flags``/``cie``/``score`` ``[N]`` or ``[N, A]`` (sample-attribute pairs are pooled); ``groups`` ``[N]``.
    Returns rows (attribute, subset ∈ {all, g=0, g=1}) with n, n_cie, n_flagged, flagged_fraction, precision,
    recall, f1, enrichment, auroc.
    """
    u, sq = _attr(flags, "flags")
    c, _ = _attr(cie, "cie")
    _check_tail(u, c, "flags", "cie")
    s = None if score is None else _attr(score, "score", float)[0]
    if s is not None:
        _check_tail(u, s, "flags", "score")
    a = u.shape[-1]
    attrs = list(names) if names is not None else ([str(i) for i in range(a)] if not sq else ["0"])
    subsets = [("all", np.ones(u.shape[0], bool))]
    if groups is not None:
        g = _groups(groups, u.shape[0])
        subsets += [("g=0", ~g), ("g=1", g)]
    cols = [("all", slice(None))] + ([(attrs[j], slice(j, j + 1)) for j in range(a)] if per_attribute else [])
    rows = []
    for attr, cs in cols:
        for sub, sel in subsets:
            rows.append({"attribute": attr, "subset": sub,
                         **flag_scores(u[sel][:, cs], c[sel][:, cs], None if s is None else s[sel][:, cs])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# attenuation
# ----------------------------------------------------------------------------------------------------------------
def attenuate(sparse_yhat, dense_yhat, flags) -> np.ndarray:
    """Give flagged samples the dense prediction: where(U, Ŷ_dense, Ŷ_sparse) (broadcasting)."""
    return np.where(np.asarray(flags).astype(bool), dense_yhat, sparse_yhat).astype(np.int32)


def attenuation_table(dense_yhat, sparse_yhat, labels, groups, pf, nf, flags, *,
                      names: Sequence[str] | None = None, dense_fill=None) -> pd.DataFrame:
    """BA per (population, seed, attribute, variant) with the susceptible samples handled three ways.

    variant 'full': all samples; 'exclude': flagged samples (``flags`` ``[N]`` or ``[N, A]``) dropped, for dense and
    sparse alike; 'dense_fill' (sparse only): flagged samples take ``dense_fill`` (default: the dense modal
    prediction). ``dense_yhat`` ``[S_d, N, A]``, ``sparse_yhat`` ``[S_s, N, A]``.
    """
    d, _ = _attr(dense_yhat, "dense_yhat")
    s, _ = _attr(sparse_yhat, "sparse_yhat")
    d = d[None] if d.ndim == 2 else d
    s = s[None] if s.ndim == 2 else s
    y, _ = _attr(labels, "labels")
    _check_tail(d, s, "dense_yhat", "sparse_yhat")
    _check_tail(d, y, "dense_yhat", "labels")
    u = _sample_mask(flags, d.shape, "flags").astype(bool)
    u = np.broadcast_to(u, y.shape)
    fill = modal_binary(d) if dense_fill is None else np.asarray(dense_fill)
    a = d.shape[-1]
    attrs = list(names) if names is not None else [str(i) for i in range(a)]
    kept = (~u).astype(np.int32)

    def ba(p, mask=None):
        return bias_amplification(p, y, groups, pf, nf, mask=mask)

    parts = [("dense", "full", ba(d)), ("dense", "exclude", ba(d, kept)),
             ("sparse", "full", ba(s)), ("sparse", "exclude", ba(s, kept)),
             ("sparse", "dense_fill", ba(attenuate(s, fill, u)))]
    rows = []
    for pop, var, v in parts:
        for i in range(v.shape[0]):
            rows += [(pop, i, attrs[j], var, v[i, j]) for j in range(a)]
    return pd.DataFrame(rows, columns=["population", "seed", "attribute", "variant", "ba"])


def attenuation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per attribute and variant: seed-mean BA of dense and sparse and ΔBA = sparse − dense (nan-means).

    The dense reference of 'dense_fill' is the dense 'full' BA. The row attribute='mean' nan-averages attributes.
    """
    m = table.groupby(["population", "variant", "attribute"], sort=False)["ba"].mean()
    rows = []
    for var in ("full", "exclude", "dense_fill"):
        ref_var = "exclude" if var == "exclude" else "full"
        for attr in table["attribute"].unique():
            if ("sparse", var, attr) not in m.index:
                continue
            bd, bs = m.get(("dense", ref_var, attr), np.nan), m[("sparse", var, attr)]
            rows.append({"variant": var, "attribute": attr, "ba_dense": bd, "ba_sparse": bs, "delta_ba": bs - bd})
    out = pd.DataFrame(rows)
    means = out.groupby("variant", sort=False)[["ba_dense", "ba_sparse", "delta_ba"]].mean().reset_index()
    means.insert(1, "attribute", "mean")
    return pd.concat([out, means], ignore_index=True)


# ----------------------------------------------------------------------------------------------------------------
# attribute-level regression
# ----------------------------------------------------------------------------------------------------------------
def _seed_mean(v, a: int, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    v = v[None] if v.ndim == 1 else v
    if v.ndim != 2 or v.shape[1] != a:
        raise ValueError(f"{name}: expected [S, {a}] or [{a}], got shape {v.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(v, axis=0)


def attribute_table(names: Sequence[str], *, ba_dense, ba_sparse, dense_uncertainty, dense_r2, prevalence, pf, nf,
                    sparse_uncertainty=None, sparse_r2=None) -> pd.DataFrame:
    """One row per attribute with seed means: ba_dense, ba_sparse, delta_ba, dense_uncertainty, dense_r2,
    prevalence (train), group_gap = |pf − nf|, rel_group_gap = |pf − nf|/min(pf, nf), n_seeds_ba_{dense,sparse}
    (non-NaN seeds), and, when the sparse values are given, sparse_*/delta_uncertainty/delta_r2.
    Inputs ``[S, A]`` (per-seed) or ``[A]``."""
    a = len(names)
    bd, bs = np.asarray(ba_dense, float), np.asarray(ba_sparse, float)
    t = pd.DataFrame({"attribute": list(names)})
    t["ba_dense"] = _seed_mean(bd, a, "ba_dense")
    t["ba_sparse"] = _seed_mean(bs, a, "ba_sparse")
    t["delta_ba"] = t["ba_sparse"] - t["ba_dense"]
    t["n_seeds_ba_dense"] = (~np.isnan(np.atleast_2d(bd))).sum(0)
    t["n_seeds_ba_sparse"] = (~np.isnan(np.atleast_2d(bs))).sum(0)
    t["dense_uncertainty"] = _seed_mean(dense_uncertainty, a, "dense_uncertainty")
    t["dense_r2"] = _seed_mean(dense_r2, a, "dense_r2")
    t["prevalence"] = _vec(prevalence, a, "prevalence")
    pf, nf = _vec(pf, a, "pf"), _vec(nf, a, "nf")
    t["group_gap"] = np.abs(pf - nf)
    t["rel_group_gap"] = _div(np.abs(pf - nf), np.minimum(pf, nf))
    if sparse_uncertainty is not None:
        t["sparse_uncertainty"] = _seed_mean(sparse_uncertainty, a, "sparse_uncertainty")
        t["delta_uncertainty"] = t["sparse_uncertainty"] - t["dense_uncertainty"]
    if sparse_r2 is not None:
        t["sparse_r2"] = _seed_mean(sparse_r2, a, "sparse_r2")
        t["delta_r2"] = t["sparse_r2"] - t["dense_r2"]
    return t


def attribute_regression(table: pd.DataFrame, *, response: str = "delta_ba",
                         predictors: Sequence[str] = DENSE_PREDICTORS) -> pd.DataFrame:
    """Across attributes: OLS of ``response`` on ``predictors`` with HC3 errors (statsmodels) plus Spearman ρ of the
    response with each predictor (scipy). Attributes with a NaN in any used column are dropped (n_units counts the
    rest). Few, correlated units: read as descriptive. Variant: ``predictors=DELTA_PREDICTORS``.

    Returns rows (method ∈ {ols_hc3, spearman}, term, estimate, std_err, statistic, p_value, n_units, note).
    """
    missing = [c for c in (response, *predictors) if c not in table.columns]
    if missing:
        raise ValueError(f"table: missing columns {missing}")
    d = table[[response, *predictors]].astype(float).dropna()
    n, k = len(d), len(predictors)
    rows = []
    if n >= k + 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = sm.add_constant(d[list(predictors)].to_numpy(), has_constant="add")
            res = sm.OLS(d[response].to_numpy(), x).fit(cov_type="HC3")
        for i, term in enumerate(("const", *predictors)):
            rows.append(("ols_hc3", term, res.params[i], res.bse[i], res.tvalues[i], res.pvalues[i], n, ""))
    else:
        rows += [("ols_hc3", term, np.nan, np.nan, np.nan, np.nan, n, f"too few units ({n}) for {k} predictors")
                 for term in ("const", *predictors)]
    for p in predictors:
        x, y = d[p].to_numpy(), d[response].to_numpy()
        if n >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            r = stats.spearmanr(x, y)
            rows.append(("spearman", p, float(r.statistic), np.nan, np.nan, float(r.pvalue), n, ""))
        else:
            rows.append(("spearman", p, np.nan, np.nan, np.nan, np.nan, n, "too few units or constant column"))
    return pd.DataFrame(rows, columns=["method", "term", "estimate", "std_err", "statistic", "p_value", "n_units",
                                       "note"])


# ----------------------------------------------------------------------------------------------------------------
# countermeasure: threshold calibration
# ----------------------------------------------------------------------------------------------------------------
