"""The study spine: workdir lock, --fresh, validation before the workdir is claimed, divergence guard, one-line
errors and Ctrl-C from the entry points, incomplete-run warnings, and the refactor's same-science check."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from configs import mnist, planted_mnist
from fairprune_jax import pipeline, results
from fairprune_jax.report import writer
from fairprune_jax.studies import recall as recall_study
from fairprune_jax.studies import spine

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr[-2000:]


# ---- lock and --fresh ---------------------------------------------------------------------------------------

def test_second_holder_of_a_workdir_is_refused_naming_the_pid(tmp_path):
    with spine.workdir_lock(tmp_path / "wd"):
        with pytest.raises(spine.WorkdirBusyError, match=f"pid {os.getpid()}"):
            with spine.workdir_lock(tmp_path / "wd"):
                pass
    with spine.workdir_lock(tmp_path / "wd"):  # released on exit
        pass


def test_fresh_refuses_a_live_workdir_and_resumes_the_same_config(tmp_path):
    cfg, logs = mnist.get_config("smoke"), []
    with spine.claim(tmp_path / "wd", cfg, fresh=False, ignore=recall_study.IGNORED_FIELDS, log=logs.append) as (wd, _):
        wd.write_text("marker", "x")
        other = mnist.get_config("smoke")
        other.train.epochs = 2
        with pytest.raises(spine.WorkdirBusyError):
            with spine.claim(tmp_path / "wd", other, fresh=True, ignore=recall_study.IGNORED_FIELDS, log=logs.append):
                pass
    assert (tmp_path / "wd" / "marker").is_file() and not list(tmp_path.glob("wd.old-*"))
    with spine.claim(tmp_path / "wd", cfg, fresh=True, ignore=recall_study.IGNORED_FIELDS, log=logs.append):
        pass
    assert "resuming" in logs[-1] and not list(tmp_path.glob("wd.old-*"))
    other = mnist.get_config("smoke")
    other.train.epochs = 2
    with spine.claim(tmp_path / "wd", other, fresh=True, ignore=recall_study.IGNORED_FIELDS, log=logs.append) as (wd, _):
        assert not (wd.path / "marker").exists()
    assert len(list(tmp_path.glob("wd.old-*"))) == 1


def test_two_runs_started_together_one_is_refused(tmp_path):
    cmd = ["experiments.sweep", "--config=configs/mnist.py:smoke", f"--workdir={tmp_path / 'wd'}",
           "--config.progress=False", "--config.num_seeds=1", "--config.prune.criteria=('mp',)",
           "--config.analysis.bootstrap=0"]
    procs = [subprocess.Popen([sys.executable, "-m", *cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-1500:] for o in outs]
    busy = [o[1] for p, o in zip(procs, outs) if p.returncode == 2][0]
    assert "is in use by another run (pid" in busy and "Traceback" not in busy
    ok = [o[1] for p, o in zip(procs, outs) if p.returncode == 0][0]
    assert not [line for line in ok.splitlines() if re.match(r"I\d{4} ", line)], ok[-2000:]  # absl/orbax quiet


# ---- validation before claim ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("data.imbalance.fractions", (1.5,), "config.data.imbalance.fractions: 1.5 outside"),
    ("train.epochs", 0, "config.train.epochs: 0 is not an integer >= 1"),
    ("train.optimizer.lr", float("nan"), "config.train.optimizer.lr: nan"),
    ("prune.sparsities", (0.0, 0.5), "config.prune.sparsities: 0 is the dense model"),
    ("train.batch_size", 7000, "config.train.batch_size: 7000 is larger than the training split (6000"),
    ("train.optimizer.name", "foo", "config.train.optimizer.name: unknown optimizer 'foo'"),
    ("train.schedule.name", "foo", "config.train.schedule.name: unknown schedule 'foo'"),
    ("eval.batch_size", 0, "config.eval.batch_size: 0 is not an integer >= 1"),
    ("prune.grad_batch", 0, "config.prune.grad_batch: 0 is not an integer >= 1"),
    ("prune.grad_batch", 7000, "config.prune.grad_batch: 7000 is larger than the training split (6000"),
    ("seed", -1, "config.seed: -1 is not an integer >= 0"),
    ("finetune.chunk", -2, "config.finetune.chunk: -2 is not an integer >= 0"),
])
def test_bad_config_never_claims_the_workdir(field, value, message, tmp_path):
    cfg = mnist.get_config("smoke")
    cfg.data.imbalance.classes = (3,) if field == "data.imbalance.fractions" else ()
    node = cfg
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipeline.run(cfg, workdir=tmp_path / "wd", log=lambda s: None)
    assert not (tmp_path / "wd").exists()


def test_fields_that_never_change_a_result_do_not_trip_the_fingerprint_guard(tmp_path):
    """analysis.* only shapes the report, data.source_dir names where checksum-verified files lie, the chunks and
    the mesh only split the work: a workdir accepts changes to them (and records the new values)."""
    cfg = mnist.get_config("smoke")
    with spine.claim(tmp_path / "wd", cfg, fresh=False, ignore=recall_study.IGNORED_FIELDS, log=print):
        pass
    other = mnist.get_config("smoke")
    other.analysis.bootstrap, other.data.source_dir, other.finetune.chunk = 50, str(tmp_path), 3
    with spine.claim(tmp_path / "wd", other, fresh=False, ignore=recall_study.IGNORED_FIELDS, log=print) as (wd, _):
        assert wd.config.analysis.bootstrap == 50
    other.train.epochs = 2  # this one does change results
    with pytest.raises(ValueError, match="train.epochs"):
        with spine.claim(tmp_path / "wd", other, fresh=False, ignore=recall_study.IGNORED_FIELDS, log=print):
            pass


def test_bias_batch_size_is_checked_against_the_subsampled_split(tmp_path):
    cfg = planted_mnist.get_config("smoke")
    cfg.finetune.batch_size = 3001
    with pytest.raises(ValueError, match=r"config\.finetune\.batch_size: 3001 is larger .*3000"):
        pipeline.run(cfg, workdir=tmp_path / "wd", report=False, log=lambda s: None)
    assert not (tmp_path / "wd").exists()


# ---- divergence -------------------------------------------------------------------------------------------------

def test_divergence_helpers():
    tree = {"w": jnp.array([[1.0, 2.0], [np.nan, 0.0], [1.0, np.inf]]), "n": jnp.array([1, 2, 3])}
    np.testing.assert_array_equal(spine.diverged_models(tree, 1), [False, True, True])
    loss = np.array([[1.0, 0.5, 0.2], [1.0, np.nan, np.nan], [np.inf, 1.0, 1.0]])
    np.testing.assert_array_equal(spine.first_bad_epoch(loss), [-1, 1, 0])
    verdict = spine.divergence(tree, loss, 1, reference=1.0, ratio=3.0)
    np.testing.assert_array_equal(verdict.diverged, [False, True, True])
    np.testing.assert_array_equal(verdict.epoch, [-1, 1, 0])
    with pytest.raises(spine.DivergenceError, match="seed 11 \\(epoch 1\\), seed 12 \\(epoch 0\\)"):
        spine.check_dense(verdict, [10, 11, 12], "toy")


def test_an_exploding_loss_is_divergence_against_the_untrained_loss():
    """A finite loss diverges when its last epoch exceeds ratio × an untrained network's loss (ln K), whatever
    the first epoch's mean was: a network that explodes within its first epoch is flagged too."""
    finite = {"w": jnp.ones((4, 3))}
    ln10 = float(np.log(10))
    loss = np.array([[2.0, 0.5, 0.3],  # trains
                     [2.5, 2.4, 2.3],  # near chance: not diverged
                     [50.0, 60.0, 70.0],  # exploded in its first epoch (a first-epoch yardstick would miss it)
                     [1.0, 9.0, 0.9]])  # one bad epoch, recovered: the last epoch decides
    v = spine.divergence(finite, loss, 1, reference=ln10, ratio=3.0)
    np.testing.assert_array_equal(v.diverged, [False, False, True, False])
    np.testing.assert_array_equal(v.epoch, [-1, -1, 0, -1])
    late = spine.divergence(finite, np.array([[1.0, 2.0, 8.0]] * 4), 1, reference=ln10, ratio=3.0)
    assert late.diverged.all() and (late.epoch == 2).all()
    from fairprune_jax import models
    assert spine.reference_loss(models.get_model("mlp_100_30", num_outputs=10)) == pytest.approx(ln10)
    assert spine.reference_loss(models.get_model("mlp_100_30", num_outputs=13, multilabel=True)) == \
        pytest.approx(np.log(2))


