"""Recall distortion (docs/methods.md §7): relative deviations δ, class ratios α_{t,c} and the per-network α_t.

    δ_{t,c} = r_{t,c}/a_t − 1          α_{t,c} = δ_{t,c}/δ_{0,c}
    α_t = Σ_c δ_{0,c} δ_{t,c} / Σ_c δ_{0,c}²      (primary: OLS slope through the origin across classes)

Variants reported alongside: V1 through-origin slope of (r_t − a_t) on (r_0 − a_0); V2 slope (with intercept) of
r_t/a_t on r_0/a_0; V3 mean α_{t,c} over classes with |δ_{0,c}| ≥ 1e-3; V4 fraction of those classes with
α_{t,c} > 1.

The input of everything downstream is the *long table* of §3 (`long_table`): one row per dataset, model,
criterion, seed, level and class, each pruned network paired with the dense network (t = 0) of the same seed.

Edge cases never raise; they give NaN plus a reason:
- a class absent from the test split (n_c = 0) has NaN recall and is excluded from α_t;
- a class with δ_{0,c} = 0 has α_{t,c} = NaN and weight 0; Σδ_0² < 1e-12 makes α_t NaN (network `dropped`);
- networks at or near chance (a ≤ chance/K for the pruned or the dense network) and one-class predictors are
  flagged (`near_chance`, `one_class`, `flagged`), to be reported with and without them.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

NETWORK_KEYS = ("dataset", "model", "criterion", "seed", "level")
RECALL_COLUMNS = ("dataset", "model", "criterion", "seed", "level", "requested_sparsity", "actual_sparsity",
                  "class", "n", "recall", "accuracy")
LONG_COLUMNS = ("dataset", "model", "criterion", "seed", "level", "requested_sparsity", "t", "class", "n",
                "r0", "a0", "rt", "at", "d0", "dt", "alpha_c", "traj", "shared_dense", "K", "near_chance",
                "one_class", "reason")
TOL = 1e-12  # Σδ0² below this: α_t undefined; |δ0| at or below it: α_{t,c} undefined
LABEL_COLUMNS = ("criterion",)  # label columns normalised at the table boundary (`normalise_labels`)
MIN_ABS_D0 = 1e-3  # V3/V4 class filter
CHANCE = 1.5  # a ≤ CHANCE/K flags a network as near chance


def relative_deviation(recall: Any, accuracy: Any) -> np.ndarray:
    """δ = r/a − 1 (NaN where a is 0 or NaN)."""
    r, a = np.asarray(recall, float), np.asarray(accuracy, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a > 0, r / np.where(a > 0, a, 1.0) - 1.0, np.nan)


def class_ratio(d0: Any, dt: Any, *, tol: float = TOL) -> np.ndarray:
    """α_{t,c} = δ_t/δ_0; NaN where |δ_0| ≤ tol (recall = accuracy: no direction to intensify)."""
    d0, dt = np.asarray(d0, float), np.asarray(dt, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(d0) > tol, dt / np.where(np.abs(d0) > tol, d0, 1.0), np.nan)


def normalise_labels(df: pd.DataFrame, columns: Sequence[str] = LABEL_COLUMNS) -> pd.DataFrame:
    """A copy with the string labels of ``columns`` stripped and lower-cased ('MP ' → 'mp').

    Applied where tables enter the analysis (`long_table`, `alpha`, every `stats` tier), so groupings and Tier C's
    reference criterion ('mp') do not depend on how a label was spelled.
    """
    out = df.copy()
    for c in columns:
        if c in out.columns:
            out[c] = out[c].map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    return out


def undefined_networks(long_df: pd.DataFrame, *, keys: Sequence[str] = NETWORK_KEYS, tol: float = TOL) -> np.ndarray:
    """Row mask of the networks whose α_t is undefined: Σδ0² < ``tol`` over their classes with finite δ0 and δt.

    docs/methods.md §7 drops such networks and counts them; `alpha` marks them `dropped`, and every tier of `stats`
    removes their rows with this mask. A network is the rows sharing the ``keys`` present in the table. δ0/δt come
    from the `d0`/`dt` columns, or from r/a when the table has none.
    """
    def dev(d: str, r: str, a: str) -> np.ndarray:
        if d in long_df.columns:
            return long_df[d].to_numpy(float)
        return relative_deviation(long_df[r].to_numpy(float), long_df[a].to_numpy(float))

    d0, dt = dev("d0", "r0", "a0"), dev("dt", "rt", "at")
    sq = pd.Series(np.where(np.isfinite(d0) & np.isfinite(dt), d0 * d0, 0.0), index=long_df.index)
    cols = [k for k in keys if k in long_df.columns]
    total = sq.groupby([long_df[k] for k in cols], sort=False, dropna=False).transform("sum") if cols else \
        pd.Series(sq.sum(), index=long_df.index)
    return ~(total.to_numpy(float) >= tol)


def _check_columns(df: pd.DataFrame, needed: Sequence[str], name: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}")


def _join_reasons(*parts: pd.Series) -> pd.Series:
    """Row-wise '; '.join of the non-empty strings."""
    frame = pd.concat([p.astype(object).fillna("") for p in parts], axis=1)
    return frame.apply(lambda row: "; ".join(s for s in row if s), axis=1).astype(object)


def long_table(recall_df: pd.DataFrame, *, dense_criterion: str = "dense", chance: float = CHANCE) -> pd.DataFrame:
    """The long table of §3 from the tidy recall table (`evaluate.recall_table`, possibly concatenated).

    Dense networks are rows with `requested_sparsity == 0` or `criterion == dense_criterion`. Each pruned network
    is paired, class by class, with the dense network of the same (dataset, model, criterion, seed) when its own
    run has one (unshared dense, `traj` = dataset|model|criterion|seed), else with the shared dense network
    `criterion == dense_criterion` of the same (dataset, model, seed) (`traj` = dataset|model|seed). A pruned
    network without a dense partner is a ValueError naming it. Criterion labels are normalised on the way in
    (`normalise_labels`: 'MP' and 'mp' are one criterion).

    Flags (an extension of docs/methods.md §7, which flags the network whose accuracy is near chance): `near_chance`
    and `one_class` are also set when the DENSE partner is near chance or predicts one class, since δ0 then
    explodes just as δt does.

    Columns: LONG_COLUMNS (plus `sparsity_index` when present). t is the realised sparsity.
    """
    _check_columns(recall_df, RECALL_COLUMNS, "recall_df")
    df = normalise_labels(recall_df)
    dense_criterion = dense_criterion.strip().lower()
    is_dense = (df["criterion"] == dense_criterion) | (df["requested_sparsity"] == 0)
    dense, pruned = df[is_dense], df[~is_dense]
    if pruned.empty:
        raise ValueError("recall_df: has no pruned network (every row has requested_sparsity 0 or the dense "
                         "criterion)")
    run_keys = ["dataset", "model", "criterion", "seed"]
    d = dense[run_keys + ["class", "recall", "accuracy"]].rename(columns={"recall": "r0", "accuracy": "a0"})
    dup = d.duplicated(subset=run_keys + ["class"], keep=False)
    if dup.any():
        row = d[dup].iloc[0]
        raise ValueError(f"recall_df: several dense networks (t=0) for dataset={row['dataset']!r}, "
                         f"model={row['model']!r}, criterion={row['criterion']!r}, seed={row['seed']!r}")

    own_runs = dense[run_keys].drop_duplicates().assign(_own=True)
    pruned = pruned.merge(own_runs, on=run_keys, how="left")
    own = pruned["_own"].eq(True)
    part_own = pruned[own].merge(d, on=run_keys + ["class"], how="left", indicator=True)
    shared = d[d["criterion"] == dense_criterion].drop(columns="criterion")
    part_sh = pruned[~own].merge(shared, on=["dataset", "model", "seed", "class"], how="left", indicator=True)
    part_own["shared_dense"], part_sh["shared_dense"] = False, True
    out = pd.concat([part_own, part_sh], ignore_index=True)
    missing = out["_merge"] != "both"
    if missing.any():
        row = out[missing].iloc[0]
        raise ValueError(f"recall_df: no dense network (t=0) for dataset={row['dataset']!r}, model={row['model']!r}, "
                         f"criterion={row['criterion']!r}, seed={row['seed']!r}, class={row['class']!r} "
                         f"(neither its own run's nor criterion {dense_criterion!r})")
    out = out.drop(columns=["_merge", "_own"])

    out = out.rename(columns={"recall": "rt", "accuracy": "at", "actual_sparsity": "t"})
    out["d0"] = relative_deviation(out["r0"], out["a0"])
    out["dt"] = relative_deviation(out["rt"], out["at"])
    out["alpha_c"] = class_ratio(out["d0"], out["dt"])
    key = list(NETWORK_KEYS)
    s = lambda c: out[c].astype(str)
    out["traj"] = np.where(out["shared_dense"], s("dataset") + "|" + s("model") + "|" + s("seed"),
                           s("dataset") + "|" + s("model") + "|" + s("criterion") + "|" + s("seed"))
    g = out.groupby(key, sort=False, dropna=False)
    out["K"] = g["class"].transform("size").astype(int)
    limit = chance / out["K"]
    out["near_chance"] = (out["at"] <= limit) | (out["a0"] <= limit)
    nz = out.assign(_rt=(out["rt"] > 0).astype(int), _r0=(out["r0"] > 0).astype(int)).groupby(
        key, sort=False, dropna=False)[["_rt", "_r0"]].transform("sum")
    out["one_class"] = (nz["_rt"] <= 1) | (nz["_r0"] <= 1)
    out["reason"] = _join_reasons(
        pd.Series(np.where(out["n"] == 0, "class absent from the test split (n=0): recall NaN, excluded", ""),
                  index=out.index),
        pd.Series(np.where(out["r0"].notna() & out["rt"].notna() & ~(np.abs(out["d0"]) > TOL),
                           "recall equals dense accuracy (δ0=0): α_c NaN, weight 0", ""), index=out.index))
    cols = list(LONG_COLUMNS)
    if "sparsity_index" in out.columns:
        cols.insert(cols.index("requested_sparsity"), "sparsity_index")
    return out[cols].sort_values(key + ["class"], kind="stable").reset_index(drop=True)


def alpha(long_df: pd.DataFrame, *, min_abs_d0: float = MIN_ABS_D0, tol: float = TOL) -> pd.DataFrame:
    """Per-network α_t (primary) and variants V1–V4 from the long table; one row per network.

    Columns: NETWORK_KEYS, requested_sparsity, t, traj, shared_dense, K, a0, at, n_classes_used,
    n_classes_absent, alpha, v1, v2, v2_intercept, v3, v4, near_chance, one_class, flagged, dropped, reason.
    Classes with NaN recall (absent from the split) are excluded; `dropped` networks (Σδ0² < tol) have NaN
    α_t and variants.
    """
    _check_columns(long_df, ["class", "n", "r0", "a0", "rt", "at", "d0", "dt", "t", *NETWORK_KEYS], "long_df")
    df = normalise_labels(long_df)
    for c, v in (("near_chance", False), ("one_class", False), ("shared_dense", False), ("traj", ""),
                 ("requested_sparsity", np.nan)):
        if c not in df.columns:
            df[c] = v
    use = np.isfinite(df["d0"].to_numpy(float)) & np.isfinite(df["dt"].to_numpy(float))
    z = lambda c: np.where(use, df[c].to_numpy(float), 0.0)
    d0, dt = z("d0"), z("dt")
    u0, ut = np.where(use, df["r0"] - df["a0"], 0.0), np.where(use, df["rt"] - df["at"], 0.0)
    ac = class_ratio(d0, dt, tol=tol)
    v3_use = use & (np.abs(d0) >= min_abs_d0) & np.isfinite(ac)
    df = df.assign(_use=use.astype(float), _sxx=d0 * d0, _sxy=d0 * dt, _sx=d0, _sy=dt, _u00=u0 * u0, _u0t=u0 * ut,
                   _v3n=v3_use.astype(float), _v3s=np.where(v3_use, ac, 0.0),
                   _v4s=(v3_use & (ac > 1)).astype(float), _absent=(df["n"] == 0).astype(float),
                   _absent_cls=np.where(df["n"] == 0, df["class"].astype(str), ""))
    key = list(NETWORK_KEYS)
    g = df.groupby(key, sort=True, dropna=False)
    sums = g[["_use", "_sxx", "_sxy", "_sx", "_sy", "_u00", "_u0t", "_v3n", "_v3s", "_v4s", "_absent"]].sum()
    first = g[["requested_sparsity", "t", "traj", "shared_dense", "a0", "at"]].first()
    anyf = g[["near_chance", "one_class"]].any()
    absent = g["_absent_cls"].agg(lambda s: ",".join(x for x in s if x))
    out = pd.concat([first, g["class"].size().rename("K")], axis=1)

    n = sums["_use"].to_numpy()
    sxx, sxy = sums["_sxx"].to_numpy(), sums["_sxy"].to_numpy()
    dropped = ~(sxx >= tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["n_classes_used"] = n.astype(int)
        out["n_classes_absent"] = sums["_absent"].to_numpy().astype(int)
        out["alpha"] = np.where(dropped, np.nan, sxy / sxx)
        u00 = sums["_u00"].to_numpy()
        out["v1"] = np.where(dropped | ~(u00 > 0), np.nan, sums["_u0t"].to_numpy() / u00)
        mx, my = sums["_sx"].to_numpy() / n, sums["_sy"].to_numpy() / n
        cxx = sxx - n * mx * mx
        cxy = sxy - n * mx * my
        slope = np.where(dropped | (n < 2) | ~(cxx > tol * 1e-3), np.nan, cxy / cxx)
        out["v2"] = slope
        out["v2_intercept"] = (my + 1.0) - slope * (mx + 1.0)
        v3n = sums["_v3n"].to_numpy()
        out["v3"] = np.where(v3n > 0, sums["_v3s"].to_numpy() / v3n, np.nan)
        out["v4"] = np.where(v3n > 0, sums["_v4s"].to_numpy() / v3n, np.nan)
    out["near_chance"] = anyf["near_chance"].to_numpy(bool)
    out["one_class"] = anyf["one_class"].to_numpy(bool)
    out["flagged"] = out["near_chance"] | out["one_class"]
    out["dropped"] = dropped
    idx = out.index
    out["reason"] = _join_reasons(
        pd.Series(np.where(absent.to_numpy() != "", "classes absent from the test split excluded: " + absent.to_numpy(),
                           ""), index=idx),
        pd.Series(np.where(dropped, f"Σδ0² < {tol:g}: α_t undefined, network dropped", ""), index=idx),
        pd.Series(np.where(out["near_chance"], "near chance (a ≤ chance/K for the pruned or dense network)", ""),
                  index=idx),
        pd.Series(np.where(out["one_class"], "one-class predictor (≤ 1 class with nonzero recall)", ""), index=idx))
    return out.reset_index()


def alpha_from_vectors(r0: Sequence[float], rt: Sequence[float], *, n: Sequence[float] | None = None,
                       a0: float | None = None, at: float | None = None, min_abs_d0: float = MIN_ABS_D0,
                       chance: float = CHANCE) -> dict[str, Any]:
    """α_t and variants for one network given per-class recalls (accuracies from n, else the class mean).

    The same code path as `alpha` on a one-network long table; handy for hand-computed checks (docs/methods.md §7).
    """
    r0a, rta = np.asarray(r0, float), np.asarray(rt, float)
    if r0a.shape != rta.shape or r0a.ndim != 1:
        raise ValueError(f"r0/rt: expected two vectors of one length, got {r0a.shape} and {rta.shape}")
    na = np.ones_like(r0a) if n is None else np.asarray(n, float)
    if na.shape != r0a.shape:
        raise ValueError(f"n: shape {na.shape} differs from r0's {r0a.shape}")
    w = na / na.sum()
    a0 = float(np.nansum(w * r0a)) if a0 is None else float(a0)
    at = float(np.nansum(w * rta)) if at is None else float(at)
    k = len(r0a)
    d0, dt = relative_deviation(r0a, a0), relative_deviation(rta, at)
    long = pd.DataFrame({"dataset": "-", "model": "-", "criterion": "-", "seed": 0, "level": 1, "t": np.nan,
                         "class": np.arange(k), "n": na, "r0": r0a, "a0": a0, "rt": rta, "at": at, "d0": d0,
                         "dt": dt, "near_chance": (at <= chance / k) or (a0 <= chance / k)})
    row = alpha(long, min_abs_d0=min_abs_d0).iloc[0]
    return {"a0": a0, "at": at, "d0": d0, "dt": dt, "alpha_c": class_ratio(d0, dt),
            **{c: row[c] for c in ("alpha", "v1", "v2", "v2_intercept", "v3", "v4", "dropped", "near_chance",
                                   "reason")}}
