"""The bias study's evaluation tables: pure functions of logits and labels (no model, no workdir).

Per population every §6 metric per seed × attribute at τ = 0 and at calibrated thresholds (global, and per
protected group = the countermeasure); per sparsity the CIEs of the pruned population vs the dense one, the dense
susceptibility criteria scored against them (with a random baseline), attenuation, and the attribute-level
regression. The metric functions themselves are `fairprune_jax.analysis.bias` and (CIEs, criteria, attenuation,
regression) `fairprune_jax.analysis.bias_identification`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import jax
import numpy as np
import pandas as pd

from fairprune_jax.analysis import bias as B
from fairprune_jax.analysis import bias_identification as BI

if TYPE_CHECKING:
    from fairprune_jax.studies.bias_data import StudyData

DEFAULT_CRITERION = "uncertainty"  # identification criterion used for attenuation and the report's headline
_RANDOM_BASELINE = 0xB1A5  # fold_in constant of the random identification baseline (fixed across sparsities)


def _frame(metrics: dict[str, np.ndarray], names: Sequence[str], *, scheme: str, protected: str,
           notes: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    f = B.metrics_frame(metrics, names)
    f.insert(2, "scheme", scheme)
    f.insert(3, "protected", protected)
    f["note"] = ""
    for metric, reason in (notes or {}).items():
        r = np.asarray(reason, dtype=object)
        r = r[None] if r.ndim == 1 else r
        sel = f["metric"] == metric
        f.loc[sel, "note"] = [r[s, list(names).index(a)] for s, a in zip(f.loc[sel, "seed"], f.loc[sel, "attribute"])]
    return f


def _group_metrics(yhat: np.ndarray, data: StudyData, p: int) -> tuple[dict, dict]:
    y, g = data.y_test, data.g_test[p]
    ba = np.array(B.bias_amplification(yhat, y, g, data.pf[p], data.nf[p]), dtype=float)
    reason = np.array(B.bias_amplification_reasons(yhat, y, g, data.pf[p], data.nf[p]), dtype=object)
    exc = np.broadcast_to(data.ba_excluded[p], ba.shape)
    ba[exc] = np.nan
    reason[exc] = "protected_attribute_itself"
    ge = B.group_error_rates(yhat, y, g)
    m = {"ba": ba, "dfpr": ge.delta_fpr, "dfnr": ge.delta_fnr, "fpr_g0": ge.fpr[..., 0, :],
         "fpr_g1": ge.fpr[..., 1, :], "fnr_g0": ge.fnr[..., 0, :], "fnr_g1": ge.fnr[..., 1, :]}
    return m, {"ba": reason}


def population_metrics(val_logits, test_logits, data: StudyData, *, r2_constant: str = "authors") -> pd.DataFrame:
    """Every §9 metric of one population (per seed × attribute) as a tidy frame.

    ``r2_constant`` is the interdependence rule for a constant prediction column (`bias.interdependence`:
    'authors' = 1.0 when the fit reproduces it, else 0.0; 'nan' = undefined); the metric 'r2_constant' is 1.0 for
    each such column, so a summary shows how many columns the R² of a cell rests on that rule.

    Columns: seed, attribute, scheme, protected, metric, value, note (why a BA is NaN). Schemes: 'default' (τ = 0),
    'global' (calibrated on validation, group-agnostic), 'group' (calibrated within each protected group; its rows
    carry that protected attribute). Threshold-free metrics (auc, uncertainty, ece) and bba (τ = 0 always) appear
    once, under 'default'; protected is '' for metrics that involve no group.
    """
    zv, zt = np.asarray(val_logits, float), np.asarray(test_logits, float)
    names, y = data.names, data.y_test
    prob = B.sigmoid(zt)
    frames = [_frame({"auc": B.auc(prob, y), "uncertainty": B.uncertainty(zt), "ece": B.ece(prob, y)}, names,
                     scheme="default", protected="")]
    if data.triggered is not None:
        frames.append(_frame({"bba": B.trigger_bias_amplification(zt, y, data.triggered)}, names,
                             scheme="default", protected=data.protected[0]))
    schemes = [("default", "", B.predict(zt, 0.0)),
               ("global", "", B.predict(zt, B.calibrate_thresholds(zv, data.y_val)))]
    for p, name in enumerate(data.protected):
        tau = B.calibrate_thresholds_by_group(zv, data.y_val, data.g_val[p])
        schemes.append(("group", name, B.predict_by_group(zt, tau, data.g_test[p])))
    for scheme, prot, yhat in schemes:
        inter = B.interdependence(yhat, constant=r2_constant)
        free = {"acc": B.accuracy(yhat, y), "predpos": B.positive_rate(yhat), "r2": inter.r2,
                "r2_constant": (inter.reason == "constant_target").astype(float)}
        frames.append(_frame(free, names, scheme=scheme, protected=prot))
        for p, name in enumerate(data.protected):
            if scheme == "group" and name != prot:
                continue
            m, notes = _group_metrics(yhat, data, p)
            frames.append(_frame(m, names, scheme=scheme, protected=name, notes=notes))
    out = pd.concat(frames, ignore_index=True)
    return out[["seed", "attribute", "scheme", "protected", "metric", "value", "note"]]


def relative_error_changes(dense: pd.DataFrame, sparse: pd.DataFrame) -> pd.DataFrame:
    """(sparse − dense)/dense of FPR/FNR per group (seed-paired), as extra rows '<metric>_rel'."""
    keys = ["seed", "attribute", "scheme", "protected", "metric"]
    rates = ("fpr_g0", "fpr_g1", "fnr_g0", "fnr_g1")
    d = dense[dense["metric"].isin(rates)][keys + ["value"]]
    s = sparse[sparse["metric"].isin(rates)][keys + ["value"]]
    m = s.merge(d, on=keys, suffixes=("", "_dense"))
    m["value"] = B.relative_change(m["value"].to_numpy(), m["value_dense"].to_numpy())
    m["metric"] = m["metric"] + "_rel"
    m["note"] = ""
    return m[keys[:4] + ["metric", "value", "note"]].reset_index(drop=True)


def metric_array(frame: pd.DataFrame, metric: str, names: Sequence[str], *, scheme: str = "default",
                 protected: str = "") -> np.ndarray:
    """[S, A] array of one metric from a `population_metrics` frame (attributes in ``names`` order)."""
    f = frame[(frame["metric"] == metric) & (frame["scheme"] == scheme) & (frame["protected"] == protected)]
    if f.empty:
        raise ValueError(f"frame: no rows for metric={metric!r}, scheme={scheme!r}, protected={protected!r}")
    return f.pivot(index="seed", columns="attribute", values="value").reindex(columns=list(names)).to_numpy(float)


def random_baseline(key: jax.Array, n_flagged: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(flags, scores): U(0, 1) scores and the ``n_flagged`` highest flagged (the same flagged fraction as the
    criterion it is compared with)."""
    s = np.asarray(jax.random.uniform(key, shape), float)
    flags = np.zeros(s.size, bool)
    flags[np.argsort(-s, axis=None, kind="stable")[:n_flagged]] = True
    return flags.reshape(shape), s


