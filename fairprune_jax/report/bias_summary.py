"""The bias report's summary of the metrics table: nan-mean over attributes, then mean ± sd over seeds, per
population × sparsity × scheme × protected attribute × metric (`analysis.bias.aggregate`), and lookups into it."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from fairprune_jax.analysis import bias as B

KEY_METRICS = ("acc", "auc", "ba", "bba", "uncertainty", "r2", "ece", "dfpr", "dfnr")
LABELS = {"acc": "accuracy", "auc": "AUC", "ba": "BA", "bba": "BBA (trigger)", "uncertainty": "uncertainty",
          "r2": "interdependence R²", "ece": "ECE", "dfpr": "ΔFPR", "dfnr": "ΔFNR", "predpos": "positive rate"}
GROUP_METRICS = ("ba", "dfpr", "dfnr", "fpr_g0", "fpr_g1", "fnr_g0", "fnr_g1")


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
