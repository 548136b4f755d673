"""Tests for fairprune_jax.results: config guard, atomic writes, incremental tables, resume after a crash."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import ml_collections
import numpy as np
import pandas as pd
import pytest

from fairprune_jax import results, verified
from fairprune_jax.results import Workdir


def make_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.workdir = "/somewhere"
    cfg.seed = 0
    cfg.sparsities = (0.5, 0.9)
    cfg.train = ml_collections.ConfigDict({"lr": 0.1, "epochs": np.int64(3), "momentum": np.float32(0.5)})
    cfg.criteria = ["magnitude", "random"]
    for k, v in overrides.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


def temp_files(root) -> list:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def part_frame(i: int, rows: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {"unit": np.full(rows, i, np.int64), "row": np.arange(rows), "recall": np.linspace(0, 1, rows) + i,
         "criterion": ["magnitude"] * rows}
    )


# ---- config canonicalisation and fingerprint ---------------------------------------------------------------------


def test_canonical_config_plain_json_types():
    cfg = make_config()
    cfg.ref_target = 7
    cfg.ref = cfg.get_ref("ref_target")
    canon = results.canonical_config(cfg)
    assert canon["sparsities"] == [0.5, 0.9]
    assert canon["train"] == {"lr": 0.1, "epochs": 3, "momentum": 0.5}
    assert type(canon["train"]["epochs"]) is int and type(canon["train"]["momentum"]) is float
    assert canon["ref"] == 7
    assert json.loads(json.dumps(canon)) == canon


def test_fingerprint_is_sha256_of_sorted_compact_json_without_ignored_keys():
    cfg = make_config()
    expected_doc = {"seed": 0, "sparsities": [0.5, 0.9], "train": {"epochs": 3, "lr": 0.1, "momentum": 0.5},
                    "criteria": ["magnitude", "random"]}
    text = json.dumps(expected_doc, sort_keys=True, separators=(",", ":"))
    assert results.fingerprint(cfg) == hashlib.sha256(text.encode()).hexdigest()
    # tuple vs list, key order and ignored keys do not matter; a result-affecting value does
    same = dict(reversed(list(results.canonical_config(cfg).items())))
    same["sparsities"] = [0.5, 0.9]
    same["workdir"] = "/elsewhere"
    assert results.fingerprint(same) == results.fingerprint(cfg)
    assert results.fingerprint(make_config(seed=1)) != results.fingerprint(cfg)
    # dotted ignore paths reach into nested dicts
    assert results.fingerprint(make_config(**{"train.lr": 0.2}), ("workdir", "train.lr")) == results.fingerprint(
        cfg, ("workdir", "train.lr"))


def test_unserialisable_config_value_names_the_field():
    cfg = make_config()
    cfg.train.schedule = object()
    with pytest.raises(ValueError, match=r"train\.schedule"):
        results.canonical_config(cfg)


def test_config_diff_reports_changed_added_removed():
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": True}
    new = {"a": 1, "b": {"c": [1, 3], "d": "x"}, "added": None}
    assert results.config_diff(old, new, ()) == [
        ("added", "<absent>", "null"), ("b.c", "[1,2]", "[1,3]"), ("gone", "true", "<absent>")]


# ---- opening a workdir -------------------------------------------------------------------------------------------


def test_config_roundtrip(tmp_path):
    cfg = make_config()
    wd = Workdir.open(tmp_path / "wd", cfg)
    stored = json.loads((wd.path / "config.json").read_text())
    assert stored["config"] == results.canonical_config(cfg)
    assert stored["fingerprint"] == wd.fingerprint == results.fingerprint(cfg)
    assert sorted(stored["ignore"]) == sorted(results.DEFAULT_IGNORE)
    back = wd.config
    assert isinstance(back, ml_collections.ConfigDict)
    assert back.train.lr == 0.1 and list(back.sparsities) == [0.5, 0.9] and back.criteria == ["magnitude", "random"]
    assert results.fingerprint(back) == wd.fingerprint
    assert Workdir.existing(wd.path) == wd


def test_same_config_reopens_and_keeps_work(tmp_path):
    wd = Workdir.open(tmp_path / "wd", make_config())
    wd.append_table("runs", "a", part_frame(0))
    wd.mark_done("train")
    again = Workdir.open(tmp_path / "wd", make_config())
    assert again == wd and again.has("runs", "a") and again.is_done("train")
    # an ignored field may change; config.json then shows the new value
    moved = Workdir.open(tmp_path / "wd", make_config(workdir="/moved"))
    assert moved.fingerprint == wd.fingerprint and moved.has("runs", "a")
    assert json.loads((wd.path / "config.json").read_text())["config"]["workdir"] == "/moved"


def test_different_config_refused_naming_fields(tmp_path):
    Workdir.open(tmp_path / "wd", make_config())
    cfg = make_config(**{"train.lr": 0.01})
    cfg.new_field = 3
    with pytest.raises(ValueError) as err:
        Workdir.open(tmp_path / "wd", cfg)
    msg = str(err.value)
    assert "train.lr: 0.1 -> 0.01" in msg
    assert "new_field: <absent> -> 3" in msg
    assert "2 field(s) differ" in msg and "--fresh" in msg
    # nothing was touched
    assert json.loads((tmp_path / "wd" / "config.json").read_text())["config"]["train"]["lr"] == 0.1


def test_many_differences_are_truncated(tmp_path):
    Workdir.open(tmp_path / "wd", {f"k{i:02d}": i for i in range(20)})
    with pytest.raises(ValueError, match=r"20 field\(s\) differ(.|\n)*k07(.|\n)*and 12 more") as err:
        Workdir.open(tmp_path / "wd", {f"k{i:02d}": -i - 1 for i in range(20)})
    assert "k08" not in str(err.value)


def test_fresh_moves_old_contents_aside(tmp_path):
    wd = Workdir.open(tmp_path / "wd", make_config())
    wd.append_table("runs", "a", part_frame(0))
    new = Workdir.open(tmp_path / "wd", make_config(seed=5), fresh=True)
    assert new.keys("runs") == [] and sorted(p.name for p in new.path.iterdir()) == ["config.json"]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("wd.old-")]
    assert len(aside) == 1
    assert Workdir.existing(aside[0]).read_table("runs").equals(part_frame(0))
    # a second fresh start within the same second gets a distinct name; nothing is ever deleted
    Workdir.open(tmp_path / "wd", make_config(seed=6), fresh=True)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("wd.old-")]) == 2


def test_refuses_foreign_directories_and_files(tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="no config.json"):
        Workdir.open(foreign, make_config())
    assert (foreign / "thesis.tex").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        Workdir.open(tmp_path / "afile", make_config())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Workdir.open(empty, make_config()).path == empty


# ---- atomic writes ----------------------------------------------------------------------------------------------


def test_atomic_write_replaces_without_leftovers(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    results.atomic_write(target, b"one")
    results.atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert temp_files(tmp_path) == []
    with pytest.raises(ValueError, match="needs bytes"):
        results.atomic_write(target, "text")


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_crash_during_atomic_write_keeps_old_content(tmp_path, monkeypatch, failing):
    wd = Workdir.open(tmp_path / "wd", make_config())
    wd.write_text("report.md", "old")
    wd.append_table("runs", "a", part_frame(0))

    def boom(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(results.os, failing, boom)
    with pytest.raises(OSError, match="simulated crash"):
        wd.write_text("report.md", "new")
    with pytest.raises(OSError, match="simulated crash"):
        wd.append_table("runs", "a", part_frame(1), overwrite=True)
    with pytest.raises(OSError, match="simulated crash"):
        wd.append_table("runs", "b", part_frame(1))
    monkeypatch.undo()
    assert (wd.path / "report.md").read_text() == "old"
    assert wd.keys("runs") == ["a"] and wd.read_table("runs").equals(part_frame(0))
    assert temp_files(wd.path) == []


def test_stale_temp_file_of_dead_writer_is_ignored_and_cleaned(tmp_path):
    wd = Workdir.open(tmp_path / "wd", make_config())
    wd.append_table("runs", "a", part_frame(0))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = wd.path / "results" / "runs" / f".b.parquet.{dead.pid}.0123456789ab.tmp"
    stale.write_bytes(b"PAR1 half a file")
    mine = wd.path / "results" / "runs" / f".c.parquet.{os.getpid()}.0123456789ab.tmp"  # a live writer's
    mine.write_bytes(b"PAR1 in progress")
    assert wd.keys("runs") == ["a"] and not wd.has("runs", "b")
    assert len(wd.read_table("runs")) == 4
    Workdir.open(wd.path, make_config())
    assert not stale.exists() and mine.exists()


# ---- incremental tables -------------------------------------------------------------------------------------------


def test_append_read_resume_without_duplicates(tmp_path):
    all_keys = [results.make_key(seed=s, sparsity=p) for s in (0, 1) for p in (0.5, 0.9, 0.95)]
    wd = Workdir.open(tmp_path / "wd", make_config())
    for i, key in enumerate(all_keys[:3]):
        wd.append_table("pruned", key, part_frame(i))
    del wd  # "crash"

    wd = Workdir.open(tmp_path / "wd", make_config())
    assert wd.keys("pruned") == sorted(all_keys[:3])
    computed = []
    for i, key in enumerate(all_keys):
        if not wd.has("pruned", key):
            wd.append_table("pruned", key, part_frame(i))
            computed.append(key)
    assert computed == all_keys[3:]

    table = wd.read_table("pruned", key_column="key")
    expected = pd.concat(
        [part_frame(i).assign(key=k) for i, k in sorted(enumerate(all_keys), key=lambda ik: ik[1])],
        ignore_index=True)[["key", *part_frame(0).columns]]
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    assert not table.duplicated(["unit", "row"]).any() and len(table) == 4 * len(all_keys)
    assert wd.tables() == ["pruned"]


def test_existing_part_needs_overwrite(tmp_path):
    wd = Workdir.open(tmp_path / "wd", make_config())
    wd.append_table("runs", "a", part_frame(0))
    with pytest.raises(ValueError, match="already exists"):
        wd.append_table("runs", "a", part_frame(1))
    wd.append_table("runs", "a", part_frame(1), overwrite=True)
    assert wd.read_table("runs").equals(part_frame(1))


def test_index_handling_and_empty_tables(tmp_path):
    wd = Workdir.open(tmp_path / "wd", make_config())
    assert wd.read_table("nothing").empty and wd.keys("nothing") == []
    with pytest.raises(ValueError, match="reset_index"):
        wd.append_table("runs", "a", part_frame(0).set_index("unit"))
    filtered = part_frame(0)[lambda d: d.row >= 2]  # unnamed, non-range index: positional, dropped
    wd.append_table("runs", "a", filtered)
    pd.testing.assert_frame_equal(wd.read_table("runs"), filtered.reset_index(drop=True))
    # an empty unit of work still commits, and keeps its columns when alone
    wd.append_table("empty", "a", part_frame(0).iloc[:0])
    assert wd.has("empty", "a") and list(wd.read_table("empty").columns) == list(part_frame(0).columns)
    wd.append_table("runs", "b", part_frame(1).iloc[:0])
    assert len(wd.read_table("runs")) == 2


@pytest.mark.parametrize("bad", ["", "..", ".", "../x", "a/b", "a\\b", ".hidden", "a b", "x.tmp", "é", "-x",
                                 "k" * 201, 3, None])
def test_bad_keys_and_names_refused(tmp_path, bad):
    wd = Workdir.open(tmp_path / "wd", make_config())
    with pytest.raises(ValueError):
        wd.append_table("runs", bad, part_frame(0))
    with pytest.raises(ValueError):
        wd.has("runs", bad)
    with pytest.raises(ValueError):
        wd.append_table(bad, "a", part_frame(0))
    with pytest.raises(ValueError):
        wd.mark_done(bad)
    assert list((tmp_path / "wd").iterdir()) == [tmp_path / "wd" / "config.json"]


def test_relative_paths_stay_inside(tmp_path):
    wd = Workdir.open(tmp_path / "wd", make_config())
    for bad in ["../escape.txt", "/etc/passwd", "a/../../b", ""]:
        with pytest.raises(ValueError):
            wd.write_text(bad, "x")
        with pytest.raises(ValueError):
            wd.path_for(bad)
    assert not (tmp_path / "escape.txt").exists()
    p = wd.path_for("dense/params")
    assert p == wd.path / "artifacts" / "dense" / "params" and p.parent.is_dir() and not p.exists()
    wd.write_json("plots/meta.json", {"t": (1, np.float64(2.5))})
    assert wd.read_json("plots/meta.json") == {"t": [1, 2.5]}


def test_make_key():
    assert results.make_key(seed=0, criterion="magnitude", sparsity=0.9) == "seed=0,criterion=magnitude,sparsity=0.9"
    assert results.make_key(level=np.int32(3), lr=1e-05, on=True) == "level=3,lr=1e-05,on=True"
    with pytest.raises(ValueError, match="criterion"):
        results.make_key(criterion="a/b")
    with pytest.raises(ValueError):
        results.make_key(x=[1])


# ---- stage markers and timings -----------------------------------------------------------------------------------


def test_stage_markers(tmp_path):
    wd = Workdir.open(tmp_path / "wd", make_config())
    assert not wd.is_done("train") and wd.done_info("train") is None
    wd.mark_done("train", {"seeds": np.int64(4), "shape": (4, 10)})
    wd2 = Workdir.open(tmp_path / "wd", make_config())
    assert wd2.is_done("train") and wd2.done_info("train") == {"seeds": 4, "shape": [4, 10]}
    assert wd2.done_marker("train") == wd.path / "stages" / "train.done"


def test_stage_timings_merge_across_runs(tmp_path):
    wd = Workdir.open(tmp_path / "wd", make_config())
    with wd.stage_timer("train"):
        time.sleep(0.05)
    with pytest.raises(KeyboardInterrupt):
        with wd.stage_timer("prune"):
            raise KeyboardInterrupt
    wd = Workdir.open(tmp_path / "wd", make_config())  # resumed run
    with wd.stage_timer("train"):
        pass
    wd.record_timing("evaluate", 2.5)
    t = wd.stage_timings()
    assert [a["status"] for a in t["train"]] == ["ok", "ok"]
    assert t["prune"][0]["status"] == "interrupted"  # Ctrl-C is not an error: the rerun resumes
    assert t["train"][0]["seconds"] >= 0.05
    secs = wd.stage_seconds()
    assert secs["evaluate"] == 2.5
    assert secs["train"] == pytest.approx(t["train"][0]["seconds"] + t["train"][1]["seconds"])
    assert temp_files(wd.path) == []


# ---- a real crash ---------------------------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import os, stat, sys, time
    import numpy as np, pandas as pd
    from fairprune_jax.results import Workdir
    _fsync = os.fsync
    table_dir = os.path.join(sys.argv[1], "results", "t")
    def stalling_fsync(fd):  # once 8 parts are committed, the next part's data "hangs on a slow disk"
        committed = os.listdir(table_dir) if os.path.isdir(table_dir) else []
        if stat.S_ISREG(os.fstat(fd).st_mode) and sum(n.endswith(".parquet") for n in committed) >= 8:
            time.sleep(60)
        _fsync(fd)
    os.fsync = stalling_fsync
    wd = Workdir.open(sys.argv[1], {"seed": 0, "grid": [1, 2, 3]})
    rows = 20_000
    with wd.stage_timer("prune"):
        for i in range(100_000):
            key = f"unit={i:06d}"
            if wd.has("t", key):
                continue
            df = pd.DataFrame({"unit": np.full(rows, i), "x": np.arange(rows, dtype=np.float64) * i})
            wd.append_table("t", key, df)
    """
)


