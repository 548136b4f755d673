"""Plots: figures build from the analysis tables, carry the right lines and bands, and save PNGs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from fairprune_jax.analysis import intensification as I
from fairprune_jax.analysis import plots
from fairprune_jax.analysis import stats as S


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(0)
    rows = []
    for crit in ("MP", "UP"):
        for s in range(4):
            d0 = rng.normal(0, .08, 10)
            d0 -= d0.mean()
            r0 = .8 * (1 + d0)
            for lev, alpha in [(0, 1.0), (1, .9), (2, 1.2), (3, 1.4)]:
                at = .8 - .03 * lev
                rt = r0 if lev == 0 else at * (1 + alpha * d0 + rng.normal(0, .01, 10))
                for c in range(10):
                    rows.append(dict(dataset="mnist", model="lenet", criterion=crit, seed=s, level=lev,
                                     sparsity_index=lev, requested_sparsity=.3 * lev, actual_sparsity=.3 * lev,
                                     **{"class": c}, n=100, recall=rt[c], accuracy=float(np.mean(rt))))
    recall_df = pd.DataFrame(rows)
    long = I.long_table(recall_df)
    return recall_df, long, S.summarize(I.alpha(long))


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_alpha(tables, tmp_path):
    _, _, summ = tables
    fig = plots.plot_alpha(summ, path=tmp_path / "alpha.png")
    assert isinstance(fig, Figure) and _png_ok(tmp_path / "alpha.png")
    ax = fig.axes[0]
    assert ax.get_title() == "mnist / lenet"
    labels = [line.get_label() for line in ax.lines]
    assert "MP" in labels and "UP" in labels
    mp = ax.lines[labels.index("MP")]
    sel = (summ["criterion"] == "mp") & (summ["subset"] == "all")  # labels are normalised; plots show upper case
    np.testing.assert_allclose(mp.get_ydata(), summ.loc[sel].sort_values("t_mean")["mean"])
    assert any(np.allclose(line.get_ydata(), 1.0) for line in ax.lines)  # the reference line at α = 1
    assert len(ax.collections) == 2  # one interval band per criterion


def test_plot_alpha_accepts_mixed_model_output(tables):
    _, long, _ = tables
    mm = S.mixed_model(long)
    fig = plots.plot_alpha(mm, x="level")
    assert isinstance(fig, Figure) and len(fig.axes[0].collections) == 2


def test_plot_class_deviation(tables, tmp_path):
    _, long, _ = tables
    fig = plots.plot_class_deviation(long, criterion="MP", levels=[1, 3], path=tmp_path / "cls.png")
    assert _png_ok(tmp_path / "cls.png")
    ax = fig.axes[0]
    from matplotlib.container import BarContainer

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 3 and all(len(b.patches) == 10 for b in bars)  # dense + two pruned levels, 10 classes
    assert [b.get_label() for b in bars][0] == "dense" and "L3" in bars[2].get_label()
    dense = [b.get_height() for b in bars[0].patches]
    want = long[long.criterion == "mp"].drop_duplicates(["seed", "class"]).assign(d=lambda f: f.r0 - f.a0)
    np.testing.assert_allclose(dense, want.groupby("class")["d"].mean())
    with pytest.raises(ValueError, match="criterion"):
        plots.plot_class_deviation(long, criterion="nope")


def test_plot_accuracy(tables, tmp_path):
    recall_df, _, _ = tables
    fig = plots.plot_accuracy(recall_df, path=tmp_path / "acc.png")
    assert _png_ok(tmp_path / "acc.png")
    ax = fig.axes[0]
    line = ax.lines[[ln.get_label() for ln in ax.lines].index("UP")]
    want = recall_df[recall_df.criterion == "UP"].drop_duplicates(["seed", "level"]).groupby("level")["accuracy"]
    np.testing.assert_allclose(line.get_ydata(), want.mean())
    with pytest.raises(ValueError, match="missing"):
        plots.plot_accuracy(recall_df.drop(columns="accuracy"))
