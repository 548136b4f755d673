"""The simulation that chose the claims' estimands (docs/methods.md §14): coverage and power of every candidate
per-seed statistic (`analysis.estimands`) on planted populations fitted to stored runs (`analysis.simulation`).

For each claim kind, a candidate's *truth* is its expectation over seeds, computed once per population from
`TRUTH_SEEDS` simulated seeds; its 95% interval is the t-interval over the run's seeds (Welch between two runs),
*coverage* the share of simulated runs whose interval holds the truth, *power* the share whose interval excludes
the null on the truth's side (the claim decides, correctly). The per-cell candidates are tested per sparsity with
Holm and covered simultaneously with Bonferroni intervals. `select` keeps, per claim kind, the candidates whose
coverage is at least .95 − 2 MCSE in every population and seed count, and of those the one with the most mean power.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from fairprune_jax.analysis import estimands as E
from fairprune_jax.analysis import simulation as SIM

HIGH, LOW = (0.9, 1.0), (0.0, 0.5)
LEVEL = 0.95
TRUTH_SEEDS = 40_000


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A candidate estimand of a claim kind: per-seed values from a draw (`values`), its null, and how it is
    tested ("t": one-sample or paired t; "cells": per sparsity with Holm; "welch": between two populations)."""

    claim: str
    name: str
    null: float
    test: str
    values: Callable[[SIM.Draw, SIM.Population], np.ndarray]  # [..., S] (or [..., S, J] for cells)


def _regime(pop: SIM.Population, regime: tuple[float, float]) -> np.ndarray:
    return (pop.sparsities >= regime[0] - 1e-9) & (pop.sparsities <= regime[1] + 1e-9)


def _alpha(d: SIM.Draw, pop: SIM.Population, regime, crits=None) -> np.ndarray:
    a = np.where(d.flagged, np.nan, d.alpha)[..., _regime(pop, regime)]
    if crits is not None:
        a = a[..., [pop.criteria.index(c) for c in crits], :]
    return a


def _excess(d: SIM.Draw, pop: SIM.Population, regime) -> np.ndarray:
    return np.where(d.flagged, np.nan, d.log_excess)[..., _regime(pop, regime)]