def test_sigkill_mid_loop_leaves_only_complete_parts(tmp_path):
    path = tmp_path / "wd"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # kill once 8 parts are committed and the next one is half written (its temp file exists)
            parts = path / "results" / "t"
            names = [p.name for p in parts.iterdir()] if parts.is_dir() else []
            if sum(n.endswith(".parquet") for n in names) >= 8 and any(n.endswith(".tmp") for n in names):
                break
            assert proc.poll() is None, "writer exited early"
            time.sleep(0.002)
        else:
            pytest.fail("writer made no progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert temp_files(path), "the kill should land mid-write"
    assert len(Workdir.existing(path).read_table("t")) % 20_000 == 0  # readable even before the rerun

    wd = Workdir.open(path, {"seed": 0, "grid": [1, 2, 3]})  # the rerun
    assert temp_files(path) == []  # the killed writer's half file is gone
    keys = wd.keys("t")
    assert len(keys) == 8 and keys == [f"unit={i:06d}" for i in range(len(keys))]
    table = wd.read_table("t")
    assert len(table) == 20_000 * len(keys)
    assert (table.groupby("unit").size() == 20_000).all()
    np.testing.assert_array_equal(table["x"].to_numpy(), np.concatenate(
        [np.arange(20_000, dtype=np.float64) * i for i in range(len(keys))]))
    assert [a["status"] for a in wd.stage_timings()["prune"]] == ["running"]  # the killed attempt left a trace


# ---- verified reads: checksums, range rules, moving corrupt parts aside ------------------------------------------


def recall_rows(seed: int = 0) -> pd.DataFrame:
    """A real recall-table part (evaluate.recall_table of random confusion counts: 2 seeds x 3 classes)."""
    from fairprune_jax import evaluate

    counts = np.random.default_rng(seed).integers(0, 50, (2, 1, 2, 3, 3))
    return evaluate.recall_table(counts, dataset="mnist", model="m", criteria=["mp"], seeds=[0, 1],
                                 requested_sparsity=np.array([0.5, 0.9]), actual_sparsity=np.array([0.5, 0.9]))


def flip(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture()
def notices(monkeypatch) -> list:
    said: list = []
    monkeypatch.setattr(verified, "notify", said.append)
    monkeypatch.setattr(verified, "_told_unverified", set())
    return said


def test_parts_carry_a_checksum_and_read_back_verified(tmp_path, notices):
    wd = Workdir.open(tmp_path / "wd", make_config())
    path = wd.append_table("recall", "m.mp", recall_rows())
    assert results.checksum_path(path).is_file()
    pd.testing.assert_frame_equal(wd.read_part("recall", "m.mp"), recall_rows())
    assert wd.has("recall", "m.mp") and wd.unverified() == [] and notices == []


def test_a_flipped_byte_is_refused_by_reads_and_moved_aside_by_has(tmp_path, notices):
    wd = Workdir.open(tmp_path / "wd", make_config())
    path = wd.append_table("recall", "m.mp", recall_rows())
    flip(path, 100)
    for read in (lambda: wd.read_table("recall"), lambda: wd.read_part("recall", "m.mp"),
                 lambda: wd.has("recall", "m.mp", repair=False)):
        with pytest.raises(results.CorruptFileError, match=r"m\.mp\.parquet is corrupt: its SHA-256 does not match"):
            read()
    assert path.is_file()  # reading never moves anything
    assert not wd.has("recall", "m.mp")  # a study's resume check: moved aside, so the unit is recomputed
    assert not path.exists() and wd.keys("recall") == []
    aside = [p.name for p in path.parent.iterdir()]
    assert len(aside) == 2 and all(".corrupt-" in n for n in aside)  # the part and its sidecar, kept
    assert len(notices) == 1 and notices[0].startswith(f"warning: {path} is corrupt") and "recomputed" in notices[0]
    wd.append_table("recall", "m.mp", recall_rows())  # the recomputed unit commits as usual
    assert wd.has("recall", "m.mp")


def test_opening_a_workdir_moves_every_corrupt_file_aside(tmp_path, notices):
    wd = Workdir.open(tmp_path / "wd", make_config())
    good = wd.append_table("recall", "a", recall_rows(1))
    bad = wd.append_table("recall", "b", recall_rows(2))
    meta = wd.write_json("meta.json", {"names": ["x"]})
    arrays = results.save_npz(wd.path_for("logits/dense.npz"), {"val": np.ones((2, 3))})
    flip(bad, 50)
    flip(meta, 3)
    arrays.write_bytes(arrays.read_bytes()[:-20])  # truncated
    problems = Workdir.open(tmp_path / "wd", make_config()).verify(repair=False)
    assert problems == []  # open() already moved them aside
    assert good.exists() and not bad.exists() and not meta.exists() and not arrays.exists()
    assert sorted(n.split(" is corrupt")[0].split("/")[-1] for n in notices) == ["b.parquet", "dense.npz",
                                                                                 "meta.json"]


def test_range_rules_catch_impossible_values_in_parts_without_a_checksum(tmp_path, notices):
    """Parts written before checksums read unverified (said once), but a value no table can hold is refused."""
    wd = Workdir.open(tmp_path / "wd", make_config())
    ok = wd.append_table("recall", "ok", recall_rows())
    results.checksum_path(ok).unlink()
    pd.testing.assert_frame_equal(wd.read_table("recall"), recall_rows())
    assert notices == [f"note: {wd.path} holds results written before checksums (e.g. results/recall/ok.parquet); "
                       "they are read unverified, checked by the range rules only"]
    assert wd.unverified() == [ok.relative_to(wd.path)]
    for column, value, match in (("recall", -62994.8, r"recall = -62994\.8 is not \[0, 1\] or NaN"),
                                 ("correct", 10**6, r"correct = 1e\+06 exceeds n"),
                                 ("recall", 0.25, r"recall = 0\.25 is not correct/n"),
                                 ("actual_sparsity", np.nan, r"actual_sparsity = nan is not \[0, 1\]"),
                                 ("n", -3, r"n = -3\.0 is not a whole number in \[0, inf\]"),
                                 ("recall", "next", r"recall = \S+ is not correct/n"),  # one ulp off
                                 ("recall", np.nan, r"recall is NaN for a network that did not diverge"),
                                 ("class", 0, r"the classes of its network are not 0\.\.2 once each"),
                                 ("accuracy", 0.5, r"accuracy = 0\.5 disagrees with the other rows of its network"),
                                 ("actual_sparsity", 0.25, r"actual_sparsity = 0\.25 disagrees with the other")):
        rows = recall_rows()
        if value == "next":
            value = np.nextafter(rows.loc[4, column], 0.0)
        rows.loc[4, column] = value
        if column == "class":
            rows.loc[[3, 4, 5], "class"] = [0, 0, 2]
        path = wd.part_path("recall", "legacy")
        path.write_bytes(rows.to_parquet(index=False))
        with pytest.raises(results.CorruptFileError, match=rf"legacy\.parquet is corrupt: row [34]: {match}"):
            wd.read_table("recall")
        with pytest.raises(ValueError, match=rf"refusing to store row [34]: {match}"):  # never written either
            wd.append_table("recall", "new", rows)
    assert len(notices) == 1


def test_a_damaged_parquet_without_checksum_is_named(tmp_path, notices):
    wd = Workdir.open(tmp_path / "wd", make_config())
    path = wd.append_table("recall", "old", recall_rows())
    results.checksum_path(path).unlink()
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(results.CorruptFileError, match=r"old\.parquet is corrupt: not a readable parquet file"):
        wd.read_table("recall")


def test_npz_arrays_round_trip_verified_and_a_truncated_file_is_one_error(tmp_path, notices):
    path = results.save_npz(tmp_path / "logits.npz", {"val": np.arange(6.0).reshape(2, 3), "test": np.ones(4)})
    got = results.load_npz(path)
    np.testing.assert_array_equal(got["val"], np.arange(6.0).reshape(2, 3))
    assert results.verified_file(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(results.CorruptFileError, match="logits.npz is corrupt: its SHA-256 does not match"):
        results.load_npz(path)
    results.checksum_path(path).unlink()  # an npz written before checksums: the zip itself must be readable
    with pytest.raises(results.CorruptFileError, match=r"logits.npz is corrupt: not a readable \.npz file"):
        results.load_npz(path)
    assert not results.verified_file(path) and not path.exists()  # moved aside


def test_json_files_are_checksummed_but_timings_are_not(tmp_path, notices):
    wd = Workdir.open(tmp_path / "wd", make_config())
    wd.write_json("meta.json", {"names": ["a", "b"]})
    assert wd.read_json("meta.json") == {"names": ["a", "b"]}
    flip(wd.file("meta.json"), 12)
    with pytest.raises(results.CorruptFileError, match="meta.json is corrupt"):
        wd.read_json("meta.json")
    wd.record_timing("dense", 1.0)
    assert not results.checksum_path(wd.file("timings.json")).exists()
