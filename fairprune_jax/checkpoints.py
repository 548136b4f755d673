"""Checkpoints of pytrees (dense and pruned variables, masks, optimizer/iterative state) with orbax.

One checkpoint = one named pytree in a sub-directory `<directory>/<name>`. Orbax writes it into a staging
directory (``.<name>.staging``); once orbax has finished, a manifest of the SHA-256 of every file (`SHA256SUMS`,
``sha256sum`` format: ``cd <name> && sha256sum -c SHA256SUMS`` checks it by hand) is written into it and the
directory is renamed to `<name>`. So a checkpoint exists completely, with its manifest, or not at all (a crash
mid-write leaves no `<name>`), which is what resuming a long run needs.

Reads are verified: `exists` and `restore` check every file against the manifest first. A checkpoint that fails
(a changed, truncated, missing or extra file, or one orbax cannot read) is named in one line: `exists` moves it aside
to ``<name>.corrupt-<timestamp>`` (never deleted) and answers False, so a rerun recomputes it; `restore` raises
`files.CorruptFileError` after moving it aside the same way. Checkpoints written before manifests existed still
restore (unverified; said once). A save that runs out of disk space is one `files.DiskFullError` line, without
orbax's thread tracebacks. Restoring with `like` (a concrete or abstract tree, e.g. `jax.eval_shape` output) returns
exactly that structure (NamedTuples, optax states) and checks shapes and dtypes; without it, orbax returns nested
dicts/lists of arrays.

    save(workdir / "ckpt", "dense_s0-10", variables)
    variables = restore(workdir / "ckpt", "dense_s0-10", like=variables_like)
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax import files
from fairprune_jax.files import CORRUPT_TAG, CorruptFileError
from fairprune_jax.models import path_str

PyTree = Any
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
MANIFEST = "SHA256SUMS"
_STAGING = ".staging"
_verified: dict[str, tuple] = {}  # checkpoint path -> the (file, size, mtime) listing last verified
_told_unverified: set[str] = set()


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def _path(directory: str | os.PathLike, name: str) -> Path:
    if (not isinstance(name, str) or not _NAME.match(name) or name.endswith(".tmp") or ".orbax-checkpoint-tmp" in name
            or CORRUPT_TAG in name):
        raise ValueError(f"name: {name!r} is not a valid checkpoint name (letters, digits, _.=+- ; no '/')")
    return Path(directory).absolute() / name


def _staging(path: Path) -> Path:
    """Where `save` has orbax write before the checkpoint is committed (the same name on every process)."""
    return path.with_name(f".{path.name}{_STAGING}")


class _DropOrbaxErrors(logging.Filter):
    """Drops the error records (with tracebacks) orbax's writer threads log when a save fails: the failure is
    raised to the caller as one exception anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    log, drop = logging.getLogger("absl"), _DropOrbaxErrors()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


_orphans = {"last": 0.0}


def _orphaned(unraisable: Any) -> bool:
    """Whether an unraisable error is the aftermath of a failed orbax call: a TensorStore callback into the asyncio
    loop orbax has closed, or one of orbax's own coroutines left unfinished by the failure."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    frames, tb = [code.co_filename] if code is not None else [], unraisable.exc_traceback
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return any(f"{os.sep}orbax{os.sep}" in f for f in frames)


def _drop_orphaned_callback_errors() -> None:
    """Installed for every orbax call: when one fails, TensorStore still completes the operations it had started
    and calls back into the asyncio loop orbax has already closed, and orbax's unfinished coroutines are collected;
    each reports an error through `sys.unraisablehook` ("Exception ignored ...", a traceback apiece). Those are
    consequences of the failure being raised, so they are dropped (other unraisable errors still reach the
    previous hook)."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_orphaned_callbacks", False):
        return

    def hook(unraisable: Any) -> None:
        if _orphaned(unraisable):
            _orphans["last"] = time.monotonic()
            return
        previous(unraisable)

    hook._drops_orphaned_callbacks = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _drain_orphans(quiet_s: float = 1.0, max_s: float = 10.0) -> None:
    """After a failed orbax call: wait until no orphaned callback has come for ``quiet_s`` seconds (at most
    ``max_s``), so that none is left to print while the interpreter shuts down."""
    start = time.monotonic()
    _orphans["last"] = max(_orphans["last"], start)
    while time.monotonic() - _orphans["last"] < quiet_s and time.monotonic() - start < max_s:
        time.sleep(0.05)


def _listing(path: Path) -> dict[str, Path]:
    """Every file under a checkpoint directory but the manifest, by POSIX path relative to it."""
    return {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()
            and p.relative_to(path).as_posix() != MANIFEST}


def _write_manifest(path: Path) -> None:
    text = "".join(files.checksum_line(files.sha256_file(p), rel) for rel, p in _listing(path).items())
    files.atomic_write(path / MANIFEST, text.encode())


