"""The claims protocol as data (docs/methods.md §14): the claim kinds, each with its paper, direction, null,
estimand and equivalence margin, the estimands that reduce a run to one value per seed, and the typed description
of a run that the claims read. Declared here, before any result; `analysis.claims` only applies them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from fairprune_jax.analysis import estimands as E

HIGH, LOW = (0.9, 1.0), (0.0, 0.5)  # requested-sparsity regimes (inclusive)
STRUCTURED = ("mp", "gp", "up")  # random pruning is the control, never part of a claim
RATIO_MARGIN = math.log(1.25)  # ratios (α_t vs 1, α_t/α_null, UP/MP, harder/easier): within a factor 1.25
NULL_WORDS = {"one": "α_t = 1", "uniform": "uniform error growth (α_t = α_null)", "zero": "difference 0",
              "same_uniform": "equal α_t/α_null", "chance": "chance (AUROC 0.5)"}


@dataclasses.dataclass(frozen=True)
class RunDescription:
    """What the claims need to know about a stored run (built by `report.claims` from config.json and tables)."""

    name: str  # the workdir as given
    study: str  # "recall" or "bias"
    dataset: str
    models: tuple[str, ...]
    protocol: str
    criteria: tuple[str, ...]
    sparsities: tuple[float, ...]
    num_seeds: int
    weight_decay: float = 0.0
    epochs: int = 0  # training epochs (per level for the iterative protocol)
    finetune_epochs: int = 0
    finetune_lr: float = 0.0
    chance: float = 1.5
    n_params: Mapping[str, int] = dataclasses.field(default_factory=dict)  # model -> parameters
    sizes_note: str = ""  # where the parameter counts come from, when not from the run's `model_sizes` table
    missing_units: tuple[str, ...] = ()  # units of the run's design with no stored result (a partial workdir)

    def signature(self, without: str) -> tuple:
        """The design fields two runs must share to be compared on the remaining one (`dataset` or `models`)."""
        sig = dict(dataset=self.dataset, models=self.models, protocol=self.protocol, seeds=self.num_seeds,
                   wd=self.weight_decay, epochs=self.epochs, ft=(self.finetune_epochs, self.finetune_lr),
                   grid=self.sparsities)
        sig.pop(without)
        return tuple(sorted(sig.items()))


@dataclasses.dataclass(frozen=True)
class Estimand:
    """How a claim reduces a run to one value per seed: the network column it reads, the reduction of a seed's
    networks [S, C, J] (and the grid) to [S] or, for cells, [S, J], the paired comparison of two criteria
    ([S, 1, J] each), whether the value is a logarithm (shown as its exponential) and its words."""

    value: str
    reduce: Callable[[np.ndarray, Sequence[float]], np.ndarray]
    compare: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    cells: bool
    log: bool
    words: str
    compare_words: str = ""


ESTIMANDS = {
    "mean": Estimand("alpha", lambda a, s: E.seed_mean(a), E.diff_mean, False, False,
                     "mean over seeds of each seed's mean α_t", "difference of the seeds' mean α_t"),
    "median": Estimand("alpha", lambda a, s: E.seed_median(a), E.diff_median, False, False,
                       "mean over seeds of each seed's median α_t", "difference of the seeds' median α_t"),
    "log_median": Estimand("alpha", lambda a, s: E.seed_log_median(a), E.log_ratio, False, True,
                           "typical α_t: geometric mean over seeds of each seed's median α_t",
                           "ratio of the seeds' median α_t (geometric mean over seeds)"),
    "cells": Estimand("alpha", lambda a, s: E.seed_cells(a), lambda a, b: E.seed_cells(a) - E.seed_cells(b), True,
                      False, "per sparsity, mean over seeds of the mean α_t over criteria (Holm over sparsities)",
                      "per sparsity, difference of α_t (Holm over sparsities)"),
    "cells_log": Estimand("alpha", lambda a, s: E.seed_cells_log(a), E.cells_log_ratio, True, True,
                          "per sparsity, geometric mean over seeds of the median α_t over criteria (Bonferroni "
                          "over sparsities; the most significant shown)",
                          "per sparsity, ratio of α_t (geometric mean over seeds; Bonferroni over sparsities, the "
                          "most significant shown)"),
    "log_excess_mean": Estimand("log_excess", lambda a, s: E.seed_mean(a), E.diff_mean, False, True,
                                "α_t/α_null: exp of the mean over seeds of each seed's mean log(α_t/α_null)",
                                "ratio of α_t/α_null (exp of the mean paired difference of the seeds' mean "
                                "log(α_t/α_null))"),
    "log_excess_median": Estimand("log_excess", lambda a, s: E.seed_median(a), E.diff_median, False, True,
                                  "α_t/α_null: exp of the mean over seeds of each seed's median log(α_t/α_null) "
                                  "(α_t ≤ 0 ranks lowest)", "ratio of α_t/α_null (exp of the mean paired "
                                  "difference of the seeds' median log(α_t/α_null))"),
    "trend_ols": Estimand("alpha", lambda a, s: E.seed_trend_ols(a, s), None, False, False,
                          "mean over seeds of each seed's OLS slope of α_t (mean over criteria) on log 1/(1 − s)"),
    "rank_mean": Estimand("rank_rho", lambda a, s: E.seed_mean(a), E.diff_mean, False, False,
                          "mean over seeds of each seed's mean Spearman ρ(δ0, δt − δ0)"),
}


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim kind: paper, statement, claimed direction, its null, its estimand and its equivalence margin (on the
    tested scale; NaN: no equivalence test)."""

    paper: str
    statement: str
    direction: str  # ">" or "<"
    null: str  # key of NULL_WORDS
    estimand: str  # key of ESTIMANDS ("" for paper 2's fixed paired differences and the AUROC)
    margin: float
    words: str = ""  # the estimand in words, when not the estimand's own

    @property
    def log(self) -> bool:
        return bool(self.estimand) and ESTIMANDS[self.estimand].log

    @property
    def null_words(self) -> str:
        if self.null != "zero":
            return NULL_WORDS[self.null]
        return "ratio 1" if self.log else "slope 0" if self.estimand == "trend_ols" else "difference 0"


