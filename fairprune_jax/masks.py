"""Pruning masks as pure functions over pytrees.

Mask convention (everyone relies on it)
---------------------------------------
- A mask has exactly the tree structure of a Flax ``params`` tree (the "params" collection only); every leaf is
  a ``bool`` array of that param's shape. ``True`` = kept, ``False`` = pruned.
- Leaves that are never pruned (biases, normalisation params, an excluded output layer) are all-True.
- Which leaves are prunable is a static predicate ``prunable(path, leaf) -> bool`` on ``jax.tree_util`` key paths
  (``ModelSpec.prunable(exclude_output)``); the same predicate is used by every criterion.
- Every function here works on ONE model. Populations (params ``[S, ...]``, masks ``[S, M, P, ...]``) are handled
  with ``jax.vmap``; ``sparsity``, ``layer_sparsity`` and ``count_zeros`` take ``lead=k`` to do it for the first k
  axes. The predicate of ``ModelSpec.prunable`` knows the model's shapes: the functions that rank or count refuse a
  stacked tree (naming the fix), so ``threshold`` cannot silently rank the seeds of a population together;
  elementwise ones (``complement``, ``mask_io.to_jaxpruner``) accept populations as they are. Files and other
  libraries' formats: ``fairprune_jax.mask_io``.

Threshold rule (docs/methods.md §5, "Library threshold rule")
-------------------------------------------------------
``threshold`` zeroes exactly ``n_zero = round(s * N)`` weights (N = number of prunable weights for
``scope="global"``; per layer ``round(s_l * N_l)`` for ``scope="layerwise"``). Prior-pruned weights go first, then
the rest in ascending score order (scores compared as float32), ties broken by flat index in tree-flatten
order (dict keys sorted, i.e. sorted-path order, then row-major within a leaf). The result is always
intersected with ``prior``, so a pruned weight is never revived. A CONCRETE sparsity whose count is below the
prior's number of zeros is a ValueError naming both sparsities; a TRACED one cannot raise, and then the prior is
returned unchanged (it keeps its larger number of zeros).

``round`` is Python's ``round`` (halves to even) of the exact product of the value ``s`` holds and N
(``counts.n_zero``, also ``masks.n_zero``): concrete values (a Python float is float64) on the host, traced ones
with exact integer arithmetic under jit, whatever ``jax_enable_x64``. A traced float32 ``s`` is the float32 nearest
the Python float it came from, so its count can differ by one from the concrete float64 count when ``s * N`` lies
within ``N * 3e-8`` of a half-integer (enable x64 to trace float64 sparsities).

Implementation: scores become int32 keys (monotone float bits; prior-pruned = INT32_MIN) and are sorted once per
model. For ``n = n_zero(s)`` the n-th smallest key v is read from the sorted keys; keys < v are pruned, and among
keys == v the first ``n - #(key < v)`` in index order (found block-wise). Only this last step depends on ``s``,
and under ``jax.vmap`` over the sparsity the sort stays unbatched, so a whole grid of sparsities costs one sort
per seed. ``method="rank"`` is the textbook alternative (stable argsort -> rank, mask = rank >= n), same masks,
several times slower on CPU; tests check that both agree.

Traced sparsities (docs/methods.md §5, "Traced sparsities")
-----------------------------------------------------------
A sparsity outside [0, 1) or NaN has no mask, and ``threshold`` never returns one for it. Concrete values (Python,
numpy, JAX arrays outside a trace) are refused eagerly with a ``ValueError`` naming the argument
(``check_sparsity``). A traced value (inside ``jax.vmap`` / ``jax.jit``, e.g. the grid pattern
``jax.vmap(lambda s: threshold(sc, s, ...))(grid)``) is checked when the program runs: it passes through a host
callback (``checked_sparsity``, ``jax.pure_callback``, one call per batch) that fails the call for a bad value, and
the mask is computed from what the callback returns, so the check cannot be optimised away (exactly 1.0 passes:
float32 rounds every value within 3e-8 of 1 up to it, so a traced 0.99999999 holds 1.0). The error is a
``jax.errors.JaxRuntimeError`` whose message ends with ``SparsityRangeError: sparsity: must be in [0, 1), got 1.5``
(raised when the result is computed: under vmap alone at once, under jit by the call). The library's pipelines pass
``counts.ExactSparsity`` values instead, which ``counts.exact`` range-checks on the host when it builds them, so
the compiled protocols carry no callback.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax.counts import ExactSparsity, n_zero, value
from fairprune_jax.models import path_str
from fairprune_jax.ranking import METHODS, keep_lowest, sort_keys  # noqa: F401 - re-exported

Mask = Any  # pytree of bool arrays with the structure of params
PyTree = Any
PathPredicate = Callable[[tuple, Any], bool]

SCOPES = ("global", "layerwise")


# ----------------------------------------------------------------------------------------------- helpers


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _flatten(tree: PyTree) -> tuple[list[tuple[tuple, Any]], Any]:
    return jax.tree_util.tree_flatten_with_path(tree)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def _dtype(x: Any) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _eligible(leaves: list[tuple[tuple, Any]], prunable: PathPredicate) -> list[bool]:
    return [bool(prunable(p, x)) for p, x in leaves]


# ----------------------------------------------------------------------------------------------- validation


def check_sparsity(s: Any, *, name: str = "sparsity") -> None:
    """ValueError unless every value of a concrete ``s`` is finite and in [0, 1) (traced: `checked_sparsity`)."""
    if isinstance(s, ExactSparsity):
        if any(_is_tracer(p) for p in s):
            return
        s = value(s)
    if _is_tracer(s):
        return
    try:
        arr = np.asarray(s, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected a number in [0, 1), got {s!r}") from e
    if arr.size == 0:
        raise ValueError(f"{name}: empty")
    bad = ~np.isfinite(arr) | (arr < 0) | (arr >= 1)
    if np.any(bad):
        raise ValueError(f"{name}: must be in [0, 1), got {arr[bad].ravel()[0]!r}")


class SparsityRangeError(ValueError):
    """A traced sparsity that is NaN or outside [0, 1) (raised by `checked_sparsity`'s host callback)."""


class _QuietRangeErrors(logging.Filter):
    """JAX logs every exception of a host callback with its traceback before raising it; ours is raised anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SparsityRangeError)


def _refuse_bad_sparsity(s: Any, *, name: str) -> np.ndarray:
    """Host side of `checked_sparsity`: the values unchanged, or an error naming the first bad one."""
    arr = np.asarray(s)
    wide = arr.astype(np.float64)
    bad = ~np.isfinite(wide) | (wide < 0) | (wide > 1)
    if np.any(bad):
        raise SparsityRangeError(f"{name}: must be in [0, 1), got {float(wide[bad].ravel()[0])!r}")
    return arr


def checked_sparsity(s: Any, *, name: str = "sparsity") -> Any:
    """``s`` itself, range-checked when the program runs if it is traced (module doc, "Traced sparsities"): the
    value passes through a host callback (`jax.pure_callback`, one call per batch under vmap) that fails the call
    with `SparsityRangeError` for NaN or a value outside [0, 1] (1.0: see the module doc); since the mask is
    computed from what it returns, the check cannot be skipped. Concrete values are returned as they are
    (`check_sparsity` refuses them eagerly); an `ExactSparsity` was checked when `counts.exact` built it."""
    if isinstance(s, ExactSparsity) or not _is_tracer(s):
        return s
    return jax.pure_callback(functools.partial(_refuse_bad_sparsity, name=name),
                             jax.ShapeDtypeStruct(jnp.shape(s), jnp.result_type(s)), s, vmap_method="expand_dims")


logging.getLogger("jax._src.callback").addFilter(_QuietRangeErrors())  # the module that logs callback errors





def check_scores(scores: PyTree, prunable: PathPredicate | None = None) -> None:
    """ValueError naming the first leaf (in flatten order) with a NaN or infinite score.

    Only concrete leaves are checked (traced ones cannot be); with ``prunable`` only prunable leaves are checked,
    so non-prunable leaves may hold +inf.
    """
    for path, leaf in _flatten(scores)[0]:
        if _is_tracer(leaf) or (prunable is not None and not prunable(path, leaf)):
            continue
        arr = np.asarray(leaf)
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"scores: leaf {path_str(path)!r} has non-numeric dtype {arr.dtype}")
        finite = np.isfinite(arr)
        if not np.all(finite):
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum() - n_nan)
            raise ValueError(f"scores: leaf {path_str(path)!r} has {n_nan} NaN and {n_inf} infinite values")


def validate(params: PyTree, mask: Mask, *, name: str = "mask", bool_leaves: bool = True) -> None:
    """ValueError unless ``mask`` has the tree structure and leaf shapes of ``params`` and bool leaves.

    The message names the first differing key path (in flatten order). Works on tracers (only static shapes and
    dtypes are inspected), so it is cheap inside jit. ``bool_leaves=False`` skips the dtype check, to validate
    any params-shaped tree (e.g. gradients).
    """
    p_leaves, p_def = _flatten(params)
    m_leaves, m_def = _flatten(mask)
    for i in range(max(len(p_leaves), len(m_leaves))):
        if i >= len(p_leaves):
            raise ValueError(f"{name}: has extra leaf {path_str(m_leaves[i][0])!r} not in params")
        if i >= len(m_leaves):
            raise ValueError(f"{name}: missing leaf {path_str(p_leaves[i][0])!r} of params")
        (pp, px), (mp, mx) = p_leaves[i], m_leaves[i]
        if pp != mp:
            ps, ms = path_str(pp), path_str(mp)
            if ps == ms:
                raise ValueError(f"{name}: key path {ps!r} differs in key type from params ({pp} vs {mp})")
            first = min(ps, ms)
            raise ValueError(
                f"{name}: tree structure differs from params at key path {first!r} "
                f"(params has {ps!r}, {name} has {ms!r})")
        if _shape(px) != _shape(mx):
            raise ValueError(
                f"{name}: leaf {path_str(pp)!r} has shape {_shape(mx)}, params has {_shape(px)}")
        if bool_leaves and _dtype(mx) != np.bool_:
            raise ValueError(f"{name}: leaf {path_str(pp)!r} has dtype {_dtype(mx)}, expected bool")
    if p_def != m_def:
        raise ValueError(f"{name}: same key paths as params but different container types: {m_def} vs {p_def}")


# ----------------------------------------------------------------------------------------------- basic algebra


def ones_like(params: PyTree) -> Mask:
    """The dense mask: all-True bool leaves of each param's shape."""
    return jax.tree.map(lambda p: jnp.ones(_shape(p), jnp.bool_), params)


def apply(params: PyTree, mask: Mask) -> PyTree:
    """Zero the pruned weights: ``where(mask, p, 0)`` leaf by leaf, dtype preserved."""
    validate(params, mask)
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), jnp.asarray(p).dtype)), params, mask)