def verify(directory: str | os.PathLike, name: str) -> bool:
    """Check checkpoint `name` against its manifest: True when verified, False when it has none (written before
    manifests; only orbax's own commit marker is checked). A changed, truncated, missing or extra file is a
    `files.CorruptFileError` naming the checkpoint and the file. Repeated calls skip files that did not change."""
    path = _path(directory, name)
    if not path.is_dir():
        raise ValueError(f"{path}: no such checkpoint")
    manifest = path / MANIFEST
    listing = _listing(path)
    if not manifest.is_file():
        if "commit_success.txt" not in listing and "_CHECKPOINT_METADATA" not in listing:
            raise CorruptFileError(path, "it has neither a manifest nor orbax's commit marker (an unfinished "
                                         "write?)")
        return False
    stamp = tuple((rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in [(MANIFEST, manifest),
                                                                             *listing.items()])
    if _verified.get(str(path)) == stamp:
        return True
    try:
        sums = files.parse_checksum_lines(manifest.read_bytes(), manifest)
    except CorruptFileError as e:
        raise CorruptFileError(path, f"{MANIFEST}: {e.reason}") from None
    missing, extra = sorted(set(sums) - set(listing)), sorted(set(listing) - set(sums))
    if missing:
        raise CorruptFileError(path, f"{missing[0]} is missing ({len(missing)} file(s) of its {MANIFEST})")
    if extra:
        raise CorruptFileError(path, f"{extra[0]} is not in its {MANIFEST}")
    for rel, digest in sums.items():
        if files.sha256_file(listing[rel]) != digest:
            raise CorruptFileError(path, f"{rel} does not match its SHA-256 in {MANIFEST} (changed or truncated, "
                                         f"{listing[rel].stat().st_size} bytes now)")
    _verified[str(path)] = stamp
    return True


def _set_aside(path: Path, err: CorruptFileError, *, say: bool = True) -> Path:
    moved = files.move_aside(path)
    _verified.pop(str(path), None)
    if say:
        print(f"warning: checkpoint {path} is corrupt ({err.reason}); moved it to {moved.name}, it will be "
              "recomputed", file=sys.stderr, flush=True)
    return moved


def _note_unverified(path: Path) -> None:
    if str(path.parent) not in _told_unverified:
        _told_unverified.add(str(path.parent))
        print(f"note: checkpoint {path} was written before checkpoint manifests; it is restored unverified",
              file=sys.stderr, flush=True)


def _to_arrays(tree: PyTree) -> PyTree:
    """Every leaf as a jax array; typed PRNG keys and non-numeric leaves are a ValueError naming the path."""

    from fairprune_jax import multihost

    multi = multihost.active()

    def conv(path: tuple, x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            raise ValueError(f"tree: leaf {path_str(path)!r} is a typed PRNG key; save jax.random.key_data(k)")
        # one process: spread arrays (a seed mesh) are saved whole, so any device layout restores them
        spread = isinstance(x, jax.Array) and not multi and len(x.sharding.device_set) > 1
        arr = np.asarray(x) if not isinstance(x, jax.Array) or spread else x
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"tree: leaf {path_str(path)!r} has non-numeric dtype {arr.dtype}")
        return jnp.asarray(arr)

    return _global(jax.tree_util.tree_map_with_path(conv, tree))


def _global(tree: PyTree) -> PyTree:
    """In a multi-host run, host-local leaves (the same on every process) as arrays replicated over all devices,
    which orbax writes once; global leaves stay as they are (each process writes its shards)."""
    from fairprune_jax import multihost, sharding

    if not multihost.active():
        return tree
    return sharding.place(tree, sharding.replicated(sharding.seed_mesh()))


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    """What to restore a leaf as: in a multi-host run replicated over all devices (every process reads it whole)."""
    from fairprune_jax import multihost, sharding

    where = sharding.replicated(sharding.seed_mesh()) if multihost.active() else None
    return jax.ShapeDtypeStruct(np.shape(x), _dtype(x), sharding=where)


def exists(directory: str | os.PathLike, name: str, *, repair: bool = True) -> bool:
    """Whether a complete, verified checkpoint `name` exists in `directory` (in a multi-host run: process 0's
    answer). One that fails `verify` is moved aside with a one-line notice and counts as missing, so it is
    recomputed; ``repair=False`` raises its `files.CorruptFileError` instead (reports: never modify a workdir)."""
    from fairprune_jax import multihost

    path = _path(directory, name)
    ok = False
    if multihost.is_primary() and path.is_dir():
        try:
            verify(directory, name)
            ok = True
        except CorruptFileError as e:
            if not repair:
                raise
            _set_aside(path, e)
    return multihost.agree(ok)


def names(directory: str | os.PathLike) -> list[str]:
    """Sorted names of the complete checkpoints in `directory` (temporary, unfinished and corrupt ones excluded;
    not verified: `exists` is)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and _NAME.match(p.name)
                  and ".orbax-checkpoint-tmp" not in p.name and CORRUPT_TAG not in p.name)


def save(directory: str | os.PathLike, name: str, tree: PyTree, *, overwrite: bool = True) -> Path:
    """Write `tree` as checkpoint `name` under `directory` (created if needed); returns its path.

    With `overwrite=False` an existing checkpoint is a ValueError. Leaves are saved as arrays (bool masks
    stay bool); typed PRNG keys must be converted with `jax.random.key_data` first.
    """
    from fairprune_jax import multihost

    path = _path(directory, name)
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: checkpoint exists (pass overwrite=True to replace it)")
    import orbax.checkpoint as ocp

    arrays = _to_arrays(tree)
    stage, primary = _staging(path), multihost.is_primary()
    if primary:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(stage)  # left by a save that was killed before it committed
    multihost.barrier(f"checkpoint-stage:{name}")
    _drop_orphaned_callback_errors()
    ckpt = _checkpointer()
    try:
        with _quiet_orbax():
            ckpt.save(stage, args=ocp.args.StandardSave(arrays), force=True)
    except Exception as e:  # noqa: BLE001 - orbax / TensorStore raise ValueError, OSError, RuntimeError
        _drain_orphans()
        if primary:
            _remove(stage)
        if files.disk_full(e):
            raise files.disk_full_error(path, e) from e
        raise
    finally:
        ckpt.close()
    if primary:
        try:
            _write_manifest(stage)
            old = path.with_name(f".{path.name}.replaced") if path.exists() else None
            if old is not None:
                _remove(old)
                os.rename(path, old)
            os.rename(stage, path)  # the commit
            files.fsync_dir(path.parent)
            if old is not None:
                _remove(old)
        except OSError as e:
            if files.disk_full(e):
                _remove(stage)
                raise files.disk_full_error(path, e) from e
            raise
        _verified.pop(str(path), None)
    multihost.barrier(f"checkpoint-commit:{name}")
    return path


def _remove(path: Path) -> None:
    """Delete a staging or replaced checkpoint directory (never a committed or corrupt one)."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    for tmp in path.parent.glob(f"{path.name}.orbax-checkpoint-tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def restore(directory: str | os.PathLike, name: str, like: PyTree | None = None, *, repair: bool = True) -> PyTree:
    """Read checkpoint `name`; with `like` (arrays or ShapeDtypeStructs) in exactly that structure, checked.

    A missing checkpoint, or one whose structure/shapes differ from `like`, is a ValueError naming the path. It is
    verified first (`verify`); a corrupt one, or one orbax cannot read, is a `files.CorruptFileError` naming it,
    after it was moved aside (``repair=False``: left in place), so rerunning the command recomputes it.
    """
    from fairprune_jax import multihost

    path = _path(directory, name)
    if not multihost.agree(path.is_dir()):
        raise ValueError(f"{path}: no such checkpoint")
    problem: CorruptFileError | None = None
    verified = True
    if multihost.is_primary():
        try:
            verified = verify(directory, name)
        except CorruptFileError as e:
            problem = e
    if multihost.agree(problem is not None):
        raise _corrupt(path, problem or CorruptFileError(path, "process 0 found it corrupt"), repair)
    if not verified:
        _note_unverified(path)
    import orbax.checkpoint as ocp

    _drop_orphaned_callback_errors()
    ckpt = _checkpointer()
    try:
        with _quiet_orbax():
            if like is None:
                return ckpt.restore(path)
            abstract = jax.tree.map(_abstract, like)
            try:
                return ckpt.restore(path, args=ocp.args.StandardRestore(abstract))
            except (ValueError, KeyError, TypeError) as e:
                if verified or not _unreadable(e):
                    raise ValueError(f"{path}: does not match the requested structure: {e}") from e
                raise
    except Exception as e:  # noqa: BLE001 - TensorStore / orbax errors of a damaged checkpoint
        _drain_orphans()
        if verified or (isinstance(e, ValueError) and not _unreadable(e)):
            raise  # its bytes are the ones written: not damage, so not moved aside
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        first = first.split(" See full TensorStore details")[0][:200]
        raise _corrupt(path, CorruptFileError(path, f"orbax cannot read it ({type(e).__name__}: {first})"),
                       repair) from e
    finally:
        ckpt.close()


def _unreadable(e: BaseException) -> bool:
    """Whether an orbax / TensorStore error about a checkpoint without manifest says its bytes are damaged (not
    that the requested structure differs)."""
    text = str(e)
    return any(w in text for w in ("DATA_LOSS", "OUT_OF_RANGE", "Error reading", "Error opening", "corrupt",
                                   "Unexpected end", "Failed to decode", "Invalid", "NOT_FOUND", "truncated"))


def _corrupt(path: Path, err: CorruptFileError, repair: bool) -> CorruptFileError:
    """The error to raise for a corrupt checkpoint; with ``repair`` it is first moved aside (process 0)."""
    from fairprune_jax import multihost

    if repair and multihost.is_primary() and path.is_dir():
        moved = _set_aside(path, err, say=False)  # the error raised says it
        return CorruptFileError(path, f"{err.reason}; moved it to {moved.name}",
                                "rerun the same command to recompute it")
    return err


def _dtype(x: Any) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
