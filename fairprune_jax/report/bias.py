"""Report of a bias-study workdir, rebuilt from its stored tables only (no model, no data needed).

`write_report(workdir)` writes ``report.md`` plus ``metrics_vs_sparsity.png``, ``identification.png`` and
``calibration.png`` into the workdir; `terminal_summary(workdir)` is the short text printed at the end of a run.
Every sentence of the "Reading" section is computed from the numbers (directions are called only when the change
exceeds twice the combined seed sd); nothing is hard-coded.
"""
from __future__ import annotations

import math
import os
import pathlib
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fairprune_jax.analysis import bias as B
from fairprune_jax.results import Workdir

KEY_METRICS = ("acc", "auc", "ba", "bba", "uncertainty", "r2", "ece", "dfpr", "dfnr")
LABELS = {"acc": "accuracy", "auc": "AUC", "ba": "BA", "bba": "BBA (trigger)", "uncertainty": "uncertainty",
          "r2": "interdependence R²", "ece": "ECE", "dfpr": "ΔFPR", "dfnr": "ΔFNR", "predpos": "positive rate"}
GROUP_METRICS = ("ba", "dfpr", "dfnr", "fpr_g0", "fpr_g1", "fnr_g0", "fnr_g1")


# ------------------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------------------
def _as_workdir(workdir: Workdir | str | os.PathLike) -> Workdir:
    return workdir if isinstance(workdir, Workdir) else Workdir.existing(workdir)


def summarize_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """`bias.aggregate` (nan-mean over attributes, then mean ± sd over seeds, NaN counts) per population ×
    sparsity × scheme × protected × metric."""
    rows = []
    keys = ["population", "sparsity", "scheme", "protected", "metric"]
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # inf relative changes (dense rate 0) give NaN sd
        for k, f in metrics.groupby(keys, sort=False):
            v = f.pivot(index="seed", columns="attribute", values="value").to_numpy(float)
            rows.append({**dict(zip(keys, k)), **B.aggregate(v)._asdict()})
    out = pd.DataFrame(rows)
    out["_order"] = (out["population"] != "dense").astype(int)
    out = out.sort_values(["_order", "sparsity"], kind="stable").drop(columns="_order")
    return out.reset_index(drop=True)


def _row(summary: pd.DataFrame, population: str, sparsity: float, metric: str, scheme: str = "default",
         protected: str = "") -> pd.Series | None:
    f = summary[(summary["population"] == population) & np.isclose(summary["sparsity"], sparsity)
                & (summary["metric"] == metric) & (summary["scheme"] == scheme) & (summary["protected"] == protected)]
    return None if f.empty else f.iloc[0]


def metric_series(summary: pd.DataFrame, metric: str, *, scheme: str = "default", protected: str = "",
                  ) -> pd.DataFrame:
    """Rows (population, sparsity, mean, sd, n_nan, n_values) of one metric: dense first, then the grid."""
    f = summary[(summary["metric"] == metric) & (summary["scheme"] == scheme) & (summary["protected"] == protected)]
    return f[["population", "sparsity", "mean", "sd", "n_seeds_defined", "n_nan", "n_values"]].reset_index(drop=True)


def _fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if isinstance(x, float) and math.isinf(x):  # e.g. an enrichment when the base rate is 0
        return ("+inf" if signed else "inf") if x > 0 else "-inf"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _pm(mean: float, sd: float, digits: int = 3, signed: bool = False) -> str:
    if not math.isfinite(mean):
        return "nan"
    return _fmt(mean, digits, signed) + ("" if not math.isfinite(sd) else f" ± {sd:.{digits}f}")


def _pct(s: float) -> str:
    return f"{100 * s:g}%"