@pytest.mark.slow
def test_dense_divergence_stops_with_one_line(tmp_path):
    proc = _cli("experiments.sweep", "--config=configs/mnist.py:smoke", f"--workdir={tmp_path / 'wd'}",
                "--config.progress=False", "--config.train.optimizer.lr=1e4", "--config.num_seeds=2")
    _one_line_error(proc, "dense training of lenet_300_100 diverged")
    assert not list((tmp_path / "wd").glob("results/recall/*.parquet"))


@pytest.mark.slow
def test_diverged_pruned_networks_are_flagged_and_excluded(tmp_path):
    cfg = mnist.get_config("smoke")
    cfg.num_seeds, cfg.prune.criteria, cfg.analysis.bootstrap, cfg.progress = 2, ("mp",), 0, False
    cfg.finetune.optimizer.lr = 1e4
    with pytest.raises(ValueError, match=r"every pruned network diverged \(4 networks"):
        pipeline.run(cfg, workdir=tmp_path / "wd", log=lambda s: None)
    df = results.Workdir.existing(tmp_path / "wd").read_table(recall_study.RECALL_TABLE)
    pruned = df[df["criterion"] == "mp"]
    assert pruned["diverged"].all() and pruned["recall"].isna().all() and (pruned["diverged_epoch"] == 0).all()
    assert not df.loc[df["criterion"] == "dense", "diverged"].any()