def identification_tables(dense_test_logits, sparse_test_logits, data: StudyData, *, band: float = 0.4,
                          bands: Sequence[float] = (0.3, 0.45), key: jax.Array | None = None,
                          ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """CIEs of the pruned population vs the dense one (τ = 0, modal predictions over seeds, sample-attribute pairs)
    and the dense-only criteria scored against them.

    Criteria: 'uncertainty' (U = 1[|p̄ − .5| < band], score −|p̄ − .5|), 'uncertainty_<b>' for the other bands
    (same score), 'disagreement' (dense seeds disagree; score −|mean vote − .5|) and 'random' (U(0,1) scores, as
    many flagged as 'uncertainty'). Returns (cies per attribute, identification rows (criterion, protected, subset,
    n, n_cie, n_flagged, flagged_fraction, precision, recall, f1, enrichment, auroc), the 'uncertainty' flags
    [N, A]).
    """
    zd, zs = np.asarray(dense_test_logits, float), np.asarray(sparse_test_logits, float)
    names, y = list(data.names), data.y_test
    yd, ys = B.predict(zd, 0.0), B.predict(zs, 0.0)
    ch = BI.identify_cies(yd, ys, y)
    pbar = BI.dense_mean_probability(zd)
    score = BI.susceptibility_score(pbar)
    flags = BI.susceptibility_flags(pbar, band)
    crits: dict[str, tuple[np.ndarray, np.ndarray]] = {DEFAULT_CRITERION: (flags, score)}
    for b in bands:
        crits[f"uncertainty_{b:g}"] = (BI.susceptibility_flags(pbar, b), score)
    crits["disagreement"] = (BI.disagreement_flags(yd), -np.abs(yd.mean(axis=0) - 0.5))
    key = jax.random.fold_in(jax.random.key(0), _RANDOM_BASELINE) if key is None else key
    crits["random"] = random_baseline(key, int(flags.sum()), flags.shape)
    rows = []
    for crit, (u, s) in crits.items():
        f = BI.evaluate_flags(u, ch.cie, s)
        f.insert(0, "protected", "")
        f.insert(0, "criterion", crit)
        rows.append(f)
        for p, name in enumerate(data.protected):
            f = BI.evaluate_flags(u, ch.cie, s, data.g_test[p])
            f = f[f["subset"] != "all"].copy()
            f.insert(0, "protected", name)
            f.insert(0, "criterion", crit)
            rows.append(f)
    ident = pd.concat(rows, ignore_index=True).drop(columns=["attribute"])
    n = y.shape[0]
    cie_rows = [{"attribute": "all", "n": int(ch.cie.size), "cie_rate": float(ch.cie.mean()),
                 "harmful_rate": float(ch.harmful.mean()), "flagged_fraction": float(flags.mean()),
                 "dense_mode_acc": float((ch.dense_mode == y).mean()),
                 "sparse_mode_acc": float((ch.sparse_mode == y).mean())}]
    for j, a in enumerate(names):
        cie_rows.append({"attribute": a, "n": n, "cie_rate": float(ch.cie[:, j].mean()),
                         "harmful_rate": float(ch.harmful[:, j].mean()), "flagged_fraction": float(flags[:, j].mean()),
                         "dense_mode_acc": float((ch.dense_mode[:, j] == y[:, j]).mean()),
                         "sparse_mode_acc": float((ch.sparse_mode[:, j] == y[:, j]).mean())})
    return pd.DataFrame(cie_rows), ident, flags


def attenuation_frame(dense_test_logits, sparse_test_logits, data: StudyData, flags) -> pd.DataFrame:
    """`bias.attenuation_table` for every protected attribute (flagged samples excluded / given the dense mode)."""
    yd = B.predict(np.asarray(dense_test_logits, float), 0.0)
    ys = B.predict(np.asarray(sparse_test_logits, float), 0.0)
    frames = []
    for p, name in enumerate(data.protected):
        t = BI.attenuation_table(yd, ys, data.y_test, data.g_test[p], data.pf[p], data.nf[p], flags,
                                 names=data.names)
        t.loc[t["attribute"].isin([a for a, x in zip(data.names, data.ba_excluded[p]) if x]), "ba"] = np.nan
        t.insert(0, "protected", name)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def attribute_frames(dense: pd.DataFrame, sparse: pd.DataFrame, data: StudyData,
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attribute-level table (seed means) and regression of ΔBA across attributes (OLS HC3 + Spearman) on dense
    predictors and, as a variant, on Δuncertainty/ΔR², per protected attribute."""
    names = data.names
    tables, regs = [], []
    arr = lambda f, m, prot="": metric_array(f, m, names, protected=prot)  # noqa: E731
    for p, name in enumerate(data.protected):
        t = BI.attribute_table(
            names, ba_dense=arr(dense, "ba", name), ba_sparse=arr(sparse, "ba", name),
            dense_uncertainty=arr(dense, "uncertainty"), dense_r2=arr(dense, "r2"), prevalence=data.prevalence,
            pf=data.pf[p], nf=data.nf[p], sparse_uncertainty=arr(sparse, "uncertainty"),
            sparse_r2=arr(sparse, "r2"))
        t.insert(0, "protected", name)
        tables.append(t)
        for label, preds in (("dense", BI.DENSE_PREDICTORS), ("delta", BI.DELTA_PREDICTORS)):
            r = BI.attribute_regression(t, predictors=preds)
            r.insert(0, "predictors", label)
            r.insert(0, "protected", name)
            regs.append(r)
    return pd.concat(tables, ignore_index=True), pd.concat(regs, ignore_index=True)


def tag_population(df: pd.DataFrame, population: str, sparsity: float) -> pd.DataFrame:
    """Add the unit's sparsity and population ('dense'/'sparse') to one of its tables (the attenuation table has
    its own per-row population column, which is kept)."""
    df = df.copy()
    df.insert(0, "sparsity", float(sparsity))
    if "population" not in df.columns:
        df.insert(0, "population", population)
    return df


def evaluate_sparse(dense_logits: dict, sparse_logits: dict, dense_metrics: pd.DataFrame, data: StudyData,
                    sparsity: float, cfg: Any) -> dict[str, pd.DataFrame]:
    """All evaluation tables of one sparsity (the keys of `EVAL_TABLES`)."""
    m = population_metrics(sparse_logits["val"], sparse_logits["test"], data, r2_constant=str(cfg.eval.r2_constant))
    m = pd.concat([m, relative_error_changes(dense_metrics, m)], ignore_index=True)
    key = jax.random.fold_in(jax.random.key(int(cfg.seed)), _RANDOM_BASELINE)
    cies, ident, flags = identification_tables(dense_logits["test"], sparse_logits["test"], data,
                                               band=float(cfg.eval.band), bands=tuple(cfg.eval.bands), key=key)
    att = attenuation_frame(dense_logits["test"], sparse_logits["test"], data, flags)
    attrs, reg = attribute_frames(dense_metrics, m, data)
    out = {"metrics": m, "cies": cies, "identification": ident, "attenuation": att, "attributes": attrs,
           "regression": reg}
    return {k: tag_population(v, "sparse", sparsity) for k, v in out.items()}
