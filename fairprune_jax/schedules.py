"""Sparsity schedules and per-layer sparsity distributions (docs/methods.md §6).

- One-shot: prune once to the target ``s`` (nothing to compute; pass ``s`` to ``masks.threshold``).
- Iterative (lottery): level L removes a fraction f of the remaining weights, ``s_L = 1 − (1 − f)^L``.
- Gradual cubic GMP: ``s(e) = s_f − (s_f − s_i)(1 − min((e − t0)/(t1 − t0), 1))³`` at the pruning steps
  ``range(t0, t1, Δ)``; the library's last pruning step hits ``s_f`` exactly (the reference falls short).
- Distributions: per-layer targets for ``masks.threshold(..., scope="layerwise", layer_sparsities=...)``,
  uniform or ERK (Erdős–Rényi-Kernel, RigL/jaxpruner).

Functions accept concrete or traced sparsities; concrete ones are range-checked and give Python floats.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax.masks import check_sparsity
from fairprune_jax.models import path_str

PathPredicate = Callable[[tuple, Any], bool]


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_fraction(fraction: Any) -> None:
    if _is_tracer(fraction):
        return
    f = np.asarray(fraction, dtype=np.float64)
    if not np.all(np.isfinite(f) & (f > 0) & (f < 1)):
        raise ValueError(f"fraction: must be in (0, 1), got {fraction!r}")


def iterative_sparsity(level: Any, fraction: float = 0.2) -> Any:
    """s_L = 1 − (1 − f)^L: sparsity after L levels that each remove ``fraction`` of the remaining weights."""
    _check_fraction(fraction)
    if not _is_tracer(level) and np.any(np.asarray(level) < 0):
        raise ValueError(f"level: must be >= 0, got {level!r}")
    if _is_tracer(level) or _is_tracer(fraction):
        return 1.0 - jnp.power(1.0 - fraction, level)
    out = 1.0 - np.power(1.0 - np.asarray(fraction, np.float64), np.asarray(level, np.float64))
    return float(out) if out.ndim == 0 else out


def iterative_schedule(levels: int, fraction: float = 0.2) -> np.ndarray:
    """[s_1, ..., s_levels] (float64) of the iterative schedule."""
    if levels < 1:
        raise ValueError(f"levels: must be >= 1, got {levels}")
    return np.asarray([iterative_sparsity(L, fraction) for L in range(1, levels + 1)])


def _check_gmp(start: int, end: int, every: int) -> None:
    if int(every) != every or every < 1:
        raise ValueError(f"every: must be a positive integer, got {every!r}")
    if int(start) != start or int(end) != end or start < 0 or end <= start:
        raise ValueError(f"start/end: need integers 0 <= start < end, got start={start!r}, end={end!r}")


def gmp_steps(start: int, end: int, every: int) -> list[int]:
    """Pruning steps/epochs of GMP: ``range(start, end, every)``."""
    _check_gmp(start, end, every)
    return list(range(start, end, every))


def gmp_sparsity(step: Any, *, final: float, initial: float = 0.05, start: int, end: int, every: int = 1,
                 hold: bool = True) -> jax.Array:
    """Target sparsity at ``step`` of cubic GMP (docs/methods.md §6), jit/vmap-friendly in ``step``.

    Before ``start``: 0 (dense). From the last pruning step ``start + every·⌊(end−1−start)/every⌋`` on:
    exactly ``final``. In between, with ``hold=True``, the value of the most recent pruning step (the sparsity
    in effect at ``step``); with ``hold=False`` the formula evaluated at ``step`` itself.
    """
    _check_gmp(start, end, every)
    check_sparsity(final, name="final")
    check_sparsity(initial, name="initial")
    if not (_is_tracer(final) or _is_tracer(initial)) and initial > final:
        raise ValueError(f"initial: {initial} exceeds final {final}")
    last = start + every * ((end - 1 - start) // every)
    e = jnp.asarray(step, jnp.result_type(float))
    if hold:
        e = start + every * jnp.floor((e - start) / every)
    frac = jnp.minimum((e - start) / (end - start), 1.0)
    s = final - (final - initial) * (1.0 - frac) ** 3
    return jnp.where(e < start, 0.0, jnp.where(e >= last, final, s))


def _prunable_shapes(params: Any, prunable: PathPredicate) -> list[tuple[str, tuple[int, ...]]]:
    leaves = [(path_str(p), tuple(np.shape(x))) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
              if prunable(p, x)]
    if not leaves:
        raise ValueError("prunable: selects no leaf of params")
    return leaves


def _maybe_float(x: Any) -> Any:
    return x if _is_tracer(x) else float(x)


def uniform_distribution(params: Any, sparsity: Any, prunable: PathPredicate) -> dict[str, Any]:
    """The same target ``sparsity`` for every prunable leaf."""
    check_sparsity(sparsity)
    return {name: _maybe_float(sparsity) for name, _ in _prunable_shapes(params, prunable)}


def _erk_densities(xp: Any, sizes: Any, raw: Any, sparsity: Any) -> Any:
    """RigL's ERK loop with a fixed number of rounds: cap the layer(s) with the largest raw density at 1 while
    ``eps · raw > 1``, re-solving eps so that Σ density·n = (1 − s)·N."""
    n_layers = sizes.shape[0]
    dense = xp.zeros(n_layers, dtype=bool)
    target = (1.0 - sparsity) * xp.sum(sizes)
    eps = 0.0
    for _ in range(n_layers + 1):
        rhs = target - xp.sum(xp.where(dense, sizes, 0.0))
        divisor = xp.sum(xp.where(dense, 0.0, raw * sizes))
        eps = xp.where(divisor > 0, rhs / xp.where(divisor > 0, divisor, 1.0), 0.0)
        raw_max = xp.max(xp.where(dense, -xp.inf, raw))
        cap = (raw_max * eps > 1.0) & ~dense & (raw == raw_max)
        dense = dense | cap
    return xp.where(dense, 1.0, xp.clip(eps * raw, 0.0, 1.0))


def erk_distribution(params: Any, sparsity: Any, prunable: PathPredicate, *, power: float = 1.0) -> dict[str, Any]:
    """ERK per-layer sparsities: density ∝ ((Σ dims)/(Π dims))^power, scaled so that the prunable weights
    overall have sparsity ``sparsity``; layers whose density would exceed 1 are kept dense and the rest rescaled.
    """
    check_sparsity(sparsity)
    shapes = _prunable_shapes(params, prunable)
    sizes = np.asarray([np.prod(s) for _, s in shapes], np.float64)
    raw = np.asarray([(np.sum(s) / np.prod(s)) ** power for _, s in shapes], np.float64)
    if _is_tracer(sparsity):
        dens = _erk_densities(jnp, jnp.asarray(sizes, jnp.float32), jnp.asarray(raw, jnp.float32), sparsity)
        return {name: 1.0 - dens[i] for i, (name, _) in enumerate(shapes)}
    dens = _erk_densities(np, sizes, raw, float(sparsity))
    return {name: float(1.0 - dens[i]) for i, (name, _) in enumerate(shapes)}
