"""Verified reads of stored files: a result part decoded and checked by its table's rules (`decode_part`), arrays as
checksummed ``.npz`` files (`save_npz` / `load_npz`), a file checked against its ``.sha256`` (`verified_file`), and
the one-line notices of what was read unverified or moved aside (`notify`).
"""
from __future__ import annotations

import io
import os
import pathlib
import sys
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from fairprune_jax import table_rules
from fairprune_jax.files import CHECKSUM_SUFFIX, CorruptFileError, move_aside, read_checked, write_checked

def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Where one-line notices go (a part moved aside, unverified parts); tests and callers may replace it.
notify: Callable[[str], None] = _stderr
_told_unverified: set[str] = set()


def _note_unverified(root: pathlib.Path, path: pathlib.Path) -> None:
    """Say once per workdir (per process) that it holds files written before checksums."""
    if str(root) not in _told_unverified:
        _told_unverified.add(str(root))
        notify(f"note: {root} holds results written before checksums (e.g. {path.relative_to(root)}); they are "
               "read unverified, checked by the range rules only")


def _set_aside(path: pathlib.Path, err: CorruptFileError) -> pathlib.Path:
    path = _data_file(path)
    moved = move_aside(path)
    notify(f"warning: {path} is corrupt ({err.reason}); moved it to {moved.name}, it will be recomputed")
    return moved


def _data_file(path: pathlib.Path) -> pathlib.Path:
    """The file a ``.sha256`` sidecar belongs to (``path`` itself when it is not a sidecar)."""
    return path.with_name(path.name[: -len(CHECKSUM_SUFFIX)]) if path.name.endswith(CHECKSUM_SUFFIX) else path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def decode_part(table: str, path: pathlib.Path, data: bytes, *, verified: bool = True) -> pd.DataFrame:
    """A part's rows from its bytes, checked by the table's rules (`table_rules`); CorruptFileError naming
    ``path`` when the bytes are not parquet or a value is impossible. Bytes that were not ``verified`` by their
    checksum are also validated in full (e.g. UTF-8 of every string, which pyarrow otherwise checks lazily)."""
    import pyarrow.parquet as pq

    try:
        if not verified:
            pq.read_table(io.BytesIO(data)).validate(full=True)
        df = pd.read_parquet(io.BytesIO(data), engine="pyarrow")
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, snappy/thrift errors, ...
        raise CorruptFileError(path, f"not a readable parquet file ({_first_line(e)})") from e
    try:
        problem = table_rules.violation(table, df)
    except Exception as e:  # noqa: BLE001 - a value pyarrow decodes only when it is used
        raise CorruptFileError(path, f"holds unreadable values ({_first_line(e)})") from e
    if problem:
        raise CorruptFileError(path, f"{problem}, which no {table!r} table holds")
    return df


# ----------------------------------------------------------------------------------------------------------
# Verified array files (npz)
# ----------------------------------------------------------------------------------------------------------


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> pathlib.Path:
    """Write arrays as an uncompressed ``.npz`` with its ``.sha256`` sidecar (atomic, like a result part)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_checked(path, buf.getvalue())


def load_npz(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` written by :func:`save_npz`, verified against its checksum (an older file without
    one by the zip's own CRC-32s); a truncated or changed file is a :class:`CorruptFileError` naming it."""
    path = pathlib.Path(path)
    data, verified = read_checked(path)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CorruptFileError(path, f"not a readable .npz file ({_first_line(e)})") from e
    if not verified:
        _note_unverified(pathlib.Path(root) if root else path.parent, path)
    return out


def verified_file(path: str | os.PathLike, *, repair: bool = True) -> bool:
    """Whether ``path`` exists and matches its ``.sha256`` (a file without one counts when it exists; ``.npz``
    files are also decoded). One that fails is moved aside with a one-line notice and reported missing
    (``repair=False``: the :class:`CorruptFileError` is raised instead)."""
    path = pathlib.Path(path)
    return path.is_file() and usable(path, (lambda: load_npz(path)) if path.suffix == ".npz"
                                     else (lambda: read_checked(path)), repair=repair)


def usable(path: pathlib.Path, read: Callable[[], Any], *, repair: bool = True) -> bool:
    """Whether ``read()`` (a verified read of ``path``) succeeds; a :class:`CorruptFileError` moves ``path`` aside
    with a one-line notice and answers False (``repair=False``: the error is raised instead)."""
    try:
        read()
    except CorruptFileError as e:
        if not repair:
            raise
        _set_aside(path, e)
        return False
    return True