def _md(df: pd.DataFrame) -> str:
    """GitHub markdown table (no tabulate dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------------------
def _x(s) -> np.ndarray:
    """Sparsity → "nines" −log10(1 − s), so .5, .9, .99 spread evenly; dense (0) at 0."""
    return -np.log10(1.0 - np.asarray(s, float))


def _axis(ax, grid: Sequence[float]) -> None:
    ticks = [0.0, *grid]
    ax.set_xticks(_x(ticks))
    ax.set_xticklabels(["dense" if t == 0 else f"{100 * t:g}" for t in ticks], rotation=45, fontsize=7)
    ax.set_xlabel("sparsity (%)", fontsize=8)
    ax.grid(alpha=0.3)


def _errline(ax, series: pd.DataFrame, label: str, **kw) -> None:
    if series.empty:
        return
    sp = np.where(series["population"] == "dense", 0.0, series["sparsity"].to_numpy(float))
    bars = ax.errorbar(_x(sp), series["mean"], yerr=series["sd"].fillna(0.0), marker="o", ms=3, capsize=2,
                       label=label, **kw)
    base = series["n_nan"].iloc[0]
    for x, y, r in zip(_x(sp), series["mean"], series.itertuples()):
        if r.n_nan > base and np.isfinite(y):  # mark means over fewer attributes than dense
            ax.annotate(f"NaN {int(r.n_nan)}/{int(r.n_values)}", (x, y), fontsize=6, xytext=(3, -9),
                        textcoords="offset points", color=bars[0].get_color())


def _figure(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return plt, fig, axes.ravel()[:n]


def plot_metrics(summary: pd.DataFrame, grid: Sequence[float], protected: Sequence[str], path: pathlib.Path) -> None:
    panels = ["acc", "ba", "uncertainty", "r2", "ece"] + (["bba"] if (summary["metric"] == "bba").any() else ["auc"])
    plt, fig, axes = _figure(len(panels))
    for ax, m in zip(axes, panels):
        if m in GROUP_METRICS or m == "bba":
            for p in protected:
                _errline(ax, metric_series(summary, m, protected=p), p)
            if len(protected) > 1:
                ax.legend(fontsize=7)
        else:
            _errline(ax, metric_series(summary, m), m)
        ax.set_title(f"{LABELS.get(m, m)} (τ = 0; mean ± sd over seeds)", fontsize=9)
        _axis(ax, grid)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_identification(ident: pd.DataFrame, cies: pd.DataFrame, grid: Sequence[float], path: pathlib.Path) -> None:
    panels = ["auroc", "precision", "recall", "enrichment", "cie_rate"]
    plt, fig, axes = _figure(len(panels))
    base = ident[(ident["protected"] == "") & (ident["subset"] == "all")]
    for ax, m in zip(axes, panels):
        if m == "cie_rate":
            c = cies[cies["attribute"] == "all"].sort_values("sparsity")
            ax.plot(_x(c["sparsity"]), c["cie_rate"], marker="o", ms=3, label="CIE rate")
            ax.plot(_x(c["sparsity"]), c["harmful_rate"], marker="s", ms=3, label="harmful CIE rate")
            ax.set_title("CIEs (sample-attribute pairs)", fontsize=9)
        else:
            for crit in ("uncertainty", "disagreement", "random"):
                f = base[base["criterion"] == crit].sort_values("sparsity")
                ax.plot(_x(f["sparsity"]), f[m], marker="o", ms=3, label=crit,
                        ls="--" if crit == "random" else "-")
            ax.set_title(f"dense criterion vs CIEs: {m}", fontsize=9)
            if m == "enrichment" and (base[m] > 0).any():
                ax.set_yscale("log")
        ax.legend(fontsize=7)
        _axis(ax, grid)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(summary: pd.DataFrame, grid: Sequence[float], protected: Sequence[str],
                     path: pathlib.Path) -> None:
    plt, fig, axes = _figure(len(protected))
    for ax, p in zip(axes, protected):
        for scheme in ("default", "global", "group"):
            _errline(ax, metric_series(summary, "ba", scheme=scheme, protected=p), scheme)
        ax.set_title(f"BA ({p}) by threshold scheme", fontsize=9)
        ax.legend(fontsize=7)
        _axis(ax, grid)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    txt = (f"{label} {_change_words(d, last)} from {_pm(d['mean'], d['sd'], digits)} (dense) to "
           f"{_pm(last['mean'], last['sd'], digits)} at {_pct(last['sparsity'])}")
    if len(sp) > 1:
        txt += f"; at {_pct(first['sparsity'])} it is {_pm(first['mean'], first['sd'], digits)}"
    if peak and len(sp) > 2 and np.isfinite(sp["mean"]).any():
        top = sp.loc[sp["mean"].idxmax()]
        if top["sparsity"] not in (first["sparsity"], last["sparsity"]):
            txt += f"; it peaks at {_pct(top['sparsity'])} ({_pm(top['mean'], top['sd'], digits)})"
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
            d, r = _row(summary, "dense", 0.0, "ba", "default", p), _row(summary, "sparse", s, "ba", "default", p)
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
                           f"{_pm(r['mean'], r['sd'], 3)}.")
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
            from scipy import stats

            rho = stats.spearmanr(ba0[ok], v[ok]).statistic
            out.append(f"Across the {int(ok.sum())} populations, mean BA ({protected[0]}) and mean {LABELS[m]} have "
                       f"Spearman ρ = {rho:+.2f} (descriptive; few points).")
    grid = sorted(summary.loc[summary["population"] == "sparse", "sparsity"].unique())
    ref = reference_sparsity(summary, protected)
    focus = sorted({float(grid[-1]), *(() if ref is None else (ref,))}) if grid else []
    if grid and ref != grid[-1]:
        out.append("BA has extra NaN values at the highest sparsity, so the sentences below also report "
                   + (f"{_pct(ref)}, the highest sparsity where BA is defined for as many attributes as for dense."
                      if ref is not None else "no reference sparsity (BA loses attributes at every sparsity)."))
    # identification
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
                       f"{100 * top['flagged_fraction']:.1f}% of pairs with precision {_fmt(top['precision'])} "
                       f"(random: {_fmt(top['precision_random'])}), recall {_fmt(top['recall'])} (random: "
                       f"{_fmt(top['recall_random'])}), enrichment {_fmt(top['enrichment'], 2)} and AUROC "
                       f"{_fmt(top['auroc'])} (random: {_fmt(top['auroc_random'])}).")
    # calibration
    for s in focus:
        for p in protected:
            vals = {sch: _row(summary, "sparse", s, "ba", sch, p) for sch in ("default", "global", "group")}
            dv = {sch: _row(summary, "dense", 0.0, "ba", sch, p) for sch in ("default", "global", "group")}
            if all(v is not None for v in vals.values()):
                out.append(f"Calibration ({p}) at {_pct(s)}: mean BA {_fmt(vals['default']['mean'], 3, True)} at "
                           f"τ = 0, {_fmt(vals['global']['mean'], 3, True)} with global thresholds, "
                           f"{_fmt(vals['group']['mean'], 3, True)} with per-group thresholds (dense: "
                           + ", ".join(_fmt(dv[k]['mean'], 3, True) if dv[k] is not None else "nan"
                                       for k in ("default", "global", "group")) + ").")
    if focus and "target" in meta and (meta.get("p1"), meta.get("p0")) != (meta.get("test_p1"), meta.get("test_p0")):
        out.append(f"Caveat (planted data): validation is planted at the training rates ({meta.get('p1')}/"
                   f"{meta.get('p0')}) and test at {meta.get('test_p1')}/{meta.get('test_p0')}, so thresholds fitted "
                   "per group on validation carry the training link between trigger and target into the test "
                   "set; the per-group countermeasure is evaluated under that shift.")
    # attenuation
    if not att.empty:
        for s in focus:
            for p in protected:
                f = attenuation_summary_frame(att[np.isclose(att["sparsity"], s) & (att["protected"] == p)])
                f = f[f["attribute"] == "mean"].set_index("variant")
                if {"full", "exclude", "dense_fill"} <= set(f.index):
                    out.append(f"Attenuation ({p}) at {_pct(s)}: ΔBA (sparse − dense, mean over attributes) "
                               f"{_fmt(f.loc['full', 'delta_ba'], 4, True)} with all samples, "
                               f"{_fmt(f.loc['exclude', 'delta_ba'], 4, True)} excluding flagged samples, "
                               f"{_fmt(f.loc['dense_fill', 'delta_ba'], 4, True)} giving them the dense prediction.")
    # regression
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
    return [s for s in out if s]


def attenuation_summary_frame(att: pd.DataFrame) -> pd.DataFrame:
    return B.attenuation_summary(att[["population", "seed", "attribute", "variant", "ba"]])


# ------------------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------------------
def _read(wd: Workdir, name: str) -> pd.DataFrame:
    return wd.read_table(name)


def _config_lines(cfg: Any, meta: dict) -> list[str]:
    seeds = list(range(int(cfg.seed), int(cfg.seed) + int(cfg.num_seeds)))
    lines = [f"- dataset: `{cfg.dataset}`; model: `{cfg.model}` (sigmoid head, BCE); "
             f"{len(meta.get('names', []))} attributes; protected: {', '.join(meta.get('protected', []))}",
             f"- seeds: {len(seeds)} (`jax.random.key({seeds[0]} … {seeds[-1]})`)",
             f"- sparsity grid: {', '.join(_pct(float(s)) for s in cfg.prune.sparsities)}; "
             f"protocol `{cfg.prune.protocol}`, "
             f"criterion `{cfg.prune.criterion}`, output layer {'excluded' if cfg.exclude_output else 'pruned'}",
             f"- dense training: {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, "
             f"{cfg.train.optimizer.name} lr {cfg.train.optimizer.lr}",
             f"- fine-tuning: {cfg.finetune.epochs} epochs, batch {cfg.finetune.batch_size}, "
             f"{cfg.finetune.optimizer.name} lr {cfg.finetune.optimizer.lr}"
             + (f"; GMP from {cfg.prune.gmp.initial} (start {cfg.prune.gmp.start}, end {cfg.prune.gmp.end or 'auto'}, "
                f"every {cfg.prune.gmp.every})" if cfg.prune.protocol == "gmp" else ""),
             f"- data: {meta.get('n_train', '?')} train / {meta.get('n_val', '?')} validation / "
             f"{meta.get('n_test', '?')} test examples"]
    if "target" in meta:
        lines.append(f"- planted trigger `{meta.get('trigger')}` on target `{meta['target']}`: training "
                     f"P(g=1|a*=1) = {meta.get('p1')}, P(g=1|a*=0) = {meta.get('p0')}; test {meta.get('test_p1')}/"
                     f"{meta.get('test_p0')} (independent of labels)")
    lines.append(f"- thresholds: τ = 0 (default); 'global' = k-th largest validation logit per attribute; 'group' = "
                 f"the same within each protected group (the countermeasure); identification band "
                 f"|p̄ − .5| < {cfg.eval.band}")
    return lines


def write_report(workdir: Workdir | str | os.PathLike) -> pathlib.Path:
    """Write ``report.md`` and the PNGs into the workdir from its stored tables; returns the report path."""
    wd = _as_workdir(workdir)
    cfg = wd.config
    meta = wd.read_json("meta.json", default={})
    protected = list(meta.get("protected", []))
    metrics = _read(wd, "metrics")
    if metrics.empty:
        raise ValueError(f"workdir {str(wd.path)!r}: no metrics table yet")
    summary = summarize_metrics(metrics)
    ident, cies, att, reg = (_read(wd, t) for t in ("identification", "cies", "attenuation", "regression"))
    prune = _read(wd, "prune")
    grid = sorted(float(s) for s in summary.loc[summary["population"] == "sparse", "sparsity"].unique())

    plot_metrics(summary, grid, protected, wd.file("metrics_vs_sparsity.png"))
    if not ident.empty:
        plot_identification(ident, cies, grid, wd.file("identification.png"))
    plot_calibration(summary, grid, protected, wd.file("calibration.png"))

    from fairprune_jax.studies.bias import DENSE_KEY, sparsity_key
    from fairprune_jax.studies import spine

    expected = [DENSE_KEY] + [sparsity_key(s) for s in cfg.prune.sparsities]
    n_diverged = int(prune["diverged"].sum()) if "diverged" in prune else 0
    lines = [f"# Bias study: `{cfg.dataset}` / `{cfg.model}`", "",
             *spine.incomplete_warning(expected, wd.keys("metrics")),
             "Built from the stored tables of this workdir (rebuild with `fairprune-report --workdir=<this "
             "folder>`; the same tables give the same bytes, timings live in `timings.json`).", "",
             f"Diverged networks (non-finite loss or parameters; excluded from every statistic): {n_diverged}.", "",
             "## Set-up", "", *_config_lines(cfg, meta),
             f"- populations evaluated: dense + {len(grid)} of {len(cfg.prune.sparsities)} sparsities", ""]
    lines += ["## Reading (generated from the numbers)", ""]
    lines += [f"- {s}" for s in reading(summary, ident, cies, att, reg, protected, meta)]
    lines += ["", "Directions are called only when the change exceeds twice the combined seed sd. Metrics are "
              "nan-means over attributes, then mean ± sd over seeds; BA is NaN where SCIENCE.md §6 leaves it "
              "undefined (counts in the table).", ""]

    # metrics table
    lines += ["## Metrics against sparsity (τ = 0)", "", "![metrics](metrics_vs_sparsity.png)", ""]
    cols = [("acc", ""), ("auc", ""), *(("ba", p) for p in protected),
            *((("bba", protected[0]),) if (summary["metric"] == "bba").any() else ()),
            ("uncertainty", ""), ("r2", ""), ("ece", ""), *(("dfpr", p) for p in protected),
            *(("dfnr", p) for p in protected)]
    realised = prune.groupby("sparsity")["realised"].mean() if not prune.empty else pd.Series(dtype=float)
    rows = []
    for pop, s in [("dense", 0.0)] + [("sparse", g) for g in grid]:
        r = {"population": "dense" if pop == "dense" else _pct(s),
             "realised": "0" if pop == "dense" else _fmt(float(realised.get(s, np.nan)), 4)}
        for m, p in cols:
            x = _row(summary, pop, s, m, "default", p)
            head = LABELS.get(m, m) + (f" ({p})" if p and len(protected) > 1 else "")
            signed = m in GROUP_METRICS + ("bba",)
            r[head] = "–" if x is None else _pm(x["mean"], x["sd"], 4 if m == "acc" else 3, signed)
        rows.append(r)
    lines += [_md(pd.DataFrame(rows)), ""]
    ba_nan = summary[(summary["metric"] == "ba") & (summary["scheme"] == "default")]
    if not ba_nan.empty:
        lines += ["NaN BA values (seed × attribute) per population: " + ", ".join(
            f"{'dense' if r.population == 'dense' else _pct(r.sparsity)} ({r.protected}) {r.n_nan}/{r.n_values}"
            for r in ba_nan.itertuples()) + ".", ""]
        notes = metrics[(metrics["metric"] == "ba") & (metrics["scheme"] == "default") & (metrics["note"] != "")]
        if not notes.empty:
            lines += ["Reasons: " + ", ".join(f"{k} ×{v}" for k, v in notes["note"].value_counts().items()) + ".",
                      ""]

    # identification
    if not ident.empty:
        lines += ["## Identification: dense-model criteria vs CIEs", "",
                  "CIE = the modal τ = 0 prediction of the pruned population differs from the dense population's "
                  "(sample-attribute pairs). Criteria use the dense models only: `uncertainty` flags |p̄ − .5| < "
                  f"{cfg.eval.band} (AUROC of −|p̄ − .5|), `disagreement` flags disagreeing dense seeds, "
                  "`random` flags "
                  "as many pairs as `uncertainty` at random (AUROC of U(0,1) scores).", "",
                  "![identification](identification.png)", ""]
        base = ident[(ident["protected"] == "") & (ident["subset"] == "all")].copy()
        c = cies[cies["attribute"] == "all"][["sparsity", "cie_rate", "harmful_rate"]]
        base = base.merge(c, on="sparsity", how="left")
        show = base[["sparsity", "criterion", "cie_rate", "harmful_rate", "flagged_fraction", "precision", "recall",
                     "f1", "enrichment", "auroc"]].copy()
        show["sparsity"] = show["sparsity"].map(_pct)
        for k in show.columns[2:]:
            show[k] = show[k].map(lambda v: _fmt(v, 4))
        lines += [_md(show), ""]
        grp = ident[(ident["protected"] != "") & (ident["criterion"].isin(["uncertainty", "random"]))]
        if not grp.empty:
            g = grp[["sparsity", "criterion", "protected", "subset", "n_cie", "precision", "recall", "auroc"]].copy()
            g["sparsity"] = g["sparsity"].map(_pct)
            for k in ("precision", "recall", "auroc"):
                g[k] = g[k].map(lambda v: _fmt(v, 3))
            lines += ["By protected group:", "", _md(g), ""]

    # calibration
    lines += ["## Calibration countermeasure (BA and accuracy by threshold scheme)", "",
              "![calibration](calibration.png)", ""]
    rows = []
    for pop, s in [("dense", 0.0)] + [("sparse", g) for g in grid]:
        for p in protected:
            r = {"population": "dense" if pop == "dense" else _pct(s), "protected": p}
            for sch in ("default", "global", "group"):
                x = _row(summary, pop, s, "ba", sch, p)
                r[f"BA {sch}"] = "–" if x is None else _pm(x["mean"], x["sd"], 3, True)
                a = _row(summary, pop, s, "acc", sch, p if sch == "group" else "")
                r[f"acc {sch}"] = "–" if a is None else _fmt(a["mean"], 4)
            rows.append(r)
    lines += [_md(pd.DataFrame(rows)), ""]

    # attenuation
    if not att.empty:
        lines += ["## Attenuation (flagged = dense uncertainty criterion)", ""]
        rows = []
        for (s, p), f in att.groupby(["sparsity", "protected"], sort=True):
            sm = attenuation_summary_frame(f)
            sm = sm[sm["attribute"] == "mean"].set_index("variant")
            rows.append({"sparsity": _pct(s), "protected": p,
                         **{f"ΔBA {v}": _fmt(sm.loc[v, "delta_ba"], 4, True) if v in sm.index else "–"
                            for v in ("full", "exclude", "dense_fill")}})
        lines += [_md(pd.DataFrame(rows)), ""]

    # regression
    if not reg.empty:
        ref = reference_sparsity(summary, protected)
        top = ref if ref is not None else grid[-1]
        lines += [f"## Attribute-level regression of ΔBA at {_pct(top)} (all sparsities in `results/regression`)", "",
                  ("The highest sparsity at which BA is defined for as many attributes as for dense."
                   if ref is not None else "The highest sparsity (BA loses attributes at every sparsity)."), "",
                  "OLS with HC3 errors across attributes (seed means) plus Spearman ρ; few, correlated units, so "
                  "read it as descriptive.", ""]
        f = reg[np.isclose(reg["sparsity"], top)][["protected", "predictors", "method", "term", "estimate",
                                                    "std_err", "p_value", "n_units", "note"]].copy()
        for k in ("estimate", "std_err", "p_value"):
            f[k] = f[k].map(lambda v: f"{v:.3g}" if np.isfinite(v) else "nan")
        lines += [_md(f), ""]
        attrs = _read(wd, "attributes")
        if not attrs.empty:
            a = attrs[np.isclose(attrs["sparsity"], top)][["protected", "attribute", "ba_dense", "ba_sparse",
                                                           "delta_ba", "dense_uncertainty", "dense_r2",
                                                           "prevalence", "group_gap"]].copy()
            for k in a.columns[2:]:
                a[k] = a[k].map(lambda v: f"{v:.4f}" if np.isfinite(v) else "nan")
            lines += ["Attribute table (seed means):", "", _md(a), ""]

    # timings
    secs = {k: v for k, v in wd.stage_seconds().items() if k != "report"}
    if secs:
        lines += ["## Timings (wall seconds, summed over units and resumed runs)", "",
                  _md(pd.DataFrame([{"stage": k, "seconds": f"{v:.1f}"} for k, v in secs.items()])), ""]
    path = wd.write_text("report.md", "\n".join(lines) + "\n")
    return path


def terminal_summary(workdir: Workdir | str | os.PathLike) -> str:
    """A short fixed-width summary: per population accuracy, BA, uncertainty, R², ECE, CIE rate and the
    identification AUROC of the dense criterion vs random; then stage timings."""
    wd = _as_workdir(workdir)
    meta = wd.read_json("meta.json", default={})
    protected = list(meta.get("protected", []))
    metrics = _read(wd, "metrics")
    if metrics.empty:
        return "no results yet"
    summary = summarize_metrics(metrics)
    ident, cies = _read(wd, "identification"), _read(wd, "cies")
    grid = sorted(float(s) for s in summary.loc[summary["population"] == "sparse", "sparsity"].unique())
    p0 = protected[0] if protected else ""
    head = f"{'sparsity':>9} {'acc':>7} {'BA':>15} {'uncert.':>15} {'R2':>7} {'ECE':>7} {'CIE%':>6} {'AUROC u/r':>11}"
    lines = [f"bias study summary ({wd.path}); BA for '{p0}', τ = 0, mean ± sd over seeds", head]
    for pop, s in [("dense", 0.0)] + [("sparse", g) for g in grid]:
        g = lambda m, p="": _row(summary, pop, s, m, "default", p)  # noqa: E731
        acc, ba, un, r2, ec = g("acc"), g("ba", p0), g("uncertainty"), g("r2"), g("ece")
        cie, au = "", ""
        if pop == "sparse" and not cies.empty:
            c = cies[(cies["attribute"] == "all") & np.isclose(cies["sparsity"], s)]
            cie = f"{100 * c['cie_rate'].iloc[0]:.2f}" if not c.empty else ""
            b = ident[np.isclose(ident["sparsity"], s) & (ident["protected"] == "") & (ident["subset"] == "all")]
            u, r = b[b["criterion"] == "uncertainty"], b[b["criterion"] == "random"]
            if not u.empty and not r.empty:
                au = f"{u['auroc'].iloc[0]:.3f}/{r['auroc'].iloc[0]:.3f}"
        v = lambda x, d=3, sg=False: "–" if x is None else _fmt(x["mean"], d, sg)  # noqa: E731
        pm = lambda x: "–" if x is None else _pm(x["mean"], x["sd"], 3, True)  # noqa: E731
        lines.append(f"{'dense' if pop == 'dense' else _pct(s):>9} {v(acc, 4):>7} {pm(ba):>15} "
                     f"{'–' if un is None else _pm(un['mean'], un['sd'], 3):>15} {v(r2):>7} {v(ec):>7} {cie:>6} "
                     f"{au:>11}")
    secs = wd.stage_seconds()
    if secs:
        lines.append("stage seconds (all runs): " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    return "\n".join(lines)