# The estimand of each kind is the one the simulation kept (docs/methods.md §14, benchmarks/simulate_claims.py).
CHOSEN = {"high": "cells_log", "high_uniform": "log_excess_mean", "low": "log_median",
          "low_uniform": "log_excess_mean", "rises": "trend_ols", "up_mp": "cells_log", "up_mp_uniform":
          "log_excess_median", "up_gp": "cells_log", "up_gp_uniform": "log_excess_median", "harder": "log_median",
          "harder_uniform": "log_excess_mean", "smaller": "log_median", "smaller_uniform": "log_excess_median"}
LINEAR_MARGIN = 0.25  # α_t units, for an estimand on the linear scale


def _margin(estimand: str) -> float:
    if not estimand or estimand == "trend_ols":
        return np.nan
    return RATIO_MARGIN if ESTIMANDS[estimand].log else LINEAR_MARGIN


def _claim(paper: str, statement: str, direction: str, null: str, kind: str) -> Claim:
    est = CHOSEN[kind]
    return Claim(paper, statement, direction, null, est, _margin(est))


CLAIMS = {
    "high": _claim("1", "Pruning intensifies recall distortion at high sparsity (α_t > 1)", ">", "one", "high"),
    "high_uniform": _claim("1", "At high sparsity it intensifies more than uniform error growth would "
                           "(α_t > α_null)", ">", "uniform", "high_uniform"),
    "low": _claim("1", "At low sparsity pruning de-intensifies it (α_t < 1)", "<", "one", "low"),
    "low_uniform": _claim("1", "At low sparsity it distorts less than uniform error growth would (α_t < α_null)",
                          "<", "uniform", "low_uniform"),
    "rises": _claim("1", "Recall distortion rises with sparsity (slope of α_t on log 1/(1 − s) > 0)", ">", "zero",
                    "rises"),
    "up_mp": _claim("1", "UP intensifies less than MP at high sparsity (UP/MP < 1)", "<", "zero", "up_mp"),
    "up_mp_uniform": _claim("1", "UP intensifies less than MP beyond uniform error growth (UP/MP of α_t/α_null < 1)",
                            "<", "same_uniform", "up_mp_uniform"),
    "up_gp": _claim("1", "UP intensifies less than GP at high sparsity (UP/GP < 1)", "<", "zero", "up_gp"),
    "up_gp_uniform": _claim("1", "UP intensifies less than GP beyond uniform error growth (UP/GP of α_t/α_null < 1)",
                            "<", "same_uniform", "up_gp_uniform"),
    "harder": _claim("1", "Harder tasks intensify more (harder/easier > 1)", ">", "zero", "harder"),
    "harder_uniform": _claim("1", "Harder tasks intensify more beyond uniform error growth (ratio of α_t/α_null "
                             "> 1)", ">", "same_uniform", "harder_uniform"),
    "harder_rank": Claim("1", "Harder tasks intensify more, by ranks (difference of Spearman ρ(δ0, δt − δ0) > 0)",
                         ">", "zero", "rank_mean", 0.1),
    "smaller": _claim("1", "Smaller models intensify more (smaller/larger > 1)", ">", "zero", "smaller"),
    "smaller_uniform": _claim("1", "Smaller models intensify more beyond uniform error growth (ratio of α_t/α_null "
                              "> 1)", ">", "same_uniform", "smaller_uniform"),
    "uncertainty": Claim("2", "Uncertainty rises with sparsity (pruned − dense > 0)", ">", "zero", "", 0.02,
                         "mean over seeds of the pruned − dense difference of mean uncertainty"),
    "interdependence": Claim("2", "Output interdependence (R²) rises with sparsity (pruned − dense > 0)", ">", "zero",
                             "", 0.05, "mean over seeds of the pruned − dense difference of mean R²"),
    "bias": Claim("2", "Bias amplification rises with sparsity (BA pruned − dense > 0)", ">", "zero", "", 0.02,
                  "mean over seeds of the pruned − dense difference of mean BA"),
    "identify": Claim("2", "Dense-model uncertainty identifies the samples that change (AUROC > 0.5)", ">",
                      "chance", "", 0.05, "AUROC of the dense-model uncertainty for the CIEs (Hanley–McNeil)"),
    "calibration": Claim("2", "Threshold calibration reduces the bias (BA calibrated − default < 0)", "<", "zero", "",
                         0.02, "mean over seeds of the calibrated − default difference of mean BA"),
}
