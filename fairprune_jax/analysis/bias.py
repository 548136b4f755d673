"""Bias in pruned models (paper 2, Iofinova et al. CVPR 2023): the per-model metrics of a multi-label head.

Thresholds, accuracy/AUC, bias amplification, uncertainty, interdependence, ECE, group error gaps, the one-call
bundle and aggregation over seeds. With `bias_softmax` (softmax analogues) and `bias_identification` (CIEs and
dense-only criteria) it implements docs/methods.md §9–10 exactly. Everything takes plain numpy (or jax) arrays, so
the planted MNIST data (`fairprune_jax.planted`) and CelebA (the data layer) go through the same code.

Conventions
-----------
* Multi-label arrays are ``[..., N, A]`` (optional leading model axes such as seeds, then samples, then attributes);
  a 1-D array ``[N]`` is one attribute and gives a scalar. Labels ``[N, A]`` broadcast against predictions
  ``[S, N, A]``; groups ``G`` are ``[N]`` ints in {0, 1} (the TRUE protected label).
* Thresholds live on the LOGIT scale and predictions are ``1[z > tau]`` (strict).
* Every metric returns a per-attribute vector ``[..., A]``; aggregate with `aggregate` (nan-mean over attributes,
  then mean ± sd over seeds, counting NaNs), or `aggregate_grid` for every cell of a grid of any leading axes.
* Softmax (multi-class) analogues: predictions are one-hot argmax columns, so every per-attribute metric applies to
  classes as "attributes"; they live in `fairprune_jax.analysis.bias_softmax` (`softmax_metrics`).
* Populations (CIEs) and the dense-only criteria live in `fairprune_jax.analysis.bias_identification`; they take
  predictions stacked over seeds: ``[S, N]`` or ``[S, N, A]``.
"""
from __future__ import annotations

import warnings
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import special, stats

from fairprune_jax.analysis._bias_inputs import _attr, _binary, _check_tail, _div, _groups, _out, _sample_mask, _vec

# Reason codes for NaN bias amplification.
BA_OK = ""
BA_FEW_POSITIVES = "few_test_positives"
BA_SMALL_GAP = "small_train_group_gap"
BA_NO_PREDICTED = "no_predicted_positives"
BA_GROUP_IS_LABEL = "group_determined_by_label"  # the group is a function of the label: S and the positives coincide

CONSTANT_RULES = ("authors", "nan")  # R² of a constant prediction column: see `interdependence`


# ----------------------------------------------------------------------------------------------------------------
# logits → probabilities
# ----------------------------------------------------------------------------------------------------------------
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
def group_determined_by_label(labels, groups) -> np.ndarray:
    """Whether the protected group is a (non-constant) function of each attribute's label on this split: G constant
    among the positives and among the negatives of a, and not constant overall. ``[..., A]`` bool. BA is then
    undefined by construction (one group holds no positive, or every one), whatever the model does."""
    y, sq = _attr(labels, "labels", float)
    g1 = _groups(groups, y.shape[-2])[:, None]
    n_g1 = g1.sum()
    pos, neg = y.sum(axis=-2), (1 - y).sum(axis=-2)
    pos1, neg1 = (y * g1).sum(axis=-2), ((1 - y) * g1).sum(axis=-2)
    const = lambda part, total: (part == 0) | (part == total)  # noqa: E731
    out = const(pos1, pos) & const(neg1, neg) & (0 < n_g1) & (n_g1 < y.shape[-2])
    return _out(out, sq)


def _ba_parts(yhat, labels, groups, pf, nf, mask, min_positives, min_rel_gap, determined=None):
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
    if determined is None:
        determined = group_determined_by_label(labels, groups)
    reason = np.where(np.broadcast_to(determined, shape), BA_GROUP_IS_LABEL, reason)
    ba = np.where(reason == BA_OK, ba, np.nan).astype(float)
    return ba, reason, sq


def bias_amplification(yhat, labels, groups, pf, nf, *, mask=None, min_positives: int = 10,
                       min_rel_gap: float = 0.1, determined=None) -> np.ndarray:
    """BA_{a,g} = Σ_S Ŷ_a/Σ Ŷ_a − Σ_S Y_a/Σ Y_a on the test set, S = {G=1} if pf > nf else {G=0}.

    ``yhat`` must be binary predictions (ValueError otherwise, e.g. for probabilities); ``groups`` is the TRUE
    protected label; ``pf``/``nf`` the TRAIN prevalence of a where g = 1 / g = 0.
    NaN if a group has < ``min_positives`` test positives (Y_a = 1), if |pf − nf|/min(pf, nf) < ``min_rel_gap``, or
    if Σ Ŷ_a = 0 (reasons: `bias_amplification_reasons`), and by construction when the group is a function of
    the label (`group_determined_by_label`, or ``determined`` ``[A]`` given: the softmax bundle passes whether G
    is a function of the class). ``mask`` (``[N]`` or ``[..., N, A]``, optional) drops samples, e.g. for the
    exclusion attenuation. BA may be negative.
    """
    ba, _, sq = _ba_parts(yhat, labels, groups, pf, nf, mask, min_positives, min_rel_gap, determined)
    return _out(ba, sq)


def bias_amplification_reasons(yhat, labels, groups, pf, nf, *, mask=None, min_positives: int = 10,
                               min_rel_gap: float = 0.1, determined=None) -> np.ndarray:
    """Why each BA is NaN: '' (defined), 'group_determined_by_label' (first: the cause of the others then),
    'few_test_positives', 'small_train_group_gap', 'no_predicted_positives'."""
    _, reason, sq = _ba_parts(yhat, labels, groups, pf, nf, mask, min_positives, min_rel_gap, determined)
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


def aggregate_grid(metrics: Mapping[str, np.ndarray] | np.ndarray, *, seed_axis: int = 0,
                   **axes: Sequence) -> pd.DataFrame:
    """`aggregate` for every cell of a population grid: values ``[..., A]`` with one seed axis (``seed_axis``)
    and the other leading axes named, in order, by ``axes`` (name → labels), e.g. metrics ``[S, M, P, K]`` of
    `bias_softmax.softmax_metrics` on logits ``[S, M, P, N, K]`` with ``criterion=names, sparsity=grid``.

    Returns one row per (metric,) cell: the axis columns, then the `Aggregate` fields (mean over seeds of the
    per-seed nan-mean over attributes, sd, NaN counts). A plain array is one metric named "value"."""
    items = metrics.items() if isinstance(metrics, Mapping) else [("value", metrics)]
    names = list(axes)
    rows = []
    for metric, values in items:
        v = np.asarray(values, dtype=float)
        if v.ndim != len(names) + 2:
            raise ValueError(f"metrics[{metric!r}]: shape {v.shape} has {v.ndim - 2} leading axes besides seeds "
                             f"and attributes; axes names {len(names)}: {names}")
        v = np.moveaxis(v, seed_axis, -2)  # [..., S, A]
        for name, labels, size in zip(names, axes.values(), v.shape[:-2]):
            if len(labels) != size:
                raise ValueError(f"{name}: {len(labels)} labels for an axis of {size}")
        for idx in np.ndindex(*v.shape[:-2]):
            cell = {n: list(axes[n])[i] for n, i in zip(names, idx)}
            rows.append({"metric": metric, **cell, **aggregate(v[idx])._asdict()})
    return pd.DataFrame(rows, columns=["metric", *names, *Aggregate._fields])