# ---- entry points ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (("experiments.sweep", "--config=configs/mnist.py:smoke", "--config.train.lrr=3"), "no config field 'train.lrr'"),
    (("experiments.sweep", "--config=configs/missing.py"), "config file configs/missing.py does not exist"),
    (("experiments.bias", "--config=configs/planted_mnist.py:smoke", "--config.prune.criterion=magnitude"),
     "config.prune.criteria: unknown criterion 'magnitude'"),
    (("experiments.bias", "--config=planted_mnist:smoke", "--config.prune.criteria=('mp','up')"),
     "config.prune.criteria: ('mp', 'up'): a bias workdir holds one criterion"),
    (("experiments.sweep", "--config=planted_mnist:smoke"), "config.study: 'bias'"),
    (("experiments.sweep", "--config=nonesuch"), "config file nonesuch does not exist (packaged configs: celeba,"),
    (("experiments.report", "--workdir=/nonexistent/wd"), "workdir /nonexistent/wd does not exist"),
])
def test_user_errors_are_one_line(args, fragment):
    _one_line_error(_cli(*args), fragment)


@pytest.mark.slow
def test_ctrl_c_prints_one_line_exits_130_and_marks_the_stage(tmp_path):
    wd = tmp_path / "wd"
    proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", "--config=configs/mnist.py:smoke",
                             f"--workdir={wd}", "--config.progress=False", "--config.train.epochs=40"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a suite started in the background inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def dense_running() -> bool:  # dense training (40 epochs: minutes) has started and is not finished
        try:
            timings = json.loads((wd / "timings.json").read_text())
        except (OSError, ValueError):
            return False
        return any(a.get("status") == "running" for k, v in timings.items() if k.startswith("dense") for a in v)

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not dense_running():
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    statuses = [a["status"] for runs in results.Workdir.existing(wd).stage_timings().values() for a in runs]
    assert "interrupted" in statuses and "running" not in statuses


# ---- reports -------------------------------------------------------------------------------------------------------

