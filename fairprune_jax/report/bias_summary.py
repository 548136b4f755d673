"""The bias report's summary of the metrics table: nan-mean over attributes, then mean ± sd over seeds, per
population × sparsity × scheme × protected attribute × metric (`analysis.bias.aggregate`), and lookups into it."""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

from fairprune_jax.analysis import bias as B
from fairprune_jax.studies.layout import Registry

class MetricView(NamedTuple):
    """How reports show one metric of the bias study's metrics table: its label, decimals, whether it is signed
    (a difference), whether it exists per protected attribute, and whether the report's metrics table has a
    column for it (``only_present``: a column only when the run computed it, e.g. BBA needs a planted trigger)."""

    name: str
    label: str
    digits: int = 3
    signed: bool = False
    per_group: bool = False
    in_table: bool = True
    only_present: bool = False


#: The registry of bias metrics as reports show them, in the metrics table's column order; a metric computed by a
#: new analysis shows up in the report once it is registered here (`register_metric`).
METRICS: Registry[MetricView] = Registry("metric")


def register_metric(view: MetricView) -> MetricView:
    return METRICS.add(view.name, view)


for _view in (MetricView("acc", "accuracy", digits=4), MetricView("auc", "AUC"),
              MetricView("ba", "BA", signed=True, per_group=True),
              MetricView("bba", "BBA (trigger)", signed=True, only_present=True),
              MetricView("uncertainty", "uncertainty"), MetricView("r2", "interdependence R²"),
              MetricView("ece", "ECE"), MetricView("dfpr", "ΔFPR", signed=True, per_group=True),
              MetricView("dfnr", "ΔFNR", signed=True, per_group=True),
              MetricView("predpos", "positive rate", in_table=False),
              *(MetricView(m, m, signed=True, per_group=True, in_table=False)
                for m in ("fpr_g0", "fpr_g1", "fnr_g0", "fnr_g1"))):
    register_metric(_view)

KEY_METRICS = tuple(m for m in METRICS if METRICS[m].in_table)
LABELS = {m: METRICS[m].label for m in METRICS}
GROUP_METRICS = tuple(m for m in METRICS if METRICS[m].per_group)


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


def row(summary: pd.DataFrame, population: str, sparsity: float, metric: str, scheme: str = "default",
         protected: str = "") -> pd.Series | None:
    f = summary[(summary["population"] == population) & np.isclose(summary["sparsity"], sparsity)
                & (summary["metric"] == metric) & (summary["scheme"] == scheme) & (summary["protected"] == protected)]
    return None if f.empty else f.iloc[0]


def metric_series(summary: pd.DataFrame, metric: str, *, scheme: str = "default", protected: str = "",
                  ) -> pd.DataFrame:
    """Rows (population, sparsity, mean, sd, n_nan, n_values) of one metric: dense first, then the grid."""
    f = summary[(summary["metric"] == metric) & (summary["scheme"] == scheme) & (summary["protected"] == protected)]
    return f[["population", "sparsity", "mean", "sd", "n_seeds_defined", "n_nan", "n_values"]].reset_index(drop=True)
