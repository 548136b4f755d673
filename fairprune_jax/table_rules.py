"""What a stored result table may hold: range and consistency rules checked on every read (and write) of a part.

A checksum proves a part is the one that was written; these rules catch the rest: a part written before checksums
existed (read unverified) whose bytes changed, and a bug that would store an impossible value. The rules are per
table name (the studies' tables: ``recall`` of the recall study, ``train_history``, ``prune``, ``metrics``, ``cies``,
``identification``, ``attenuation``, ``attributes``, ``regression`` of the bias study); a column a rule names that
is absent is skipped, so older parts with fewer columns still read. Tables of other names are not checked.
:func:`register` adds rules for a new table; :func:`violation` returns the first broken rule as one sentence.

NaN is allowed wherever a value can be undefined (a diverged network's recall, a metric of an empty group); ``inf``
only where stated (relative changes against a zero dense value).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

__all__ = ["Check", "Range", "Le", "Ratio", "MetricRange", "RULES", "register", "violation"]


def _floats(col: pd.Series) -> np.ndarray | None:
    """float64 values of a numeric or bool column (missing values as NaN); None when it is not numeric."""
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        return col.to_numpy(np.float64, na_value=np.nan)
    return None


class Range(NamedTuple):
    """Every value of ``column`` in [lo, hi]; NaN allowed when ``nan``; ±inf allowed when ``inf``; whole numbers
    when ``integer``."""

    column: str
    lo: float = -math.inf
    hi: float = math.inf
    nan: bool = True
    inf: bool = False
    integer: bool = False

    def bad(self, x: np.ndarray) -> np.ndarray:
        """bool mask of the values that break the rule."""
        nan, inf = np.isnan(x), np.isinf(x)
        fin = ~(nan | inf)
        bad = (nan & (not self.nan)) | (inf & (not self.inf)) | (fin & ((x < self.lo) | (x > self.hi)))
        return bad | (fin & (x != np.round(x))) if self.integer else bad

    def wanted(self) -> str:
        return (("a whole number in " if self.integer else "") + f"[{self.lo:g}, {self.hi:g}]"
                + (" or NaN" if self.nan else "") + (" or inf" if self.inf else ""))

    def __call__(self, df: pd.DataFrame) -> str | None:
        x = _floats(df[self.column])
        if x is None:
            return f"column {self.column} is not numeric (dtype {df[self.column].dtype})"
        bad = self.bad(x)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"row {i}: {self.column} = {float(x[i])!r} is not {self.wanted()}"
        return None

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)


class Le(NamedTuple):
    """``small <= big`` on every row where both are defined (e.g. correct <= n)."""

    small: str
    big: str

    def __call__(self, df: pd.DataFrame) -> str | None:
        a, b = _floats(df[self.small]), _floats(df[self.big])
        if a is None or b is None:
            return f"columns {self.small}, {self.big} are not numeric"
        bad = a > b  # NaN compares False
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"row {i}: {self.small} = {a[i]:g} exceeds {self.big} = {b[i]:g}"
        return None

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.small, self.big)


class Ratio(NamedTuple):
    """``value == num / den`` where ``den > 0`` and ``value`` is defined: a stored recall is its stored counts,
    exactly (both are the correctly rounded float64 quotient of the same integers; ``rtol`` relaxes it)."""

    value: str
    num: str
    den: str
    rtol: float = 0.0

    def __call__(self, df: pd.DataFrame) -> str | None:
        v, n, d = (_floats(df[c]) for c in (self.value, self.num, self.den))
        if v is None or n is None or d is None:
            return f"columns {self.value}, {self.num}, {self.den} are not numeric"
        with np.errstate(divide="ignore", invalid="ignore"):
            want = n / d
        bad = (d > 0) & ~np.isnan(v) & ~(np.abs(v - want) <= self.rtol * np.abs(want))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"row {i}: {self.value} = {float(v[i])!r} is not {self.num}/{self.den} = {n[i]:g}/{d[i]:g}"
        return None

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.value, self.num, self.den)


class MetricRange(NamedTuple):
    """A long table (``metric``, ``value``): each named metric's values within (lo, hi, inf allowed)."""

    ranges: dict[str, tuple[float, float, bool]]
    metric: str = "metric"
    value: str = "value"

    def __call__(self, df: pd.DataFrame) -> str | None:
        x = _floats(df[self.value])
        if x is None:
            return f"column {self.value} is not numeric (dtype {df[self.value].dtype})"
        names = df[self.metric].astype(str).to_numpy()
        for name, (lo, hi, inf) in self.ranges.items():
            rule = Range(self.value, lo, hi, inf=inf)
            bad = (names == name) & rule.bad(x)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                return f"row {i}: {self.value} of metric {name} = {float(x[i])!r} is not {rule.wanted()}"
        return None

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.metric, self.value)


