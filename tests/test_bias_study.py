"""The bias-study pipeline (fairprune_jax.studies.bias): config validation, pure evaluation pieces against independent
numpy computations, the smoke run end to end on the shipped MNIST, resume without recomputation, and the CelebA
code path on TFDS mock data."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest

from fairprune_jax.analysis import bias_tables as BT
from fairprune_jax.studies import bias as BS
from fairprune_jax.studies.bias_config import config_field
from fairprune_jax.studies import bias_data as BD
from fairprune_jax import checkpoints, models, pipeline
from fairprune_jax.report import bias as BR
from fairprune_jax.report import bias_summary
from fairprune_jax.results import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path: str, variant: str = ""):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfgmod", os.path.join(REPO, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


# --------------------------------------------------------------------------------------------------------------
# config validation
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,match", [
    ("prune.sparsities", (0.5, 1.2), r"config\.prune\.sparsities: 1\.2 outside \[0, 1\)"),
    ("prune.sparsities", (-0.1,), r"config\.prune\.sparsities: -0\.1 outside"),
    ("prune.sparsities", (), r"config\.prune\.sparsities: empty"),
    ("prune.sparsities", (0.5, 0.5), r"config\.prune\.sparsities: repeated"),
    ("num_seeds", 0, r"config\.num_seeds"),
    ("models", ("resnet999",), r"config\.models: unknown model 'resnet999'"),
    ("model", "resnet999", r"config\.models: unknown model 'resnet999'"),  # the earlier singular name still reads
    ("models", ("mlp_100_30", "lenet_300_100"), r"config\.models: .* a bias workdir holds one model"),
    ("prune.criteria", ("magnitude",), r"config\.prune\.criteria: unknown criterion 'magnitude'"),
    ("prune.criterion", "magnitude", r"config\.prune\.criteria: unknown criterion 'magnitude'"),
    ("prune.protocol", "lottery", r"config\.prune\.protocol"),
    ("dataset", "cifar10", r"config\.dataset: unknown dataset 'cifar10'"),
    ("data.source_dir", "/nonexistent/folder/xyz", r"config\.data\.source_dir: folder /nonexistent/folder/xyz"),
    ("data.planted.p1", 1.5, r"config\.data\.planted\.p1"),
    ("data.planted.target", "odd", r"config\.data\.planted\.target"),
    ("eval.band", 0.6, r"config\.eval\.band"),
    ("train.epochs", 0, r"config\.train\.epochs"),
    ("finetune.optimizer.name", "rmsprop", r"config\.finetune\.optimizer\.name"),
    ("train.optimizer.name", "foo", r"config\.train\.optimizer\.name: unknown optimizer 'foo'"),
    ("train.schedule.name", "foo", r"config\.train\.schedule\.name: unknown schedule 'foo'"),
    ("eval.batch_size", 0, r"config\.eval\.batch_size: 0 is not an integer >= 1"),
    ("prune.grad_batch", 0, r"config\.prune\.grad_batch: 0 is not an integer >= 1"),
    ("seed", -1, r"config\.seed: -1 is not an integer >= 0"),
    ("finetune.chunk", -1, r"config\.finetune\.chunk: -1 is not an integer >= 0"),
    ("divergence.max_loss_ratio", 1.0, r"config\.divergence\.max_loss_ratio: 1\.0; need a finite number > 1"),
    ("prune.gmp.end", 9, r"config\.prune\.gmp\.end: need start < end <= finetune\.epochs \(1\)"),
])
def test_bad_config_is_refused_naming_the_field(field, value, match, tmp_path):
    cfg = _load("configs/planted_mnist.py", "smoke")
    node = cfg
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    with node.ignore_type():
        node[leaf] = value
    with pytest.raises(ValueError, match=match):
        BS.validate_config(cfg)
    with pytest.raises(ValueError, match=match):  # run refuses before touching the workdir
        pipeline.run(cfg, workdir=tmp_path / "wd", report=False, log=lambda s: None)
    assert not (tmp_path / "wd").exists()


def test_config_field_reads_dotted_paths_with_defaults():
    cfg = ml_collections.ConfigDict(dict(prune=dict(gmp=dict(start=2, end=None)), progress=False))
    assert config_field(cfg, "prune.gmp.start") == 2
    assert config_field(cfg, "prune.gmp.end", 7) == 7  # None reads as missing
    assert config_field(cfg, "prune.nothing.here", "d") == "d"
    assert config_field({"a": {"b": 0}}, "a.b", 5) == 0 and config_field(cfg, "progress", True) is False


def test_celeba_config_fields_are_checked():
    cfg = _load("configs/celeba.py", "smoke")
    BS.validate_config(cfg)
    bad = ml_collections.ConfigDict(cfg.to_dict())
    bad.data.protected = ("Male", "Gender")
    with pytest.raises(ValueError, match=r"config\.data\.protected: 'Gender'"):
        BS.validate_config(bad)
    bad = ml_collections.ConfigDict(cfg.to_dict())
    bad.data.image_size = (0, 16)
    with pytest.raises(ValueError, match=r"config\.data\.image_size"):
        BS.validate_config(bad)
    for path in ("configs/celeba.py", "configs/celeba_paper.py"):
        BS.validate_config(_load(path))
    for name in ("planted_mnist", "planted_fashion_mnist", "planted_mnist_weak", "planted_fashion_mnist_weak"):
        for variant in ("", "smoke"):
            BS.validate_config(_load(f"configs/{name}.py", variant))
    with pytest.raises(ValueError, match="variant"):
        _load("configs/planted_mnist.py", "huge")


# --------------------------------------------------------------------------------------------------------------
# pure pieces
# --------------------------------------------------------------------------------------------------------------
def test_gmp_plan_follows_the_cubic_schedule():
    cfg = _load("configs/planted_mnist.py")
    assert cfg.finetune.epochs == 4
    plan = BS.gmp_plan(cfg, 0.9)
    assert sorted(plan) == [0, 1, 2]
    np.testing.assert_allclose([plan[0], plan[1], plan[2]], [0.05, 0.9 - 0.85 * (2 / 3) ** 3, 0.9], rtol=1e-6)
    assert BS.gmp_plan(cfg, 0.02)[0] == pytest.approx(0.02)  # initial capped at the target


def test_random_baseline_flags_as_many_as_asked():
    flags, score = BT.random_baseline(jax.random.key(3), 37, (50, 4))
    assert flags.sum() == 37 and flags.shape == score.shape == (50, 4)
    assert score[flags].min() >= score[~flags].max()


def _toy_data(n=400, nv=300, a=3, seed=0) -> BD.StudyData:
    rng = np.random.default_rng(seed)
    y, yv = rng.integers(0, 2, (n, a)), rng.integers(0, 2, (nv, a))
    g, gv = rng.integers(0, 2, n), rng.integers(0, 2, nv)
    z = np.zeros((1, 1, 1, 1), np.float32)
    return BD.StudyData(z, z, z, yv.astype(np.int32), z, y.astype(np.int32), ("a0", "a1", "a2")[:a], ("g",),
                        gv[None], g[None], np.full((1, a), 0.6), np.full((1, a), 0.3), np.full(a, 0.5), g,
                        np.zeros((1, a), bool), {})


def test_population_metrics_against_numpy():
    d = _toy_data()
    rng = np.random.default_rng(1)
    zt = rng.normal(size=(3, 400, 3)) + 1.5 * (d.y_test - 0.5)
    zv = rng.normal(size=(3, 300, 3)) + 1.5 * (d.y_val - 0.5)
    f = BT.population_metrics(zv, zt, d)
    yhat = (zt > 0).astype(int)
    # accuracy and predicted-positive rate at τ = 0
    np.testing.assert_allclose(BT.metric_array(f, "acc", d.names), (yhat == d.y_test).mean(1))
    np.testing.assert_allclose(BT.metric_array(f, "predpos", d.names), yhat.mean(1))
    # BA written out: S = {G = 1} since pf > nf
    g = d.g_test[0].astype(bool)[:, None]
    ba = (yhat * g).sum(1) / yhat.sum(1) - (d.y_test * g).sum(0) / d.y_test.sum(0)
    np.testing.assert_allclose(BT.metric_array(f, "ba", d.names, protected="g"), ba)
    # global calibration: τ_a = k_a-th largest validation logit
    k = d.y_val.sum(0)
    tau = -np.sort(-zv, axis=1)[:, k - 1, np.arange(3)]
    np.testing.assert_allclose(BT.metric_array(f, "acc", d.names, scheme="global"),
                               ((zt > tau[:, None, :]) == d.y_test).mean(1))
    # per-group calibration rows carry the protected attribute; threshold-free metrics appear once
    assert set(f.loc[f["scheme"] == "group", "protected"]) == {"g"}
    assert set(f.loc[f["metric"] == "uncertainty", "scheme"]) == {"default"}
    np.testing.assert_allclose(BT.metric_array(f, "uncertainty", d.names),
                               (np.abs(1 / (1 + np.exp(-zt)) - 0.5) < 0.4).mean(1))
    assert (f["metric"] == "bba").any()  # the toy data carries a trigger


def test_population_metrics_constant_column_rule():
    """A column predicted constant (here attribute 1 of seed 0, never positive) takes the authors' R² (1.0: the
    fit reproduces it) by default and NaN under the 'nan' rule; 'r2_constant' counts it; other columns agree."""
    d = _toy_data()
    rng = np.random.default_rng(3)
    zt = rng.normal(size=(3, 400, 3)) + 1.5 * (d.y_test - 0.5)
    zv = rng.normal(size=(3, 300, 3)) + 1.5 * (d.y_val - 0.5)
    zt[0, :, 1] = -5.0
    authors, nan_rule = BT.population_metrics(zv, zt, d), BT.population_metrics(zv, zt, d, r2_constant="nan")
    r2a, r2n = (BT.metric_array(f, "r2", d.names) for f in (authors, nan_rule))
    const = BT.metric_array(authors, "r2_constant", d.names)
    assert const[0, 1] == 1.0 and const.sum() == 1.0
    assert r2a[0, 1] == 1.0 and np.isnan(r2n[0, 1])
    np.testing.assert_allclose(r2a[const == 0], r2n[const == 0])
    y = (zt[0] > 0).astype(float)  # attribute 0 of seed 0 regressed on the others with an intercept
    x = np.column_stack([np.ones(400), y[:, 1:]])
    resid = y[:, 0] - x @ np.linalg.lstsq(x, y[:, 0], rcond=None)[0]
    np.testing.assert_allclose(r2a[0, 0], 1 - resid @ resid / ((y[:, 0] - y[:, 0].mean()) ** 2).sum(), atol=1e-9)


def test_identification_tables_against_numpy():
    d = _toy_data(n=600)
    rng = np.random.default_rng(2)
    zd = rng.normal(size=(3, 600, 3)) * 2
    zs = zd + rng.normal(size=zd.shape) * 1.5
    cies, ident, flags = BT.identification_tables(zd, zs, d, key=jax.random.key(0))
    mode = lambda z: ((z > 0).sum(0) * 2 >= z.shape[0])  # noqa: E731
    cie = mode(zd) != mode(zs)
    assert cies.loc[cies["attribute"] == "all", "cie_rate"].item() == pytest.approx(cie.mean())
    pbar = (1 / (1 + np.exp(-zd))).mean(0)
    u = np.abs(pbar - 0.5) < 0.4
    np.testing.assert_array_equal(flags, u)
    row = ident[(ident["criterion"] == "uncertainty") & (ident["subset"] == "all") & (ident["protected"] == "")]
    assert row["precision"].item() == pytest.approx((u & cie).sum() / u.sum())
    assert row["recall"].item() == pytest.approx((u & cie).sum() / cie.sum())
    rnd = ident[(ident["criterion"] == "random") & (ident["subset"] == "all")]
    assert rnd["n_flagged"].item() == u.sum()
    assert set(ident["subset"]) == {"all", "g=0", "g=1"}


# --------------------------------------------------------------------------------------------------------------
# end to end on the shipped MNIST (smoke variant), resume, report CLI
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cfg = _load("configs/planted_mnist.py", "smoke")
    cfg.progress = False
    wd = tmp_path_factory.mktemp("bias") / "planted_mnist-smoke"
    summary = pipeline.run(cfg, workdir=wd, log=lambda s: None)
    return cfg, wd, summary


@pytest.mark.slow
def test_smoke_run_end_to_end(smoke_run):
    cfg, wd, summary = smoke_run
    assert summary.computed == {"dense": 1, "prune": 2, "predict": 3, "evaluate": 3}
    assert summary.skipped == {}
    for f in ("report.md", "plots/metrics_vs_sparsity.png", "plots/identification.png", "plots/calibration.png",
              "tables/metrics_summary.csv", "meta.json"):
        assert (wd / f).is_file(), f
    text = (wd / "report.md").read_text()
    for needle in ("## Set-up", "seeds: 3", "sparsity grid: 50.0%, 95.0%", "## Reading", "## Identification",
                   "## Calibration", "## Attribute-level regression", "random"):
        assert needle in text, needle
    w = Workdir.existing(wd)
    for t in BS.TABLES:
        assert w.keys(t), t
    assert w.keys("metrics") == ["population=dense", "sparsity=0.5", "sparsity=0.95"]
    # realised sparsity is exact (round(s·N) of the prunable weights)
    prune = w.read_table("prune")
    n = 784 * 300 + 300 * 100 + 100 * 13
    for s, r in zip(prune["target"], prune["realised"]):
        assert r == pytest.approx(round(s * n) / n, abs=1e-6)
    # the stored masks hold: pruned weights are exactly zero
    spec = models.get_model(cfg.models[0], num_outputs=13, multilabel=True)
    ck = checkpoints.restore(w.path / "checkpoints", "sparse-sparsity=0.95", like=BS.sparse_like(spec, 3))
    assert checkpoints.names(w.path / "checkpoints") == ["dense", "sparse-sparsity=0.5", "sparse-sparsity=0.95"]
    for wt, m in zip(jax.tree.leaves(ck["variables"]["params"]), jax.tree.leaves(ck["masks"])):
        assert np.all(np.asarray(wt)[~np.asarray(m)] == 0)
    # metrics against an independent computation from the stored logits and the data
    data = BD.load_study_data(cfg)
    lg = np.load(w.path_for("logits/dense.npz"))
    yhat = (lg["test"] > 0).astype(int)
    m = w.read_table("metrics")
    dense = m[m["population"] == "dense"]
    np.testing.assert_allclose(BT.metric_array(dense, "acc", data.names), (yhat == data.y_test).mean(1), atol=1e-12)
    g = data.g_test[0].astype(bool)
    pf, nf = data.pf[0], data.nf[0]
    s = np.where(pf > nf, g[:, None], ~g[:, None])
    ba = (yhat * s).sum(1) / yhat.sum(1) - (data.y_test * s).sum(0) / data.y_test.sum(0)
    got = BT.metric_array(dense, "ba", data.names, protected="trigger")
    ok = ~np.isnan(got)
    assert ok.sum() >= 30
    np.testing.assert_allclose(got[ok], ba[ok], atol=1e-12)
    # identification: the random baseline is near chance, the dense criterion flags as many pairs
    ident = w.read_table("identification")
    base = ident[(ident["protected"] == "") & (ident["subset"] == "all")]
    rnd = base[base["criterion"] == "random"]
    assert np.all(np.abs(rnd["auroc"] - 0.5) < 0.03)
    np.testing.assert_array_equal(rnd["n_flagged"].to_numpy(),
                                  base[base["criterion"] == "uncertainty"]["n_flagged"].to_numpy())


@pytest.mark.slow
def test_second_run_recomputes_nothing_and_tables_are_identical(smoke_run):
    cfg, wd, _ = smoke_run
    w = Workdir.existing(wd)
    before = {t: w.read_table(t) for t in BS.TABLES}
    parts = {p: p.stat().st_mtime_ns for p in (wd / "results").rglob("*.parquet")}
    attempts = {k: len(v) for k, v in w.stage_timings().items()}
    summary = pipeline.run(cfg, workdir=wd, log=lambda s: None)
    assert summary.computed == {}
    assert summary.skipped == {"dense": 1, "prune": 2, "predict": 3, "evaluate": 3}
    assert set(summary.seconds) == {"report"}  # no unit ran
    after_attempts = {k: len(v) for k, v in w.stage_timings().items()}
    assert {k: after_attempts[k] - attempts.get(k, 0) for k in after_attempts} == {
        **{k: 0 for k in attempts}, "data": 1, "total_this_run": 1, "report": 1}
    assert {p: p.stat().st_mtime_ns for p in (wd / "results").rglob("*.parquet")} == parts
    for t in BS.TABLES:
        pd.testing.assert_frame_equal(w.read_table(t), before[t])


@pytest.mark.slow
def test_interrupted_unit_resumes_from_its_checkpoint(smoke_run):
    """A run killed after pruning 95% but before predicting/evaluating it: the rerun predicts and evaluates that
    unit from its checkpoint (no retraining) and reproduces the tables."""
    cfg, wd, _ = smoke_run
    w = Workdir.existing(wd)
    before = {t: w.read_table(t) for t in BS.EVAL_TABLES}
    key = "sparsity=0.95"
    w.path_for(f"logits/{key}.npz").unlink()
    for t in BS.EVAL_TABLES:
        w.part_path(t, key).unlink()
    summary = pipeline.run(cfg, workdir=wd, log=lambda s: None)
    assert summary.computed == {"predict": 1, "evaluate": 1}
    assert summary.skipped == {"dense": 1, "prune": 2, "predict": 2, "evaluate": 2}
    for t in BS.EVAL_TABLES:
        pd.testing.assert_frame_equal(w.read_table(t), before[t], rtol=1e-6)


@pytest.mark.slow
def test_report_cli_rebuilds_from_stored_results(smoke_run):
    _, wd, _ = smoke_run
    (wd / "report.md").unlink()
    (wd / "plots" / "calibration.png").unlink()
    r = subprocess.run([sys.executable, "-m", "experiments.bias_report", f"--workdir={wd}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "AUROC u/r" in r.stdout and "95.0%" in r.stdout
    assert (wd / "report.md").is_file() and (wd / "plots" / "calibration.png").is_file()
    # the reading is computed, not hard-coded: its accuracy sentence quotes the dense mean of the table
    summ = BR.summarize_metrics(Workdir.existing(wd).read_table("metrics"))
    acc = bias_summary.metric_series(summ, "acc").iloc[0]
    assert f"{acc['mean']:.4f} ± {acc['sd']:.4f} (dense)" in (wd / "report.md").read_text()


def test_changed_config_is_refused_on_resume(tmp_path):
    cfg = _load("configs/planted_mnist.py", "smoke")
    Workdir.open(tmp_path / "wd", cfg)
    other = ml_collections.ConfigDict(cfg.to_dict())
    other.prune.sparsities = (0.5, 0.9)
    with pytest.raises(ValueError, match="prune.sparsities"):
        pipeline.run(other, workdir=tmp_path / "wd", report=False, log=lambda s: None)


# --------------------------------------------------------------------------------------------------------------
# CelebA through TFDS, on mock data
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_celeba_path_on_tfds_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    cfg = _load("configs/celeba.py", "smoke")
    cfg.progress = False
    cfg.prune.protocol = "one_shot"  # also covers the one-shot path; no fine-tuning keeps it short
    cfg.finetune.epochs = 0
    with tfds.testing.mock_data(num_examples=160):
        summary = pipeline.run(cfg, workdir=tmp_path / "celeba", log=lambda s: None)
    assert summary.computed == {"dense": 1, "prune": 2, "predict": 3, "evaluate": 3}
    meta = json.loads((tmp_path / "celeba" / "meta.json").read_text())
    assert meta["names"] == list(BD.CELEB_A_ATTRIBUTES) and meta["protected"] == ["Male", "Young", "Chubby",
                                                                                  "Pale_Skin"]
    assert meta["input_shape"] == [16, 16, 3] and meta["n_train"] == 160
    w = Workdir.existing(tmp_path / "celeba")
    m = w.read_table("metrics")
    ba = m[(m["metric"] == "ba") & (m["scheme"] == "default")]
    assert set(ba["protected"]) == {"Male", "Young", "Chubby", "Pale_Skin"}
    own = ba[ba["attribute"] == ba["protected"]]  # BA of a protected attribute against itself is undefined
    assert own["value"].isna().all() and set(own["note"]) == {"protected_attribute_itself"}
    assert "bba" not in set(m["metric"])  # no trigger on CelebA
    assert set(m.loc[m["scheme"] == "group", "protected"]) == {"Male", "Young", "Chubby", "Pale_Skin"}
    assert (tmp_path / "celeba" / "report.md").is_file()
    reg = w.read_table("regression")
    assert set(reg["protected"]) == {"Male", "Young", "Chubby", "Pale_Skin"}


@pytest.mark.slow
def test_exploding_fine_tuning_is_flagged_excluded_and_reported(tmp_path):
    """Adam at lr 1e4 blows the losses up to ~1e15 without a NaN: the guard's loss bound flags every network, they
    are excluded, and the report says so in one line instead of drawing conclusions from them."""
    r = subprocess.run([sys.executable, "-m", "experiments.bias", "--config=configs/planted_mnist.py:smoke",
                        "--config.finetune.optimizer.lr=1e4", f"--workdir={tmp_path / 'wd'}", "--config.progress=False"],
                       cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "every pruned network diverged (6 networks" in errors[0]
    assert r.stderr.count("diverged (non-finite or exploding loss); excluded from the statistics") == 2
    prune = Workdir.existing(tmp_path / "wd").read_table("prune")
    assert prune["diverged"].all() and np.isfinite(prune["final_loss"]).all()
    assert (prune["final_loss"] > 3 * np.log(2)).all()
    for t in BS.EVAL_TABLES:  # nothing is computed from a diverged network
        assert Workdir.existing(tmp_path / "wd").read_table(t).query("population == 'sparse'").empty \
            if t == "metrics" else Workdir.existing(tmp_path / "wd").read_table(t).empty