def test_incomplete_warning_names_the_missing_units():
    assert writer.incomplete_warning(["a", "b", "c"], ["a", "c"])[0].startswith(
        "> **Incomplete run: 1 of 3 units missing** (b)")
    assert writer.incomplete_warning(["a"], ["a"]) == []


# ---- same science ---------------------------------------------------------------------------------------------------

def _same(new: pd.DataFrame, golden: pd.DataFrame) -> None:
    cols = list(golden.columns)
    new = new[cols].sort_values(cols, kind="mergesort").reset_index(drop=True)
    golden = golden.sort_values(cols, kind="mergesort").reset_index(drop=True)
    pd.testing.assert_frame_equal(new.astype({c: object for c in cols if new[c].dtype.kind in "OUT"}),
                                  golden.astype({c: object for c in cols if golden[c].dtype.kind in "OUT"}),
                                  check_exact=True, check_dtype=False)


@pytest.mark.slow
def test_refactored_studies_reproduce_the_stored_tables(tmp_path):
    cfg = mnist.get_config("smoke")
    cfg.progress = False
    # the golden tables predate the automatic chunks: every model of a unit in one program, on one device
    cfg.train.chunk = cfg.finetune.chunk = 100000
    cfg.mesh.enabled = False
    wd = pipeline.workdir_of(pipeline.run(cfg, workdir=tmp_path / "recall", log=lambda s: None))
    _same(wd.read_table("recall"), pd.read_parquet(GOLDEN / "mnist_smoke_recall.parquet"))
    assert "Incomplete run" not in (wd.path / "report.md").read_text()
    from fairprune_jax.report import recall as recall_report

    first = (wd.path / "report.md").read_bytes()
    recall_report.build_report(wd)  # a rebuild gives the run's own report, byte for byte
    assert (wd.path / "report.md").read_bytes() == first
    bcfg = planted_mnist.get_config("smoke")
    bcfg.progress = False
    bcfg.eval.r2_constant = "nan"  # the golden tables predate the authors' constant-column rule (now the default)
    bcfg.train.chunk = bcfg.finetune.chunk = 100000
    bcfg.mesh.enabled = False
    out = pipeline.run(bcfg, workdir=tmp_path / "bias", log=lambda s: None)
    bwd = results.Workdir.existing(out.workdir)
    for path in sorted(GOLDEN.glob("planted_mnist_smoke_*.parquet")):
        table = path.stem[len("planted_mnist_smoke_"):]
        new = bwd.read_table(table, key_column="unit")
        if table == "metrics":  # rows added since: the count of constant columns behind each R²
            new = new[new["metric"] != "r2_constant"]
        _same(new, pd.read_parquet(path))
    # The report is rebuilt byte for byte; a missing unit is announced at the top.
    from fairprune_jax.report import bias as bias_study_report

    first = (bwd.path / "report.md").read_bytes()
    bias_study_report.write_report(bwd)
    assert (bwd.path / "report.md").read_bytes() == first
    (bwd.part_path("metrics", "sparsity=0.95")).unlink()
    bias_study_report.write_report(bwd)
    assert "Incomplete run: 1 of 3 units missing** (sparsity=0.95)" in (bwd.path / "report.md").read_text()


def test_population_logits_match_a_per_model_forward_in_any_chunking():
    import jax

    from fairprune_jax import evaluate, models, sharding, train

    spec = models.get_model("mlp_100_30", num_outputs=5, input_shape=(4, 4, 1), multilabel=True)
    variables = train.init_population(spec, train.seed_keys([0, 1, 2]))
    x = jax.random.normal(jax.random.key(1), (37, 4, 4, 1))
    want = np.stack([np.asarray(spec.apply(jax.tree.map(lambda v: v[i], variables), x, train=False)[0])
                     for i in range(3)])
    for chunk, bs, mesh in ((0, 100, None), (2, 10, None), (1, 37, sharding.seed_mesh())):
        got = evaluate.population_logits(spec, variables, x, chunk=chunk, batch_size=bs, mesh=mesh)
        assert got.shape == (3, 37, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="images: shape"):
        evaluate.population_logits(spec, variables, x[..., 0])