def candidates() -> list[Candidate]:
    """Every candidate of every claim kind the simulation compares."""
    out = []
    for claim, regime in (("high", HIGH), ("low", LOW)):
        out += [Candidate(claim, "mean", 1.0, "t", lambda d, p, r=regime: E.seed_mean(_alpha(d, p, r))),
                Candidate(claim, "median", 1.0, "t", lambda d, p, r=regime: E.seed_median(_alpha(d, p, r))),
                Candidate(claim, "log_median", 0.0, "t", lambda d, p, r=regime: E.seed_log_median(_alpha(d, p, r))),
                Candidate(claim, "cells", 1.0, "cells", lambda d, p, r=regime: E.seed_cells(_alpha(d, p, r))),
                Candidate(claim, "cells_log", 0.0, "cells",
                          lambda d, p, r=regime: E.seed_cells_log(_alpha(d, p, r)))]
        out += [Candidate(f"{claim}_uniform", "log_excess_mean", 0.0, "t",
                          lambda d, p, r=regime: E.seed_mean(_excess(d, p, r))),
                Candidate(f"{claim}_uniform", "log_excess_median", 0.0, "t",
                          lambda d, p, r=regime: E.seed_median(_excess(d, p, r))),
                Candidate(f"{claim}_uniform", "cells_excess", 0.0, "cells",
                          lambda d, p, r=regime: E.seed_cells(_excess(d, p, r)))]
    full = (0.0, 1.0)
    out += [Candidate("rises", "trend_ols", 0.0, "t",
                      lambda d, p: E.seed_trend_ols(_alpha(d, p, full), p.sparsities)),
            Candidate("rises", "trend_log", 0.0, "t",
                      lambda d, p: E.seed_trend_log(_alpha(d, p, full), p.sparsities)),
            Candidate("rises", "trend_kendall", 0.0, "t",
                      lambda d, p: E.seed_trend_kendall(_alpha(d, p, full), p.sparsities))]
    for claim, other in (("up_mp", "mp"), ("up_gp", "gp")):
        def pair(d, p, o=other):
            return _alpha(d, p, HIGH, ("up",)), _alpha(d, p, HIGH, (o,))
        out += [Candidate(claim, "mean_diff", 0.0, "t", lambda d, p, f=pair: E.diff_mean(*f(d, p))),
                Candidate(claim, "median_diff", 0.0, "t", lambda d, p, f=pair: E.diff_median(*f(d, p))),
                Candidate(claim, "median_of_diffs", 0.0, "t", lambda d, p, f=pair: E.median_of_diffs(*f(d, p))),
                Candidate(claim, "log_ratio", 0.0, "t", lambda d, p, f=pair: E.log_ratio(*f(d, p))),
                Candidate(claim, "cells_diff", 0.0, "cells",
                          lambda d, p, f=pair: E.seed_cells(f(d, p)[0]) - E.seed_cells(f(d, p)[1])),
                Candidate(claim, "cells_log_ratio", 0.0, "cells", lambda d, p, f=pair: E.cells_log_ratio(*f(d, p)))]

        def pair_x(d, p, o=other):
            return _excess(d, p, HIGH)[..., [p.criteria.index("up")], :], \
                _excess(d, p, HIGH)[..., [p.criteria.index(o)], :]
        out += [Candidate(f"{claim}_uniform", "log_excess_mean", 0.0, "t",
                          lambda d, p, f=pair_x: E.diff_mean(*f(d, p))),
                Candidate(f"{claim}_uniform", "log_excess_median", 0.0, "t",
                          lambda d, p, f=pair_x: E.diff_median(*f(d, p)))]
    for claim in ("harder", "smaller"):
        out += [Candidate(claim, "mean", 0.0, "welch", lambda d, p: E.seed_mean(_alpha(d, p, HIGH))),
                Candidate(claim, "median", 0.0, "welch", lambda d, p: E.seed_median(_alpha(d, p, HIGH))),
                Candidate(claim, "log_median", 0.0, "welch", lambda d, p: E.seed_log_median(_alpha(d, p, HIGH))),
                Candidate(f"{claim}_uniform", "log_excess_mean", 0.0, "welch",
                          lambda d, p: E.seed_mean(_excess(d, p, HIGH))),
                Candidate(f"{claim}_uniform", "log_excess_median", 0.0, "welch",
                          lambda d, p: E.seed_median(_excess(d, p, HIGH)))]
    return out


def _pop_index(cand: Candidate) -> list[int]:
    """Which populations of a group a candidate reads: Welch both (first minus second), the others the first."""
    return [0, 1] if cand.test == "welch" else [0]


def _truths(cands: Sequence[Candidate], group: Sequence[SIM.Population], rng: np.random.Generator,
            seeds: int, chunk: int = 2000) -> dict[int, list[np.ndarray]]:
    """E over seeds of every candidate's per-seed value in each population it reads (a scalar, or [J] for cells;
    non-finite seeds left out), from `seeds` simulated seeds."""
    sums: dict[tuple[int, int], np.ndarray] = {}
    counts: dict[tuple[int, int], np.ndarray] = {}
    for start in range(0, seeds, chunk):
        draws = [SIM.sample(p, 1, min(chunk, seeds - start), rng) for p in group]
        for ci, cand in enumerate(cands):
            for pi in _pop_index(cand):
                v = cand.values(draws[pi], group[pi])[0]
                v = np.moveaxis(v, 0, -1) if cand.test == "cells" else v  # cells: [J, S]
                ok = np.isfinite(v)
                sums[ci, pi] = sums.get((ci, pi), 0) + np.where(ok, v, 0).sum(-1)
                counts[ci, pi] = counts.get((ci, pi), 0) + ok.sum(-1)
    return {ci: [sums[ci, pi] / counts[ci, pi] for pi in _pop_index(c)] for ci, c in enumerate(cands)}


