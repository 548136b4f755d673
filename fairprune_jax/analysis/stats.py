"""Statistics of recall distortion across seeds (docs/methods.md §8); statsmodels and scipy do the work.

Tiers (all [R] in the spec):
- Tier A `summarize`: per cell (dataset, model, criterion, level), E[α_t] as the mean over seeds with a
  t-interval and a one-sample t-test against 1; Holm across cells.
- Tier B `mixed_model`: per cell, MixedLM `dt ~ 0 + d0` with a random d0 slope per seed (REML); Wald CI and
  z = (α − 1)/se. τ² ≈ 0 is flagged (the fit then equals pooled OLS). Extensions of the spec, said in each row:
  failed or non-converged fits fall back to pooled OLS with seed-clustered errors; fewer than two seeds give the
  pooled OLS slope without an interval.
- Tier C `pooled.pooled_ols` (its own module, on this one's table boundary): OLS `dt ~ 0 + d0 + d0:C(level) + d0:C(criterion) + d0:C(dataset) + d0:C(model)` with
  errors clustered by trajectory; moderators with one level are dropped; optional cluster bootstrap over seeds.
- `welch_per_class`: Welch t-tests of (recall − accuracy), dense vs pruned, per class and sparsity, with
  Benjamini–Hochberg across classes × sparsities.
- `bootstrap_alpha`: seed-bootstrap intervals of E[α_t] (scipy.stats.bootstrap, seeded Generator).

Every tier drops the networks whose α_t is undefined (Σδ0² < 1e-12, docs/methods.md §7) and counts each once per cell
(`n_dropped`; `PooledOLS.n_dropped` for Tier C), and normalises criterion labels on entry ('MP' is 'mp').

Every summary row has a `verdict`: "intensification" (95% CI entirely above 1), "de-intensification" (entirely
below 1) or "inconclusive", and a `reason` saying why a number is missing or a fallback was used.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from fairprune_jax.analysis import intensification

CELL_KEYS = ("dataset", "model", "criterion", "level")
INTENSIFICATION, DE_INTENSIFICATION, INCONCLUSIVE = "intensification", "de-intensification", "inconclusive"
RQ_OF_MODERATOR = {"level": "RQ1", "dataset": "RQ2", "model": "RQ3", "criterion": "RQ4"}


def drop_flagged(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of networks not flagged as near chance or one-class predictors (docs/methods.md §7 edge cases)."""
    flag = np.zeros(len(df), bool)
    for c in ("near_chance", "one_class"):
        if c in df.columns:
            flag |= df[c].to_numpy(bool)
    return df[~flag]


