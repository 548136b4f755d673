"""The claims table: verdicts, intervals against independent computations, the scale-controlled RQ2 measures, and
the table built from synthetic recall and bias results and from a real smoke run through the CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from configs import mnist
from fairprune_jax.analysis import claims as C
from fairprune_jax.analysis import intensification

REPO = Path(__file__).resolve().parent.parent


def test_verdicts_follow_the_claimed_direction():
    up = C.CLAIMS["high"]  # > 1
    assert C.verdict(up, 1.2, 3.0) == "reproduced"
    assert C.verdict(up, 0.2, 0.9) == "not reproduced"
    assert C.verdict(up, 0.9, 1.1) == "inconclusive"
    down = C.CLAIMS["up_mp"]  # < 0
    assert C.verdict(down, -2.0, -0.1) == "reproduced"
    assert C.verdict(down, 0.1, 2.0) == "not reproduced"
    assert C.verdict(down, np.nan, 1.0) == "inconclusive"


def test_intervals_match_independent_computations():
    x = np.array([1.2, 1.5, 0.9, 1.8, 1.4])
    mean, lo, hi, n = C.one_sample(x, 1.0)
    half = sps.t.ppf(0.975, 4) * x.std(ddof=1) / np.sqrt(5)
    assert (mean, lo, hi, n) == pytest.approx((x.mean(), x.mean() - half, x.mean() + half, 5))
    a, b = np.array([3.0, 4.0, 5.0, 4.5]), np.array([1.0, 2.5, 2.0])
    est, lo, hi = C.welch(a, b)
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    dof = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    h = sps.t.ppf(0.975, dof) * np.sqrt(va + vb)
    assert (est, lo, hi) == pytest.approx((a.mean() - b.mean(), a.mean() - b.mean() - h, a.mean() - b.mean() + h))
    # Hanley & McNeil (1982): A = .8, 50 positives, 50 negatives; by hand Q1 = .6667, Q2 = .7111, SE = .04450
    lo, hi = C.hanley_mcneil(0.8, 50, 50)
    q1, q2 = 0.8 / 1.2, 2 * 0.64 / 1.8
    se = np.sqrt((0.8 * 0.2 + 49 * (q1 - 0.64) + 49 * (q2 - 0.64)) / 2500)
    assert se == pytest.approx(0.04450, abs=1e-5)
    assert (lo, hi) == pytest.approx((0.8 - 1.959964 * se, 0.8 + 1.959964 * se))


def _recall_rows(dataset: str, model: str, *, seeds: int, r0: np.ndarray, growth: dict[str, float],
                 levels=(0.3, 0.9), noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Dense rows plus, per criterion, networks whose error rates grow by `growth` x (1 + level index)."""
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
                rt = 1 - (m * (1 + lvl)) * (1 - r0s) + noise * rng.standard_normal(k)
                for c in range(k):
                    rows.append(dict(dataset=dataset, model=model, criterion=crit, seed=s, level=lvl + 1,
                                     requested_sparsity=sp, actual_sparsity=sp, **{"class": c}, n=100,
                                     recall=rt[c], accuracy=rt.mean()))
    return pd.DataFrame(rows)


def _config(dataset: str, models=("lenet_300_100",), seeds: int = 4) -> ml_collections.ConfigDict:
    cfg = mnist.get_config()
    cfg.dataset, cfg.models, cfg.num_seeds = dataset, models, seeds
    return cfg


def test_uniform_error_growth_is_the_scale_null():
    """If every class's error rate grows by the same factor, α_t equals α_null exactly (log excess 0), while the
    raw α_t depends on the dense error rate: the δ0-scale effect the RQ2 variants control for."""
    rec = _recall_rows("mnist", "lenet_300_100", seeds=2, r0=np.array([0.99, 0.97, 0.95, 0.985]),
                       growth={"mp": 1.5})
    long = intensification.long_table(rec)
    alpha = intensification.alpha(long)
    tab = C.scale_table(long, alpha)
    np.testing.assert_allclose(tab["log_excess"], 0.0, atol=1e-10)
    e0, et = 1 - tab["a0"], 1 - tab["at"]
    np.testing.assert_allclose(tab["alpha"], et / e0 * tab["a0"] / tab["at"], rtol=1e-10)
    assert (tab["rank_rho"] > 0.99).all()  # δt − δ0 is a positive multiple of δ0: ranks agree exactly


def test_rank_rho_is_invariant_to_the_scale_of_d0():
    long = pd.DataFrame({"dataset": "d", "model": "m", "criterion": "mp", "seed": 0, "level": 1,
                         "d0": [-0.3, -0.1, 0.05, 0.2], "dt": [-0.5, -0.05, 0.1, 0.3]})
    alpha = pd.DataFrame({"dataset": ["d"], "model": ["m"], "criterion": ["mp"], "seed": [0], "level": [1],
                          "alpha": [1.2], "a0": [0.9], "at": [0.8]})
    r1 = C.scale_table(long, alpha)["rank_rho"].item()
    r2 = C.scale_table(long.assign(d0=long["d0"] * 100, dt=long["dt"] * 100), alpha)["rank_rho"].item()
    assert r1 == r2 == pytest.approx(sps.spearmanr(long["d0"], long["dt"] - long["d0"]).statistic)


