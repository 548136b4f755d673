"""Figures of the bias report (each function returns a matplotlib figure; `report.writer` saves it)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from fairprune_jax.report.bias_summary import LABELS, METRICS, metric_series
from fairprune_jax.report.writer import plt


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
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()[:n]


def plot_metrics(summary: pd.DataFrame, grid: Sequence[float], protected: Sequence[str]):
    """Key metrics against sparsity (τ = 0), mean ± sd over seeds; returns the figure."""
    panels = ["acc", "ba", "uncertainty", "r2", "ece"] + (["bba"] if (summary["metric"] == "bba").any() else ["auc"])
    fig, axes = _figure(len(panels))
    for ax, m in zip(axes, panels):
        if METRICS[m].per_group or METRICS[m].only_present:
            for p in protected:
                _errline(ax, metric_series(summary, m, protected=p), p)
            if len(protected) > 1:
                ax.legend(fontsize=7)
        else:
            _errline(ax, metric_series(summary, m), m)
        if m == "r2" and (summary["metric"] == "r2_constant").any():
            const = metric_series(summary, "r2_constant")
            twin = ax.twinx()
            twin.plot(_x(const["sparsity"]), const["mean"], ls=":", color="grey", marker=".", ms=3)
            twin.set_ylim(-0.02, 1.02)
            twin.set_ylabel("share of constant columns (dotted)", fontsize=7)
        ax.set_title(f"{LABELS.get(m, m)} (τ = 0; mean ± sd over seeds)", fontsize=9)
        _axis(ax, grid)
    fig.tight_layout()
    return fig


def plot_identification(ident: pd.DataFrame, cies: pd.DataFrame, grid: Sequence[float]):
    """The dense criteria against the CIEs, and the CIE rates; returns the figure."""
    panels = ["auroc", "precision", "recall", "enrichment", "cie_rate"]
    fig, axes = _figure(len(panels))
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
    return fig


def plot_calibration(summary: pd.DataFrame, grid: Sequence[float], protected: Sequence[str]):
    """BA per protected attribute under each threshold scheme; returns the figure."""
    fig, axes = _figure(len(protected))
    for ax, p in zip(axes, protected):
        for scheme in ("default", "global", "group"):
            _errline(ax, metric_series(summary, "ba", scheme=scheme, protected=p), scheme)
        ax.set_title(f"BA ({p}) by threshold scheme", fontsize=9)
        ax.legend(fontsize=7)
        _axis(ax, grid)
    fig.tight_layout()
    return fig