def complement(mask: Mask, prunable: PathPredicate) -> Mask:
    """Swap kept and pruned weights on prunable leaves; non-prunable leaves stay all-True."""
    return jax.tree_util.tree_map_with_path(
        lambda p, m: jnp.logical_not(m) if prunable(p, m) else jnp.ones(_shape(m), jnp.bool_), mask)


def intersect(a: Mask, b: Mask) -> Mask:
    """Kept where both keep (pruned by either)."""
    validate(a, b, name="b")
    validate(a, a, name="a")
    return jax.tree.map(jnp.logical_and, a, b)


def union(a: Mask, b: Mask) -> Mask:
    """Kept where either keeps."""
    validate(a, b, name="b")
    validate(a, a, name="a")
    return jax.tree.map(jnp.logical_or, a, b)


# ----------------------------------------------------------------------------------------------- counting


def _check_one_model(tree: PyTree, prunable: PathPredicate, what: str) -> None:
    """Refuse a stacked population when the predicate knows the model's shapes (`ModelSpec.prunable`)."""
    check = getattr(prunable, "check_one_model", None)
    if check is not None:
        check(tree, what)


def _prunable_leaves(mask: Mask, prunable: PathPredicate) -> list[tuple[tuple, Any]]:
    _check_one_model(mask, prunable, "mask")
    leaves = [(p, m) for p, m in _flatten(mask)[0] if prunable(p, m)]
    if not leaves:
        raise ValueError("prunable: selects no leaf of the tree")
    return leaves


def _zero_fraction(leaves: list[Any]) -> jax.Array:
    total = sum(int(np.prod(_shape(m))) for m in leaves)
    zeros = sum(jnp.sum(jnp.logical_not(m), dtype=jnp.int32) for m in leaves)
    return zeros / jnp.asarray(total, jnp.result_type(float))


def _over_lead(fn: Callable, lead: int) -> Callable:
    """`fn` of one model vmapped over `lead` leading axes."""
    if int(lead) != lead or lead < 0:
        raise ValueError(f"lead: need a non-negative integer, got {lead!r}")
    for _ in range(int(lead)):
        fn = jax.vmap(fn)
    return fn


def sparsity(mask: Mask, prunable: PathPredicate, *, lead: int = 0) -> jax.Array:
    """Fraction of prunable weights that are pruned (the realised t of docs/methods.md §7); [*lead] for a mask
    population with `lead` leading axes (e.g. lead=3 for masks [S, M, P, ...])."""
    one = lambda m: _zero_fraction([x for _, x in _prunable_leaves(m, prunable)])  # noqa: E731
    return _over_lead(one, lead)(mask)


def agreement(a: Mask, b: Mask, prunable: PathPredicate, *, lead: int = 0) -> jax.Array:
    """Fraction of the prunable weights kept by `a` that `b` keeps too: 1 for identical masks, about b's density
    (1 − sparsity) for an unrelated one, symmetric for two masks of equal sparsity; [*lead] over leading axes, NaN
    when `a` keeps nothing. Kept rather than pruned weights, so that it discriminates at high sparsity, where any two
    masks share most pruned weights. Asks whether two criteria select different weights (UP against GP)."""
    validate(a, a, name="a")
    validate(a, b, name="b")

    def one(x: Mask, y: Mask) -> jax.Array:
        xs = [m for _, m in _prunable_leaves(x, prunable)]
        ys = [m for _, m in _prunable_leaves(y, prunable)]
        both = sum(jnp.sum(m & n, dtype=jnp.int32) for m, n in zip(xs, ys))
        kept = sum(jnp.sum(m, dtype=jnp.int32) for m in xs)
        return jnp.where(kept > 0, both / jnp.maximum(kept, 1), jnp.nan)

    return _over_lead(one, lead)(a, b)