@pytest.mark.slow
def test_corrupt_prepared_tfds_names_the_folder_to_delete(tmp_path):
    from fairprune_jax import data as data_lib

    data_lib.prepare_offline("mnist")  # the shared prepared copy (already there) is only read
    shutil.copytree(data_lib.tfds_dir() / "mnist_idx", tmp_path / "tfds" / "mnist_idx")
    part = next((tmp_path / "tfds" / "mnist_idx").glob("*/mnist_idx-test.array_record-*"))
    raw = bytearray(part.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 4000] = bytes(b ^ 0xFF for b in raw[len(raw) // 3: len(raw) // 3 + 4000])
    part.write_bytes(bytes(raw))
    proc = _cli("experiments.sweep", "--config=configs/mnist.py:smoke", f"--workdir={tmp_path / 'wd'}",
                f"--config.data.tfds_dir={tmp_path / 'tfds'}")
    _one_line_error(proc, f"delete {tmp_path / 'tfds' / 'mnist_idx'} so it is prepared again")
    assert not (tmp_path / "wd").exists()


def test_a_new_claim_closes_attempts_left_running_by_a_killed_run(tmp_path):
    cfg = mnist.get_config("smoke")
    with spine.claim(tmp_path / "wd", cfg, fresh=False, ignore=recall_study.IGNORED_FIELDS, log=print) as (wd, _):
        wd._update_timing("dense.x", "a1", {"started": "t", "seconds": None, "status": "running", "pid": -5})
    with spine.claim(tmp_path / "wd", cfg, fresh=False, ignore=recall_study.IGNORED_FIELDS, log=print) as (wd, _):
        assert [a["status"] for a in wd.stage_timings()["dense.x"]] == ["killed"]


# ---- config files and partial workdirs ---------------------------------------------------------------------------

@pytest.mark.parametrize("body,fragment", [
    ("def get_config(variant=''):\n    return (\n", "broken.py, line 2: '(' was never closed"),  # syntax
    ("import ml_collections\nX = undefined_name\n\ndef get_config(variant=''):\n    return None\n",
     "broken.py, line 2: NameError: name 'undefined_name' is not defined"),  # fails as it loads
])
def test_a_config_file_that_does_not_load_is_one_line_naming_file_and_line(tmp_path, body, fragment):
    (tmp_path / "broken.py").write_text(body)
    proc = _cli("experiments.sweep", f"--config={tmp_path / 'broken.py'}", f"--workdir={tmp_path / 'wd'}")
    _one_line_error(proc, fragment)
    assert not (tmp_path / "wd").exists()


def _dense_only_workdir(path: Path) -> Path:
    wd = results.Workdir.open(path, mnist.get_config("smoke"), ignore=recall_study.IGNORED_FIELDS)
    rows = pd.DataFrame({"dataset": "mnist", "model": "lenet_300_100", "criterion": "dense", "seed": [0, 1, 2],
                         "level": 0, "requested_sparsity": 0.0, "actual_sparsity": 0.0, "class": 0, "n": 10,
                         "correct": 9, "recall": 0.9, "accuracy": 0.9})
    wd.append_table("recall", "lenet_300_100.dense", rows)
    return path


def test_report_of_a_workdir_holding_only_its_dense_part_is_one_line(tmp_path):
    wd = _dense_only_workdir(tmp_path / "wd")
    _one_line_error(_cli("experiments.report", f"--workdir={wd}"), "no pruned unit has finished yet")


def test_a_workdir_given_twice_is_refused_by_every_multi_workdir_command(tmp_path):
    wd = _dense_only_workdir(tmp_path / "wd")
    for extra in ((), ("--claims",), ("--results",)):
        proc = _cli("experiments.report", f"--workdir={wd}", f"--workdir={wd}/.",
                    f"--out={tmp_path / 'out'}", *extra)
        _one_line_error(proc, "is given twice")
