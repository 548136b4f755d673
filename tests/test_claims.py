"""The claims table: rows against independent computations from the recall tables (both nulls), Holm within a
paper, the seed plan, the scale-controlled RQ2 measures, paper 2's rows, partial workdirs, and the CLI on a real
smoke run (claims, plan, a workdir given twice)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from fairprune_jax import results
from fairprune_jax.analysis import claims as C
from fairprune_jax.analysis import intensification
from fairprune_jax.report import claims as R

REPO = Path(__file__).resolve().parent.parent


def _recall_rows(dataset: str, model: str, *, seeds: int, r0: np.ndarray, growth: dict[str, float],
                 levels=(0.3, 0.5, 0.9, 0.95), noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Dense rows plus, per criterion, networks whose error rates grow by `growth` x (1 + level index / 2)."""
    rng = np.random.default_rng(seed)
    rows = []
    k = len(r0)
    for s in range(seeds):
        r0s = np.clip(r0 + 0.005 * rng.standard_normal(k), 0.05, 0.999)
        for c in range(k):
            rows.append(dict(dataset=dataset, model=model, criterion="dense", seed=s, level=0, requested_sparsity=0.0,
                             actual_sparsity=0.0, **{"class": c}, n=100, recall=r0s[c], accuracy=r0s.mean()))
        for crit, m in growth.items():
            for lvl, sp in enumerate(levels):
                rt = 1 - (m * (1 + 0.5 * lvl)) * (1 - r0s) ** (1.2 if sp > 0.8 else 0.9) \
                    + noise * rng.standard_normal(k)
                for c in range(k):
                    rows.append(dict(dataset=dataset, model=model, criterion=crit, seed=s, level=lvl + 1,
                                     requested_sparsity=sp, actual_sparsity=sp, **{"class": c}, n=100,
                                     recall=rt[c], accuracy=rt.mean()))
    return pd.DataFrame(rows)


def _run(dataset: str, models=("lenet_300_100",), seeds: int = 4, n_params: int | None = None,
         **kw) -> C.RunDescription:
    return C.RunDescription(name=f"workdirs/{dataset}-{models[0]}", study="recall", dataset=dataset, models=models,
                            protocol="one_shot", criteria=("mp", "gp", "up", "random"),
                            sparsities=(0.3, 0.5, 0.9, 0.95), num_seeds=seeds,
                            n_params={models[0]: n_params} if n_params else {}, **kw)


GROWTH = {"mp": 2.0, "gp": 1.6, "up": 1.3, "random": 5.0}
R_EASY, R_HARD = np.array([0.99, 0.97, 0.95, 0.98]), np.array([0.9, 0.7, 0.85, 0.8])


def _runs():
    easy = C.recall_run(_run("mnist", n_params=266610), _recall_rows(
        "mnist", "lenet_300_100", seeds=4, r0=R_EASY, growth=GROWTH, noise=0.002))
    hard = C.recall_run(_run("fashion_mnist", n_params=266610), _recall_rows(
        "fashion_mnist", "lenet_300_100", seeds=4, r0=R_HARD, growth=GROWTH, noise=0.002, seed=1))
    small = C.recall_run(_run("mnist", ("mlp_100_30",), n_params=81840), _recall_rows(
        "mnist", "mlp_100_30", seeds=4, r0=R_EASY, growth=GROWTH, noise=0.002, seed=2))
    return easy, hard, small


def test_uniform_error_growth_is_the_scale_null():
    """If every class's error rate grows by the same factor, α_t equals α_null exactly (log excess 0)."""
    rec = _recall_rows("mnist", "lenet_300_100", seeds=2, r0=np.array([0.99, 0.97, 0.95, 0.985]),
                       growth={"mp": 1.5}, levels=(0.9,))
    rec.loc[rec["criterion"] == "mp", "recall"] = 1 - 1.5 * (1 - rec.loc[rec["criterion"] == "dense", "recall"].values)
    acc = rec.groupby(["criterion", "seed"])["recall"].transform("mean")
    rec["accuracy"] = acc
    long = intensification.long_table(rec)
    tab = C.scale_table(long, intensification.alpha(long))
    np.testing.assert_allclose(tab["log_excess"], 0.0, atol=1e-10)
    e0, et = 1 - tab["a0"], 1 - tab["at"]
    np.testing.assert_allclose(tab["alpha"], et / e0 * tab["a0"] / tab["at"], rtol=1e-10)


def test_rank_rho_is_invariant_to_the_scale_of_d0():
    long = pd.DataFrame({"dataset": "d", "model": "m", "criterion": "mp", "seed": 0, "level": 1,
                         "d0": [-0.3, -0.1, 0.05, 0.2], "dt": [-0.5, -0.05, 0.1, 0.3]})
    alpha = pd.DataFrame({"dataset": ["d"], "model": ["m"], "criterion": ["mp"], "seed": [0], "level": [1],
                          "alpha": [1.2], "a0": [0.9], "at": [0.8]})
    r1 = C.scale_table(long, alpha)["rank_rho"].item()
    r2 = C.scale_table(long.assign(d0=long["d0"] * 100, dt=long["dt"] * 100), alpha)["rank_rho"].item()
    assert r1 == r2 == pytest.approx(sps.spearmanr(long["d0"], long["dt"] - long["d0"]).statistic)


def _independent(run: C.RecallRun, key: str, crits, lo: float, hi: float) -> pd.DataFrame:
    """A claim's per-seed values straight from the α table with pandas, for the estimands the protocol declares:
    [seeds × cells] (one column unless the estimand is per sparsity)."""
    a = run.alpha
    sel = a[a["criterion"].isin(crits) & a["requested_sparsity"].between(lo, hi) & ~a["flagged"]]
    est = C.CLAIMS[key].estimand
    if est == "cells_log":
        med = sel.groupby(["seed", "requested_sparsity"])["alpha"].median().unstack()
        return np.log(med.where(med > 0))
    if est == "log_median":
        return np.log(sel.groupby("seed")["alpha"].median()).to_frame()
    if est == "log_excess_mean":
        ok = sel[np.isfinite(sel["log_excess"])]
        return ok.groupby("seed")["log_excess"].mean().to_frame()
    if est == "log_excess_median":
        ex = np.where(sel["alpha"] > 0, np.log(sel["alpha"].abs() / sel["alpha_null"]), -np.inf)
        return sel.assign(x=ex).groupby("seed")["x"].median().to_frame()
    raise AssertionError(f"no independent check for {est}")


def _check(row: pd.Series, values: pd.DataFrame, *, log: bool) -> None:
    """The row's estimate, interval and p from per-seed values (per cell: Bonferroni)."""
    m = values.shape[1]
    ps = [sps.ttest_1samp(values[c].dropna(), 0.0).pvalue for c in values]
    best = values.columns[int(np.argmin(ps))]
    tt = sps.ttest_1samp(values[best].dropna(), 0.0)
    ci = tt.confidence_interval(confidence_level=1 - 0.05 / m)
    f = np.exp if log else (lambda x: x)
    assert row["estimate"] == pytest.approx(f(values[best].mean()))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((f(ci.low), f(ci.high)))
    assert row["p"] == pytest.approx(min(1.0, m * min(ps)))


def test_claims_rows_against_independent_computations():
    easy, hard, small = _runs()
    table = C.build([easy, hard, small], [])
    assert list(dict.fromkeys(table["claim"])) == [
        "high", "high_uniform", "low", "low_uniform", "rises", "up_mp", "up_mp_uniform", "up_gp", "up_gp_uniform",
        "harder", "harder_uniform", "harder_rank", "smaller", "smaller_uniform"]
    row = lambda k: table[(table["claim"] == k) & (table["workdirs"] == easy.name)].iloc[0]  # noqa: E731
    for key, lo, hi in (("high", 0.9, 1.0), ("high_uniform", 0.9, 1.0), ("low", 0.0, 0.5), ("low_uniform", 0, .5)):
        _check(row(key), _independent(easy, key, C.STRUCTURED, lo, hi), log=True)
    # UP against MP, paired by seed (and by sparsity for a per-sparsity estimand)
    for key in ("up_mp", "up_mp_uniform"):
        up, mp = (_independent(easy, key, (c,), 0.9, 1.0) for c in ("up", "mp"))
        _check(row(key), up - mp, log=True)
    assert row("up_mp")["estimate"] < 1 and row("up_mp")["verdict_raw"] == "reproduced"
    # the trend: each seed's OLS slope of the criterion-mean α_t on log 1/(1 − s)
    a = easy.alpha[easy.alpha["criterion"].isin(C.STRUCTURED)]
    cell = a.groupby(["seed", "requested_sparsity"])["alpha"].mean().unstack()
    x = -np.log1p(-cell.columns.to_numpy(float))
    slopes = cell.apply(lambda r: np.polyfit(x, r.to_numpy(float), 1)[0], axis=1)
    _check(row("rises"), slopes.to_frame(), log=False)
    # harder vs easier: Welch on the per-seed values of the two runs
    hv, ev = (_independent(r, "harder", C.STRUCTURED, 0.9, 1.0).iloc[:, 0] for r in (hard, easy))
    harder = table[table["claim"] == "harder"].iloc[0]
    assert harder["setting"].startswith("fashion_mnist")
    assert harder["p"] == pytest.approx(sps.ttest_ind(hv, ev, equal_var=False).pvalue)
    assert harder["estimate"] == pytest.approx(np.exp(hv.mean() - ev.mean()))
    assert table[table["claim"] == "smaller"]["setting"].iloc[0].startswith("mlp_100_30 (81,840 parameters)")
    # Holm within the paper over every row, the verdict column the adjusted one
    np.testing.assert_allclose(table["p_holm"], multipletests(table["p"], method="holm")[1])
    assert set(table["verdict"]) <= {"reproduced", "not reproduced", "equivalent", "undecided"}


