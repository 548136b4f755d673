"""Exact weight counts for the library threshold rule: ``round(s · N)`` with halves to even (docs/methods.md §5).

``n_zero`` multiplies the value a sparsity holds by N exactly: a concrete value (a Python float is float64) as a
rational on the host, a traced one with int32 arithmetic under jit, so the count never depends on float rounding of
the product or on ``jax_enable_x64``. (Rounding the float32 product instead is off by one for about 0.3% of
sparsities at N ~ 265,000, e.g. s = 0.988471, N = 265,200 gives 262,142 instead of 262,143.)
"""
from __future__ import annotations

import fractions
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_INT_MIN = np.iinfo(np.int32).min
_INT_MAX = np.iinfo(np.int32).max
_DIGIT = 12  # bits per base-2^12 digit of the exact traced product
_FRAC_DIGITS = 8  # s is read to 96 fractional bits: exact for s >= 2^-40, and below that s * n < 1/2 anyway
_N_DIGITS = 3  # n < 2^31 fits in three digits


class ExactSparsity(NamedTuple):
    """A concrete sparsity carried exactly through jit and vmap: three non-negative float32 parts whose exact sum is
    its float64 value. Casting to float32 instead would move ``round(s·N)`` by one weight for ~0.3% of sparsities
    (N ~ 265,000); `exact` builds it on the host, `n_zero` counts from it exactly, traced or not."""
    hi: Any
    mid: Any
    lo: Any


def exact(sparsity: Any) -> ExactSparsity:
    """`ExactSparsity` of a concrete value or array in [0, 1] (each part truncates the remainder toward zero, so
    the subtractions are exact; the three parts hold 72 significant bits, more than float64's 53)."""
    rest = np.asarray(sparsity, np.float64)
    if not np.all(np.isfinite(rest)) or np.any((rest < 0) | (rest > 1)):
        raise ValueError(f"sparsity: expected values in [0, 1], got {sparsity!r}")
    parts = []
    for _ in range(3):
        part = rest.astype(np.float32)
        part = np.where(part.astype(np.float64) > rest, np.nextafter(part, np.float32(0)), part).astype(np.float32)
        parts.append(part)
        rest = rest - part.astype(np.float64)
    return ExactSparsity(*(jnp.asarray(p) for p in parts))


def value(sparsity: Any) -> np.ndarray:
    """float64 value of a concrete sparsity (plain or `ExactSparsity`)."""
    if isinstance(sparsity, ExactSparsity):
        return sum(np.asarray(p, np.float64) for p in sparsity)
    return np.asarray(sparsity, np.float64)


def n_zero(sparsity: Any, n: int) -> jax.Array:
    """Number of weights to zero: exactly ``round(sparsity * n)``, halves to even (int32, elementwise).

    Concrete values use exact rational arithmetic on the host (a Python float counts as its float64 value);
    traced values use exact integer arithmetic under jit on the value they hold (``_n_zero_traced``). A concrete
    non-finite value is a ValueError; traced values are clipped to [0, 1] (NaN counts as 0).
    """
    n = int(n)
    if not 0 <= n <= _INT_MAX:
        raise ValueError(f"n: need 0 <= n < 2^31 weights, got {n}")
    if isinstance(sparsity, ExactSparsity):
        if any(isinstance(p, jax.core.Tracer) for p in sparsity):
            return _n_zero_traced(sparsity, n)
        sparsity = value(sparsity)  # the parts were cut from one float64 by exact subtractions: their sum is it
    if isinstance(sparsity, jax.core.Tracer):
        return _n_zero_traced(ExactSparsity(sparsity, jnp.zeros_like(sparsity), jnp.zeros_like(sparsity)), n)
    arr = np.asarray(sparsity)
    try:
        values = arr.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sparsity: expected a number, got {sparsity!r}") from e
    if not np.all(np.isfinite(values)):
        raise ValueError(f"sparsity: must be finite, got {sparsity!r}")
    counts = [round(fractions.Fraction(float(v)) * n) for v in values.ravel()]
    return jnp.asarray(np.clip(np.reshape(counts, values.shape), _INT_MIN, _INT_MAX), jnp.int32)


def _digits(x: jax.Array) -> list[jax.Array]:
    """Base-2^12 digits d_1..d_8 of x in [0, 1) (x = Σ d_i 2^-12i), each exact: floor and power-of-two scaling."""
    base = 2 ** _DIGIT
    floors = [jnp.floor(x * jnp.asarray(2.0 ** (_DIGIT * i), x.dtype)) for i in range(_FRAC_DIGITS + 1)]
    return [(floors[i] - base * floors[i - 1]).astype(jnp.int32) for i in range(1, _FRAC_DIGITS + 1)]


def _n_zero_traced(sparsity: ExactSparsity, n: int) -> jax.Array:
    """Exact ``round(s * n)`` (halves to even) of a traced ``s = hi + mid + lo`` with int32 arithmetic only.

    Each part in [0, 1) is read as base-2^12 digits and the digits are summed per position (d_i < 3·2^12), n as
    digits e_0..e_2; the products d_i e_j (< 3·2^24) are summed per power of 2^12 and carried, giving the integer
    part and the 96-bit fraction of s·n exactly. ``hi`` decides the range: s >= 1 gives n, s <= 0 (or NaN) 0.
    """
    parts = [jnp.asarray(p) for p in sparsity]
    parts = [p if jnp.issubdtype(p.dtype, jnp.floating) else p.astype(jnp.result_type(float)) for p in parts]
    s = parts[0]
    inside = (s > 0) & (s < 1)
    per_part = [_digits(jnp.where(inside & (p > 0) & (p < 1), p, jnp.zeros((), p.dtype))) for p in parts]
    digits = [sum(ds) for ds in zip(*per_part)]
    base = 2 ** _DIGIT
    n_digits = [(n >> (_DIGIT * j)) & (base - 1) for j in range(_N_DIGITS)]
    # limb p has weight 2^(12 (p - 8)): p = 8 + j - i for digit i of s (i = 1..8) and digit j of n
    limbs = [jnp.zeros(s.shape, jnp.int32) for _ in range(_FRAC_DIGITS + _N_DIGITS)]
    for i, d in enumerate(digits, start=1):
        for j, e in enumerate(n_digits):
            if e:
                limbs[_FRAC_DIGITS + j - i] = limbs[_FRAC_DIGITS + j - i] + d * e
    carry = jnp.zeros(s.shape, jnp.int32)
    for p in range(len(limbs)):
        total = limbs[p] + carry
        limbs[p], carry = total & (base - 1), total >> _DIGIT
    whole = sum(limbs[_FRAC_DIGITS + j] << (_DIGIT * j) for j in range(_N_DIGITS))
    half = base // 2
    below = jnp.zeros(s.shape, bool)
    for p in range(_FRAC_DIGITS - 1):
        below = below | (limbs[p] != 0)
    top = limbs[_FRAC_DIGITS - 1]
    up = (top > half) | ((top == half) & (below | (whole % 2 == 1)))
    count = whole + up.astype(jnp.int32)
    return jnp.where(s >= 1, jnp.int32(n), jnp.where(s > 0, count, jnp.int32(0)))
