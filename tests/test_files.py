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


# ---- checksums -------------------------------------------------------------------------------------------------


def test_write_checked_writes_a_sha256sum_sidecar_and_read_checked_verifies_it(tmp_path):
    path = files.write_checked(tmp_path / "part.parquet", b"payload")
    side = files.checksum_path(path)
    assert side.name == "part.parquet.sha256"
    import hashlib
    assert side.read_text() == f"{hashlib.sha256(b'payload').hexdigest()}  part.parquet\n"
    # the format `sha256sum -c` reads, so it can be checked by hand
    assert subprocess.run(["sha256sum", "-c", side.name], cwd=tmp_path, capture_output=True).returncode == 0
    assert files.read_checked(path) == (b"payload", True)


@pytest.mark.parametrize("damage", ["flip", "truncate", "bad sidecar", "other name"])
def test_read_checked_names_a_changed_file(tmp_path, damage):
    path = files.write_checked(tmp_path / "x.bin", bytes(range(200)))
    side = files.checksum_path(path)
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[77] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:150])
    elif damage == "bad sidecar":
        side.write_text("not a checksum\n")
    else:
        side.write_text(side.read_text().replace("x.bin", "y.bin"))
    with pytest.raises(files.CorruptFileError) as e:
        files.read_checked(path)
    assert str(e.value).startswith(str(path if damage in ("flip", "truncate") else side))
    assert "rerun the study command" in str(e.value)


def test_file_without_sidecar_reads_unverified(tmp_path):
    (tmp_path / "old.parquet").write_bytes(b"legacy")
    assert files.read_checked(tmp_path / "old.parquet") == (b"legacy", False)


def test_move_aside_keeps_the_file_and_its_sidecar(tmp_path):
    path = files.write_checked(tmp_path / "a.parquet", b"1")
    moved = files.move_aside(path)
    again = files.move_aside(files.write_checked(tmp_path / "a.parquet", b"2"))
    assert not path.exists() and not files.checksum_path(path).exists()
    assert files.CORRUPT_TAG in moved.name and moved != again
    assert moved.read_bytes() == b"1" and again.read_bytes() == b"2"
    assert files.checksum_path(moved).read_text().endswith("  a.parquet\n")  # kept as written, for inspection


def test_a_full_disk_is_one_disk_full_error_naming_the_file(tmp_path):
    """RLIMIT_FSIZE makes writes fail with EFBIG, the way a full disk fails them with ENOSPC."""
    code = ("import resource, signal, sys; from fairprune_jax import files\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
            "try:\n    files.atomic_write(sys.argv[1], b'x' * 5000)\n"
            "except files.DiskFullError as e:\n    print(e)\n")
    target = tmp_path / "big.bin"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.startswith(f"disk full while writing {target}"), proc.stderr
    assert not target.exists() and not list(tmp_path.iterdir())  # the temporary file is gone too
    assert files.disk_full(OSError(28, "No space left on device"))
    assert files.disk_full(ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device"))
    assert not files.disk_full(OSError(2, "No such file"))