def test_plan_level_is_holm_next_step_and_seeds_match_statsmodels():
    from statsmodels.stats.power import TTestPower

    run = C.recall_run(_run("mnist"), _recall_rows("mnist", "lenet_300_100", seeds=4, r0=R_EASY, growth=GROWTH,
                                                   noise=0.01))
    table = C.build([run], [])
    rejected = table["verdict"].isin(["reproduced", "not reproduced"]).sum()
    np.testing.assert_allclose(table["alpha_plan"], 0.05 / (len(table) - rejected))
    rows = table[(table["verdict"] == "undecided") & (table["route"] == "difference")]
    assert len(rows)
    for _, row in rows.iterrows():
        effect = np.log(row["estimate"]) if row["scale"] == "log" else row["estimate"] - row["null_value"]
        n = TTestPower().solve_power(effect_size=abs(effect) / row["sd"], alpha=row["alpha_plan"], power=0.8)
        assert row["seeds_needed"] == max(int(np.ceil(n - 1e-9)), 2)


def test_sequential_looks_restrict_to_the_first_seeds():
    easy, _, _ = _runs()
    first = easy.first(3)
    assert sorted(first.alpha["seed"].unique()) == [0, 1, 2]
    t3 = C.build([first], [])
    assert (t3["seeds"] == 3).all() and t3["setting"].str.contains("3 seeds").all()


def _bias_tables(seeds: int = 3):
    rows, ident = [], []
    for s in range(seeds):
        for pop, sp, unc, r2, ba in (("dense", 0.0, 0.05, 0.8, 0.04), ("sparse", 0.9, 0.1, 0.7, 0.08),
                                     ("sparse", 0.99, 0.5, 0.6, np.nan)):
            for a in range(3):
                j = 0.001 * (s + a) + (0.002 * s * s if pop == "sparse" else 0.0)  # pruned − dense varies by seed
                rows += [dict(population=pop, sparsity=sp, seed=s, attribute=f"a{a}", scheme="default", protected="",
                              metric="uncertainty", value=unc + j),
                         dict(population=pop, sparsity=sp, seed=s, attribute=f"a{a}", scheme="default", protected="",
                              metric="r2", value=r2 - j),
                         dict(population=pop, sparsity=sp, seed=s, attribute=f"a{a}", scheme="default",
                              protected="g", metric="ba", value=ba + j if a else (np.nan if np.isnan(ba) else ba)),
                         dict(population=pop, sparsity=sp, seed=s, attribute=f"a{a}", scheme="group",
                              protected="g", metric="ba", value=(ba if np.isfinite(ba) else 0.2) - 0.02 - j)]
    for crit, auc in (("uncertainty", 0.9), ("random", 0.5)):
        ident.append(dict(population="sparse", sparsity=0.9, criterion=crit, protected="", subset="all", n=3000,
                          n_cie=300, auroc=auc))
    run = C.RunDescription(name="workdirs/planted_mnist", study="bias", dataset="planted_mnist",
                           models=("lenet_300_100",), protocol="gmp", criteria=("mp",), sparsities=(0.9, 0.99),
                           num_seeds=seeds)
    return run, pd.DataFrame(rows), pd.DataFrame(ident)


