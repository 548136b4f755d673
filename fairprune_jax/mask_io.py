"""Masks on disk and in other libraries' formats: `.npz` files keyed by tree path (`save`, `load`, which also
broadcasts leading population axes) and jaxpruner-style masks (`to_jaxpruner`, `from_jaxpruner`).

Kept apart from `fairprune_jax.masks` (the mask algebra used inside compiled code) because these run on the host.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax.masks import Mask, PathPredicate, PyTree, _dtype, _flatten, _is_tracer, _shape
from fairprune_jax.models import path_str

_FORMAT_KEY = "__fairprune_mask_format__"
_FORMAT_VERSION = 1


def save(path: str | os.PathLike, mask: Mask) -> None:
    """Write a mask as ``.npz`` keyed by path strings (atomically: temp file + rename)."""
    arrays: dict[str, np.ndarray] = {}
    for p, m in _flatten(mask)[0]:
        key = path_str(p)
        if _dtype(m) != np.bool_:
            raise ValueError(f"mask: leaf {key!r} has dtype {_dtype(m)}, expected bool")
        if key in arrays or key == _FORMAT_KEY:
            raise ValueError(f"mask: key path {key!r} is not unique as a string")
        arrays[key] = np.asarray(m)
    arrays[_FORMAT_KEY] = np.asarray(_FORMAT_VERSION)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: str | os.PathLike, like_params: PyTree | None = None) -> Mask:
    """Read a mask written by ``save``.

    With ``like_params`` the result has its tree structure and is validated against it (keys, bool, shapes);
    without it the result is a nested dict built from the path strings. Leading axes broadcast as in
    ``evaluate``: the file may hold a population with more leading axes than ``like_params`` (one model's params,
    or dense ``[S]`` params for masks ``[S, M, P]``), the same extra axes on every leaf.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: mask file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError ...
        raise ValueError(f"{path}: not a readable mask .npz ({e})") from e
    if _FORMAT_KEY not in arrays:
        raise ValueError(f"{path}: not a fairprune_jax mask file (no {_FORMAT_KEY})")
    arrays.pop(_FORMAT_KEY)
    for k in sorted(arrays):
        if arrays[k].dtype != np.bool_:
            raise ValueError(f"{path}: leaf {k!r} has dtype {arrays[k].dtype}, expected bool")
    if like_params is None:
        tree: dict = {}
        for k in sorted(arrays):
            *parents, leaf = k.split("/")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ValueError(f"{path}: key {k!r} conflicts with a leaf")
            node[leaf] = jnp.asarray(arrays[k])
        return tree
    p_leaves, treedef = _flatten(like_params)
    keys = [path_str(p) for p, _ in p_leaves]
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing leaf {missing[0]!r} of params")
    extra = sorted(set(arrays) - set(keys))
    if extra:
        raise ValueError(f"{path}: has leaf {extra[0]!r} not in params")
    mask = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(arrays[k]) for k in keys])
    splits: set | None = None  # {(j, extra)} with leaf shape = params[:j] + extra + params[j:], on every leaf
    for k, (_, px) in zip(keys, p_leaves):
        here = _lead_splits(arrays[k].shape, _shape(px))
        splits = here if splits is None else splits & here
        if not splits:
            raise ValueError(f"{path}: leaf {k!r} has shape {arrays[k].shape}, params has {_shape(px)} (leading "
                             f"axes must be params' with the same extra axes on every leaf)")
    return mask


def _lead_splits(shape: tuple[int, ...], pshape: tuple[int, ...]) -> set:
    """Ways to read `shape` as `pshape` with extra axes inserted after its first j axes: {(j, extra)}."""
    k = len(shape) - len(pshape)
    if k < 0:
        return set()
    return {(j, shape[j:j + k]) for j in range(len(pshape) + 1)
            if shape[:j] == pshape[:j] and shape[j + k:] == pshape[j:]}


def to_jaxpruner(mask: Mask, prunable: PathPredicate) -> dict:
    """jaxpruner-style masks: the params structure, uint8 arrays on prunable leaves, ``None`` on dense leaves."""
    return jax.tree_util.tree_map_with_path(
        lambda p, m: jnp.asarray(m, jnp.uint8) if prunable(p, m) else None, mask)


def from_jaxpruner(jp_mask: Any, params: PyTree) -> Mask:
    """Inverse of ``to_jaxpruner``: ``None`` -> all-True, 0/1 arrays -> bool; validated against ``params``."""
    j_leaves = jax.tree_util.tree_flatten_with_path(jp_mask, is_leaf=lambda x: x is None)[0]
    p_leaves, treedef = _flatten(params)
    j_map = {path_str(p): x for p, x in j_leaves}
    if len(j_map) != len(j_leaves):
        raise ValueError("jp_mask: key paths are not unique as strings")
    keys = [path_str(p) for p, _ in p_leaves]
    missing = [k for k in keys if k not in j_map]
    if missing:
        raise ValueError(f"jp_mask: missing leaf {missing[0]!r} of params")
    extra = [path_str(p) for p, _ in j_leaves if path_str(p) not in set(keys)]
    if extra:
        raise ValueError(f"jp_mask: has leaf {extra[0]!r} not in params")
    out = []
    for k, (_, px) in zip(keys, p_leaves):
        x = j_map[k]
        if x is None:
            out.append(jnp.ones(_shape(px), jnp.bool_))
            continue
        if _shape(x) != _shape(px):
            raise ValueError(f"jp_mask: leaf {k!r} has shape {_shape(x)}, params has {_shape(px)}")
        if not _is_tracer(x):
            arr = np.asarray(x)
            if not np.all((arr == 0) | (arr == 1)):
                raise ValueError(f"jp_mask: leaf {k!r} has values other than 0 and 1")
        out.append(jnp.asarray(x) != 0)
    return jax.tree_util.tree_unflatten(treedef, out)
