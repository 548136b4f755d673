"""Which samples and attributes pruning changes, and whether the dense model alone predicts it (docs/methods.md §9).

Population level: compression-identified exemplars (CIEs; PIEs for classes), the samples whose modal prediction
over the pruned seeds differs from the dense seeds' (`identify_cies`). Dense-only criteria [R]: susceptibility flags
from the dense models (`susceptibility_flags`, `disagreement_flags`, `susceptibility_score`) scored against the
CIEs (`flag_scores`, `evaluate_flags`); attenuation, i.e. BA recomputed with the flagged samples excluded or given
the dense prediction (`attenuation_table`, `attenuation_summary`); and the attribute-level regression of ΔBA on
dense predictors (`attribute_table`, `attribute_regression`). These consume the per-model metrics of
`fairprune_jax.analysis.bias` (same array conventions) and take predictions stacked over seeds, ``[S, N]`` or
``[S, N, A]``; they are kept apart because they compare populations rather than score one model.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import special, stats

from fairprune_jax.analysis._bias_inputs import (_attr, _binary, _check_tail, _div, _groups, _probabilities,
                                                 _sample_mask, _vec)
from fairprune_jax.analysis.bias import auc, bias_amplification

DENSE_PREDICTORS = ("dense_uncertainty", "dense_r2", "prevalence", "group_gap")
DELTA_PREDICTORS = ("delta_uncertainty", "delta_r2")


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
