"""The claims table: every claim of the two reference studies, tested on stored results under the protocol of
docs/methods.md §14 (declared estimands, both nulls, equivalence margins, Holm within each paper, seed plans).

One row per claim, null and setting. Seeds are the unit: each row reduces every run to one value per seed
(`analysis.estimands`) and tests those values (`analysis.decisions`); `finalize` adds the Holm-adjusted verdict
and the seed plan (`analysis.planning`). Inputs are stored tables and a small typed `RunDescription` per run, never
a config object or a model: the report layer (`report.claims`) builds both from a workdir.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from fairprune_jax import deprecation
from fairprune_jax.analysis import decisions as D
from fairprune_jax.analysis import estimands as E
from fairprune_jax.analysis import planning
from fairprune_jax.analysis.claim_kinds import (CLAIMS, ESTIMANDS, HIGH, LOW, NULL_WORDS, RATIO_MARGIN,  # noqa: F401
                                                STRUCTURED, Claim, Estimand, RunDescription)

ALPHA = D.ALPHA


# ---------------------------------------------------------------------------------------------- runs

@dataclasses.dataclass(frozen=True)
class RecallRun:
    """One recall run: its description and its per-network table (`intensification.alpha` with the columns of
    `scale_table`), diverged networks left out; `agreement` is the run's mask agreement between criteria."""

    run: RunDescription
    alpha: pd.DataFrame
    agreement: Mapping[tuple[str, str], float] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def seeds(self) -> list:
        return sorted(self.alpha["seed"].unique())

    def first(self, n: int) -> "RecallRun":
        """The run restricted to its first `n` seeds (a look of the sequential mode)."""
        keep = set(self.seeds[:n])
        return dataclasses.replace(self, alpha=self.alpha[self.alpha["seed"].isin(keep)])

    def criteria(self, among: Sequence[str] = STRUCTURED) -> list[str]:
        have = set(self.alpha["criterion"])
        return [c for c in among if c in have]

    def grid(self, regime: tuple[float, float] = (0.0, 1.0)) -> list[float]:
        s = sorted(self.alpha["requested_sparsity"].unique())
        return [x for x in s if regime[0] <= x <= regime[1]]

    def per_seed(self, est: Estimand, *, regime: tuple[float, float],
                 criteria: Sequence[str]) -> pd.Series | pd.DataFrame:
        """The estimand's value per seed (a frame of one column per sparsity for cells) over the networks of
        `criteria` in `regime`, flagged networks excluded; ±∞ become NaN."""
        grid = self.grid(regime)
        seeds, arr = E.network_array(self.alpha, est.value, criteria=list(criteria), sparsities=grid)
        return _frame(est.reduce(arr, grid), seeds, grid)

    def compare(self, est: Estimand, a: str, b: str, regime: tuple[float, float]) -> pd.Series | pd.DataFrame:
        """The estimand's paired comparison of criterion `a` with `b`, per seed."""
        grid = self.grid(regime)
        seeds, arr = E.network_array(self.alpha, est.value, criteria=[a, b], sparsities=grid)
        return _frame(est.compare(arr[:, :1], arr[:, 1:]), seeds, grid)


def _frame(v: np.ndarray, seeds: np.ndarray, grid: Sequence[float]) -> pd.Series | pd.DataFrame:
    v = np.where(np.isfinite(v), v, np.nan)
    if v.ndim == 2:
        return pd.DataFrame(v, index=seeds, columns=[f"{100 * s:.3g}%" for s in grid])
    return pd.Series(v, index=seeds)


def recall_run(run: RunDescription, recall: pd.DataFrame, *, agreement: Mapping | None = None) -> RecallRun:
    """A `RecallRun` from a stored recall table (diverged networks left out)."""
    from fairprune_jax.analysis import intensification

    if "diverged" in recall:
        recall = recall[~recall["diverged"].astype(bool)]
    long = intensification.long_table(recall.reset_index(drop=True), chance=run.chance)
    return RecallRun(run, scale_table(long, intensification.alpha(long)), dict(agreement or {}))