def _decide(s: dict[str, np.ndarray], null: float, true: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(covered, decided on the truth's side) per repetition from a t summary."""
    covered = (s["ci_low"] <= true) & (true <= s["ci_high"])
    side = np.sign(np.asarray(true) - null)
    decided = np.where(side > 0, s["ci_low"] > null, s["ci_high"] < null) & (side != 0)
    return covered, decided


def _score(cand: Candidate, vals: list[np.ndarray], truths: list[np.ndarray]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(covered, decided, interval width) per simulated run."""
    if cand.test == "t":
        s = E.t_summary(vals[0], cand.null, LEVEL)
        c, d = _decide(s, cand.null, truths[0])
        return c, d, s["ci_high"] - s["ci_low"]
    if cand.test == "welch":
        s = E.welch_summary(vals[0], vals[1], LEVEL)
        c, d = _decide(s, cand.null, truths[0] - truths[1])
        return c, d, s["ci_high"] - s["ci_low"]
    v = np.moveaxis(vals[0], -1, -2)  # cells: [R, J, S] → per cell t, Bonferroni coverage, Holm decisions
    m = v.shape[-2]
    sb = E.t_summary(v, cand.null, 1 - (1 - LEVEL) / m)
    true = np.asarray(truths[0])
    c = ((sb["ci_low"] <= true) & (true <= sb["ci_high"])).all(-1)
    s = E.t_summary(v, cand.null, LEVEL)
    ph = E.holm(s["p"])
    side = np.sign(true - cand.null)
    d = ((ph < 1 - LEVEL) & (np.sign(s["mean"] - cand.null) == side) & (side != 0)).any(-1)
    return c, d, (sb["ci_high"] - sb["ci_low"]).mean(-1)


def study(cands: Sequence[Candidate], group: Sequence[SIM.Population], seeds: Sequence[int], reps: int,
          rng: np.random.Generator, *, truth_seeds: int = TRUTH_SEEDS, chunk: int = 500) -> pd.DataFrame:
    """Truth, coverage, power (with Monte-Carlo errors) and median interval width of every candidate on one group
    of populations (one; two for Welch) at each seed count; all candidates score the same simulated runs."""
    truths = _truths(cands, group, rng, truth_seeds)
    rows = []
    for n in seeds:
        acc: dict[int, list] = {ci: [[], [], []] for ci in range(len(cands))}
        for start in range(0, reps, chunk):
            draws = [SIM.sample(p, min(chunk, reps - start), n, rng) for p in group]
            for ci, cand in enumerate(cands):
                vals = [cand.values(draws[pi], group[pi]) for pi in _pop_index(cand)]
                for store, x in zip(acc[ci], _score(cand, vals, truths[ci])):
                    store.append(x)
        for ci, cand in enumerate(cands):
            c, d, w = (np.concatenate(x) for x in acc[ci])
            t = truths[ci][0] - truths[ci][1] if cand.test == "welch" else truths[ci][0]
            pc, pd_ = float(c.mean()), float(d.mean())
            rows.append(dict(claim=cand.claim, candidate=cand.name,
                             population=" − ".join(group[pi].name for pi in _pop_index(cand)), seeds=n,
                             truth=float(np.mean(t)), coverage=pc, coverage_mcse=float(np.sqrt(pc * (1 - pc) / len(c))),
                             power=pd_, power_mcse=float(np.sqrt(pd_ * (1 - pd_) / len(d))),
                             width=float(np.nanmedian(w)), reps=len(c)))
    return pd.DataFrame(rows)


LOG_SCALE = ("log_median", "cells_log", "log_ratio", "cells_log_ratio", "log_excess_mean", "log_excess_median",
             "cells_excess", "trend_log")
TOLERANCE = 0.01  # a 95% interval "holds" when it covers at least 94% in every population and seed count
POWER_TIE = 0.05  # a log-scale candidate within this much mean power of the best one is kept instead


def select(results: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Per claim kind: each candidate's worst coverage, whether it holds the nominal coverage (in every population
    and seed count not shown to fall below `level` − `TOLERANCE`: coverage + 2 MCSE ≥ .94), its mean and lowest
    power, and `chosen` for the kept one: the most powerful that holds, or a log-scale candidate that holds within
    `POWER_TIE` of it (a relative effect can be bounded by one equivalence margin across settings whose α_t differ
    tenfold); when none holds, the best worst-case coverage."""
    rows = []
    for (claim, name), g in results.groupby(["claim", "candidate"], sort=False):
        upper = g["coverage"] + 2 * g["coverage_mcse"]
        rows.append(dict(claim=claim, candidate=name, worst_coverage=g["coverage"].min(),
                         holds=bool((upper >= level - TOLERANCE).all()), mean_power=g["power"].mean(),
                         min_power=g["power"].min(), log_scale=name in LOG_SCALE))
    out = pd.DataFrame(rows)
    out["chosen"] = False
    for claim, g in out.groupby("claim", sort=False):
        ok = g[g["holds"]]
        if len(ok):
            best = ok["mean_power"].max()
            logs = ok[ok["log_scale"] & (ok["mean_power"] >= best - POWER_TIE)]
            pick = (logs if len(logs) else ok)["mean_power"].idxmax()
        else:
            pick = g["worst_coverage"].idxmax()
        out.loc[pick, "chosen"] = True
    return out


def calibration(pop: SIM.Population, alpha: pd.DataFrame, rng: np.random.Generator, reps: int = 400
                ) -> pd.DataFrame:
    """Generator against the run it was fitted to, per criterion × sparsity: median, 10% and 90% quantiles of α_t,
    share of α_t < 0 and mean accuracy, real (stored networks) and simulated (`reps` runs of the run's seeds)."""
    seeds = int(alpha["seed"].nunique())
    d = SIM.sample(pop, reps, seeds, rng)
    rows = []
    for ci, c in enumerate(pop.criteria):
        for jj, s in enumerate(pop.sparsities):
            real = alpha[(alpha["criterion"] == c) & np.isclose(alpha["requested_sparsity"], s)]
            sim, at = d.alpha[:, :, ci, jj].ravel(), d.at[:, :, ci, jj].ravel()
            ra = real["alpha"].to_numpy(float)
            rows.append(dict(population=pop.name, criterion=c, sparsity=s,
                             real_median=np.nanmedian(ra), sim_median=np.nanmedian(sim),
                             real_q10=np.nanquantile(ra, .1), sim_q10=np.nanquantile(sim, .1),
                             real_q90=np.nanquantile(ra, .9), sim_q90=np.nanquantile(sim, .9),
                             real_negative=float(np.mean(ra < 0)), sim_negative=float(np.mean(sim < 0)),
                             real_accuracy=float(real["at"].mean()), sim_accuracy=float(at.mean())))
    return pd.DataFrame(rows)


def heavier(pop: SIM.Population, from_sparsity: float = 0.98, factor: float = 0.5) -> SIM.Population:
    """A stress population: Student-t degrees of freedom × `factor` from `from_sparsity` on (heavier collapses)."""
    nu = np.where(pop.sparsities >= from_sparsity, np.maximum(pop.nu * factor, 1.0), pop.nu)
    return dataclasses.replace(pop, name=pop.name + " (heavier tail)", nu=nu)


def sequential_study(cand: Candidate, pop: SIM.Population, design, reps: int, rng: np.random.Generator, *,
                     null: float | np.ndarray | None = None, chunk: int = 1000) -> dict[str, float]:
    """The sequential mode (`analysis.sequential`, one claim) on simulated runs of `design.cap` seeds: the share of
    runs that reject the null (type-I error when `null` is the candidate's truth), the mean seeds used, and the power
    of the fixed design at the cap for comparison. A cells claim rejects when any cell crosses its boundary at
    α/cells (Bonferroni within the claim)."""
    null = cand.null if null is None else null
    rej, used, fixed = [], [], []
    for start in range(0, reps, chunk):
        r = min(chunk, reps - start)
        v = cand.values(SIM.sample(pop, r, design.cap, rng), pop)  # [R, cap] or [R, cap, J]
        if v.ndim == 2:
            v = v[..., None]
        v = np.moveaxis(v, 1, -1)  # [R, J, cap]
        m = v.shape[1]
        bounds = design.t_bounds(design.alpha / m)
        stop = np.full(r, design.cap, float)
        hit = np.zeros(r, bool)
        nul = np.broadcast_to(np.asarray(null, float), (m,))[None, :]
        for k, n in enumerate(design.looks):
            s = E.t_summary(v[..., :n], 0.0, LEVEL)
            t = (s["mean"] - nul) / s["se"]
            cross = ~hit & (np.abs(t) >= bounds[k]).any(-1)
            stop[cross] = n
            hit |= cross
        s = E.t_summary(v, 0.0, LEVEL)
        p = 2 * sps.t.sf(np.abs((s["mean"] - nul) / s["se"]), s["df"])
        rej.append(hit)
        used.append(stop)
        fixed.append((p < (1 - LEVEL) / m).any(-1))
    rej, used, fixed = np.concatenate(rej), np.concatenate(used), np.concatenate(fixed)
    p = float(rej.mean())
    return dict(reject=p, reject_mcse=float(np.sqrt(p * (1 - p) / len(rej))), mean_seeds=float(used.mean()),
                fixed_power=float(fixed.mean()), reps=len(rej))
