"""The sweep end to end on the shipped MNIST: report, resume after a kill, refused configs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from configs import mnist
from fairprune_jax import configs, deprecation, pipeline, results
from fairprune_jax.studies import recall as recall_study

REPO = Path(__file__).resolve().parent.parent
# A smaller smoke: 2 seeds, 2 criteria, 2 sparsities, 3000 training examples.
OVERRIDES = ["--config.num_seeds=2", "--config.prune.criteria=('mp','up')", "--config.data.max_train_examples=3000",
             "--config.analysis.bootstrap=0"]


def _sweep_cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.sweep", "--config=configs/mnist.py:smoke", f"--workdir={workdir}",
            "--config.progress=False", *OVERRIDES]


def _run(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_sweep_cmd(workdir), cwd=REPO, capture_output=True, text=True, timeout=900)


def _table(workdir: Path) -> pd.DataFrame:
    df = results.Workdir.existing(workdir).read_table(recall_study.RECALL_TABLE)
    return df.sort_values(["model", "criterion", "seed", "level", "class"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("sweep") / "wd"
    proc = _run(wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


@pytest.mark.slow
def test_smoke_sweep_end_to_end(finished):
    df = _table(finished)
    # dense + 2 criteria × 2 sparsities, 2 seeds, 10 classes
    assert len(df) == (1 + 2 * 2) * 2 * 10
    assert set(df["criterion"]) == {"dense", "mp", "up"}
    pruned = df[df["criterion"] != "dense"]
    assert (pruned["actual_sparsity"] - pruned["requested_sparsity"]).abs().max() < 1e-3
    assert (df.groupby(["criterion", "seed", "level"])["n"].sum() == 10000).all()
    report = (finished / "report.md").read_text()
    for heading in ("E[α_t] per cell (Tier A", "Tier B", "Pooled moderated slope", "Accuracy", "RQ1", "RQ4"):
        assert heading in report
    # the Summary's compact grid: one row per sparsity, MP before UP, each cell "mean [low, high] mark"
    summary = report.split("## Summary", 1)[1].split("## Reading", 1)[0]
    assert "| sparsity | MP | UP |" in summary
    tier_a = pd.read_csv(finished / "tables" / "alpha_tier_a.csv").query("subset == 'all' and criterion == 'mp'")
    first = tier_a.sort_values("requested_sparsity").iloc[0]
    assert f"| {first['mean']:.2f} [{first['ci_low']:.2f}, {first['ci_high']:.2f}]" in summary
    for png in ("alpha.png", "accuracy.png", "class_deviation.png"):
        assert (finished / "plots" / png).stat().st_size > 1000
    # Rerunning a finished sweep recomputes nothing and changes nothing.
    before = {p.name: p.stat().st_mtime_ns for p in (finished / "results" / "recall").iterdir()}
    proc = _run(finished)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in (finished / "results" / "recall").iterdir()}
    assert before == after


@pytest.mark.slow
def test_killed_sweep_resumes_to_identical_results(finished, tmp_path):
    wd = tmp_path / "wd"
    proc = subprocess.Popen(_sweep_cmd(wd), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    parts = wd / "results" / "recall"
    deadline = time.time() + 600
    try:
        # Kill it while pruning: after the dense rows (and maybe one criterion) are stored, before the end.
        while time.time() < deadline and proc.poll() is None:
            if parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    n_before = len(list(parts.glob("*.parquet")))
    assert 2 <= n_before < 3
    resumed = _run(wd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _table(wd), _table(finished)
    assert not a.duplicated(["model", "criterion", "seed", "level", "class"]).any()
    pd.testing.assert_frame_equal(a, b)
    timings = results.Workdir.existing(wd).stage_timings()
    # The dense models were trained once: the resumed run restored them from the checkpoint.
    assert sum(1 for t in timings.get("dense.lenet_300_100", []) if t.get("status") == "ok") <= 1


def test_workdir_with_other_config_is_refused(tmp_path):
    cfg = mnist.get_config("smoke")
    results.Workdir.open(tmp_path / "wd", cfg, ignore=recall_study.IGNORED_FIELDS)
    other = mnist.get_config("smoke")
    other.train.epochs = 4
    with pytest.raises(ValueError, match="train.epochs"):
        pipeline.run(other, workdir=tmp_path / "wd", log=lambda s: None)


def test_fewer_seeds_than_the_workdir_holds_are_refused(tmp_path):
    cfg = mnist.get_config("smoke")
    results.Workdir.open(tmp_path / "wd", cfg, ignore=recall_study.IGNORED_FIELDS)
    fewer = mnist.get_config("smoke")
    fewer.num_seeds = 2
    with pytest.raises(ValueError, match="config.num_seeds: 2 is fewer than the 3 seeds this workdir holds"):
        pipeline.run(fewer, workdir=tmp_path / "wd", log=lambda s: None)


@pytest.mark.parametrize("field,value,message", [
    ("prune.criteria", ("mp", "magnitude"), "config.prune.criteria: unknown criterion 'magnitude'"),
    ("models", ("lenet_300_100", "resnet9000"), "config.models: unknown model 'resnet9000'"),
    ("prune.sparsities", (0.5, 1.0), r"config.prune.sparsities: 1.0 outside \[0, 1\)"),
    ("prune.sparsities", (-0.1,), r"config.prune.sparsities: -0.1 outside \[0, 1\)"),
    ("num_seeds", 0, "config.num_seeds: 0 seeds"),
    ("data.source_dir", "/nonexistent/folder", "config.data.source_dir: folder /nonexistent/folder does not exist"),
    ("prune.protocol", "magic", "config.prune.protocol: unknown protocol 'magic'"),
    ("dataset", "imagenet", "config.dataset: unknown dataset 'imagenet'"),
    ("dataset", "celeb_a", "config.dataset: 'celeb_a' is multi-label"),
    ("train.optimizer.lr", 0.0, "config.train.optimizer.lr"),
])
def test_bad_config_values_are_refused(field, value, message):
    cfg = mnist.get_config("smoke")
    with cfg.unlocked():
        node = cfg
        *parents, leaf = field.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ValueError, match=message):
        recall_study.validate_config(cfg)


def test_missing_default_data_folder_and_no_mirror_say_how_to_provide_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRPRUNE_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("FAIRPRUNE_DATA_MIRROR", (tmp_path / "no_mirror").as_uri())
    monkeypatch.setenv("FAIRPRUNE_TFDS_DIR", str(tmp_path / "tfds"))  # not prepared yet
    with pytest.raises(FileNotFoundError, match=f"not found in {tmp_path}/nowhere/mnist .*--config.data.source_dir"):
        recall_study.load_data(mnist.get_config("smoke"))


RECALL_CONFIGS = [n for n in configs.names() if not n.startswith(("planted", "celeba"))]


@pytest.mark.parametrize("name", RECALL_CONFIGS)
@pytest.mark.parametrize("variant", ["", "smoke"])
def test_every_config_is_valid(name, variant):
    cfg = configs.get(name, variant)
    recall_study.validate_config(cfg)
    assert cfg.study == "recall" and cfg.variant.endswith(variant)
    # The default grid spans low (≤ 50%) and high (≥ 90%) sparsities, with several seeds and the four criteria.
    if name in ("mnist", "fashion_mnist", "cifar10", "cifar100") and variant == "":
        assert min(cfg.prune.sparsities) <= 0.5 and max(cfg.prune.sparsities) >= 0.9
        assert cfg.num_seeds >= 5 and set(cfg.prune.criteria) >= {"mp", "gp", "up", "random"}
    with pytest.raises(ValueError, match="config variant"):
        configs.get(name, "huge")


@pytest.mark.parametrize("base,variant,name", [(b, v, n) for b, moved in configs.MOVED.items()
                                               for v, n in moved.items()])
def test_earlier_variant_names_load_their_file_with_one_deprecation(base, variant, name, monkeypatch):
    monkeypatch.setattr(deprecation, "_WARNED", set())
    with pytest.warns(FutureWarning, match=f"configs/{base}.py:{variant} is now the config file configs/{name}.py"):
        old = configs.get(base, variant)
    assert old.to_dict() == configs.get(name).to_dict()


def test_imbalance_option_reaches_the_data():
    cfg = mnist.get_config("smoke")
    cfg.data.max_train_examples = 0
    cfg.data.imbalance.classes = (3,)
    cfg.data.imbalance.fractions = (0.1,)
    study = recall_study.load_data(cfg)
    row = study.train_counts.set_index("class").loc[3]
    assert row["n_after"] == round(0.1 * 6131) and study.train.images.shape[0] == 60000 - 6131 + 613


def _small(num_seeds: int, seed: int = 0):
    cfg = mnist.get_config("smoke")
    cfg.num_seeds, cfg.seed, cfg.prune.criteria = num_seeds, seed, ("mp",)
    cfg.data.max_train_examples, cfg.analysis.bootstrap, cfg.progress = 3000, 0, False
    return cfg


@pytest.mark.slow
def test_more_seeds_on_a_workdir_train_only_the_new_seeds(tmp_path):
    """Raising num_seeds adds a seed block: the earlier parts stay byte for byte, the new seeds' rows are those of a
    run of the new seeds alone, and the report covers every seed."""
    wd = tmp_path / "wd"
    pipeline.run(_small(2), workdir=wd, log=lambda s: None)
    parts = wd / "results" / "recall"
    before = {p.name: p.read_bytes() for p in parts.iterdir()}
    grown = pipeline.run(_small(3), workdir=wd, log=lambda s: None)
    assert grown.computed == {"dense": 1, "evaluate": 1, "prune": 1}  # the new block only
    assert {p.name: p.read_bytes() for p in parts.iterdir() if p.name in before} == before
    assert sorted(set(p.name for p in parts.iterdir()) - set(before)) == [  # each part with its .sha256
        "lenet_300_100.dense.seeds=2-2.parquet", "lenet_300_100.dense.seeds=2-2.parquet.sha256",
        "lenet_300_100.mp.seeds=2-2.parquet", "lenet_300_100.mp.seeds=2-2.parquet.sha256"]
    assert (wd / "seed_blocks.json").read_text().split() == ["[", "[", "0,", "2", "],", "[", "2,", "3", "]", "]"]
    assert "mean over 3 seeds" in (wd / "report.md").read_text()
    alone = pipeline.run(_small(1, seed=2), workdir=tmp_path / "alone", log=lambda s: None, report=False)
    new = results.Workdir.existing(wd).read_table("recall").query("seed == 2").reset_index(drop=True)
    pd.testing.assert_frame_equal(new, results.Workdir.existing(alone.workdir).read_table("recall"))
    again = pipeline.run(_small(3), workdir=wd, log=lambda s: None)
    assert again.computed == {}
