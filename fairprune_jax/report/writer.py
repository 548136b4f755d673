"""The one report writer both studies use: number formatting, markdown tables, and the output layout.

Layout of every report folder (a workdir, or ``--out``)::

    report.md          the report (no timestamps: the same tables give the same bytes; times are in timings.json)
    tables/<name>.csv  the tables behind it
    plots/<name>.png   its figures

Every file is written atomically (`results.atomic_write`), so a killed rebuild never leaves a torn report.
"""
from __future__ import annotations

import io
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd

from fairprune_jax.results import atomic_write

matplotlib.use("Agg", force=False)  # reports render figures to files, never to a window
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

REPORT = "report.md"
TABLES_DIR = "tables"
PLOTS_DIR = "plots"


def number(x: Any, digits: int = 4, signed: bool = False) -> str:
    """A float with ``digits`` decimals (``+`` when signed); NaN as ``nan``, ±∞ as ``inf`` / ``-inf`` (e.g. an
    enrichment whose base rate is 0); anything else as ``str``."""
    if x is None:
        return "nan"
    if isinstance(x, (float, np.floating)):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return ("+inf" if signed else "inf") if x > 0 else "-inf"
        return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return str(x)


def general(x: Any, spec: str = ".4g") -> str:
    """A float in ``spec`` (significant digits by default), with the same NaN / ∞ words as `number`."""
    if isinstance(x, (float, np.floating)) and not math.isfinite(x):
        return number(x)
    return format(x, spec) if isinstance(x, (float, np.floating)) else "" if x is None else str(x)


def pct(s: float) -> str:
    """A sparsity as a percentage: one decimal, two from 99% on (99.5% and 99.9% stay distinct)."""
    s = float(s)
    return f"{100 * s:.1f}%" if s < 0.99 or s >= 0.9995 else f"{100 * s:.2f}%"


VERDICT_MARK = {"intensification": "▲", "de-intensification": "▼"}  # anything else (inconclusive): ·


def alpha_cell(row: Any, adjusted: bool = True) -> str:
    """E[α_t] of a Tier A row as ``mean [low, high] mark`` (the compact grids of the recall and budget reports).
    The mark is the Holm-adjusted verdict (`verdict_holm`: Holm over the cells of the call) by default, the raw one
    with ``adjusted=False`` or for a row without it; the interval is always the unadjusted 95% one."""
    verdict = getattr(row, "verdict_holm", None) if adjusted else None
    verdict = row.verdict if verdict is None else verdict
    return f"{row.mean:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}] {VERDICT_MARK.get(verdict, '·')}"


def grid(frame: pd.DataFrame, index: str, columns: str, values: str, *, index_order: Any = None,
         column_order: Any = None) -> pd.DataFrame:
    """`values` laid out `index` × `columns` (one value per pair), rows and columns in the given orders (default:
    first appearance), with `index` as the first column: the sparsity × criterion / setting × sparsity grids."""
    rows = list(dict.fromkeys(frame[index])) if index_order is None else list(index_order)
    cols = list(dict.fromkeys(frame[columns])) if column_order is None else list(column_order)
    table = frame.pivot_table(index=index, columns=columns, values=values, aggfunc="first")
    return table.reindex(index=rows, columns=cols).reset_index()


def markdown_table(df: pd.DataFrame, spec: str = ".4g") -> str:
    """GitHub markdown table; floats through `general`; an empty frame reads ``_(none)_``."""
    if df.empty:
        return "_(none)_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(general(v, spec) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write(out: str | pathlib.Path, text: str, *, tables: Mapping[str, pd.DataFrame],
          plots: Mapping[str, Callable[[], Any]]) -> pathlib.Path:
    """Write ``report.md``, ``tables/<name>.csv`` and ``plots/<name>`` (each plot callable returns a matplotlib
    figure, saved without a software stamp and closed here) into ``out``; returns the report path."""
    out = pathlib.Path(out)
    for name, make in plots.items():
        fig = make()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
        atomic_write(out / PLOTS_DIR / name, buf.getvalue())
        plt.close(fig)
    for name, df in tables.items():
        atomic_write(out / TABLES_DIR / f"{name}.csv", df.to_csv(index=False).encode())
    return atomic_write(out / REPORT, (text.rstrip("\n") + "\n").encode())


def diverged_words(n: int) -> str:
    """What 'diverged' means, for a report's count of diverged networks (docs/methods.md §6): reports with none keep
    the short form."""
    what = ("non-finite or exploding loss, or non-finite parameters" if n else "non-finite loss or parameters")
    return f"Diverged networks ({what}; excluded from every statistic): {n}."


def incomplete_warning(expected: Sequence[str], committed: Sequence[str]) -> list[str]:
    """Report lines (to go at the top) naming the units a killed or running study has not committed yet."""
    done = set(committed)
    missing = [k for k in expected if k not in done]
    if not missing:
        return []
    return [f"> **Incomplete run: {len(missing)} of {len(expected)} units missing** ({', '.join(missing)}); "
            "rerun the same command to finish it, then rebuild this report.", ""]
