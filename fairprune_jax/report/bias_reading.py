"""The "Reading" section of a bias-study report: sentences computed from the stored tables, never hard-coded.

A direction (up, down) is named only when the change exceeds twice the combined seed sd; `reading` assembles the
sentences about the metrics, the identification criteria, calibration, attenuation and the regression.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from fairprune_jax.analysis import bias_identification as BI
from fairprune_jax.report import writer as W
from fairprune_jax.report.bias_summary import LABELS, metric_series, row


def fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    return W.number(x, digits, signed)


def pm(mean: float, sd: float, digits: int = 3, signed: bool = False) -> str:
    if not math.isfinite(mean):
        return "nan"
    return fmt(mean, digits, signed) + ("" if not math.isfinite(sd) else f" ± {sd:.{digits}f}")


_pct = W.pct


# ------------------------------------------------------------------------------------------------------------
# reading (generated sentences)
# ------------------------------------------------------------------------------------------------------------
def _change_words(a: pd.Series, b: pd.Series) -> str:
    """'rises'/'falls' when |b − a| > 2·sqrt(sd_a² + sd_b²) (sd NaN counts as 0), else 'stays within seed noise'."""
    d = b["mean"] - a["mean"]
    noise = 2 * math.sqrt(np.nan_to_num(a["sd"]) ** 2 + np.nan_to_num(b["sd"]) ** 2)
    if not math.isfinite(d):
        return "is undefined at one end"
    if abs(d) <= noise:
        return f"stays within seed noise (Δ = {d:+.3f}, 2·sd = {noise:.3f})"
    return f"{'rises' if d > 0 else 'falls'} (Δ = {d:+.3f}, 2·sd = {noise:.3f})"


def _trajectory(series: pd.DataFrame, label: str, digits: int = 3, peak: bool = False) -> str | None:
    if len(series) < 2:
        return None
    d, last = series.iloc[0], series.iloc[-1]
    sp = series[series["population"] == "sparse"]
    first = sp.iloc[0]
    txt = (f"{label} {_change_words(d, last)} from {pm(d['mean'], d['sd'], digits)} (dense) to "
           f"{pm(last['mean'], last['sd'], digits)} at {_pct(last['sparsity'])}")
    if len(sp) > 1:
        txt += f"; at {_pct(first['sparsity'])} it is {pm(first['mean'], first['sd'], digits)}"
    if peak and len(sp) > 2 and np.isfinite(sp["mean"]).any():
        top = sp.loc[sp["mean"].idxmax()]
        if top["sparsity"] not in (first["sparsity"], last["sparsity"]):
            txt += f"; it peaks at {_pct(top['sparsity'])} ({pm(top['mean'], top['sd'], digits)})"
    extra = series[series["n_nan"] > d["n_nan"]]
    if len(extra):
        txt += " (NaN seed × attribute values: " + ", ".join(
            f"{int(r.n_nan)} of {int(r.n_values)} at {_pct(r.sparsity)}" for r in extra.itertuples()) + \
            f", vs {int(d['n_nan'])} dense; the means cover the defined values only)"
    return txt + "."


def reference_sparsity(summary: pd.DataFrame, protected: Sequence[str]) -> float | None:
    """Highest grid sparsity at which BA (τ = 0) has no more NaN values than the dense population, for every
    protected attribute (so attribute-level comparisons there cover the same attributes); None if none."""
    best = None
    for s in sorted(summary.loc[summary["population"] == "sparse", "sparsity"].unique()):
        ok = True
        for p in protected:
            d, r = row(summary, "dense", 0.0, "ba", "default", p), row(summary, "sparse", s, "ba", "default", p)
            ok &= d is not None and r is not None and r["n_nan"] <= d["n_nan"]
        if ok:
            best = float(s)
    return best


def _within(series: pd.DataFrame, tol: float | None) -> float | None:
    """Largest grid sparsity up to which every sparse mean stays within ``tol`` of dense (2·combined sd if None)."""
    d = series.iloc[0]
    best = None
    for _, r in series[series["population"] == "sparse"].iterrows():
        t = tol if tol is not None else 2 * math.sqrt(np.nan_to_num(d["sd"]) ** 2 + np.nan_to_num(r["sd"]) ** 2)
        if not (math.isfinite(r["mean"]) and abs(r["mean"] - d["mean"]) <= t):
            break
        best = r["sparsity"]
    return best


def reading(summary: pd.DataFrame, ident: pd.DataFrame, cies: pd.DataFrame, att: pd.DataFrame, reg: pd.DataFrame,
            protected: Sequence[str], meta: dict | None = None) -> list[str]:
    """The generated sentences of the report's "Reading" section."""
    meta = meta or {}
    out = _reading_metrics(summary, protected)
    grid = sorted(summary.loc[summary["population"] == "sparse", "sparsity"].unique())
    ref = reference_sparsity(summary, protected)
    focus = sorted({float(grid[-1]), *(() if ref is None else (ref,))}) if grid else []
    if grid and ref != grid[-1]:
        out.append("BA has extra NaN values at the highest sparsity, so the sentences below also report "
                   + (f"{_pct(ref)}, the highest sparsity where BA is defined for as many attributes as for dense."
                      if ref is not None else "no reference sparsity (BA loses attributes at every sparsity)."))
    out += _reading_identification(ident, cies, focus)
    out += _reading_calibration(summary, protected, focus, meta)
    out += _reading_attenuation(att, protected, focus)
    out += _reading_regression(reg, protected, focus)
    return [s for s in out if s]


