"""fairprune_jax.files: safe keys and relative paths, directory fsync, stale temporary files."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fairprune_jax import files


def test_validate_key_and_make_key():
    assert files.validate_key("seed=0,sparsity=0.9") == "seed=0,sparsity=0.9"
    for bad in ("", "..", ".hidden", "a/b", "x.tmp", "a" * 201, 3):
        with pytest.raises(ValueError):
            files.validate_key(bad)
    assert files.make_key(seed=np.int64(2), sparsity=0.5, crit="up", flag=True) == \
        "seed=2,sparsity=0.5,crit=up,flag=True"
    with pytest.raises(ValueError, match="field 'crit'"):
        files.make_key(crit="a b")
    with pytest.raises(ValueError, match="at least one field"):
        files.make_key()


def test_validate_relpath():
    assert files.validate_relpath("plots/alpha.png").parts == ("plots", "alpha.png")
    for bad in ("/etc/passwd", "../up", "a/../b", "", "plots/.x"):
        with pytest.raises(ValueError, match="artifact"):
            files.validate_relpath(bad, what="artifact")


def test_fsync_dir_is_a_no_op_where_it_cannot_open(tmp_path):
    files.fsync_dir(tmp_path)
    files.fsync_dir(tmp_path / "missing")  # no error


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = files.atomic_write(tmp_path / "sub" / "f.bin", b"one")
    files.atomic_write(p, b"two")
    assert p.read_bytes() == b"two" and sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]
    with pytest.raises(ValueError, match="needs bytes"):
        files.atomic_write(p, "text")


def test_remove_stale_temp_files_only_touches_dead_writers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "results" / f".a.parquet.{dead.pid}.0123456789ab{files.TMP_SUFFIX}"
    live = tmp_path / f".b.parquet.{os.getpid()}.0123456789ab{files.TMP_SUFFIX}"
    other = tmp_path / ".notes.tmp"  # not a writer's temp name
    stale.parent.mkdir()
    for f in (stale, live, other):
        f.write_bytes(b"x")
    assert files.remove_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
