"""Boundary checks shared by every entry that takes data or population trees (train, scores, evaluate, protocols).

Why one module: the same mistakes (labels out of range, unnormalised images, a mask population whose leading axes
do not match the variables) must give the same clear error, naming the offending argument, wherever they enter.

Policy for images: a wrong shape, a non-floating dtype or a NaN/inf is an error; values that do not look
normalised (per-channel mean far from 0 or spread far from 1 over the whole split, e.g. raw 0–255 or 0–16 pixels,
or [0, 1] pixels never standardised) give a `UserWarning` naming the fix, because a legitimate dataset can have
unusual statistics. With a `DatasetInfo` at hand, `data.check_normalized` is the strict (error) version.
Traced arrays (inside jit/vmap) get the static checks (shape, dtype) only.
"""
from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax.data import Pixels
from fairprune_jax.models import path_str

PyTree = Any

# Normalised images have per-channel mean ~0 and std ~1 over a split; outside these bounds we warn.
MAX_ABS_MEAN = 1.0
STD_RANGE = (0.4, 2.5)


def _concrete(x: Any) -> bool:
    """Values can be read (not a tracer inside jit/vmap, nor an abstract `jax.ShapeDtypeStruct`)."""
    return not isinstance(x, (jax.core.Tracer, jax.ShapeDtypeStruct))


def _dtype(x: Any) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def check_labels(labels: Any, num_classes: int, *, n: int | None = None, multilabel: bool = False,
                 name: str = "labels") -> None:
    """ValueError naming `name` unless `labels` are int class indices [N] in [0, num_classes), or, for a
    multi-label head, {0, 1} (int or bool) targets [N, num_classes]. `n` is the expected number of examples."""
    shape, dtype = tuple(np.shape(labels)), _dtype(labels)
    want = (n if n is not None else "N",) + ((num_classes,) if multilabel else ())
    if len(shape) != len(want) or (n is not None and shape[0] != n) or (multilabel and shape[1] != num_classes):
        raise ValueError(f"{name}: shape {shape}, expected [{', '.join(map(str, want))}]")
    kinds = (np.integer, np.bool_) if multilabel else (np.integer,)
    if not any(np.issubdtype(dtype, k) for k in kinds):
        what = "int or bool {0, 1} targets" if multilabel else "int class indices"
        raise ValueError(f"{name}: dtype {dtype}, expected {what} (e.g. labels.astype(np.int32))")
    if not _concrete(labels) or not np.prod(shape):
        return
    with jax.ensure_compile_time_eval():  # concrete labels closed over inside a jit are still checked
        lo, hi = (int(v) for v in jax.device_get((jnp.min(labels), jnp.max(labels))))
    top = 2 if multilabel else num_classes
    if lo < 0 or hi >= top:
        rule = "binary {0, 1}" if multilabel else f"in [0, {num_classes})"
        raise ValueError(f"{name}: values must be {rule}, got range [{lo}, {hi}]")


@jax.jit
def _image_stats(x: jax.Array) -> tuple[jax.Array, ...]:
    """(all finite, per-channel mean, per-channel mean of squares, min, max) in fused passes (no image-sized
    temporaries, which matters for large splits on an accelerator)."""
    axes = tuple(range(x.ndim - 1))
    return jnp.all(jnp.isfinite(x)), jnp.mean(x, axes), jnp.mean(jnp.square(x), axes), jnp.min(x), jnp.max(x)


def check_images(images: Any, input_shape: tuple[int, ...], *, n: int | None = None, name: str = "images") -> None:
    """ValueError naming `name` unless `images` are floating [N, *input_shape] and finite; a UserWarning when
    their statistics do not look normalised (module doc)."""
    shape = tuple(np.shape(images))
    if len(shape) < 1 or shape[1:] != tuple(input_shape) or (n is not None and shape[0] != n):
        raise ValueError(f"{name}: shape {shape} is not [{'N' if n is None else n}, *{tuple(input_shape)}]")
    if isinstance(images, Pixels):  # uint8 pixels normalised when read: finite and normalised by construction
        return
    dtype = _dtype(images)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{name}: dtype {dtype} is not floating (normalise uint8 images with data.normalize)")
    if not _concrete(images) or not shape[0]:
        return
    with jax.ensure_compile_time_eval():
        finite, mean, sq, lo, hi = (np.asarray(v, np.float64) for v in
                                    jax.device_get(_image_stats(jnp.asarray(images, jnp.float32))))
    if not finite:
        raise ValueError(f"{name}: contains NaN or infinite values")
    std = np.sqrt(np.maximum(sq - mean ** 2, 0.0))
    spread = std[std > 0]
    if np.any(np.abs(mean) > MAX_ABS_MEAN) or np.any((spread < STD_RANGE[0]) | (spread > STD_RANGE[1])):
        warnings.warn(f"{name}: values look unnormalised (range [{lo:.3g}, {hi:.3g}], per-channel mean "
                      f"{np.round(mean, 3).tolist()}, std {np.round(std, 3).tolist()}); models expect "
                      f"(x/255 - mean)/std per channel: data.normalize(uint8_images, info.mean, info.std)",
                      UserWarning, stacklevel=3)


def leading_shape(tree: PyTree, base: PyTree, what: str) -> tuple[int, ...]:
    """Leading axes shared by every leaf of `tree` on top of the single-model shapes in `base` (ValueError naming
    `what` and the leaf otherwise)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    base_leaves = jax.tree_util.tree_flatten_with_path(base)[0]
    paths, base_paths = [path_str(p) for p, _ in leaves], [path_str(p) for p, _ in base_leaves]
    if paths != base_paths:
        extra, missing = sorted(set(paths) - set(base_paths)), sorted(set(base_paths) - set(paths))
        raise ValueError(f"{what}: leaves differ from the model's: unexpected {extra}, missing {missing}")
    lead: tuple[int, ...] | None = None
    for (path, leaf), (_, ref) in zip(leaves, base_leaves):
        shape, ref_shape = tuple(np.shape(leaf)), tuple(ref.shape)
        k = len(shape) - len(ref_shape)
        if k < 0 or shape[k:] != ref_shape:
            raise ValueError(f"{what}/{path_str(path)}: shape {shape} does not end with the model's {ref_shape}")
        if lead is None:
            lead = shape[:k]
        elif shape[:k] != lead:
            raise ValueError(f"{what}/{path_str(path)}: leading axes {shape[:k]} differ from {lead} of other leaves")
    return lead if lead is not None else ()


def check_bool_leaves(tree: PyTree, what: str = "masks") -> None:
    """ValueError naming the first leaf of `tree` whose dtype is not bool."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = _dtype(leaf)
        if dtype != np.bool_:
            raise ValueError(f"{what}/{path_str(path)}: dtype {dtype} is not bool")
