"""Safe file names, crash-proof writes and verified reads: what a workdir needs from the file system.

Keys name result parts and artifacts, so they must be portable file-name stems (:func:`validate_key`,
:func:`make_key`). Every file is written by :func:`atomic_write` (temporary file in the same directory, ``fsync``,
``os.replace``, directory ``fsync``), so a reader sees the old content or the new, never a torn mix; temporary
files of writers that died mid-write are recognised by their pid and removed (:func:`remove_stale_temp_files`).

Stored results are also checksummed: :func:`write_checked` writes ``<name>.sha256`` (``sha256sum`` format, so
``sha256sum -c`` verifies it by hand) and then the file, whose rename commits both; :func:`read_checked` returns the
bytes only when they match, else raises :class:`CorruptFileError` naming the file. A file without a sidecar was
written before checksums existed: it reads as *unverified*. :func:`move_aside` renames a corrupt file (and its
sidecar) to ``<name>.corrupt-<timestamp>`` so the unit is recomputed; nothing is ever deleted.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import re
import time
import uuid
from typing import Any

import numpy as np

__all__ = ["CHECKSUM_SUFFIX", "CORRUPT_TAG", "CorruptFileError", "DiskFullError", "TMP_SUFFIX", "atomic_write",
           "checksum_path", "fsync_dir", "make_key", "move_aside", "read_checked", "remove_stale_temp_files",
           "sha256_bytes", "sha256_file", "validate_key", "validate_relpath", "write_checked"]

TMP_SUFFIX = ".tmp"
CHECKSUM_SUFFIX = ".sha256"
CORRUPT_TAG = ".corrupt-"
RERUN_HINT = "rerun the study command: it moves the file aside and recomputes it"
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


class CorruptFileError(ValueError):
    """A stored file (result part, checkpoint, array file) that fails verification: checksum, decoding or a
    range check. ``path`` is the file, ``reason`` what is wrong; the message says both and what to do."""

    def __init__(self, path: str | os.PathLike, reason: str, hint: str = RERUN_HINT):
        self.path, self.reason, self.hint = pathlib.Path(path), reason, hint
        super().__init__(f"{self.path} is corrupt: {reason}" + (f"; {hint}" if hint else ""))


class DiskFullError(OSError):
    """A write failed because the disk (or the file-size limit) is full; the message names the path."""


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or the text of an error from C++, e.g. TensorStore's) means no space left / file too large."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(e).lower()
    return any(w in text for w in ("no space left", "disk quota exceeded", "file too large"))


def disk_full_error(path: str | os.PathLike, e: BaseException) -> DiskFullError:
    """The one-line error of a write to ``path`` that ran out of space."""
    text = str(e).lower()
    why = (os.strerror(e.errno) if isinstance(e, OSError) and e.errno
           else "file too large" if "file too large" in text
           else "disk quota exceeded" if "quota" in text else "no space left on device")
    err = DiskFullError(f"disk full while writing {path} ({why}); free some space and rerun the same command to "
                        "resume")
    err.errno = getattr(e, "errno", None) or errno.ENOSPC
    return err


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
    try:
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
    except OSError as e:
        if disk_full(e):
            raise disk_full_error(path, e) from e
        raise
    fsync_dir(path.parent)
    return path


# ----------------------------------------------------------------------------------------------------------
# Checksums
# ----------------------------------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, *, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in blocks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_path(path: str | os.PathLike) -> pathlib.Path:
    """The sidecar ``<name>.sha256`` of ``path``."""
    path = pathlib.Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


_SUM_LINE = re.compile(r"([0-9a-f]{64})  (\S.*)")


def checksum_line(digest: str, name: str) -> str:
    """One ``sha256sum`` line: digest, two spaces, file name."""
    return f"{digest}  {name}\n"


def parse_checksum_lines(text: bytes, where: pathlib.Path) -> dict[str, str]:
    """``{name: digest}`` from ``sha256sum`` lines; CorruptFileError naming ``where`` when unreadable."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise CorruptFileError(where, "its checksum list is not text") from None
    out: dict[str, str] = {}
    for i, line in enumerate(lines, 1):
        m = _SUM_LINE.fullmatch(line)
        if not m or m.group(2) in out:
            raise CorruptFileError(where, f"line {i} of its checksum list is unreadable")
        out[m.group(2)] = m.group(1)
    if not out or not text.endswith(b"\n"):
        raise CorruptFileError(where, "its checksum list is empty or truncated")
    return out


def write_checked(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Atomically write ``data`` to ``path`` with its SHA-256 in ``<name>.sha256``: the sidecar first, then the
    file, whose rename is the commit (a crash in between leaves an unused sidecar, or, when overwriting, a
    mismatch that marks the old file corrupt, so it is recomputed)."""
    path = pathlib.Path(path)
    atomic_write(checksum_path(path), checksum_line(sha256_bytes(bytes(data)), path.name).encode())
    return atomic_write(path, data)


def read_checked(path: str | os.PathLike) -> tuple[bytes, bool]:
    """``(bytes, verified)`` of a file: verified against its sidecar, or ``verified=False`` when it has none
    (written before checksums). A mismatch or an unreadable sidecar is a :class:`CorruptFileError`."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    side = checksum_path(path)
    if not side.is_file():
        return data, False
    sums = parse_checksum_lines(side.read_bytes(), side)
    if list(sums) != [path.name]:
        raise CorruptFileError(side, f"it names {list(sums)[:1]} instead of {path.name!r}")
    if sha256_bytes(data) != sums[path.name]:
        raise CorruptFileError(path, f"its SHA-256 does not match {side.name} (the file changed or was truncated "
                                     f"after it was written; {len(data)} bytes now)")
    return data, True


def move_aside(path: str | os.PathLike) -> pathlib.Path:
    """Rename a corrupt file or folder to ``<name>.corrupt-<timestamp>[-n]`` (its ``.sha256`` sidecar along with
    it); never deletes. Returns the new path."""
    path = pathlib.Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}{CORRUPT_TAG}{stamp}")
    n = 1
    while target.exists() or checksum_path(target).exists():
        n += 1
        target = path.with_name(f"{path.name}{CORRUPT_TAG}{stamp}-{n}")
    os.rename(path, target)
    side = checksum_path(path)
    if side.is_file():
        os.rename(side, checksum_path(target))
    fsync_dir(path.parent)
    return target


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
