"""The simulation behind the claims protocol (docs/methods.md §14): planted populations fitted to stored recall runs,
coverage and power of every candidate estimand, the one kept per claim kind, and the group-sequential mode's type-I
error and seed savings.

    python -m benchmarks.simulate_claims --run=workdirs/mnist --run=workdirs/fashion_mnist \
        --run=workdirs/mnist_mlp_100_30 --out=workdirs/simulate_claims [--reps=4000] [--seed=0]

Writes into --out: populations.csv (fitted parameters), calibration.csv (generator against the stored networks),
candidates.csv (truth, coverage, power per candidate × population × seeds, with Monte-Carlo errors), selection.csv
(the kept estimand per claim kind), sequential.csv and summary.md. Same flags, same bytes.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from fairprune_jax import results
from fairprune_jax.analysis import estimand_study as ES
from fairprune_jax.analysis import intensification
from fairprune_jax.analysis import sequential as S
from fairprune_jax.analysis import simulation as SIM
from fairprune_jax.report import writer as W

SEEDS = (5, 10)


def _load(path: str) -> tuple[str, str, pd.DataFrame, pd.DataFrame]:
    """(name, dataset, long table, α table) of a stored recall run."""
    wd = results.Workdir.existing(path)
    recall = wd.read_table("recall")
    if recall.empty:
        raise SystemExit(f"error: {path}: no recall table")
    if "diverged" in recall:
        recall = recall[~recall["diverged"].astype(bool)]
    long = intensification.long_table(recall.reset_index(drop=True), chance=float(wd.config.analysis.chance_factor))
    models = "/".join(sorted(recall["model"].unique()))
    name = f"{wd.config.dataset} · {models}"
    return name, str(wd.config.dataset), long, intensification.alpha(long)


DESIGN = S.Design(5, 5, 30)


def _sequential(sel: pd.DataFrame, pops, args) -> pd.DataFrame:
    """Type-I error of the sequential mode on exact nulls, and its seeds and power on the fitted populations, for the
    kept estimand of each one-sample claim kind (and UP against GP on an exchangeable pair, an exact null)."""
    chosen = {r.claim: r.candidate for r in sel.itertuples() if r.chosen}
    cands = {(c.claim, c.name): c for c in ES.candidates()}
    rows = []
    for gi, pop in enumerate(tqdm(pops, desc="sequential", unit="population")):
        for claim in ("high", "low", "up_mp", "up_gp"):
            cand = cands.get((claim, chosen.get(claim, "")))
            if cand is None or cand.test not in ("t", "cells"):
                continue
            rng = np.random.default_rng([args.seed, 3, gi, len(rows)])
            truth = ES._truths([cand], [pop], rng, ES.TRUTH_SEEDS)[0][0]
            null = ES.sequential_study(cand, pop, DESIGN, args.sequential_reps, rng, null=truth)
            alt = ES.sequential_study(cand, pop, DESIGN, args.sequential_reps, rng)
            rows.append(dict(claim=claim, candidate=cand.name, population=pop.name, case="null (the truth)",
                             truth=float(np.mean(truth)), **null))
            rows.append(dict(claim=claim, candidate=cand.name, population=pop.name, case="fitted",
                             truth=float(np.mean(truth)), **alt))
        cand = cands.get(("up_gp", chosen.get("up_gp", "")))
        if cand is not None and cand.test in ("t", "cells") and {"gp", "up"} <= set(pop.criteria):
            exch = pop.with_criterion_as("up", "gp")
            rng = np.random.default_rng([args.seed, 4, gi])
            res = ES.sequential_study(cand, exch, DESIGN, args.sequential_reps, rng)
            rows.append(dict(claim="up_gp", candidate=cand.name, population=pop.name + " (UP exchangeable with GP)",
                             case="null (exchangeable)", truth=0.0, **res))
    rng = np.random.default_rng([args.seed, 5])
    hits = 0
    for start in range(0, args.sequential_reps, 1000):  # normal per-seed values: the boundaries' own level
        x = rng.standard_normal((min(1000, args.sequential_reps - start), DESIGN.cap))
        tb = DESIGN.t_bounds(DESIGN.alpha)
        t = np.stack([x[:, :n].mean(1) / (x[:, :n].std(1, ddof=1) / np.sqrt(n)) for n in DESIGN.looks], 1)
        hits += int((np.abs(t) >= tb).any(1).sum())
    p = hits / args.sequential_reps
    rows.append(dict(claim="any", candidate="normal per-seed values", population="N(0, 1)", case="null (exact)",
                     truth=0.0, reject=p, reject_mcse=float(np.sqrt(p * (1 - p) / args.sequential_reps)),
                     mean_seeds=np.nan, fixed_power=np.nan, reps=args.sequential_reps))
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="a stored recall workdir (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=4000, help="simulated runs per candidate, population and seeds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sequential-reps", type=int, default=10000)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    t0 = time.perf_counter()
    runs = [_load(p) for p in args.run]
    pops, calib = [], []
    for name, _, long, alpha in runs:
        pop = SIM.fit(long, name=name)
        pops.append(pop)
        calib.append(ES.calibration(pop, alpha, np.random.default_rng([args.seed, len(pops)])))
    base = pops[0]
    stress = [ES.heavier(base)]
    planted_up = base.scaled(1.0, criterion="up", shift=-0.15)
    planted_up = SIM.dataclasses.replace(planted_up, name=base.name + " (UP μ − 0.15)")
    by_name = {pop.name: pop for pop in pops}
    cands = ES.candidates()
    groups = [((p,), [c for c in cands if c.test != "welch"]) for p in pops + stress]
    groups.append(((planted_up,), [c for c in cands if c.claim.startswith("up_gp")]))
    welch = [c for c in cands if c.test == "welch"]
    if {"fashion_mnist · lenet_300_100", "mnist · lenet_300_100"} <= set(by_name):
        groups.append(((by_name["fashion_mnist · lenet_300_100"], by_name["mnist · lenet_300_100"]),
                       [c for c in welch if c.claim.startswith("harder")]))
    if {"mnist · mlp_100_30", "mnist · lenet_300_100"} <= set(by_name):
        groups.append(((by_name["mnist · mlp_100_30"], by_name["mnist · lenet_300_100"]),
                       [c for c in welch if c.claim.startswith("smaller")]))
    parts = []
    for gi, (group, cs) in enumerate(tqdm(groups, desc="populations", unit="population")):
        parts.append(ES.study(cs, group, SEEDS, args.reps, np.random.default_rng([args.seed, 1, gi])))
    table = pd.concat(parts, ignore_index=True)
    sel = ES.select(table)
    seq = _sequential(sel, pops, args)
    W.atomic_write(out / "populations.csv", pd.concat([SIM.describe(p) for p in pops]).to_csv(index=False).encode())
    W.atomic_write(out / "calibration.csv", pd.concat(calib).to_csv(index=False).encode())
    pairs = pd.DataFrame([dict(population=pop.name, **dict(zip(("q10", "median", "q90"), np.quantile(
        SIM.dense_pair_alpha(long), [0.1, 0.5, 0.9]))), mean=float(np.mean(SIM.dense_pair_alpha(long))),
        kappa_mean=float(np.mean(pop.kappa))) for (_, _, long, _), pop in zip(runs, pops)])
    W.atomic_write(out / "dense_pairs.csv", pairs.to_csv(index=False).encode())
    W.atomic_write(out / "candidates.csv", table.to_csv(index=False).encode())
    W.atomic_write(out / "selection.csv", sel.to_csv(index=False).encode())
    W.atomic_write(out / "sequential.csv", seq.to_csv(index=False).encode())
    text = ["# Simulation of the claims' estimands", "",
            f"`python -m benchmarks.simulate_claims {' '.join(sys.argv[1:])}`", "",
            f"{args.reps} simulated runs per candidate × population × seed count; truths from {ES.TRUTH_SEEDS} "
            "simulated seeds. Coverage of the 95% interval and power (the interval excludes the null on the "
            "truth's side), with Monte-Carlo standard errors.", "", "## Candidates", "",
            W.markdown_table(table.assign(**{c: table[c].round(4) for c in ("truth", "coverage", "coverage_mcse",
                                                                           "power", "power_mcse", "width")})), "",
            "## Kept estimand per claim kind", "", W.markdown_table(sel), "",
            "## α_t between dense networks of two seeds (regression to the mean)", "",
            W.markdown_table(pairs.round(4)), "",
            "## Sequential mode", "", f"Looks at {list(DESIGN.looks)} seeds, one claim, α = {DESIGN.alpha}; "
            f"{args.sequential_reps} simulated sequences per row. Null rows test the candidate's own truth "
            "(an exact null); `fixed_power` is the power of a single test at the cap.", "",
            W.markdown_table(seq.round(4)), ""]
    W.atomic_write(out / "summary.md", "\n".join(text).encode())
    print(f"simulate_claims: {out} ({len(table)} rows, {time.perf_counter() - t0:.0f} s)")
    print(sel.to_string(index=False))


if __name__ == "__main__":
    main()
