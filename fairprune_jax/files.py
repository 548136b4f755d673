"""Safe file names and crash-proof writes: what a workdir needs from the file system.

Keys name result parts and artifacts, so they must be portable file-name stems (:func:`validate_key`,
:func:`make_key`). Every file is written by :func:`atomic_write` (temporary file in the same directory, ``fsync``,
``os.replace``, directory ``fsync``), so a reader sees the old content or the new, never a torn mix; temporary
files of writers that died mid-write are recognised by their pid and removed (:func:`remove_stale_temp_files`).
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import uuid
from typing import Any

import numpy as np

__all__ = ["TMP_SUFFIX", "atomic_write", "fsync_dir", "make_key", "remove_stale_temp_files", "validate_key",
           "validate_relpath"]

TMP_SUFFIX = ".tmp"
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+-]{0,199}")
_TMP_RE = re.compile(r"\..+\.(\d+)\.[0-9a-f]{12}" + re.escape(TMP_SUFFIX))


# ----------------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------------


def validate_key(key: str, *, what: str = "key") -> str:
    """Return ``key`` if it is a safe, portable file name stem, else raise ``ValueError``.

    Allowed: 1-200 characters from ``A-Z a-z 0-9 _ . , = + -``, starting with a letter or digit (so it can never
    be ``..``, hidden, or clash with a temporary file), and not ending in ``.tmp``. Note that on case-insensitive
    file systems (macOS, Windows) keys differing only in case collide: keep keys lower-case.
    """
    if not isinstance(key, str):
        raise ValueError(f"{what} must be a str, got {type(key).__name__}: {key!r}")
    if not _KEY_RE.fullmatch(key) or key.endswith(TMP_SUFFIX):
        raise ValueError(
            f"{what} {key!r} is not a safe file name: use 1-200 characters from [A-Za-z0-9_.,=+-], "
            f"starting with a letter or digit and not ending in {TMP_SUFFIX!r}"
        )
    return key


def make_key(**fields: Any) -> str:
    """Build a readable, safe key from named parts, in the order given: ``make_key(seed=0, sparsity=0.9)``
    gives ``"seed=0,sparsity=0.9"``. Values may be str, int, float, bool or numpy scalars."""
    if not fields:
        raise ValueError("make_key needs at least one field")
    parts = []
    for name, value in fields.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float):
            text = repr(value)
        elif isinstance(value, (str, int)):  # bool is an int
            text = str(value)
        else:
            raise ValueError(f"make_key field {name!r} has unsupported type {type(value).__name__}: {value!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", text):
            raise ValueError(f"make_key field {name!r}={text!r} contains characters not allowed in a key")
        parts.append(f"{name}={text}")
    return validate_key(",".join(parts))


def validate_relpath(relpath: str | os.PathLike, *, what: str = "path") -> pathlib.PurePosixPath:
    """A relative path inside the workdir made of safe segments (no absolute paths, no ``..``)."""
    rel = pathlib.PurePosixPath(os.fspath(relpath))
    if rel.is_absolute() or not rel.parts:
        raise ValueError(f"{what} {os.fspath(relpath)!r} must be a non-empty path relative to the workdir")
    for part in rel.parts:
        validate_key(part, what=f"{what} segment")
    return rel


# ----------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------


def fsync_dir(directory: pathlib.Path) -> None:
    """Persist a rename: fsync the directory entry (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` to ``path`` so that readers (and a later run after a crash) see the old file or the new
    one, never a partial one: temp file in the same directory, fsync, ``os.replace``, fsync of the directory.

    The temp file is named ``.<name>.<pid>.<hex>.tmp`` and removed if anything fails before the rename.
    """
    path = pathlib.Path(path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"atomic_write({str(path)!r}) needs bytes, got {type(data).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs here (always True on Windows, where ``os.kill(pid, 0)`` kills)."""
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temp_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Delete temp files left by writers killed mid-write (their pid no longer runs). Returns what was removed."""
    removed = []
    for tmp in root.rglob(f".*{TMP_SUFFIX}"):
        m = _TMP_RE.fullmatch(tmp.name)
        if m and tmp.is_file() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed
