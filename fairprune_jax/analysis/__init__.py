"""Analysis of evaluated populations: recall distortion (docs/methods.md §7–8) and bias (§9).

Submodules are imported lazily (``from fairprune_jax.analysis import stats`` or ``analysis.stats``), so importing
the package pulls in neither statsmodels nor matplotlib:

- ``intensification``: δ, α_{t,c}, the per-network α_t and its variants V1–V4, the long table of §3.
- ``stats``: Tier A (t-intervals, t-test vs 1), Tier B (MixedLM), Tier C (cluster-robust pooled OLS), per-class
  Welch tests with BH/Holm, seed bootstrap.
- ``plots``: matplotlib (Agg) figures of E[α_t], class deviations and accuracy against sparsity.
- ``bias``: paper-2 metrics of one multi-label head (thresholds, BA, uncertainty, interdependence, ECE, ...).
- ``bias_softmax``: their softmax (single-label) analogues.
- ``bias_identification``: CIEs over populations and the dense-only criteria (flags, attenuation, regression).
- ``recall_tiers``, ``bias_tables``: every statistic of one recall or bias study, as the reports use them.
- ``budget``: the recovery budget as a moderator (stacked long tables, pooled fits with the budget as a factor).
- ``claims``: the claims table of both papers over several stored runs (§13), under the protocol of §14 declared in
  ``claim_kinds``: per-seed ``estimands``, tests and verdicts (``decisions``), seed plans (``planning``),
  group-sequential boundaries (``sequential``), and the simulation that chose the estimands (``simulation``,
  ``estimand_study``).
"""
from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("intensification", "stats", "plots", "bias", "bias_softmax", "bias_identification", "recall_tiers",
               "bias_tables", "budget", "claims", "claim_kinds", "estimands", "decisions", "planning", "sequential",
               "simulation", "estimand_study")
__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