def kernel_sparsity(mask: Mask) -> jax.Array:
    """Fraction of pruned weights over all leaves named ``kernel`` (eligible or not), the second figure of §4."""
    leaves = [m for p, m in _flatten(mask)[0] if path_str(p).split("/")[-1] == "kernel"]
    if not leaves:
        raise ValueError("mask: has no leaf named 'kernel'")
    return _zero_fraction(leaves)


def layer_sparsity(mask: Mask, prunable: PathPredicate, *, lead: int = 0) -> dict[str, jax.Array]:
    """Path string -> fraction pruned, for each prunable leaf ([*lead] arrays with `lead` leading axes)."""
    one = lambda m: {path_str(p): _zero_fraction([x]) for p, x in _prunable_leaves(m, prunable)}  # noqa: E731
    return _over_lead(one, lead)(mask)


def count_zeros(mask: Mask, prunable: PathPredicate, *, lead: int = 0) -> jax.Array:
    """Number of pruned prunable weights (int32; [*lead] with `lead` leading axes)."""
    one = lambda m: sum(jnp.sum(jnp.logical_not(x), dtype=jnp.int32)  # noqa: E731
                        for _, x in _prunable_leaves(m, prunable))
    return _over_lead(one, lead)(mask)


def num_prunable(tree: PyTree, prunable: PathPredicate) -> int:
    """Number of prunable weights (static)."""
    return sum(int(np.prod(_shape(m))) for _, m in _prunable_leaves(tree, prunable))


# ----------------------------------------------------------------------------------------------- thresholding
# (the exact keep-vector of one flat score vector is `ranking.keep_lowest`)


def _count(sparsity: Any, size: int, prior: jax.Array | None, name: str) -> jax.Array:
    """``n_zero(sparsity, size)``; ValueError if a concrete request is below a concrete prior's zeros.

    A traced sparsity or prior cannot be checked: ``keep_lowest`` then keeps the prior as it is.
    """
    n = n_zero(sparsity, size)
    if prior is None or _is_tracer(n) or _is_tracer(prior):
        return n
    have = int(size - np.count_nonzero(np.asarray(prior)))
    if int(n) < have:
        raise ValueError(
            f"{name}: {float(value(sparsity)):.6g} ({int(n)} of {size} weights) is below the prior's sparsity "
            f"{have / size:.6g} ({have} zeros); a mask never revives pruned weights")
    return n


