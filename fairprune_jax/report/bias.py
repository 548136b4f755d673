"""Report of a bias-study workdir, rebuilt from its stored tables only (no model, no data needed).

`write_report(workdir)` writes ``report.md`` plus ``metrics_vs_sparsity.png``, ``identification.png`` and
``calibration.png`` into the workdir; `terminal_summary(workdir)` is the short text printed at the end of a run.
Every sentence of the "Reading" section is computed from the numbers (directions are called only when the change
exceeds twice the combined seed sd); nothing is hard-coded.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from fairprune_jax.report import runs
from fairprune_jax.report import writer as W
from fairprune_jax.report.bias_reading import attenuation_summary_frame, fmt, pm, reading, reference_sparsity
from fairprune_jax.report.bias_plots import plot_calibration, plot_identification, plot_metrics
from fairprune_jax.report.bias_summary import KEY_METRICS, METRICS, row, summarize_metrics
from fairprune_jax.results import Workdir
from fairprune_jax.studies import bias_layout

# ------------------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------------------
def _as_workdir(workdir: Workdir | str | os.PathLike) -> Workdir:
    return workdir if isinstance(workdir, Workdir) else Workdir.existing(workdir)


_pct = W.pct
_md = W.markdown_table


# ------------------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------------------
def _read(wd: Workdir, name: str) -> pd.DataFrame:
    return wd.read_table(name)


def _config_lines(cfg: Any, meta: dict) -> list[str]:
    seeds = list(range(int(cfg.seed), int(cfg.seed) + int(cfg.num_seeds)))
    lines = [f"- dataset: `{cfg.dataset}`; model: `{cfg.models[0]}` (sigmoid head, BCE); "
             f"{len(meta.get('names', []))} attributes; protected: {', '.join(meta.get('protected', []))}",
             f"- seeds: {len(seeds)} (`jax.random.key({seeds[0]} … {seeds[-1]})`)",
             f"- sparsity grid: {', '.join(_pct(float(s)) for s in cfg.prune.sparsities)}; "
             f"protocol `{cfg.prune.protocol}`, "
             f"criterion `{cfg.prune.criteria[0]}`, output layer {'excluded' if cfg.exclude_output else 'pruned'}",
             f"- dense training: {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, "
             f"{cfg.train.optimizer.name} lr {cfg.train.optimizer.lr}",
             f"- fine-tuning: {cfg.finetune.epochs} epochs, batch {cfg.finetune.batch_size}, "
             f"{cfg.finetune.optimizer.name} lr {cfg.finetune.optimizer.lr}"
             + bias_layout.PROTOCOLS[cfg.prune.protocol].describe(cfg),
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


class _Tables(NamedTuple):
    """The stored tables a report reads, plus what is derived from them once."""

    cfg: Any
    meta: dict
    protected: list
    metrics: pd.DataFrame
    summary: pd.DataFrame
    ident: pd.DataFrame
    cies: pd.DataFrame
    att: pd.DataFrame
    reg: pd.DataFrame
    attrs: pd.DataFrame
    prune: pd.DataFrame
    grid: list


def _load(wd: Workdir) -> _Tables:
    meta = wd.read_json(bias_layout.META_FILE, default={})
    metrics = _read(wd, "metrics")
    if metrics.empty:
        raise ValueError(f"workdir {str(wd.path)!r}: no metrics table yet")
    pruned = _read(wd, "prune")
    if pruned.empty:
        raise ValueError(f"workdir {str(wd.path)!r}: only the dense models are evaluated; no pruned unit has "
                         "finished yet (rerun the study's command to continue it)")
    if "diverged" in pruned and pruned["diverged"].astype(bool).all():
        raise ValueError(f"workdir {str(wd.path)!r}: every pruned network diverged ({len(pruned)} networks, "
                         "flagged in table 'prune'); nothing to analyse — lower config.finetune.optimizer.lr")
    summary = summarize_metrics(metrics)
    grid = sorted(float(s) for s in summary.loc[summary["population"] == "sparse", "sparsity"].unique())
    ident, cies, att, reg, attrs, prune = (_read(wd, t) for t in ("identification", "cies", "attenuation",
                                                                   "regression", "attributes", "prune"))
    return _Tables(runs.config_of(wd), meta, list(meta.get("protected", [])), metrics, summary, ident, cies, att, reg, attrs,
                   prune, grid)


def _head_lines(wd: Workdir, t: _Tables) -> list[str]:
    cfg = t.cfg
    n_diverged = int(t.prune["diverged"].sum()) if "diverged" in t.prune else 0
    lines = [f"# Bias study: `{cfg.dataset}` / `{cfg.models[0]}`", "",
             *W.incomplete_warning(bias_layout.expected_units(cfg), wd.keys("metrics")),
             "Built from the stored tables of this workdir (rebuild with `fairprune-report --workdir=<this "
             "folder>`; the same tables give the same bytes, timings live in `timings.json`).", "",
             W.diverged_words(n_diverged), "",
             "## Set-up", "", *_config_lines(cfg, t.meta),
             f"- populations evaluated: dense + {len(t.grid)} of {len(cfg.prune.sparsities)} sparsities", ""]
    lines += ["## Reading (generated from the numbers)", ""]
    lines += [f"- {s}" for s in reading(t.summary, t.ident, t.cies, t.att, t.reg, t.protected, t.meta)]
    lines += ["", "Directions are called only when the change exceeds twice the combined seed sd. Metrics are "
              "nan-means over attributes, then mean ± sd over seeds; BA is NaN where docs/methods.md §9 leaves it "
              "undefined (counts in the table).", ""]
    return lines


def _metrics_lines(t: _Tables) -> list[str]:
    summary, protected, grid, prune, metrics = t.summary, t.protected, t.grid, t.prune, t.metrics
    lines = []
    lines += ["## Metrics against sparsity (τ = 0)", "", "![metrics](plots/metrics_vs_sparsity.png)", ""]
    present = set(summary["metric"])
    cols = [(v.name, p) for v in map(METRICS.__getitem__, KEY_METRICS) if not v.only_present or v.name in present
            for p in (protected if v.per_group else protected[:1] if v.only_present else [""])]
    realised = prune.groupby("sparsity")["realised"].mean() if not prune.empty else pd.Series(dtype=float)
    n_attr = int(metrics["attribute"].nunique())
    rows = []
    for pop, s in [("dense", 0.0)] + [("sparse", g) for g in grid]:
        r = {"population": "dense" if pop == "dense" else _pct(s),
             "realised": "0" if pop == "dense" else fmt(float(realised.get(s, np.nan)), 4)}
        for m, p in cols:
            x = row(summary, pop, s, m, "default", p)
            view = METRICS[m]
            head = view.label + (f" ({p})" if p and len(protected) > 1 else "")
            r[head] = "–" if x is None else pm(x["mean"], x["sd"], view.digits, view.signed)
            if m == "r2":  # how many columns the R² rests on the constant-column rule for (mean per model)
                c = row(summary, pop, s, "r2_constant", "default", "")
                r["constant columns"] = "–" if c is None else f"{c['mean'] * n_attr:.1f}/{n_attr}"
        rows.append(r)
    lines += [_md(pd.DataFrame(rows)), "",
              f"Interdependence R² of a constant prediction column follows the "
              f"{'authors' if t.cfg.eval.get('r2_constant', 'authors') == 'authors' else 'NaN'} rule "
              "(docs/methods.md §9); 'constant columns' is how many of each model's columns are constant.", ""]
    ba_nan = summary[(summary["metric"] == "ba") & (summary["scheme"] == "default")]
    if not ba_nan.empty:
        lines += ["NaN BA values (seed × attribute) per population: " + ", ".join(
            f"{'dense' if r.population == 'dense' else _pct(r.sparsity)} ({r.protected}) {r.n_nan}/{r.n_values}"
            for r in ba_nan.itertuples()) + ".", ""]
        notes = metrics[(metrics["metric"] == "ba") & (metrics["scheme"] == "default") & (metrics["note"] != "")]
        if not notes.empty:
            lines += ["Reasons: " + ", ".join(f"{k} ×{v}" for k, v in notes["note"].value_counts().items()) + ".",
                      ""]
    return lines


def _identification_lines(t: _Tables) -> list[str]:
    ident, cies, cfg = t.ident, t.cies, t.cfg
    lines = []
    if not ident.empty:
        lines += ["## Identification: dense-model criteria vs CIEs", "",
                  "CIE = the modal τ = 0 prediction of the pruned population differs from the dense population's "
                  "(sample-attribute pairs). Criteria use the dense models only: `uncertainty` flags |p̄ − .5| < "
                  f"{cfg.eval.band} (AUROC of −|p̄ − .5|), `disagreement` flags disagreeing dense seeds, "
                  "`random` flags "
                  "as many pairs as `uncertainty` at random (AUROC of U(0,1) scores).", "",
                  "![identification](plots/identification.png)", ""]
        base = ident[(ident["protected"] == "") & (ident["subset"] == "all")].copy()
        c = cies[cies["attribute"] == "all"][["sparsity", "cie_rate", "harmful_rate"]]
        base = base.merge(c, on="sparsity", how="left")
        show = base[["sparsity", "criterion", "cie_rate", "harmful_rate", "flagged_fraction", "precision", "recall",
                     "f1", "enrichment", "auroc"]].copy()
        show["sparsity"] = show["sparsity"].map(_pct)
        for k in show.columns[2:]:
            show[k] = show[k].map(lambda v: fmt(v, 4))
        lines += [_md(show), ""]
        grp = ident[(ident["protected"] != "") & (ident["criterion"].isin(["uncertainty", "random"]))]
        if not grp.empty:
            g = grp[["sparsity", "criterion", "protected", "subset", "n_cie", "precision", "recall", "auroc"]].copy()
            g["sparsity"] = g["sparsity"].map(_pct)
            for k in ("precision", "recall", "auroc"):
                g[k] = g[k].map(lambda v: fmt(v, 3))
            lines += ["By protected group:", "", _md(g), ""]
    return lines


def _calibration_lines(t: _Tables) -> list[str]:
    summary, protected, grid = t.summary, t.protected, t.grid
    lines = []
    lines += ["## Calibration countermeasure (BA and accuracy by threshold scheme)", "",
              "![calibration](plots/calibration.png)", ""]
    rows = []
    for pop, s in [("dense", 0.0)] + [("sparse", g) for g in grid]:
        for p in protected:
            r = {"population": "dense" if pop == "dense" else _pct(s), "protected": p}
            for sch in ("default", "global", "group"):
                x = row(summary, pop, s, "ba", sch, p)
                r[f"BA {sch}"] = "–" if x is None else pm(x["mean"], x["sd"], 3, True)
                a = row(summary, pop, s, "acc", sch, p if sch == "group" else "")
                r[f"acc {sch}"] = "–" if a is None else fmt(a["mean"], 4)
            rows.append(r)
    lines += [_md(pd.DataFrame(rows)), ""]
    return lines


def _attenuation_lines(t: _Tables) -> list[str]:
    att = t.att
    lines = []
    if not att.empty:
        lines += ["## Attenuation (flagged = dense uncertainty criterion)", ""]
        rows = []
        for (s, p), f in att.groupby(["sparsity", "protected"], sort=True):
            sm = attenuation_summary_frame(f)
            sm = sm[sm["attribute"] == "mean"].set_index("variant")
            rows.append({"sparsity": _pct(s), "protected": p,
                         **{f"ΔBA {v}": fmt(sm.loc[v, "delta_ba"], 4, True) if v in sm.index else "–"
                            for v in ("full", "exclude", "dense_fill")}})
        lines += [_md(pd.DataFrame(rows)), ""]
    return lines


def _regression_lines(t: _Tables) -> list[str]:
    summary, protected, grid, reg, attrs = t.summary, t.protected, t.grid, t.reg, t.attrs
    lines = []
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
        if not attrs.empty:
            a = attrs[np.isclose(attrs["sparsity"], top)][["protected", "attribute", "ba_dense", "ba_sparse",
                                                           "delta_ba", "dense_uncertainty", "dense_r2",
                                                           "prevalence", "group_gap"]].copy()
            for k in a.columns[2:]:
                a[k] = a[k].map(lambda v: f"{v:.4f}" if np.isfinite(v) else "nan")
            lines += ["Attribute table (seed means):", "", _md(a), ""]
    return lines


def _timings_lines(wd: Workdir) -> list[str]:
    lines = []
    secs = {k: v for k, v in wd.stage_seconds().items() if k != "report"}
    if secs:
        lines += ["## Timings (wall seconds, summed over units and resumed runs)", "",
                  _md(pd.DataFrame([{"stage": k, "seconds": f"{v:.1f}"} for k, v in secs.items()])), ""]
    return lines


def write_report(workdir: Workdir | str | os.PathLike) -> pathlib.Path:
    """Write ``report.md``, ``tables/*.csv`` and ``plots/*.png`` into the workdir from its stored tables (through
    `fairprune_jax.report.writer`); returns the report path."""
    wd = _as_workdir(workdir)
    t = _load(wd)
    lines = [*_head_lines(wd, t), *_metrics_lines(t), *_identification_lines(t), *_calibration_lines(t),
             *_attenuation_lines(t), *_regression_lines(t), *_timings_lines(wd)]
    plots = {"metrics_vs_sparsity.png": lambda: plot_metrics(t.summary, t.grid, t.protected),
             "calibration.png": lambda: plot_calibration(t.summary, t.grid, t.protected)}
    if not t.ident.empty:
        plots["identification.png"] = lambda: plot_identification(t.ident, t.cies, t.grid)
    tables = {"metrics_summary": t.summary, "identification": t.ident, "cies": t.cies, "regression": t.reg}
    return W.write(wd.path, "\n".join(lines), tables=tables, plots=plots)


def terminal_summary(workdir: Workdir | str | os.PathLike) -> str:
    """A short fixed-width summary: per population accuracy, BA, uncertainty, R², ECE, CIE rate and the
    identification AUROC of the dense criterion vs random; then stage timings."""
    wd = _as_workdir(workdir)
    meta = wd.read_json(bias_layout.META_FILE, default={})
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
        g = lambda m, p="": row(summary, pop, s, m, "default", p)  # noqa: E731
        acc, ba, un, r2, ec = g("acc"), g("ba", p0), g("uncertainty"), g("r2"), g("ece")
        cie, au = "", ""
        if pop == "sparse" and not cies.empty:
            c = cies[(cies["attribute"] == "all") & np.isclose(cies["sparsity"], s)]
            cie = f"{100 * c['cie_rate'].iloc[0]:.2f}" if not c.empty else ""
            b = ident[np.isclose(ident["sparsity"], s) & (ident["protected"] == "") & (ident["subset"] == "all")]
            u, r = b[b["criterion"] == "uncertainty"], b[b["criterion"] == "random"]
            if not u.empty and not r.empty:
                au = f"{u['auroc'].iloc[0]:.3f}/{r['auroc'].iloc[0]:.3f}"
        v = lambda x, d=3, sg=False: "–" if x is None else fmt(x["mean"], d, sg)  # noqa: E731
        signed = lambda x: "–" if x is None else pm(x["mean"], x["sd"], 3, True)  # noqa: E731
        lines.append(f"{'dense' if pop == 'dense' else _pct(s):>9} {v(acc, 4):>7} {signed(ba):>15} "
                     f"{'–' if un is None else pm(un['mean'], un['sd'], 3):>15} {v(r2):>7} {v(ec):>7} {cie:>6} "
                     f"{au:>11}")
    secs = wd.stage_seconds()
    if secs:
        lines.append("stage seconds (all runs): " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    return "\n".join(lines)