def _reading_metrics(summary: pd.DataFrame, protected: Sequence[str]) -> list[str]:
    """Accuracy and BA trajectories, the other metrics' trajectories, and their co-movement with BA."""
    out = []
    acc = metric_series(summary, "acc")
    if len(acc) > 1:
        w = _within(acc, 0.01)
        out.append(_trajectory(acc, "Accuracy (τ = 0, mean over attributes)", 4))
        out.append("Accuracy stays within 1 point of dense " + (f"up to {_pct(w)} sparsity." if w is not None
                                                                 else "at no sparsity of the grid."))
    ref = reference_sparsity(summary, protected)
    for p in protected:
        ba = metric_series(summary, "ba", protected=p)
        if len(ba) > 1:
            out.append(_trajectory(ba, f"BA ({p}, τ = 0)", peak=True))
            sp = ba[ba["population"] == "sparse"]
            if ref is not None and ref < sp["sparsity"].max():
                r = sp[np.isclose(sp["sparsity"], ref)].iloc[0]
                out.append(f"At {_pct(ref)} (the highest sparsity where BA is defined for as many attributes as "
                           f"for dense), BA ({p}) {_change_words(ba.iloc[0], r)} relative to dense: "
                           f"{pm(r['mean'], r['sd'], 3)}.")
            w = _within(ba, None)
            if w is not None:
                out.append(f"BA ({p}) stays within 2 combined seed sd of dense up to {_pct(w)} sparsity.")
            else:
                r = sp.iloc[0]
                out.append(f"BA ({p}) already differs from dense by more than 2 combined seed sd at "
                           f"{_pct(r['sparsity'])} (Δ = {r['mean'] - ba.iloc[0]['mean']:+.4f}).")
    for m, p in (("bba", protected[0]), ("uncertainty", ""), ("r2", ""), ("ece", "")):
        s = metric_series(summary, m, protected=p)
        if len(s) > 1:
            out.append(_trajectory(s, LABELS[m], peak=m == "bba"))
    # co-movement across the populations (dense + grid), on seed means
    ba0 = metric_series(summary, "ba", protected=protected[0])["mean"].to_numpy(float)
    for m in ("uncertainty", "r2"):
        v = metric_series(summary, m)["mean"].to_numpy(float)
        ok = np.isfinite(ba0) & np.isfinite(v)
        if ok.sum() >= 3 and np.ptp(ba0[ok]) > 0 and np.ptp(v[ok]) > 0:
            rho = stats.spearmanr(ba0[ok], v[ok]).statistic
            out.append(f"Across the {int(ok.sum())} populations, mean BA ({protected[0]}) and mean {LABELS[m]} have "
                       f"Spearman ρ = {rho:+.2f} (descriptive; few points).")
    return out


def _reading_identification(ident: pd.DataFrame, cies: pd.DataFrame, focus: list[float]) -> list[str]:
    out = []
    base = ident[(ident["protected"] == "") & (ident["subset"] == "all")] if not ident.empty else ident
    u = base[base["criterion"] == "uncertainty"] if not base.empty else base
    if not u.empty:
        mm = u.merge(base[base["criterion"] == "random"], on="sparsity", suffixes=("", "_random"))
        wins = int((mm["auroc"] > mm["auroc_random"]).sum())
        out.append(f"The dense uncertainty criterion's AUROC for CIEs exceeds the random baseline's at {wins} of "
                   f"{len(mm)} sparsities.")
        for s in focus:
            top = mm[np.isclose(mm["sparsity"], s)]
            if top.empty:
                continue
            top = top.iloc[0]
            c = cies[(cies["attribute"] == "all") & np.isclose(cies["sparsity"], s)]
            rate = float(c["cie_rate"].iloc[0]) if not c.empty else float("nan")
            out.append(f"At {_pct(s)}, {100 * rate:.2f}% of sample-attribute pairs are CIEs; the criterion flags "
                       f"{100 * top['flagged_fraction']:.1f}% of pairs with precision {fmt(top['precision'])} "
                       f"(random: {fmt(top['precision_random'])}), recall {fmt(top['recall'])} (random: "
                       f"{fmt(top['recall_random'])}), enrichment {fmt(top['enrichment'], 2)} and AUROC "
                       f"{fmt(top['auroc'])} (random: {fmt(top['auroc_random'])}).")
    return out


