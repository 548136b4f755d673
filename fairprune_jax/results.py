"""Work directory of a sweep: config guard, atomic writes, incremental result tables, resume bookkeeping.

A sweep runs for many minutes and may be killed at any moment. Everything it writes goes through
:func:`atomic_write` (temporary file in the same directory, ``fsync``, ``os.replace``, directory ``fsync``),
so every file in the workdir is either its old complete content or its new complete content, never a torn
mix. Result tables are stored as one parquet *part* per unit of work::

    <workdir>/
      config.json                      resolved config + fingerprint (the guard)
      results/<table>/<key>.parquet    one part per unit of work; its existence is the commit point
      results/<table>/<key>.parquet.sha256   its SHA-256 (``sha256sum`` format), written just before it
      stages/<stage>.done              whole-stage markers
      artifacts/<name>                 paths handed to checkpointing code (orbax) via path_for
      timings.json                     wall time per stage, every attempt, merged across resumed runs

Rerunning the same command resumes: ``has(table, key)`` says which units are done, so only missing keys are
recomputed and no row is lost or duplicated. A workdir made with a config whose result-affecting fields differ is
refused (``ValueError`` naming the differing fields) unless ``fresh=True``, which moves the old directory aside to
``<path>.old-<timestamp>``; user data is never deleted.

Every read is verified: a part's bytes against its SHA-256, then its decoded values against the table's range and
consistency rules (`fairprune_jax.table_rules`: recall in [0, 1] and equal to correct / n, counts whole and
non-negative, sparsities in [0, 1], ...). A part that fails is named in one line: ``read_table`` / ``read_part``
raise :class:`CorruptFileError` (a report refuses rather than read it), while ``has`` and :meth:`Workdir.verify`
(run by :meth:`Workdir.open`, i.e. when a study starts) move it aside to ``<name>.corrupt-<timestamp>`` (never
deleted) and report it missing, so rerunning the study recomputes it. Parts written before checksums existed have
no ``.sha256``; they still read, checked by the range rules only, and the first one read says so once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import io
import json
import os
import pathlib
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pandas as pd

from fairprune_jax import table_rules
from fairprune_jax.config_fingerprint import DEFAULT_IGNORE, canonical_config, canonical_json, config_diff, \
    fingerprint, short, to_json_value
from fairprune_jax.files import CHECKSUM_SUFFIX, CORRUPT_TAG, CorruptFileError, atomic_write, checksum_path, \
    fsync_dir, make_key, read_checked, remove_stale_temp_files, validate_key, validate_relpath, \
    write_checked
from fairprune_jax.verified import _data_file, _first_line, _note_unverified, _set_aside, decode_part, load_npz, \
    save_npz, usable, verified_file

__all__ = [
    "DEFAULT_IGNORE",
    "CorruptFileError",
    "Workdir",
    "atomic_write",
    "canonical_config",
    "config_diff",
    "fingerprint",
    "load_npz",
    "make_key",
    "save_npz",
    "validate_key",
    "verified_file",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TIMINGS_FILE = "timings.json"
RESULTS_DIR = "results"
STAGES_DIR = "stages"
ARTIFACTS_DIR = "artifacts"
PART_SUFFIX = ".parquet"
LOCK_FILE = ".lock"

_MAX_DIFFS_SHOWN = 8
_timings_lock = threading.Lock()


# ----------------------------------------------------------------------------------------------------------
# Workdir
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workdir:
    """A sweep's work directory; make one with :meth:`Workdir.open` (or :meth:`Workdir.existing` to read)."""

    path: pathlib.Path
    fingerprint: str

    # ---- opening -------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        config: Any,
        *,
        fresh: bool = False,
        ignore: Iterable[str] = DEFAULT_IGNORE,
    ) -> Workdir:
        """Create or reopen the workdir for ``config``.

        * New or empty directory: created, ``config.json`` written.
        * Same result-affecting config (fingerprint over all keys but ``ignore``; dotted paths allowed): reopened,
          ``config.json`` refreshed if only ignored keys changed, stale temp files of killed writers removed, and
          every stored part and checksummed file verified (:meth:`verify`): corrupt ones are moved aside, so the
          run recomputes them.
        * Different config, or a non-empty directory that is not a workdir: ``ValueError`` naming the differing
          fields, unless ``fresh=True``, which renames the old directory to ``<path>.old-<timestamp>`` first.
          ``fresh=True`` with the same config resumes (nothing is moved).
        A lone :data:`LOCK_FILE` does not make a directory non-empty; hold :class:`WorkdirLock` around this call.
        """
        path = pathlib.Path(path).expanduser().absolute()
        ignore = tuple(ignore)
        new_config = canonical_config(config)
        fp = fingerprint(new_config, ignore)
        if path.exists() and not path.is_dir():
            raise ValueError(f"workdir {str(path)!r} exists and is not a directory")

        occupied = path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir())
        if fresh and occupied and cls.stored_fingerprint(path, ignore) != fp:
            cls.move_aside(path)
        elif occupied:
            stored = cls._read_config_file(path)
            old_config = stored["config"]
            if fingerprint(old_config, ignore) != fp:
                raise ValueError(cls._mismatch_message(path, old_config, new_config, ignore))
            wd = cls(path, fp)
            if canonical_json(old_config) != canonical_json(new_config) or stored.get("fingerprint") != fp:
                wd._write_config(new_config, ignore)
            remove_stale_temp_files(path)
            wd.verify(repair=True)
            return wd

        path.mkdir(parents=True, exist_ok=True)
        wd = cls(path, fp)
        wd._write_config(new_config, ignore)
        return wd

    @classmethod
    def existing(cls, path: str | os.PathLike) -> Workdir:
        """Open a workdir made earlier, without checking a config (for reports and analysis of finished runs)."""
        path = pathlib.Path(path).expanduser().absolute()
        stored = cls._read_config_file(path)
        return cls(path, str(stored.get("fingerprint", "")))

    @classmethod
    def stored_fingerprint(cls, path: str | os.PathLike, ignore: Iterable[str] = DEFAULT_IGNORE) -> str | None:
        """Fingerprint of the config stored in ``path`` (recomputed with ``ignore``), or None when there is none
        or it is unreadable."""
        try:
            return fingerprint(cls._read_config_file(pathlib.Path(path))["config"], tuple(ignore))
        except ValueError:
            return None

    @staticmethod
    def _read_config_file(path: pathlib.Path) -> dict[str, Any]:
        cfg_file = path / CONFIG_FILE
        if not cfg_file.is_file():
            raise ValueError(
                f"{str(path)!r} has no {CONFIG_FILE}, so it is not a workdir of this library; refusing to use "
                "it. Pick another --workdir, or pass --fresh to move its contents aside."
            )
        try:
            stored = json.loads(cfg_file.read_text(encoding="utf-8"))
            if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
                raise ValueError("missing 'config' object")
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{str(cfg_file)!r} is unreadable ({e}); pass --fresh to move the workdir aside") from e
        return stored

    @staticmethod
    def _mismatch_message(path: pathlib.Path, old: dict, new: dict, ignore: tuple[str, ...]) -> str:
        diffs = config_diff(old, new, ignore)
        lines = [
            f"workdir {str(path)!r} was made with a different config "
            f"(fingerprint {fingerprint(old, ignore)[:12]} != {fingerprint(new, ignore)[:12]}); "
            f"{len(diffs)} field(s) differ (stored -> now):"
        ]
        lines += [f"  {k}: {short(o)} -> {short(n)}" for k, o, n in diffs[:_MAX_DIFFS_SHOWN]]
        if len(diffs) > _MAX_DIFFS_SHOWN:
            lines.append(f"  ... and {len(diffs) - _MAX_DIFFS_SHOWN} more")
        lines.append(
            f"Pass --fresh (fresh=True) to move the old workdir aside to '{path.name}.old-<timestamp>' and start "
            "afresh, or choose another --workdir."
        )
        return "\n".join(lines)

    @staticmethod
    def move_aside(path: pathlib.Path) -> pathlib.Path:
        """Rename ``path`` to ``<path>.old-<timestamp>[-n]`` (never deletes); returns the new path."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = path.with_name(f"{path.name}.old-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.old-{stamp}-{n}")
        os.rename(path, target)
        fsync_dir(path.parent)
        return target

    def _write_config(self, config: dict[str, Any], ignore: tuple[str, ...]) -> None:
        doc = {"format": FORMAT_VERSION, "fingerprint": self.fingerprint, "ignore": sorted(ignore), "config": config}
        text = json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=True) + "\n"
        atomic_write(self.path / CONFIG_FILE, text.encode("utf-8"))

    @property
    def config(self) -> Any:
        """The stored config as an ``ml_collections.ConfigDict`` (tuples come back as lists)."""
        import ml_collections

        return ml_collections.ConfigDict(self._read_config_file(self.path)["config"])

    # ---- plain files -------------------------------------------------------------------------------------------

    def file(self, relpath: str | os.PathLike) -> pathlib.Path:
        """Absolute path of a file inside the workdir (segments validated like keys; no ``..``)."""
        return self.path.joinpath(*validate_relpath(relpath).parts)

    def write_bytes(self, relpath: str | os.PathLike, data: bytes, *, checksum: bool = True) -> pathlib.Path:
        """Atomically write ``data`` to ``relpath`` inside the workdir, with its ``.sha256`` unless ``checksum`` is
        False (files rewritten all the time, like ``timings.json``)."""
        return (write_checked if checksum else atomic_write)(self.file(relpath), data)

    def write_text(self, relpath: str | os.PathLike, text: str, *, checksum: bool = True) -> pathlib.Path:
        return self.write_bytes(relpath, text.encode("utf-8"), checksum=checksum)

    def write_json(self, relpath: str | os.PathLike, obj: Any, *, checksum: bool = True) -> pathlib.Path:
        """Atomically write ``obj`` (converted like a config: tuples, numpy scalars) as sorted, indented JSON."""
        text = json.dumps(to_json_value(obj, str(relpath)), sort_keys=True, indent=2, allow_nan=True) + "\n"
        return self.write_text(relpath, text, checksum=checksum)

    def read_bytes(self, relpath: str | os.PathLike) -> bytes:
        """A file of the workdir, verified against its ``.sha256`` when it has one (CorruptFileError otherwise)."""
        return read_checked(self.file(relpath))[0]

    def read_json(self, relpath: str | os.PathLike, default: Any = None) -> Any:
        """A JSON file of the workdir (``default`` when absent), verified like :meth:`read_bytes`."""
        f = self.file(relpath)
        if not f.is_file():
            return default
        try:
            return json.loads(self.read_bytes(relpath).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(f, f"not readable JSON ({_first_line(e)})") from e

    def path_for(self, name: str | os.PathLike) -> pathlib.Path:
        """Path for an array artefact (e.g. an orbax checkpoint directory) at ``artifacts/<name>``; the parent is
        created, the path itself is not (orbax creates it and renames into place, which commits it)."""
        p = self.path.joinpath(ARTIFACTS_DIR, *validate_relpath(name, what="artifact name").parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # ---- incremental tables ----------------------------------------------------------------------------------

    def part_path(self, name: str, key: str) -> pathlib.Path:
        """``results/<name>/<key>.parquet``; name and key are validated."""
        return self.path / RESULTS_DIR / validate_key(name, what="table name") / (validate_key(key) + PART_SUFFIX)

    def append_table(self, name: str, key: str, df: pd.DataFrame, *, overwrite: bool = False) -> pathlib.Path:
        """Commit the rows of one unit of work as part ``key`` of table ``name`` (atomic: the part exists
        completely or not at all). An existing part raises ``ValueError`` unless ``overwrite=True``.

        The index is not stored: an unnamed index (positional) is dropped; a named or multi-level index raises,
        since dropping it would lose data; ``reset_index()`` first. An empty frame is fine (marks the unit done).
        """
        path = self.part_path(name, key)
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"append_table({name!r}, {key!r}) needs a pandas DataFrame, got {type(df).__name__}")
        if df.index.nlevels > 1 or df.index.name is not None:
            raise ValueError(
                f"append_table({name!r}, {key!r}): the frame has a named index {list(df.index.names)}, which is "
                "not stored; call df.reset_index() first"
            )
        if not all(isinstance(c, str) for c in df.columns):
            raise ValueError(f"append_table({name!r}, {key!r}): column names must be str, got {list(df.columns)}")
        if path.exists() and not overwrite:
            raise ValueError(f"part {key!r} of table {name!r} already exists at {str(path)!r}; pass overwrite=True")
        problem = table_rules.violation(name, df.reset_index(drop=True))
        if problem:
            raise ValueError(f"append_table({name!r}, {key!r}): refusing to store {problem}, which no {name!r} "
                             "table holds (table_rules)")
        buf = io.BytesIO()
        df.to_parquet(buf, engine="pyarrow", index=False)
        return write_checked(path, buf.getvalue())

    def has(self, name: str, key: str, *, repair: bool = True) -> bool:
        """Whether unit ``key`` of table ``name`` is committed and reads back verified. A part that fails
        verification is moved aside (one line says so) and counts as missing, so the unit is recomputed;
        ``repair=False`` raises its :class:`CorruptFileError` instead."""
        path = self.part_path(name, key)
        return path.is_file() and usable(path, lambda: self._read_part(name, path), repair=repair)

    def read_part(self, name: str, key: str) -> pd.DataFrame:
        """The rows of one committed part, verified (checksum, decoding, range rules): a
        :class:`CorruptFileError` naming the file otherwise, a ValueError when there is no such part."""
        path = self.part_path(name, key)
        if not path.is_file():
            raise ValueError(f"part {key!r} of table {name!r} does not exist ({path})")
        return self._read_part(name, path)

    def _read_part(self, name: str, path: pathlib.Path) -> pd.DataFrame:
        data, verified = read_checked(path)
        df = decode_part(name, path, data, verified=verified)
        if not verified:
            _note_unverified(self.path, path)
        return df

    def unverified(self) -> list[pathlib.Path]:
        """Committed parts without a checksum (written before checksums existed), relative to the workdir."""
        return [self.part_path(t, k).relative_to(self.path) for t in self.tables() for k in self.keys(t)
                if not checksum_path(self.part_path(t, k)).is_file()]

    def verify(self, *, repair: bool = True) -> list[CorruptFileError]:
        """Check every committed part (checksum, decoding, range rules) and every other checksummed file; returns
        the problems found. ``repair``: move each failing file aside (one line each), so a rerun recomputes it."""
        problems: list[CorruptFileError] = []
        parts = {self.part_path(t, k): t for t in self.tables() for k in self.keys(t)}
        for path, table in parts.items():
            try:
                self._read_part(table, path)
            except CorruptFileError as e:
                problems.append(e)
        for side in sorted(self.path.rglob("*" + CHECKSUM_SUFFIX)):
            target = _data_file(side)
            if target in parts or not target.is_file() or target.name.startswith(".") or CORRUPT_TAG in target.name:
                continue
            try:
                if target.suffix == ".npz":
                    load_npz(target, root=self.path)
                else:
                    read_checked(target)
            except CorruptFileError as e:
                problems.append(e)
        if repair:
            for e in problems:
                _set_aside(_data_file(e.path), e)
        return problems

    def keys(self, name: str) -> list[str]:
        """Sorted keys of the committed parts of table ``name`` (temp files of unfinished writes are ignored)."""
        table_dir = self.path / RESULTS_DIR / validate_key(name, what="table name")
        if not table_dir.is_dir():
            return []
        return sorted(
            p.name[: -len(PART_SUFFIX)]
            for p in table_dir.iterdir()
            if p.name.endswith(PART_SUFFIX) and not p.name.startswith(".") and p.is_file()
        )

    def tables(self) -> list[str]:
        """Sorted names of the tables that have a directory under ``results/``."""
        root = self.path / RESULTS_DIR
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def read_table(self, name: str, *, key_column: str | None = None) -> pd.DataFrame:
        """All committed parts of ``name`` concatenated in key order (deterministic) with a fresh RangeIndex;
        an empty DataFrame when there are none. ``key_column`` adds each row's part key under that name.
        Every part is verified first: a corrupt one is a :class:`CorruptFileError` naming it (nothing is read
        from it; rerunning the study moves it aside and recomputes it)."""
        frames = []
        for key in self.keys(name):
            df = self._read_part(name, self.part_path(name, key))
            if key_column is not None:
                if key_column in df.columns:
                    raise ValueError(f"key_column {key_column!r} clashes with a column of table {name!r}")
                df.insert(0, key_column, pd.Series([key] * len(df), dtype=object))
            frames.append(df)
        if not frames:
            return pd.DataFrame()
        nonempty = [f for f in frames if len(f)]
        if not nonempty:
            return frames[0].iloc[:0].reset_index(drop=True)
        return pd.concat(nonempty, ignore_index=True)

    # ---- stage markers -----------------------------------------------------------------------------------------

    def done_marker(self, stage: str) -> pathlib.Path:
        """``stages/<stage>.done``."""
        return self.path / STAGES_DIR / (validate_key(stage, what="stage") + ".done")

    def mark_done(self, stage: str, info: Mapping[str, Any] | None = None) -> pathlib.Path:
        """Atomically mark a whole stage finished, with optional JSON-able ``info`` (counts, paths)."""
        doc = {"stage": stage, "finished": _now_iso(), "info": to_json_value(dict(info or {}), "info")}
        return atomic_write(self.done_marker(stage), (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode())

    def is_done(self, stage: str) -> bool:
        return self.done_marker(stage).is_file()

    def done_info(self, stage: str) -> dict[str, Any] | None:
        """The ``info`` given to :meth:`mark_done`, or None if the stage is not done."""
        marker = self.done_marker(stage)
        return json.loads(marker.read_text())["info"] if marker.is_file() else None

    # ---- timings -------------------------------------------------------------------------------------------------

    def stage_timings(self) -> dict[str, list[dict[str, Any]]]:
        """``timings.json``: per stage, every attempt ``{"started", "seconds", "status", "pid", "attempt"}`` across
        runs. ``status`` is ``"ok"``, ``"error: <Exception>"``, ``"interrupted"`` (Ctrl-C / SIGTERM), ``"running"``
        (still running), or ``"killed"`` (left running by a run killed hard; closed by the next run's claim).
        Updates are read-merge-write within one process; do not time stages from two processes at once."""
        return self.read_json(TIMINGS_FILE, default={})

    def stage_seconds(self) -> dict[str, float]:
        """Total recorded wall seconds per stage, summed over attempts (killed attempts count as 0)."""
        return {s: float(sum(a.get("seconds") or 0.0 for a in runs)) for s, runs in self.stage_timings().items()}

    def record_timing(self, stage: str, seconds: float, *, status: str = "ok", started: str | None = None) -> None:
        """Append one finished attempt of ``stage`` to ``timings.json`` (read-merge-write, atomic)."""
        entry = {"started": started or _now_iso(), "seconds": float(seconds), "status": status, "pid": os.getpid()}
        self._update_timing(stage, None, entry)

    @contextlib.contextmanager
    def stage_timer(self, stage: str) -> Iterator[None]:
        """Time the ``with`` block as an attempt of ``stage``: recorded as ``running`` on entry (so a killed
        run leaves a trace) and updated with its wall seconds and ``ok``/``error: ...`` status on exit."""
        validate_key(stage, what="stage")
        attempt = uuid.uuid4().hex
        entry = {"started": _now_iso(), "seconds": None, "status": "running", "pid": os.getpid()}
        self._update_timing(stage, attempt, entry)
        t0 = time.perf_counter()
        status = "ok"
        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            status = "interrupted"
            raise
        except BaseException as e:
            status = f"error: {type(e).__name__}"
            raise
        finally:
            self._update_timing(stage, attempt, {**entry, "seconds": time.perf_counter() - t0, "status": status})

    def close_stale_attempts(self) -> int:
        """Mark attempts left ``running`` by another process (killed hard) as ``killed``; call it while holding
        the workdir lock, so no other process can still be running them. Returns how many were closed."""
        with _timings_lock:
            timings, n = self.stage_timings(), 0
            for runs in timings.values():
                for entry in runs:
                    if entry.get("status") == "running" and entry.get("pid") != os.getpid():
                        entry["status"], n = "killed", n + 1
            if n:
                self.write_json(TIMINGS_FILE, timings, checksum=False)
        return n

    def _update_timing(self, stage: str, attempt: str | None, entry: dict[str, Any]) -> None:
        validate_key(stage, what="stage")
        with _timings_lock:
            timings = self.stage_timings()
            runs = timings.setdefault(stage, [])
            entry = {**entry, "attempt": attempt or uuid.uuid4().hex}
            for i, old in enumerate(runs):
                if attempt is not None and old.get("attempt") == attempt:
                    runs[i] = entry
                    break
            else:
                runs.append(entry)
            self.write_json(TIMINGS_FILE, timings, checksum=False)


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")