def test_bias_claims_use_the_highest_sparsity_with_every_ba_defined():
    run, metrics, ident = _bias_tables()
    table = C.build([], [(run, metrics, ident)])
    assert set(table["claim"]) == {"uncertainty", "interdependence", "bias", "identify", "calibration"}
    assert table["setting"].str.contains("90%").all()
    unc = table[table["claim"] == "uncertainty"]
    assert unc["estimate"].item() == pytest.approx(0.05 + 0.002 * 5 / 3) and unc["verdict_raw"].item() == "reproduced"
    assert table[table["claim"] == "interdependence"]["verdict_raw"].item() == "not reproduced"
    ident_row = table[table["claim"] == "identify"]
    assert ident_row["estimate"].item() == 0.9 and "Random score: 0.500" in ident_row["note"].item()
    # Hanley & McNeil (1982): A = .8, 50 positives, 50 negatives; by hand SE = .04450
    assert C.hanley_mcneil_se(0.8, 50, 50) == pytest.approx(0.04450, abs=1e-5)
    se = C.hanley_mcneil_se(0.9, 300, 2700)
    assert ident_row["ci_low"].item() == pytest.approx(0.9 - 1.959964 * se)


def _smoke(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("claims") / "wd"
    run = subprocess.run([sys.executable, "-m", "experiments.sweep", "--config=configs/mnist.py:smoke",
                          f"--workdir={wd}", "--config.progress=False", "--config.analysis.bootstrap=0"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return wd


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory) -> Path:
    return _smoke(tmp_path_factory)


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.report", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_claims_plan_and_refusals_on_a_real_smoke_run(smoke_workdir, tmp_path):
    wd = smoke_workdir
    bad = _report("--claims", f"--workdir={wd}")
    assert bad.returncode == 2 and "error: --out is required with --claims" in bad.stderr
    twice = _report("--claims", f"--workdir={wd}", f"--workdir={wd}/", f"--out={tmp_path / 'c'}")
    assert twice.returncode == 2 and "is given twice" in twice.stderr and not (tmp_path / "c").exists()
    ok = _report("--claims", f"--workdir={wd}", f"--out={tmp_path / 'claims'}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    text = (tmp_path / "claims" / "claims.md").read_text()
    table = pd.read_csv(tmp_path / "claims" / "tables" / "claims.csv")
    seeds = pd.read_csv(tmp_path / "claims" / "tables" / "claims_seeds.csv")
    assert {"high", "high_uniform", "up_mp"} <= set(table["claim"]) and "## In short" in text
    assert text == R.claims_markdown(table, [str(wd)])  # the document is the table's, sentence for sentence
    # every row's test recomputed from its stored per-seed values
    for i, row in table.iterrows():
        v = seeds[seeds["row"] == i]
        if row["test"] == "t" and len(v) > 1 and v["value"].std() > 0:
            assert row["p"] == pytest.approx(sps.ttest_1samp(v["value"], 0.0).pvalue)
    plan = _report("--plan", f"--workdir={wd}")
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "# Seed plan" in plan.stdout
    cmd = R.C  # the plan's command reproduces the smoke run's overrides
    from fairprune_jax.report import plan as plan_report

    line = plan_report.rerun_command(wd, 9)
    assert line.startswith(f"python -m experiments.sweep --config=configs/mnist.py:smoke --workdir={wd}")
    assert "--config.analysis.bootstrap=0" in line and line.endswith("--config.num_seeds=9") and cmd


def test_partial_workdirs_and_mask_agreement_from_tables(tmp_path):
    """A recall run missing a seed of one criterion marks its rows partial; `mask_agreement` feeds the UP notes."""
    cfg = ml_collections.ConfigDict(dict(study="recall", dataset="mnist", models=["lenet_300_100"], num_seeds=4,
                                         prune=dict(protocol="one_shot", criteria=["mp", "gp", "up"],
                                                    sparsities=[0.3, 0.5, 0.9, 0.95]),
                                         train=dict(epochs=1, optimizer=dict(weight_decay=0.0)),
                                         finetune=dict(epochs=1, optimizer=dict(lr=0.01)),
                                         analysis=dict(chance_factor=1.5)))
    wd = results.Workdir.open(tmp_path / "wd", cfg)
    rec = _recall_rows("mnist", "lenet_300_100", seeds=4, r0=R_EASY, growth={"mp": 2.0, "gp": 1.6, "up": 1.3},
                       noise=0.002)
    rec = rec[~((rec["criterion"] == "gp") & (rec["seed"] == 3))]
    wd.append_table("recall", "all", rec.reset_index(drop=True))
    wd.append_table("model_sizes", "lenet_300_100", pd.DataFrame(
        {"model": ["lenet_300_100"], "n_params": [266610], "n_prunable": [266200]}))
    wd.append_table("mask_agreement", "lenet_300_100", pd.DataFrame(
        {"model": "lenet_300_100", "seed": [0, 0, 1], "sparsity_index": [2, 3, 2],
         "requested_sparsity": [0.9, 0.95, 0.9],
         "criterion_a": "mp", "criterion_b": "up", "agreement": [0.2, 0.3, 0.4]}))
    runs, _ = R.load([tmp_path / "wd"])
    assert runs[0].run.missing_units == ("lenet_300_100.gp seed 3",)
    assert runs[0].run.n_params == {"lenet_300_100": 266610}
    table = C.build(runs, [])
    assert table["partial"].str.contains("lenet_300_100.gp seed 3").all()
    note = table[table["claim"] == "up_mp"]["note"].item()
    assert "30.0% of the weights UP keeps are kept by MP too" in note
    assert "Incomplete inputs" in R.claims_markdown(table)


def test_a_sweep_of_several_models_is_one_run_per_model(tmp_path):
    """A workdir of two models loads as two runs (`<workdir> [<model>]`, each with its parameter count and missing
    units); the model-size rows compare them by Welch, and the plan lists their rows under the workdir."""
    from fairprune_jax.report import plan

    cfg = ml_collections.ConfigDict(dict(study="recall", dataset="fashion_mnist", models=["small", "large"],
                                         num_seeds=4, prune=dict(protocol="one_shot", criteria=["mp", "gp", "up"],
                                                                 sparsities=[0.3, 0.5, 0.9, 0.95]),
                                         train=dict(epochs=1, optimizer=dict(weight_decay=0.0)),
                                         finetune=dict(epochs=1, optimizer=dict(lr=0.01)),
                                         analysis=dict(chance_factor=1.5)))
    wd = results.Workdir.open(tmp_path / "wd", cfg)
    growth = {"mp": 2.0, "gp": 1.6, "up": 1.3}
    small = _recall_rows("fashion_mnist", "small", seeds=4, r0=R_EASY, growth=growth, noise=0.002, seed=3)
    large = _recall_rows("fashion_mnist", "large", seeds=4, r0=R_EASY, growth={k: v / 2 for k, v in growth.items()},
                         noise=0.002, seed=4)
    large = large[~((large["criterion"] == "up") & (large["seed"] == 2))]
    rec = pd.concat([small, large]).reset_index(drop=True)
    wd.append_table("recall", "all", rec.assign(recall=rec["recall"].clip(0, 1)))
    wd.append_table("model_sizes", "all", pd.DataFrame({"model": ["small", "large"], "n_params": [1000, 4000],
                                                        "n_prunable": [900, 3900]}))
    runs, _ = R.load([tmp_path / "wd"])
    assert [r.name for r in runs] == [f"{tmp_path / 'wd'} [small]", f"{tmp_path / 'wd'} [large]"]
    assert [r.run.models for r in runs] == [("small",), ("large",)]
    assert [r.run.n_params for r in runs] == [{"small": 1000}, {"large": 4000}]
    assert [r.run.missing_units for r in runs] == [(), ("large.up seed 2",)]
    assert [set(r.alpha["model"]) for r in runs] == [{"small"}, {"large"}]
    table = C.build(runs, [])
    smaller = table[table["claim"] == "smaller"].iloc[0]
    assert smaller["setting"].startswith("small (1,000 parameters) vs large (4,000)")
    sv, lv = (_independent(r, "smaller", C.STRUCTURED, 0.9, 1.0).iloc[:, 0] for r in runs)
    assert smaller["p"] == pytest.approx(sps.ttest_ind(sv, lv, equal_var=False).pvalue)
    assert smaller["estimate"] == pytest.approx(np.exp(sv.mean() - lv.mean()))
    assert smaller["partial"] == f"{tmp_path / 'wd'} [large]: large.up seed 2"
    text = plan.plan_markdown(table, [tmp_path / "wd"], command=lambda p, n: f"extend {n}")
    assert f"## `{tmp_path / 'wd'}`" in text
    listed = text.split(f"## `{tmp_path / 'wd'}`")[1]
    assert len(text.split("## ")) == 2  # one section: the workdir, with the rows of both its models
    assert listed.count(C.CLAIMS["smaller"].statement) == 1 and listed.count(C.CLAIMS["high"].statement) == 2


def test_analysis_reads_stored_tables_only():
    """The claims analysis imports neither JAX nor a model (it works from stored tables and a run description)."""
    import subprocess as sp

    code = ("import sys; import fairprune_jax.analysis.claims, fairprune_jax.analysis.sequential, "
            "fairprune_jax.analysis.planning, fairprune_jax.analysis.estimand_study; "
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'flax', 'orbax'))))")
    out = sp.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