def _long_table(long_df: pd.DataFrame, by: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """The table boundary of every tier: labels normalised, and `_undefined` marking the rows of networks whose
    α_t is undefined (Σδ0² < 1e-12, docs/methods.md §7), which each tier drops and counts. Returns (table, network
    keys)."""
    df = intensification.normalise_labels(long_df)
    keys = [k for k in dict.fromkeys((*intensification.NETWORK_KEYS, *by)) if k in df.columns]
    df["_undefined"] = intensification.undefined_networks(df, keys=keys)
    return df, keys


def _drop_undefined(frame: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """(rows of networks with a defined α_t, number of networks dropped, each counted once)."""
    bad = frame["_undefined"].to_numpy(bool)
    n = len(frame.loc[bad, list(keys)].drop_duplicates()) if bad.any() else 0
    return frame[~bad], n


def _dropped_reason(n: int) -> str:
    return f"{n} network(s) with Σδ0² < {intensification.TOL:g} (α_t undefined) dropped" if n else ""


def verdict(ci_low: float, ci_high: float, null: float = 1.0) -> str:
    """Decision rule of §2: CI entirely above `null` → intensification, entirely below → de-intensification."""
    if np.isfinite(ci_low) and ci_low > null:
        return INTENSIFICATION
    if np.isfinite(ci_high) and ci_high < null:
        return DE_INTENSIFICATION
    return INCONCLUSIVE


def _verdict_p(estimate: float, p: float, alpha: float = 0.05, null: float = 1.0) -> str:
    if not np.isfinite(p) or p >= alpha:
        return INCONCLUSIVE
    return INTENSIFICATION if estimate > null else DE_INTENSIFICATION


def _holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p over the finite entries (NaN stays NaN)."""
    from statsmodels.stats.multitest import multipletests

    out = pd.Series(np.nan, index=p.index)
    ok = np.isfinite(p.to_numpy(float))
    if ok.any():
        out[ok] = multipletests(p.to_numpy(float)[ok], method="holm")[1]
    return out


def _groups(df: pd.DataFrame, by: Sequence[str]):
    by = list(by)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"by: column(s) {missing} not in the table")
    if not by:
        yield (), df
        return
    for key, frame in df.groupby(by, sort=True, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), frame


# -------------------------------------------------------------------------------------------- Tier A


def tier_a(values: Sequence[float], *, level: float = 0.95, null: float = 1.0) -> dict[str, Any]:
    """Mean ± t_{(1+level)/2, n−1}·sd/√n and a one-sample t-test against `null`; NaN + reason below 2 values."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    n = len(x)
    res: dict[str, Any] = {"n": n, "mean": float(np.mean(x)) if n else np.nan, "sd": np.nan, "se": np.nan,
                           "ci_low": np.nan, "ci_high": np.nan, "t_stat": np.nan, "df": np.nan, "p": np.nan,
                           "verdict": INCONCLUSIVE, "reason": ""}
    if n < 2:
        res["reason"] = f"fewer than two seeds (n={n}): interval and test undefined"
        return res
    sd = float(np.std(x, ddof=1))
    se = sd / np.sqrt(n)
    res.update(sd=sd, se=se, df=n - 1)
    if sd == 0:
        res.update(ci_low=res["mean"], ci_high=res["mean"], reason="zero variance across seeds: test undefined")
        return res
    q = sps.t.ppf(0.5 + level / 2, n - 1)
    tt = sps.ttest_1samp(x, null)
    res.update(ci_low=res["mean"] - q * se, ci_high=res["mean"] + q * se, t_stat=float(tt.statistic),
               p=float(tt.pvalue))
    res["verdict"] = verdict(res["ci_low"], res["ci_high"], null)
    return res


def _seed_means(frame: pd.DataFrame, value: str) -> pd.Series:
    """One value per seed (mean over that seed's networks in the cell), NaNs ignored."""
    return frame.groupby("seed", sort=True)[value].mean().dropna()


def summarize(alpha_df: pd.DataFrame, *, by: Sequence[str] = CELL_KEYS, value: str = "alpha", level: float = 0.95,
              flagged: str = "both") -> pd.DataFrame:
    """Tier A per cell: E[α_t] over seeds, t-interval, t-test vs 1, Holm across cells, verdict, reason.

    `flagged`: "both" (rows with subset "all" and "unflagged"), "include" or "exclude" near-chance / one-class
    networks. Dropped networks (α NaN) are excluded and counted. When a cell has several networks per seed,
    they are averaged within the seed first. Holm is applied within each subset across all cells of the call.
    """
    if flagged not in ("both", "include", "exclude"):
        raise ValueError(f"flagged: expected 'both', 'include' or 'exclude', got {flagged!r}")
    need = [*by, value, "seed"]
    missing = [c for c in need if c not in alpha_df.columns]
    if missing:
        raise ValueError(f"alpha_df: missing column(s) {missing}")
    df = intensification.normalise_labels(alpha_df)
    df["flagged"] = df["flagged"].fillna(False).astype(bool) if "flagged" in df.columns else False
    subsets = {"both": [("all", False), ("unflagged", True)], "include": [("all", False)],
               "exclude": [("unflagged", True)]}[flagged]
    rows = []
    for name, drop_flagged in subsets:
        for key, frame in _groups(df, by):
            n_flag = int(frame["flagged"].sum())
            n_drop = int((~np.isfinite(frame[value].to_numpy(float))).sum())
            use = frame[~frame["flagged"]] if drop_flagged else frame
            res = tier_a(_seed_means(use, value).to_numpy(), level=level)
            reasons = [res.pop("reason")]
            if n_drop:
                reasons.append(f"{n_drop} network(s) with undefined {value} dropped")
            if n_flag:
                reasons.append(f"{n_flag} flagged network(s) {'excluded' if drop_flagged else 'included'}")
            row = dict(zip(by, key))
            row.update(subset=name, t_mean=float(frame["t"].mean()) if "t" in frame else np.nan,
                       requested_sparsity=frame["requested_sparsity"].iloc[0] if "requested_sparsity" in frame
                       else np.nan, n_networks=len(frame), n_dropped=n_drop, n_flagged=n_flag,
                       n_seeds=res.pop("n"), **res, reason="; ".join(r for r in reasons if r))
            rows.append(row)
    out = pd.DataFrame(rows)
    out["p_holm"] = np.nan
    for name in out["subset"].unique():
        sel = out["subset"] == name
        out.loc[sel, "p_holm"] = _holm(out.loc[sel, "p"])
    out["verdict_holm"] = [_verdict_p(m, p) for m, p in zip(out["mean"], out["p_holm"])]
    return out


# -------------------------------------------------------------------------------------------- Tier B


def _ols_origin(cell: pd.DataFrame, cluster: bool) -> Any:
    import statsmodels.formula.api as smf

    model = smf.ols("dt ~ 0 + d0", cell)
    if cluster:
        groups = pd.factorize(cell["seed"])[0]
        return model.fit(cov_type="cluster", cov_kwds={"groups": groups})
    return model.fit()


def _fit_mixed(cell: pd.DataFrame) -> tuple[Any, list[str]]:
    import statsmodels.formula.api as smf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = smf.mixedlm("dt ~ 0 + d0", cell, groups=cell["seed"], re_formula="0 + d0").fit(reml=True)
    msgs = sorted({str(w.message).split("\n")[0] for w in caught})
    return res, msgs


def mixed_model(long_df: pd.DataFrame, *, by: Sequence[str] = CELL_KEYS, level: float = 0.95,
                exclude_flagged: bool = False, tau2_tol: float = 1e-6) -> pd.DataFrame:
    """Tier B per cell: δ_t = (α + u_s)·δ_0 + ε, u_s ~ N(0, τ²), REML; α = E[α_t] with Wald CI and z = (α−1)/se.

    Networks with Σδ0² < 1e-12 (α_t undefined) are dropped before fitting and counted in `n_dropped`.
    Extensions of docs/methods.md §8 (said in `method` and `reason`): with fewer than two seeds the estimate is the
    pooled OLS slope through the origin, with no interval (method "pooled_ols", inconclusive); a MixedLM that
    fails or does not converge falls back to pooled OLS through the origin with errors clustered by seed
    (method "pooled_ols_cluster_seed").

    Columns: by..., n_seeds, n_obs, n_dropped, alpha, se, ci_low, ci_high, z, p, p_holm, tau2, converged,
    tau2_zero, method ("mixedlm", or the fallback "pooled_ols_cluster_seed" / "pooled_ols"), verdict, reason.
    """
    need = [*by, "seed", "d0", "dt"]
    missing = [c for c in need if c not in long_df.columns]
    if missing:
        raise ValueError(f"long_df: missing column(s) {missing}")
    df, keys = _long_table(long_df, by)
    if exclude_flagged:
        df = drop_flagged(df)
    zq = sps.norm.ppf(0.5 + level / 2)
    rows = []
    for key, frame in _groups(df, by):
        frame, n_drop = _drop_undefined(frame, keys)
        cell = frame[np.isfinite(frame["d0"].to_numpy(float)) & np.isfinite(frame["dt"].to_numpy(float))]
        cell = cell[["seed", "d0", "dt"]].reset_index(drop=True)
        n_seeds = int(cell["seed"].nunique())
        row: dict[str, Any] = dict(zip(by, key))
        row.update(n_seeds=n_seeds, n_obs=len(cell), n_dropped=n_drop, alpha=np.nan, se=np.nan, ci_low=np.nan,
                   ci_high=np.nan, z=np.nan, p=np.nan, tau2=np.nan, converged=False, tau2_zero=False, method="",
                   reason="")
        reasons = [_dropped_reason(n_drop)] if n_drop else []
        if len(cell) == 0 or float((cell["d0"] ** 2).sum()) < 1e-12:
            reasons.append("no usable classes (Σδ0² < 1e-12)")
            row.update(method="none", reason="; ".join(reasons), verdict=INCONCLUSIVE)
            rows.append(row)
            continue
        if n_seeds < 2:
            res = _ols_origin(cell, cluster=False)
            reasons.append(f"fewer than two seeds (n={n_seeds}): mixed model and interval undefined; "
                           "estimate is the pooled OLS slope")
            row.update(alpha=float(res.params["d0"]), method="pooled_ols", reason="; ".join(reasons),
                       verdict=INCONCLUSIVE)
            rows.append(row)
            continue
        res, fallback = None, ""
        try:
            res, msgs = _fit_mixed(cell)
            se = float(res.bse["d0"])
            tau2 = float(np.asarray(res.cov_re)[0, 0])
            if not (res.converged and np.isfinite(se) and se > 0 and np.isfinite(res.params["d0"])):
                fallback = "mixedlm did not converge" + (f" ({'; '.join(msgs)})" if msgs else "")
        except Exception as exc:  # singular designs, linear-algebra failures: report and fall back
            fallback = f"mixedlm failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if fallback:
            ols = _ols_origin(cell, cluster=True)
            est, se = float(ols.params["d0"]), float(ols.bse["d0"])
            row.update(method="pooled_ols_cluster_seed", converged=False)
            reasons.append(fallback + "; fallback: pooled OLS through the origin, errors clustered by seed")
        else:
            est = float(res.params["d0"])
            row.update(method="mixedlm", converged=True, tau2=tau2)
            if tau2 <= tau2_tol:
                row["tau2_zero"] = True
                reasons.append("τ²≈0 (random-slope variance at the boundary): the fit equals pooled OLS")
            if msgs:
                reasons.append("statsmodels: " + "; ".join(msgs))
        row.update(alpha=est, se=se, ci_low=est - zq * se, ci_high=est + zq * se, z=(est - 1.0) / se,
                   p=float(2 * sps.norm.sf(abs((est - 1.0) / se))))
        row["verdict"] = verdict(row["ci_low"], row["ci_high"])
        row["reason"] = "; ".join(reasons)
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = _holm(out["p"])
    return out


# ------------------------------------------------------------------------------------ per-class Welch


def welch_per_class(long_df: pd.DataFrame, *, by: Sequence[str] = CELL_KEYS,
                    family: Sequence[str] = ("dataset", "model", "criterion"), accuracy: str = "population",
                    q: float = 0.05) -> pd.DataFrame:
    """Per class and sparsity: Welch t-test of {r_{0,c,s} − ā_0} vs {r_{t,c,s} − ā_t} over seeds.

    ā is the population-mean accuracy of the cell (`accuracy="population"`) or each model's own
    (`accuracy="own"`). t > 0 means class c lost relative recall. BH (q) across classes × sparsities within each
    `family`; raw and adjusted p. Fewer than two values on a side, or zero variance on both: NaN + reason.
    Networks with Σδ0² < 1e-12 (α_t undefined) are left out of both sides; `n_dropped` counts them per cell.
    """
    from statsmodels.stats.multitest import multipletests

    if accuracy not in ("population", "own"):
        raise ValueError(f"accuracy: expected 'population' or 'own', got {accuracy!r}")
    need = [*by, "class", "seed", "r0", "a0", "rt", "at"]
    missing = [c for c in need if c not in long_df.columns]
    if missing:
        raise ValueError(f"long_df: missing column(s) {missing}")
    table, keys = _long_table(long_df, by)
    rows = []
    for key, frame in _groups(table, by):
        classes = sorted(frame["class"].unique())
        frame, n_drop = _drop_undefined(frame, keys)
        if accuracy == "own":
            dev0, devt = frame["r0"] - frame["a0"], frame["rt"] - frame["at"]
        else:  # population-mean accuracy of the cell: one accuracy per network, averaged over seeds
            nets = frame.drop_duplicates("seed")
            dev0, devt = frame["r0"] - nets["a0"].mean(), frame["rt"] - nets["at"].mean()
        x = y = np.full((0, len(classes)), np.nan)  # [seeds, classes]; no seed left when all were dropped
        if len(frame):
            wide = frame[["seed", "class"]].assign(x=dev0, y=devt).pivot_table(
                index="seed", columns="class", values=["x", "y"], aggfunc="mean", dropna=False)
            x = wide["x"].reindex(columns=classes).to_numpy(float)
            y = wide["y"].reindex(columns=classes).to_numpy(float)
        nx, ny = np.isfinite(x).sum(0), np.isfinite(y).sum(0)
        t = np.full(len(classes), np.nan)
        df = np.full(len(classes), np.nan)
        p = np.full(len(classes), np.nan)
        reason = np.full(len(classes), "", dtype=object)
        with warnings.catch_warnings():  # all-NaN columns (absent classes) give NaN, handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            vx, vy = np.nanvar(x, 0), np.nanvar(y, 0)
            mx, my = np.nanmean(x, 0), np.nanmean(y, 0)
        few = (nx < 2) | (ny < 2)
        flat = ~few & (vx == 0) & (vy == 0)
        reason[few] = "fewer than two seeds on a side: test undefined"
        reason[flat] = "zero variance in both groups: test undefined"
        ok = ~few & ~flat
        full = ok & (nx == x.shape[0]) & (ny == y.shape[0])
        if full.any():  # one vectorised scipy call for the classes without missing values
            tt = sps.ttest_ind(x[:, full], y[:, full], equal_var=False, axis=0)
            t[full], df[full], p[full] = tt.statistic, tt.df, tt.pvalue
        for j in np.flatnonzero(ok & ~full):  # classes absent for some seeds
            tt = sps.ttest_ind(x[:, j][np.isfinite(x[:, j])], y[:, j][np.isfinite(y[:, j])], equal_var=False)
            t[j], df[j], p[j] = tt.statistic, tt.df, tt.pvalue
        cell = pd.DataFrame({"class": classes, "n_dense": nx, "n_pruned": ny, "n_dropped": n_drop, "dense_dev": mx,
                             "pruned_dev": my, "t_stat": t, "df": df, "p": p, "reason": reason})
        for name, val in zip(by, key):
            cell.insert(list(by).index(name), name, val)
        rows.append(cell)
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    out["p_bh"] = np.nan
    out["reject_bh"] = False
    fam = [f for f in family if f in out.columns]
    groups = out.groupby(fam, sort=False, dropna=False).groups.values() if fam else [out.index]
    for idx in groups:
        p = out.loc[idx, "p"].to_numpy(float)
        ok = np.isfinite(p)
        if ok.any():
            rej, padj, _, _ = multipletests(p[ok], alpha=q, method="fdr_bh")
            sel = np.asarray(idx)[ok]
            out.loc[sel, "p_bh"] = padj
            out.loc[sel, "reject_bh"] = rej
    return out


# ------------------------------------------------------------------------------------------ bootstrap


def bootstrap_alpha(alpha_df: pd.DataFrame, *, by: Sequence[str] = CELL_KEYS, value: str = "alpha",
                    n_resamples: int = 9999, level: float = 0.95, seed: int = 0, method: str = "BCa",
                    exclude_flagged: bool = False) -> pd.DataFrame:
    """Seed-bootstrap intervals of E[α_t] per cell (scipy.stats.bootstrap; Generator seeded by (seed, cell)).

    Columns: by..., n_seeds, mean, boot_low, boot_high, verdict, reason. Fewer than two seeds: NaN + reason;
    zero variance: the degenerate interval [mean, mean] + reason.
    """
    df = intensification.normalise_labels(alpha_df)
    if exclude_flagged and "flagged" in df.columns:
        df = df[~df["flagged"].to_numpy(bool)]
    rows = []
    for i, (key, frame) in enumerate(_groups(df, by)):
        x = _seed_means(frame, value).to_numpy()
        row = dict(zip(by, key))
        row.update(n_seeds=len(x), mean=float(np.mean(x)) if len(x) else np.nan, boot_low=np.nan,
                   boot_high=np.nan, reason="")
        if len(x) < 2:
            row["reason"] = f"fewer than two seeds (n={len(x)}): interval undefined"
        elif np.all(x == x[0]):
            row.update(boot_low=x[0], boot_high=x[0], reason="zero variance across seeds: degenerate interval")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = sps.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method=method,
                                    rng=np.random.default_rng([seed, i]))
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
            if not (np.isfinite(lo) and np.isfinite(hi)) and method != "percentile":
                res = sps.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level,
                                    method="percentile", rng=np.random.default_rng([seed, i]))
                lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
                row["reason"] = f"{method} undefined; percentile interval"
            row.update(boot_low=lo, boot_high=hi)
        row["verdict"] = verdict(row["boot_low"], row["boot_high"])
        rows.append(row)
    return pd.DataFrame(rows)
