"""Exact keep-vectors: prune exactly ``n`` entries of a flat score vector, ties broken by index, as one jittable
program (`keep_lowest`; `masks.threshold` applies it per scope). The library rule and its two methods are in
`masks`' module doc.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_INT_MIN = np.iinfo(np.int32).min
_INT_MAX = np.iinfo(np.int32).max
_SUB = 32
_BLOCK = 4 * _SUB  # block length for locating the boundary tie in index order; per-block counts fit in uint8
_SEARCH = "scan"  # searchsorted method: a small loop, compiles much faster than "scan_unrolled"


def sort_keys(scores: jax.Array, prior: jax.Array | None = None) -> jax.Array:
    """int32 keys whose order is the pruning order of a flat score vector (ties then go by index).

    Scores are cast to float32 and their bits mapped monotonically to int32 (-0.0 == 0.0, NaN last);
    prior-pruned weights get INT32_MIN, below every score. Integer keys sort several times faster than floats
    (or than argsort) in XLA on CPU.
    """
    x = jnp.asarray(scores, jnp.float32)
    x = jnp.where(x == 0, jnp.float32(0), x)
    b = jax.lax.bitcast_convert_type(x, jnp.int32)
    key = jnp.where(b >= 0, b, b ^ jnp.int32(_INT_MAX))
    key = jnp.where(jnp.isnan(x), jnp.int32(_INT_MAX), key)
    if prior is not None:
        key = jnp.where(prior, key, jnp.int32(_INT_MIN))
    return key


def _prepare(keys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-model work shared by every sparsity: sorted keys and the keys cut into blocks (padded with INT_MAX)."""
    n = keys.shape[0]
    n_blocks = -(-n // _BLOCK)
    blocks = jnp.pad(keys, (0, n_blocks * _BLOCK - n), constant_values=_INT_MAX).reshape(n_blocks, _BLOCK)
    return keys, jnp.sort(keys), blocks


def _inclusive_prefix(x: jax.Array) -> jax.Array:
    """Prefix sums of a short vector as a masked row sum (cheaper to compile than cumsum)."""
    iota = jnp.arange(x.shape[0])
    return jnp.sum(jnp.where(iota[:, None] >= iota[None, :], x[None, :], 0), axis=1)


def _nth_true(row: jax.Array, r: jax.Array) -> jax.Array:
    """Index of the r-th (1-based) True of a bool vector of length ``_BLOCK``, in two levels."""
    x = row.reshape(_BLOCK // _SUB, _SUB).astype(jnp.int32)
    sub = jnp.sum(x, axis=1)
    pre = _inclusive_prefix(sub)
    t = jnp.argmax(pre >= r)
    inner = _inclusive_prefix(x[t])
    return t * _SUB + jnp.argmax(inner >= r - (pre[t] - sub[t]))


def _keep_lowest(keys: jax.Array, sorted_keys: jax.Array, blocks: jax.Array, n: jax.Array) -> jax.Array:
    """Keep-vector removing the ``n`` smallest keys, ties by index: exactly the first ``n`` of a stable argsort.

    With v the n-th smallest key, every key < v goes, and among keys == v the first ``n - #(key < v)`` in index
    order go; that index is found block-wise (counts per block, then one block), so no cumsum over N is needed.
    Only this part depends on ``n``: under vmap over sparsities the sort is done once.
    """
    size = keys.shape[0]
    n = jnp.clip(n, 0, size)
    v = sorted_keys[jnp.maximum(n - 1, 0)]
    m = n - jnp.searchsorted(sorted_keys, v, side="left", method=_SEARCH).astype(jnp.int32)
    # uint8 block counts vectorise several times better than int32 on CPU (a block holds at most 128)
    counts = jnp.cumsum(jnp.sum(blocks == v, axis=1, dtype=jnp.uint8).astype(jnp.int32))
    b = jnp.minimum(jnp.searchsorted(counts, m, side="left", method=_SEARCH), counts.shape[0] - 1)
    before = jnp.where(b > 0, counts[jnp.maximum(b - 1, 0)], 0)
    j_in = _nth_true(blocks[b] == v, m - before)
    last = jnp.where(m > 0, b * _BLOCK + j_in, -1)
    idx = jnp.arange(size, dtype=jnp.int32)
    return ~((keys < v) | ((keys == v) & (idx <= last)))


def _keep_by_rank(keys: jax.Array, n: jax.Array) -> jax.Array:
    """Reference method: rank of every weight from a stable argsort (2-operand sort, slower on CPU)."""
    size = keys.shape[0]
    iota = jnp.arange(size, dtype=jnp.int32)
    _, order = jax.lax.sort((keys, iota), num_keys=1, is_stable=True)
    rank = jnp.zeros(size, jnp.int32).at[order].set(iota, unique_indices=True)
    return rank >= n


METHODS = ("select", "rank")


def keep_lowest(scores: jax.Array, n: Any, prior: jax.Array | None = None, *, method: str = "select") -> jax.Array:
    """Flat keep-vector pruning exactly ``max(n, #prior-pruned)`` entries of a flat score vector (library rule).

    method: "select" (sort int keys, then locate the boundary; default, fastest) or "rank" (stable argsort, then
    ``rank >= n``); both give identical masks.
    """
    keys = sort_keys(scores, prior)
    n = jnp.asarray(n, jnp.int32)
    if method == "select":
        keep = _keep_lowest(*_prepare(keys), n)
    elif method == "rank":
        keep = _keep_by_rank(keys, n)
    else:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    return keep if prior is None else keep & prior
