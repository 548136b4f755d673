"""Softmax (single-label, multi-class) analogues of the multi-label bias metrics (docs/methods.md §10).

A softmax head predicts one class per sample, so its predictions are the one-hot argmax columns ``[..., N, K]`` and
every per-attribute metric of `fairprune_jax.analysis.bias` applies with classes acting as attributes. This module
holds what differs: the one-hot encoding, softmax uncertainty, the per-class logit-offset calibration that replaces
per-attribute thresholds, and `softmax_metrics`, the one-call bundle for a softmax head. Kept apart from `bias` so
that module stays the multi-label reference; the conventions of `bias` apply here unchanged.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from fairprune_jax.analysis._bias_inputs import _div, _out
from fairprune_jax.analysis.bias import (accuracy, bba, bias_amplification, bias_amplification_reasons, ece,
                                        logit_interdependence, positive_rate)


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
# one-call metric bundle
# ----------------------------------------------------------------------------------------------------------------
def group_determined_by_class(labels, groups) -> bool:
    """Whether the protected group is a function of the class (e.g. "classes 0 and 6"): every class's examples lie
    in one group, and both groups occur. BA is then undefined for every class (reason 'group_determined_by_label'):
    define the group independently of the label, or use the metrics that stay meaningful (per-class uncertainty,
    `softmax_uncertainty(logits, labels)`; CIEs, `bias_identification.identify_cies`, compared across groups)."""
    lab = np.asarray(labels).ravel()
    g = np.asarray(groups).astype(bool).ravel()
    if lab.shape != g.shape:
        raise ValueError(f"groups: {g.shape[0]} groups for {lab.shape[0]} labels")
    if g.all() or not g.any():
        return False
    return all(len(np.unique(g[lab == c])) == 1 for c in np.unique(lab))


def softmax_metrics(logits, labels, groups, pf, nf, *, offsets=None, triggered=None,
                    with_interdependence: bool = True) -> dict[str, np.ndarray]:
    """Softmax analogues per class (classes act as attributes): returns name → ``[..., K]``.

    Ŷ = one-hot argmax of z (+ ``offsets`` from `calibrate_class_offsets`); pf/nf are per-class TRAIN prevalences
    per group (`train_prevalence(one_hot(train_labels, K), g_train)`). Keys: acc (one-vs-rest), recall, predpos,
    ba, uncertainty (1[max softmax < .9] within each true class), ece (one-vs-rest softmax probabilities),
    r2_logits (`logit_interdependence`, uncalibrated logits), bba when ``triggered`` is given. When the group is a
    function of the class (`group_determined_by_class`), BA is NaN for every class with reason
    'group_determined_by_label' (`bias.bias_amplification_reasons(..., determined=...)`).
    """
    z = np.asarray(logits, dtype=float)
    k = z.shape[-1]
    if offsets is not None:
        z = apply_class_offsets(z, offsets)
    y = one_hot(labels, k)
    yhat = argmax_predictions(z)
    determined = np.full(k, group_determined_by_class(labels, groups))
    out = {
        "acc": accuracy(yhat, y),
        "recall": _div((yhat * y).sum(-2), y.sum(-2)),
        "predpos": positive_rate(yhat),
        "ba": bias_amplification(yhat, y, groups, pf, nf, determined=determined),
        "uncertainty": softmax_uncertainty(z, labels),
        "ece": ece(special.softmax(z, axis=-1), y),
    }
    if with_interdependence:
        out["r2_logits"] = logit_interdependence(np.asarray(logits, float)).r2
    if triggered is not None:
        out["bba"] = bba(yhat, y, triggered)
    return out


def softmax_ba_reasons(logits, labels, groups, pf, nf, *, offsets=None) -> np.ndarray:
    """Why each class's BA of `softmax_metrics` is NaN (``[..., K]`` strings, '' where defined): the reasons of
    `bias.bias_amplification_reasons`, with 'group_determined_by_label' for every class when the group is a
    function of the class (`group_determined_by_class`), the cause behind the few positives then."""
    z = np.asarray(logits, dtype=float)
    k = z.shape[-1]
    if offsets is not None:
        z = apply_class_offsets(z, offsets)
    determined = np.full(k, group_determined_by_class(labels, groups))
    return bias_amplification_reasons(argmax_predictions(z), one_hot(labels, k), groups, pf, nf,
                                      determined=determined)
