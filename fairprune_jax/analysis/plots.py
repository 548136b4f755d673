"""Figures of recall distortion (matplotlib, Agg backend). Each function returns the Figure and saves a PNG when
given a path; one panel per (dataset, model), one line per criterion.

- `plot_alpha`: E[α_t] against sparsity with interval bands and a line at 1 (Tier A `summarize` or Tier B
  `mixed_model` output).
- `plot_class_deviation`: each class's (recall − accuracy), dense vs pruned, mean ± sd over seeds.
- `plot_accuracy`: accuracy against sparsity, mean ± t-interval over seeds (from the recall table).
"""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import stats as sps  # noqa: E402


def _panels(df: pd.DataFrame, keys: Sequence[str] = ("dataset", "model")) -> list[tuple[str, pd.DataFrame]]:
    keys = [k for k in keys if k in df.columns]
    if not keys:
        return [("", df)]
    return [(" / ".join(str(x) for x in (k if isinstance(k, tuple) else (k,))), f)
            for k, f in df.groupby(keys, sort=True)]


def _figure(n: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    plt.close(fig)  # the Figure stays usable; pyplot just stops tracking it
    return fig


def plot_alpha(summary: pd.DataFrame, *, estimate: str | None = None, x: str = "t_mean", subset: str = "all",
               path: str | os.PathLike | None = None, title: str | None = None, yscale: str = "auto") -> Figure:
    """E[α_t] against sparsity per criterion with [ci_low, ci_high] bands and a dashed line at α = 1.

    yscale "auto" switches to a symmetric log axis (linear within ±1) when the estimates span more than a decade,
    so that a control such as random pruning (α in the hundreds) does not flatten the other criteria.
    """
    df = summary
    if "subset" in df.columns:
        df = df[df["subset"] == subset]
    est = estimate or ("mean" if "mean" in df.columns else "alpha")
    xcol = x if x in df.columns else ("level" if "level" in df.columns else None)
    need = [c for c in (est, "ci_low", "ci_high", "criterion", xcol) if c is None or c not in df.columns]
    if need:
        raise ValueError(f"summary: missing column(s) {need}")
    panels = _panels(df)
    fig, axes = _figure(len(panels))
    for ax, (name, frame) in zip(axes, panels):
        for crit, f in frame.groupby("criterion", sort=True):
            f = f.sort_values(xcol)
            line, = ax.plot(f[xcol], f[est], marker="o", ms=3, label=str(crit).upper())
            ax.fill_between(f[xcol], f["ci_low"], f["ci_high"], color=line.get_color(), alpha=0.2, lw=0)
        ax.axhline(1.0, color="k", ls="--", lw=1)
        values = frame[est].abs().replace([np.inf], np.nan).dropna()
        if yscale == "symlog" or (yscale == "auto" and len(values) and values.max() > 10 * max(values.min(), 1.0)):
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("sparsity t" if xcol == "t_mean" else xcol)
        ax.set_ylabel("E[α_t]")
        ax.set_title(name)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_class_deviation(long_df: pd.DataFrame, *, levels: Sequence | None = None, criterion: str | None = None,
                         path: str | os.PathLike | None = None, title: str | None = None) -> Figure:
    """Per class: mean (r_0 − a_0) of the dense networks and (r_t − a_t) at the chosen levels (default: the
    highest), ± sd over seeds; one panel per (dataset, model), bars grouped by class."""
    need = [c for c in ("class", "seed", "level", "criterion", "r0", "a0", "rt", "at") if c not in long_df.columns]
    if need:
        raise ValueError(f"long_df: missing column(s) {need}")
    df = long_df if criterion is None else long_df[long_df["criterion"] == str(criterion).strip().lower()]
    if df.empty:
        raise ValueError(f"criterion: {criterion!r} not in the table")
    panels = _panels(df)
    fig, axes = _figure(len(panels), width=7.0)
    for ax, (name, frame) in zip(axes, panels):
        lv = [max(frame["level"])] if levels is None else list(levels)
        dense = frame.drop_duplicates(["criterion", "seed", "class"]).assign(dev=lambda f: f["r0"] - f["a0"])
        series = [("dense", dense.groupby("class")["dev"].agg(["mean", "std"]))]
        for crit, fc in frame.groupby("criterion", sort=True):
            for level in lv:
                fl = fc[fc["level"] == level].assign(dev=lambda f: f["rt"] - f["at"])
                if len(fl):
                    t = fl["t"].mean() if "t" in fl else np.nan
                    label = f"{str(crit).upper()} L{level} (t={t:.2f})"
                    series.append((label, fl.groupby("class")["dev"].agg(["mean", "std"])))
        classes = sorted(set().union(*[s.index for _, s in series]))
        width = 0.8 / len(series)
        xs = np.arange(len(classes))
        for i, (label, s) in enumerate(series):
            s = s.reindex(classes)
            ax.bar(xs + (i - (len(series) - 1) / 2) * width, s["mean"], width, yerr=s["std"].fillna(0),
                   label=label, capsize=2, error_kw={"lw": 0.8})
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(xs, [str(c) for c in classes])
        ax.set_xlabel("class")
        ax.set_ylabel("recall − accuracy")
        ax.set_title(name)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_accuracy(recall_df: pd.DataFrame, *, level: float = 0.95, path: str | os.PathLike | None = None,
                  title: str | None = None) -> Figure:
    """Accuracy against realised sparsity per criterion: mean ± t-interval over seeds (one point per
    criterion × sparsity index or level)."""
    need = [c for c in ("criterion", "seed", "accuracy", "actual_sparsity") if c not in recall_df.columns]
    if need:
        raise ValueError(f"recall_df: missing column(s) {need}")
    pos = "sparsity_index" if "sparsity_index" in recall_df.columns else "level"
    keys = [k for k in ("dataset", "model", "criterion", pos, "seed") if k in recall_df.columns]
    nets = recall_df.drop_duplicates(keys)
    panels = _panels(nets)
    fig, axes = _figure(len(panels))
    for ax, (name, frame) in zip(axes, panels):
        for crit, f in frame.groupby("criterion", sort=True):
            g = f.groupby(pos, sort=True)
            t = g["actual_sparsity"].mean()
            m = g["accuracy"].mean()
            n = g["accuracy"].count()
            se = g["accuracy"].std() / np.sqrt(n)
            half = se * sps.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1))
            half = half.where(n >= 2)
            order = np.argsort(t.to_numpy())
            tt, mm, hh = t.to_numpy()[order], m.to_numpy()[order], half.to_numpy()[order]
            line, = ax.plot(tt, mm, marker="o", ms=3, label=str(crit).upper())
            ax.fill_between(tt, mm - hh, mm + hh, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_xlabel("sparsity t")
        ax.set_ylabel("accuracy")
        ax.set_title(name)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)