def test_claims_from_synthetic_runs():
    growth = {"mp": 2.0, "gp": 1.6, "up": 1.3, "random": 5.0}
    easy = C.recall_run("e", _config("mnist"), _recall_rows("mnist", "lenet_300_100", seeds=4,
                                                             r0=np.array([0.99, 0.97, 0.95, 0.98]), growth=growth,
                                                             noise=0.002))
    hard = C.recall_run("h", _config("fashion_mnist"), _recall_rows("fashion_mnist", "lenet_300_100", seeds=4,
                                                                     r0=np.array([0.9, 0.7, 0.85, 0.8]),
                                                                     growth=growth, noise=0.002, seed=1))
    small = C.recall_run("s", _config("mnist", ("mlp_100_30",)), _recall_rows(
        "mnist", "mlp_100_30", seeds=4, r0=np.array([0.99, 0.97, 0.95, 0.98]), growth=growth, noise=0.002, seed=2))
    table = C.build([easy, hard, small], [])
    assert list(dict.fromkeys(table["claim"])) == ["high", "low", "up_mp", "up_gp", "harder", "smaller"]
    up_mp = table[(table["claim"] == "up_mp") & table["setting"].str.startswith("mnist · lenet")]
    assert up_mp["verdict"].item() == "reproduced" and up_mp["estimate"].item() < 0
    # independent: per-seed mean α_t at 90% of UP minus MP
    a = easy.alpha
    per = a[a["requested_sparsity"] >= 0.9].pivot_table(index="seed", columns="criterion", values="alpha")
    assert up_mp["estimate"].item() == pytest.approx((per["up"] - per["mp"]).mean())
    harder = table[table["claim"] == "harder"]
    assert len(harder) == 3  # raw, log(α/α_null), rank
    scaled = harder[harder["setting"].str.contains("log")]
    assert abs(scaled["estimate"].item()) < 0.05  # uniform growth everywhere: no excess either way
    assert harder[harder["setting"].str.contains("rank")]["verdict"].item() == "inconclusive"
    smaller = table[table["claim"] == "smaller"]
    assert smaller["setting"].item().startswith("mlp_100_30")


def _bias_tables(seeds: int = 3):
    rows, ident = [], []
    for s in range(seeds):
        for pop, sp, unc, r2, ba in (("dense", 0.0, 0.05, 0.8, 0.04), ("sparse", 0.9, 0.1, 0.7, 0.08),
                                     ("sparse", 0.99, 0.5, 0.6, np.nan)):
            for a in range(3):
                j = 0.001 * (s + a)
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
    cfg = ml_collections.ConfigDict(dict(dataset="planted_mnist", model="lenet_300_100", num_seeds=seeds,
                                         prune=dict(protocol="gmp", criterion="mp")))
    return cfg, pd.DataFrame(rows), pd.DataFrame(ident)


def test_bias_claims_use_the_highest_sparsity_with_every_ba_defined():
    cfg, metrics, ident = _bias_tables()
    rows = pd.DataFrame(C.bias_rows(cfg, metrics, ident))
    assert set(rows["claim"]) == {"uncertainty", "interdependence", "bias", "identify", "calibration"}
    assert rows["setting"].str.contains("90%").all()
    unc = rows[rows["claim"] == "uncertainty"]
    assert unc["estimate"].item() == pytest.approx(0.05) and unc["verdict"].item() == "reproduced"
    assert rows[rows["claim"] == "interdependence"]["verdict"].item() == "not reproduced"
    assert rows[rows["claim"] == "calibration"]["verdict"].item() == "reproduced"
    ident_row = rows[rows["claim"] == "identify"]
    assert ident_row["estimate"].item() == 0.9 and "Random score: 0.500" in ident_row["why"].item()


def test_claims_cli_on_a_real_smoke_run(tmp_path):
    run = subprocess.run([sys.executable, "-m", "experiments.sweep", "--config=configs/mnist.py:smoke",
                          f"--workdir={tmp_path / 'wd'}", "--config.progress=False", "--config.analysis.bootstrap=0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "experiments.report", "--claims", f"--workdir={tmp_path / 'wd'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error: --out is required with --claims" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "experiments.report", "--claims", f"--workdir={tmp_path / 'wd'}",
                         f"--out={tmp_path / 'claims'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    text = (tmp_path / "claims" / "claims.md").read_text()
    table = pd.read_csv(tmp_path / "claims" / "tables" / "claims.csv")
    assert {"high", "up_mp"} <= set(table["claim"]) and "| paper | claim | our setting |" in text
    # the saved pruned masks give the UP/MP agreement note (95% is the smoke grid's high-sparsity point)
    assert "of the weights UP keeps are kept by MP too" in table.loc[table["claim"] == "up_mp", "why"].item()


def test_mask_agreement_averages_the_high_sparsity_grid_points():
    up = {"w": np.array([[[[1, 1, 0, 0], [1, 0, 0, 0]]]], bool).repeat(2, axis=0)}  # [S=2, 1, P=2, 4]
    mp = {"w": np.array([[[[1, 0, 1, 0], [1, 0, 0, 0]]]], bool).repeat(2, axis=0)}
    got = C.mask_agreement({"up": up, "mp": mp}, [0.5, 0.95], lambda p, x: True)
    assert got == {("up", "mp"): 1.0}  # only the 95% point (index 1) counts: UP keeps w0, so does MP
    assert C.mask_agreement({"up": up}, [0.5, 0.95], lambda p, x: True) == {}