class Check(NamedTuple):
    """Any other rule: ``fn(df)`` returns the first problem as a sentence, or None; runs when ``columns`` exist."""

    columns: tuple[str, ...]
    fn: Callable[[pd.DataFrame], "str | None"]

    def __call__(self, df: pd.DataFrame) -> str | None:
        return self.fn(df)


def _nan_only_if_undefined(column: str) -> Check:
    """A recall-table value is NaN only for a diverged network (or, for recall, a class without test examples)."""

    def fn(df: pd.DataFrame) -> str | None:
        x, n = _floats(df[column]), _floats(df["n"])
        if x is None or n is None:
            return None
        diverged = df["diverged"].to_numpy(bool) if "diverged" in df else np.zeros(len(df), bool)
        bad = np.isnan(x) & ~diverged & ~((n == 0) if column == "recall" else False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"row {i}: {column} is NaN for a network that did not diverge"
        return None

    return Check((column, "n"), fn)


_MODEL_KEYS = ("model", "criterion", "seed", "level", "sparsity_index")


def _network_ids(df: pd.DataFrame) -> np.ndarray | None:
    """int [rows]: which network (model, criterion, seed, level, sparsity index) each row of a recall part is."""
    keys = [k for k in _MODEL_KEYS if k in df]
    if not keys or df.empty:
        return None
    return df.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()


def _per_model(column: str) -> Check:
    """A per-network value repeated on each class row of the recall table is the same on all of them; accuracy
    is the network's correct / n summed over its classes (the same correctly rounded float64 quotient)."""

    def fn(df: pd.DataFrame) -> str | None:
        ids, x = _network_ids(df), _floats(df[column])
        if ids is None or x is None:
            return None
        _, first = np.unique(ids, return_index=True)
        ref = x[first][ids]  # the value on the network's first row
        bad = ~((x == ref) | (np.isnan(x) & np.isnan(ref)))
        if column == "accuracy" and {"correct", "n"} <= set(df):
            n = np.bincount(ids, weights=_floats(df["n"]))[ids]
            with np.errstate(divide="ignore", invalid="ignore"):
                want = np.bincount(ids, weights=_floats(df["correct"]))[ids] / n
            bad |= ~np.isnan(x) & (n > 0) & (x != want)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"row {i}: {column} = {float(x[i])!r} disagrees with the other rows of its network"
        return None

    return Check((column,), fn)


def _classes_once(df: pd.DataFrame) -> str | None:
    """Every network of the recall table has one row per class 0..K-1, the same K for all."""
    ids, c = _network_ids(df), _floats(df["class"])
    if ids is None or c is None:
        return None
    k = len(np.unique(c))
    size = np.bincount(ids)[ids]
    dup = pd.Series(ids * (k + 1) + np.nan_to_num(c, nan=-1.0)).duplicated().to_numpy()
    bad = dup | (size != k) | ~np.isin(c, np.arange(k))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return f"row {i}: the classes of its network are not 0..{k - 1} once each"
    return None


Rule = Callable[[pd.DataFrame], "str | None"]
UNIT = (0.0, 1.0, False)
SIGNED = (-1.0, 1.0, False)
RELATIVE = (-1.0, math.inf, True)  # (sparse - dense) / dense of a non-negative rate


def _unit(*columns: str) -> tuple[Range, ...]:
    return tuple(Range(c, 0.0, 1.0) for c in columns)


def _count(*columns: str) -> tuple[Range, ...]:
    return tuple(Range(c, 0.0, nan=False, integer=True) for c in columns)


_COMMON = (Range("sparsity", 0.0, 1.0, nan=False), *_count("seed"))

RULES: dict[str, tuple[Rule, ...]] = {
    # recall study (evaluate.recall_table; the budget variant adds its setting's columns)
    "recall": (*_count("seed", "level", "sparsity_index", "class", "n", "correct"),
               *_unit("recall", "accuracy", "mean_confidence", "frac_uncertain"),
               Range("requested_sparsity", 0.0, 1.0, nan=False), Range("actual_sparsity", 0.0, 1.0, nan=False),
               Range("diverged_epoch", -1.0, nan=False, integer=True), *_count("ft_epochs"),
               Range("ft_lr", 0.0, nan=False), Range("ft_momentum", 0.0, 1.0, nan=False),
               Le("correct", "n"), Ratio("recall", "correct", "n"),
               Check(("class",), _classes_once),
               *(_nan_only_if_undefined(c) for c in ("recall", "accuracy", "mean_confidence", "frac_uncertain")),
               *(_per_model(c) for c in ("accuracy", "mean_confidence", "frac_uncertain", "requested_sparsity",
                                         "actual_sparsity", "diverged", "diverged_epoch"))),
    # bias study (studies/bias.py, analysis/bias_tables.py)
    "train_history": (*_count("seed", "epoch"), Range("loss", 0.0, inf=True)),
    "prune": (*_COMMON, *_unit("target", "realised"), Range("final_loss", 0.0, inf=True), Range("seconds", 0.0),
              Range("diverged_epoch", -1.0, nan=False, integer=True)),
    "metrics": (*_COMMON, MetricRange({
        **{m: UNIT for m in ("acc", "auc", "ece", "fnr_g0", "fnr_g1", "fpr_g0", "fpr_g1", "predpos", "r2",
                             "r2_constant", "uncertainty")},
        **{m: SIGNED for m in ("ba", "bba", "dfnr", "dfpr")},
        **{m: RELATIVE for m in ("fnr_g0_rel", "fnr_g1_rel", "fpr_g0_rel", "fpr_g1_rel")}})),
    "cies": (*_COMMON, *_count("n"),
             *_unit("cie_rate", "harmful_rate", "flagged_fraction", "dense_mode_acc", "sparse_mode_acc")),
    "identification": (*_COMMON, *_count("n", "n_cie", "n_flagged"), Le("n_cie", "n"), Le("n_flagged", "n"),
                       *_unit("auroc", "f1", "flagged_fraction", "precision", "recall"),
                       Range("enrichment", 0.0, inf=True)),
    "attenuation": (*_COMMON, Range("ba", -1.0, 1.0)),
    "attributes": (*_COMMON, *_count("n_seeds_ba_dense", "n_seeds_ba_sparse"),
                   *_unit("dense_r2", "sparse_r2", "dense_uncertainty", "sparse_uncertainty", "prevalence"),
                   *(Range(c, -1.0, 1.0) for c in ("ba_dense", "ba_sparse", "delta_r2", "delta_uncertainty")),
                   Range("delta_ba", -2.0, 2.0), Range("group_gap", 0.0, 1.0), Range("rel_group_gap", 0.0, inf=True)),
    "regression": (*_COMMON, *_count("n_units"), Range("p_value", 0.0, 1.0), Range("std_err", 0.0),
                   Range("estimate"), Range("statistic")),
}


def register(table: str, *rules: Rule) -> None:
    """Add rules for ``table`` (callables ``df -> message | None`` with a ``columns`` attribute)."""
    RULES[table] = RULES.get(table, ()) + tuple(rules)


def violation(table: str, df: pd.DataFrame) -> str | None:
    """The first rule of ``table`` that ``df`` breaks, as one sentence naming the row, column and value."""
    for rule in RULES.get(table, ()):
        if all(c in df.columns for c in getattr(rule, "columns", ())):
            msg = rule(df)
            if msg:
                return msg
    return None