def scale_table(long: pd.DataFrame, alpha: pd.DataFrame) -> pd.DataFrame:
    """α_t with its two scale-controlled companions per network: `alpha_null` = (e_t/e_0)(a_0/a_t) (uniform error
    growth), `log_excess` = log(α_t/α_null) (−∞ for α_t ≤ 0, NaN unless α_null > 0 and α_t is defined) and
    `rank_rho` = Spearman ρ(δ0, δt − δ0) over the network's classes."""
    from scipy import stats as sps

    keys = ["dataset", "model", "criterion", "seed", "level"]
    out = alpha.copy()
    e0, et = 1.0 - out["a0"].to_numpy(float), 1.0 - out["at"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        null = (et / e0) * (out["a0"].to_numpy(float) / out["at"].to_numpy(float))
        a = out["alpha"].to_numpy(float)
        out["alpha_null"] = null
        # α_t ≤ 0 < α_null: less distortion than any uniform growth; −∞ ranks it lowest for a median, a mean
        # leaves it out (`analysis.estimands`)
        out["log_excess"] = np.where((null > 0) & np.isfinite(a), np.where(a > 0, np.log(np.abs(a) / null), -np.inf),
                                     np.nan)
    ok = long[np.isfinite(long["d0"].to_numpy(float)) & np.isfinite(long["dt"].to_numpy(float))]

    def rho(g: pd.DataFrame) -> float:
        if len(g) < 3 or g["d0"].nunique() < 2:
            return np.nan
        return float(sps.spearmanr(g["d0"], g["dt"] - g["d0"]).statistic)

    r = ok.groupby(keys)[["d0", "dt"]].apply(rho).rename("rank_rho").reset_index()
    return out.merge(r, on=keys, how="left")


# ---------------------------------------------------------------------------------------------- rows

def describe(run: RunDescription, regime: tuple[float, float] | None, criteria: Sequence[str], grid: Sequence[float],
             omit: str = "", seeds: int | None = None) -> str:
    """Our setting in words: dataset · model · protocol · seeds (stored; `{seeds}` when not given) · weight decay ·
    criteria · regime."""
    proto = run.protocol + (f" ({run.epochs} epochs/level)" if run.protocol == "iterative" else "")
    span = (f"{100 * min(grid):.0f}–{100 * max(grid):.0f}%" if grid else "no sparsity in range")
    fields = {"dataset": run.dataset, "model": "/".join(run.models)}
    head = " · ".join(v for k, v in fields.items() if k != omit)
    n = "{seeds}" if seeds is None else str(seeds)
    return f"{head} · {proto} · {n} seeds · wd {run.weight_decay:g} · {'/'.join(c.upper() for c in criteria)} " \
           f"at {span}"


def _null(claim: Claim) -> float:
    """The null on the tested scale: 0 for logs, differences and slopes; 1 for α_t itself on the linear scale."""
    return 1.0 if claim.null == "one" and not claim.log else 0.0


def _test(key: str, values: pd.Series | pd.DataFrame) -> D.Test:
    c = CLAIMS[key]
    if isinstance(values, pd.DataFrame):
        return D.cells_test(values.to_numpy(float), list(values.columns), _null(c), c.margin)
    return D.t_test(values.dropna().to_numpy(float), _null(c), c.margin)


def _words(key: str, how: str = "", pair: str = "") -> str:
    c = CLAIMS[key]
    if not c.estimand:
        return c.words
    est = ESTIMANDS[c.estimand]
    if how == "paired":
        return f"{est.compare_words}, {pair}, paired by seed"
    if how == "welch":
        return f"{est.words}; {pair} (Welch)"
    return est.words


def _row(key: str, setting: str, test: D.Test, runs: Sequence[RunDescription], n_text: str, note: str = "",
         values: Mapping[str, pd.Series | pd.DataFrame] | None = None, words: str = "") -> dict:
    """One row: the claim, our setting, the test on its scale and on the shown scale, the raw verdict."""
    c = CLAIMS[key]
    show = np.exp if c.log else (lambda x: x)
    partial = "; ".join(f"{r.name}: {', '.join(r.missing_units)}" for r in runs if r.missing_units)
    seeds = max([_n_seeds(v) for v in (values or {}).values()] or [test.seeds])
    if test.kind == "cells" and test.seeds < seeds:
        n_text += f"; {test.seeds} with a value at {test.cell}"
    if test.kind == "cells":
        cells = ", ".join(f"{lab} {float(show(t.estimate)):.3g} (p = {t.p:.2g})"
                          for lab, t in zip(test.labels, test.cells) if np.isfinite(t.estimate))
        note = f"Per sparsity: {cells}." + (f" {note}" if note else "")
    margin = np.isfinite(c.margin)
    return dict(claim=key, paper=c.paper, statement=c.statement, null=c.null_words, estimand=words or _words(key),
                setting=setting.replace("{seeds}", str(seeds)), scale="log" if c.log else "linear", cell=test.cell,
                estimate=float(show(test.estimate)), ci_low=float(show(test.ci_low)), ci_high=float(show(test.ci_high)),
                null_value=float(show(test.null)), margin_low=float(show(test.null - c.margin)) if margin else np.nan,
                margin_high=float(show(test.null + c.margin)) if margin else np.nan,
                mean=test.estimate, sd=planning.spread(test), seeds=seeds, n=n_text, test=test.kind, p=test.p,
                p_tost=test.p_tost,
                verdict_raw=D.verdict(c.direction, test.estimate, test.null, test.p, test.p_tost),
                workdirs=" | ".join(r.name for r in runs), partial=partial, note=note,
                _test=test, _values=dict(values or {}))


def _n_seeds(v: pd.Series | pd.DataFrame) -> int:
    """Seeds with at least one finite value."""
    x = v.to_numpy(float).reshape(len(v), -1)
    return int(np.isfinite(x).any(1).sum())


def _usable(v: pd.Series | pd.DataFrame) -> bool:
    return bool(np.isfinite(v.to_numpy(float)).any())


def regime_rows(run: RecallRun) -> list[dict]:
    """High and low sparsity against α_t = 1 and against uniform error growth, and the trend over sparsity."""
    out = []
    crits = run.criteria()
    for key, regime in (("high", HIGH), ("low", LOW)):
        grid = run.grid(regime)
        if not grid or not crits:
            continue
        setting = describe(run.run, regime, crits, grid, seeds=len(run.seeds))
        for k in (key, f"{key}_uniform"):
            v = run.per_seed(ESTIMANDS[CLAIMS[k].estimand], regime=regime, criteria=crits)
            if _usable(v):
                test = _test(k, v)
                out.append(_row(k, setting, test, [run.run], f"{_n_seeds(v)} seeds", values={run.name: v}))
    grid = run.grid()
    if len(grid) >= 3 and crits:
        v = run.per_seed(ESTIMANDS[CLAIMS["rises"].estimand], regime=(0.0, 1.0), criteria=crits)
        if _usable(v):
            test = _test("rises", v)
            out.append(_row("rises", describe(run.run, None, crits, grid, seeds=len(run.seeds)), test, [run.run],
                            f"{_n_seeds(v)} seeds",
                            values={run.name: v}))
    return out


def criterion_rows(run: RecallRun) -> list[dict]:
    """UP against MP and against GP at high sparsity, paired by seed, on α_t and on α_t/α_null."""
    out = []
    for key, other in (("up_mp", "mp"), ("up_gp", "gp")):
        grid = run.grid(HIGH)
        if not {"up", other} <= set(run.criteria()) or not grid:
            continue
        setting = describe(run.run, HIGH, ("up", other), grid, seeds=len(run.seeds))
        typical = ESTIMANDS["log_median"]
        up, ref = (run.per_seed(typical, regime=HIGH, criteria=(c,)) for c in ("up", other))
        note = f"Typical α_t UP {np.exp(up.mean()):.3g} vs {other.upper()} {np.exp(ref.mean()):.3g}."
        if ("up", other) in run.agreement:
            note += (f" {100 * run.agreement[('up', other)]:.1f}% of the weights UP keeps are kept by "
                     f"{other.upper()} too (mean over seeds and sparsities).")
        elif run.run.protocol == "one_shot":
            note += " Mask agreement not stored in this workdir."
        for k, n in ((key, note), (f"{key}_uniform", "")):
            v = run.compare(ESTIMANDS[CLAIMS[k].estimand], "up", other, HIGH)
            if _usable(v):
                test = _test(k, v)
                out.append(_row(k, setting, test, [run.run], f"{_n_seeds(v)} seeds, paired", n, {run.name: v},
                                _words(k, "paired", f"UP over {other.upper()}")))
    return out


def _pairs(runs: Sequence[RecallRun], *, differ: str) -> list[tuple[RecallRun, RecallRun]]:
    """Pairs of runs equal in every design field but `differ` ("dataset" or "models")."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a.run.signature(differ) == b.run.signature(differ) and getattr(a.run, differ) != getattr(b.run, differ):
                out.append((a, b))
    return out


def _welch(key: str, first: RecallRun, second: RecallRun, label: str, omit: str, pair: str,
           note: str = "") -> dict | None:
    crits = [c for c in STRUCTURED if c in set(first.criteria()) & set(second.criteria())]
    est = ESTIMANDS[CLAIMS[key].estimand]
    a, b = (r.per_seed(est, regime=HIGH, criteria=crits).dropna() for r in (first, second))
    if a.empty or b.empty:
        return None
    test = D.welch_test(a.to_numpy(), b.to_numpy(), CLAIMS[key].margin)
    setting = f"{label} · {describe(first.run, HIGH, crits, first.grid(HIGH), omit=omit, seeds=len(first.seeds))}"
    return _row(key, setting, test, [first.run, second.run], f"{len(a)} vs {len(b)} seeds, Welch", note,
                {first.name: a, second.name: b}, _words(key, "welch", pair))


def dataset_rows(runs: Sequence[RecallRun]) -> list[dict]:
    """RQ2: runs alike but for the dataset, the harder one (lower dense accuracy) against the easier."""
    out = []
    for a, b in _pairs(runs, differ="dataset"):
        hard, easy = (a, b) if _dense_accuracy(a) < _dense_accuracy(b) else (b, a)
        label = (f"{hard.run.dataset} (dense acc {_dense_accuracy(hard):.3f}) vs {easy.run.dataset} "
                 f"({_dense_accuracy(easy):.3f})")
        pair = f"{hard.run.dataset} over {easy.run.dataset}"
        out += [_welch(k, hard, easy, label, "dataset", pair) for k in ("harder", "harder_uniform", "harder_rank")]
    return [r for r in out if r is not None]


def model_rows(runs: Sequence[RecallRun]) -> list[dict]:
    """RQ3: runs alike but for the model, the smaller one (fewer parameters) against the larger."""
    out = []
    for a, b in _pairs(runs, differ="models"):
        na, nb = _n_params(a), _n_params(b)
        if na is None or nb is None or na == nb:
            continue
        small, large = (a, b) if na < nb else (b, a)
        ms, ml = "/".join(small.run.models), "/".join(large.run.models)
        label = f"{ms} ({_n_params(small):,} parameters) vs {ml} ({_n_params(large):,})"
        note = " ".join(dict.fromkeys(r.run.sizes_note for r in (small, large) if r.run.sizes_note))
        out += [_welch(k, small, large, label, "model", f"{ms} over {ml}", note)
                for k in ("smaller", "smaller_uniform")]
    return [r for r in out if r is not None]


def _dense_accuracy(run: RecallRun) -> float:
    return float(run.alpha.groupby("seed")["a0"].first().mean())


def _n_params(run: RecallRun) -> int | None:
    counts = [run.run.n_params.get(m) for m in run.run.models]
    return None if any(c is None for c in counts) else int(sum(counts))


# ---------------------------------------------------------------------------------------------- paper 2

def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC from its numbers of positives and negatives (Hanley & McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def hanley_mcneil(auc: float, n_pos: int, n_neg: int, level: float = D.LEVEL) -> tuple[float, float]:
    """Deprecated (warns once): the normal interval of an AUROC; use `hanley_mcneil_se` (or `decisions.normal_test`)."""
    deprecation.warn_once("analysis.claims.hanley_mcneil", "analysis.claims.hanley_mcneil is deprecated; use "
                          "analysis.claims.hanley_mcneil_se or analysis.decisions.normal_test")
    half = sps.norm.isf((1 - level) / 2) * hanley_mcneil_se(auc, n_pos, n_neg)
    return auc - half, auc + half


def bias_rows(run: RunDescription, metrics: pd.DataFrame, identification: pd.DataFrame) -> list[dict]:
    """Paper 2's claims in one bias run: the highest sparsity with every BA value defined against the dense models."""
    m = metrics
    ba = m[(m["metric"] == "ba") & (m["scheme"] == "default") & (m["population"] == "sparse")]
    full = [s for s, g in ba.groupby("sparsity") if g["value"].notna().all()]
    if not full:
        return []
    s_high = float(max(full))
    setting = (f"{run.dataset} · {'/'.join(run.models)} · {run.protocol} {'/'.join(c.upper() for c in run.criteria)}"
               f" · {m['seed'].nunique()} seeds · {100 * s_high:.0f}% (highest sparsity with every BA defined)")

    def per_seed(metric: str, population: str, scheme: str = "default") -> pd.Series:
        sel = m[(m["metric"] == metric) & (m["scheme"] == scheme) & (m["population"] == population)]
        if population == "sparse":
            sel = sel[np.isclose(sel["sparsity"].astype(float), s_high)]
        return sel.groupby("seed")["value"].mean()

    out = []
    for key, metric, what in (("uncertainty", "uncertainty", "uncertainty"), ("interdependence", "r2", "R²"),
                              ("bias", "ba", "BA")):
        sp, de = per_seed(metric, "sparse"), per_seed(metric, "dense")
        d = (sp - de).dropna()
        test = D.t_test(d.to_numpy(), 0.0, CLAIMS[key].margin)
        out.append(_row(key, setting + " vs dense", test, [run], f"{test.seeds} seeds, paired",
                        f"Mean {what} {sp.mean():.3g} pruned vs {de.mean():.3g} dense.", {run.name: d}))
    ident = identification[np.isclose(identification["sparsity"].astype(float), s_high)
                           & (identification["subset"] == "all")]
    unc, rnd = ident[ident["criterion"] == "uncertainty"], ident[ident["criterion"] == "random"]
    if not unc.empty:
        r = unc.iloc[0]
        auc, n_pos, n = float(r["auroc"]), int(r["n_cie"]), int(r["n"])
        test = D.normal_test(auc, hanley_mcneil_se(auc, n_pos, n - n_pos), 0.5, CLAIMS["identify"].margin,
                             n=run.num_seeds)
        note = (f"Random score: {float(rnd.iloc[0]['auroc']):.3f}. " if not rnd.empty else "") + \
            f"{n_pos} changed of {n} sample × attribute pairs, pooled over seeds, so the interval is optimistic."
        out.append(_row("identify", setting, test, [run], f"{n_pos} changed of {n}", note))
    base = per_seed("ba", "sparse")
    for scheme in ("global", "group"):
        d = (per_seed("ba", "sparse", scheme) - base).dropna()
        if d.empty:
            continue
        test = D.t_test(d.to_numpy(), 0.0, CLAIMS["calibration"].margin)
        out.append(_row("calibration", f"{setting}, {scheme} thresholds", test, [run], f"{test.seeds} seeds, paired",
                        values={run.name: d}))
    return out


# ---------------------------------------------------------------------------------------------- table

PUBLIC = ("claim", "paper", "statement", "null", "estimand", "setting", "scale", "cell", "estimate", "ci_low",
          "ci_high", "null_value", "margin_low", "margin_high", "mean", "sd", "seeds", "n", "test", "p", "p_holm",
          "p_tost", "p_tost_holm", "verdict_raw", "verdict", "alpha_plan", "mde", "seeds_needed", "route",
          "workdirs", "partial", "note")


def build(recall_runs: Sequence[RecallRun], bias_runs: Sequence[tuple[RunDescription, pd.DataFrame, pd.DataFrame]],
          *, with_values: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """The claims table (columns `PUBLIC`), ordered by claim: every applicable run for within-run claims, every
    comparable pair of runs for RQ2/RQ3, every bias run (description, metrics, identification) for paper 2; then
    `finalize`d. With `with_values`, also the per-seed values behind each row (`row`, `workdir`, `seed`, `cell`
    (the sparsity of a cells estimand, else empty), `value`)."""
    rows: list[dict] = []
    for run in recall_runs:
        rows += regime_rows(run) + criterion_rows(run)
    rows += dataset_rows(recall_runs) + model_rows(recall_runs)
    for run, metrics, ident in bias_runs:
        rows += bias_rows(run, metrics, ident)
    if not rows:
        raise ValueError("claims: no claim could be tested on these workdirs (give recall and/or bias runs)")
    order = {k: i for i, k in enumerate(CLAIMS)}
    rows = sorted(rows, key=lambda r: order[r["claim"]])  # stable: runs keep their order within a claim
    table = finalize(pd.DataFrame(rows))
    if not with_values:
        return table[list(PUBLIC)]
    vals = []
    for i, r in enumerate(rows):
        for wd, v in r["_values"].items():
            frame = v.to_frame("") if isinstance(v, pd.Series) else v
            long = frame.rename_axis("seed").reset_index().melt("seed", var_name="cell", value_name="value")
            vals.append(long.assign(row=i, workdir=wd)[["row", "workdir", "seed", "cell", "value"]])
    return table[list(PUBLIC)], (pd.concat(vals, ignore_index=True) if vals else pd.DataFrame(
        columns=["row", "workdir", "seed", "cell", "value"]))


def finalize(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm within each paper (difference and TOST p separately), the adjusted verdict, and the seed plan at the
    level Holm would give each row next: α / (rows of its paper not rejected after adjustment); an undecided row
    needs at least one seed more than it has."""
    out = table.copy()
    out["p_holm"], out["p_tost_holm"], out["verdict"] = np.nan, np.nan, D.UNDECIDED
    for _, idx in out.groupby("paper", sort=False).groups.items():
        out.loc[idx, "p_holm"] = D.holm(out.loc[idx, "p"].to_numpy(float))
        out.loc[idx, "p_tost_holm"] = D.holm(out.loc[idx, "p_tost"].to_numpy(float))
    out["verdict"] = [D.verdict(CLAIMS[k].direction, t.estimate, t.null, p, q, alpha)
                      for k, t, p, q in zip(out["claim"], out["_test"], out["p_holm"], out["p_tost_holm"])]
    plans = []
    for paper, g in out.groupby("paper", sort=False):
        open_rows = int((~g["verdict"].isin([D.REPRODUCED, D.NOT_REPRODUCED])).sum())
        level = alpha / max(open_rows, 1)
        for i in g.index:
            decided = out.at[i, "verdict"] != D.UNDECIDED
            pl = planning.plan(out.at[i, "_test"], level)
            need = max(pl.seeds_needed, out.at[i, "seeds"] + 1) if np.isfinite(pl.seeds_needed) else pl.seeds_needed
            plans.append((i, level, pl.mde, np.nan if decided else need, "" if decided else pl.route))
    for i, level, mde, need, route in plans:
        out.loc[i, ["alpha_plan", "mde", "seeds_needed", "route"]] = [level, mde, need, route]
    log = out["scale"] == "log"
    out.loc[log, "mde"] = np.exp(out.loc[log, "mde"].astype(float))  # shown as a factor, like the estimate
    return out