def _reading_calibration(summary: pd.DataFrame, protected: Sequence[str], focus: list[float], meta: dict) -> list[str]:
    out = []
    for s in focus:
        for p in protected:
            vals = {sch: row(summary, "sparse", s, "ba", sch, p) for sch in ("default", "global", "group")}
            dv = {sch: row(summary, "dense", 0.0, "ba", sch, p) for sch in ("default", "global", "group")}
            if all(v is not None for v in vals.values()):
                out.append(f"Calibration ({p}) at {_pct(s)}: mean BA {fmt(vals['default']['mean'], 3, True)} at "
                           f"τ = 0, {fmt(vals['global']['mean'], 3, True)} with global thresholds, "
                           f"{fmt(vals['group']['mean'], 3, True)} with per-group thresholds (dense: "
                           + ", ".join(fmt(dv[k]['mean'], 3, True) if dv[k] is not None else "nan"
                                       for k in ("default", "global", "group")) + ").")
    if focus and "target" in meta and (meta.get("p1"), meta.get("p0")) != (meta.get("test_p1"), meta.get("test_p0")):
        out.append(f"Caveat (planted data): validation is planted at the training rates ({meta.get('p1')}/"
                   f"{meta.get('p0')}) and test at {meta.get('test_p1')}/{meta.get('test_p0')}, so thresholds fitted "
                   "per group on validation carry the training link between trigger and target into the test "
                   "set; the per-group countermeasure is evaluated under that shift.")
    return out


def _reading_attenuation(att: pd.DataFrame, protected: Sequence[str], focus: list[float]) -> list[str]:
    out = []
    if not att.empty:
        for s in focus:
            for p in protected:
                f = attenuation_summary_frame(att[np.isclose(att["sparsity"], s) & (att["protected"] == p)])
                f = f[f["attribute"] == "mean"].set_index("variant")
                if {"full", "exclude", "dense_fill"} <= set(f.index):
                    out.append(f"Attenuation ({p}) at {_pct(s)}: ΔBA (sparse − dense, mean over attributes) "
                               f"{fmt(f.loc['full', 'delta_ba'], 4, True)} with all samples, "
                               f"{fmt(f.loc['exclude', 'delta_ba'], 4, True)} excluding flagged samples, "
                               f"{fmt(f.loc['dense_fill', 'delta_ba'], 4, True)} giving them the dense prediction.")
    return out


def _reading_regression(reg: pd.DataFrame, protected: Sequence[str], focus: list[float]) -> list[str]:
    out = []
    if not reg.empty:
        for s in focus:
            for p in protected:
                f = reg[np.isclose(reg["sparsity"], s) & (reg["protected"] == p) & (reg["predictors"] == "dense")]
                ols = f[(f["method"] == "ols_hc3") & (f["term"] != "const")]
                if ols.empty or not np.isfinite(ols["estimate"]).any():
                    note = f["note"].iloc[0] if not f.empty else "no rows"
                    out.append(f"Attribute regression ({p}) at {_pct(s)}: not estimable ({note}).")
                    continue
                sig = ols[ols["p_value"] < 0.05]
                n = int(ols["n_units"].iloc[0])
                out.append(f"Attribute regression of ΔBA ({p}) at {_pct(s)} over {n} attributes (OLS, HC3): "
                           + ("; ".join(f"{t} {e:+.3g} (p = {pv:.2g})" for t, e, pv in
                                        zip(sig["term"], sig["estimate"], sig["p_value"]))
                              if not sig.empty else "no dense predictor with p < .05")
                           + ". Few, correlated units: descriptive only.")
    return out


def attenuation_summary_frame(att: pd.DataFrame) -> pd.DataFrame:
    return BI.attenuation_summary(att[["population", "seed", "attribute", "variant", "ba"]])