def threshold(scores: PyTree, sparsity: Any = None, *, prunable: PathPredicate, scope: str = "global",
              prior: Mask | None = None, layer_sparsities: Mapping[str, Any] | None = None,
              method: str = "select") -> Mask:
    """Mask zeroing exactly ``round(s·N)`` prunable weights with the lowest scores (library rule, module doc).

    sparsity: target fraction of prunable weights zeroed, prior-pruned ones included; a Python/numpy scalar or a
        (possibly traced) 0-d array. vmap over it to get a grid of masks from one sort. NaN or a value outside
        [0, 1) is refused: eagerly when concrete, by a host callback that fails the call when traced (module doc,
        "Traced sparsities").
    scope: "global" (one ranking over all prunable weights) or "layerwise" (the same rule inside each leaf).
    prior: a mask; its pruned weights are pruned first and never revived. A concrete sparsity below the prior's
        is a ValueError naming both; a traced one returns the prior unchanged.
    layer_sparsities: only with scope="layerwise": path string -> per-layer target (e.g. from
        ``schedules.erk_distribution``); must name exactly the prunable leaves; ``sparsity`` is then ignored.
    method: "select" (default) or "rank": two implementations of the same rule (see ``keep_lowest``).
    Non-prunable leaves come out all-True whatever their scores.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope: must be one of {SCOPES}, got {scope!r}")
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    if layer_sparsities is not None and scope != "layerwise":
        raise ValueError("layer_sparsities: only valid with scope='layerwise'")
    _check_one_model(scores, prunable, "scores")
    leaves, treedef = _flatten(scores)
    elig = _eligible(leaves, prunable)
    if not any(elig):
        raise ValueError("prunable: selects no leaf of the scores tree")
    names = [path_str(p) for p, _ in leaves]
    if layer_sparsities is None:
        if sparsity is None:
            raise ValueError("sparsity: required unless layer_sparsities is given")
        check_sparsity(sparsity)
        shape = jnp.shape(sparsity.hi if isinstance(sparsity, ExactSparsity) else sparsity)
        if shape:
            raise ValueError(f"sparsity: must be a scalar (vmap over a grid), got shape {shape}")
        sparsity = checked_sparsity(sparsity)
    else:
        wanted = {n for n, e in zip(names, elig) if e}
        missing, extra = sorted(wanted - set(layer_sparsities)), sorted(set(layer_sparsities) - wanted)
        if missing or extra:
            raise ValueError(f"layer_sparsities: missing prunable leaves {missing}, unknown keys {extra}")
        layer_sparsities = dict(layer_sparsities)
        for k in sorted(layer_sparsities):
            check_sparsity(layer_sparsities[k], name=f"layer_sparsities[{k!r}]")
            layer_sparsities[k] = checked_sparsity(layer_sparsities[k], name=f"layer_sparsities[{k!r}]")
    check_scores(scores, prunable)
    prior_leaves = None
    if prior is not None:
        validate(scores, prior, name="prior")
        prior_leaves = [m for _, m in _flatten(prior)[0]]

    out = [jnp.ones(_shape(x), jnp.bool_) for _, x in leaves]
    idx = [i for i, e in enumerate(elig) if e]
    if scope == "global":
        flat = [jnp.ravel(leaves[i][1]) for i in idx]
        dtype = jnp.result_type(*flat)
        s_all = jnp.concatenate([f.astype(dtype) for f in flat])
        p_all = None if prior_leaves is None else jnp.concatenate([jnp.ravel(prior_leaves[i]) for i in idx])
        keep = keep_lowest(s_all, _count(sparsity, s_all.shape[0], p_all, "sparsity"), p_all, method=method)
        offset = 0
        for i, f in zip(idx, flat):
            out[i] = keep[offset:offset + f.shape[0]].reshape(_shape(leaves[i][1]))
            offset += f.shape[0]
    else:
        for i in idx:
            x = jnp.ravel(leaves[i][1])
            p = None if prior_leaves is None else jnp.ravel(prior_leaves[i])
            s_l = sparsity if layer_sparsities is None else layer_sparsities[names[i]]
            where = f"sparsity (layer {names[i]!r})" if layer_sparsities is None else \
                f"layer_sparsities[{names[i]!r}]"
            keep = keep_lowest(x, _count(s_l, x.shape[0], p, where), p, method=method)
            out[i] = keep.reshape(_shape(leaves[i][1]))
    return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------------------------- moved

_MOVED_TO_MASK_IO = ("save", "load", "to_jaxpruner", "from_jaxpruner")


def __getattr__(name: str) -> Any:
    """``save``, ``load``, ``to_jaxpruner`` and ``from_jaxpruner`` moved to `fairprune_jax.mask_io` (host-side
    code); the old names still work and warn once."""
    if name in _MOVED_TO_MASK_IO:
        from fairprune_jax import deprecation, mask_io  # deferred on purpose: mask_io imports this module

        return deprecation.moved(getattr(mask_io, name), f"fairprune_jax.masks.{name}",
                                 f"fairprune_jax.mask_io.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
