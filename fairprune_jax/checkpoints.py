"""Checkpoints of pytrees (dense and pruned variables, masks, optimizer/iterative state) with orbax.

One checkpoint = one named pytree in a sub-directory `<directory>/<name>`. Orbax writes into a temporary
directory and renames it on completion, so a checkpoint either exists completely or not at all (a crash
mid-write leaves no `<name>`), which is what resuming a long run needs. Restoring with `like` (a concrete or
abstract tree, e.g. `jax.eval_shape` output) returns exactly that structure (NamedTuples, optax states) and
checks shapes and dtypes; without it, orbax returns nested dicts/lists of arrays.

    save(workdir / "ckpt", "dense_s0-10", variables)
    variables = restore(workdir / "ckpt", "dense_s0-10", like=variables_like)
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax.models import path_str

PyTree = Any
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def _path(directory: str | os.PathLike, name: str) -> Path:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".tmp") or ".orbax-checkpoint-tmp" in name:
        raise ValueError(f"name: {name!r} is not a valid checkpoint name (letters, digits, _.=+- ; no '/')")
    return Path(directory).absolute() / name


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


def exists(directory: str | os.PathLike, name: str) -> bool:
    """Whether a complete checkpoint `name` exists in `directory` (in a multi-host run: process 0's answer)."""
    from fairprune_jax import multihost

    return multihost.agree(_path(directory, name).is_dir())


def names(directory: str | os.PathLike) -> list[str]:
    """Sorted names of the complete checkpoints in `directory` (temporary, unfinished ones excluded)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and _NAME.match(p.name)
                  and ".orbax-checkpoint-tmp" not in p.name)


def save(directory: str | os.PathLike, name: str, tree: PyTree, *, overwrite: bool = True) -> Path:
    """Write `tree` as checkpoint `name` under `directory` (created if needed); returns its path.

    With `overwrite=False` an existing checkpoint is a ValueError. Leaves are saved as arrays (bool masks
    stay bool); typed PRNG keys must be converted with `jax.random.key_data` first.
    """
    path = _path(directory, name)
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: checkpoint exists (pass overwrite=True to replace it)")
    import orbax.checkpoint as ocp

    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = _checkpointer()
    ckpt.save(path, args=ocp.args.StandardSave(_to_arrays(tree)), force=overwrite)
    ckpt.close()
    return path


def restore(directory: str | os.PathLike, name: str, like: PyTree | None = None) -> PyTree:
    """Read checkpoint `name`; with `like` (arrays or ShapeDtypeStructs) in exactly that structure, checked.

    A missing checkpoint, or one whose structure/shapes differ from `like`, is a ValueError naming the path.
    """
    path = _path(directory, name)
    if not path.is_dir():
        raise ValueError(f"{path}: no such checkpoint")
    import orbax.checkpoint as ocp

    ckpt = _checkpointer()
    try:
        if like is None:
            return ckpt.restore(path)
        abstract = jax.tree.map(_abstract, like)
        try:
            return ckpt.restore(path, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: does not match the requested structure: {e}") from e
    finally:
        ckpt.close()


def _dtype(x: Any) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
