"""Input checks and array helpers shared by the bias modules (`bias`, `bias_softmax`, `bias_identification`).

Private to `fairprune_jax.analysis`: they put every input in the ``[..., N, A]`` convention of `bias` (1-D ``[N]`` as
one attribute), validate shapes, binary values, groups, masks and probabilities with errors that name the argument,
and divide without warnings (0/0 → NaN). Kept in one module so the metric modules share one definition of each.
"""
from __future__ import annotations

import numpy as np


def _attr(x, name: str, dtype=None) -> tuple[np.ndarray, bool]:
    """As ``[..., N, A]``; a 1-D ``[N]`` becomes ``[N, 1]`` and the caller squeezes the result."""
    x = np.asarray(x, dtype=dtype)
    if x.ndim == 0:
        raise ValueError(f"{name}: expected an array with a sample axis, got a scalar")
    if x.ndim == 1:
        return x[:, None], True
    return x, False


def _out(v: np.ndarray, squeeze: bool):
    v = np.asarray(v)
    if squeeze:
        v = v[..., 0]
    return v[()] if v.ndim == 0 else v


def _check_tail(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"{nb}: shape {b.shape} does not match {na} {a.shape} on the [N, A] axes")


def _binary(x: np.ndarray, name: str) -> np.ndarray:
    if not np.all((x == 0) | (x == 1)):
        raise ValueError(f"{name}: expected binary values in {{0, 1}}")
    return x


def _probabilities(p, name: str) -> np.ndarray:
    """``p`` as floats; ValueError naming it unless every value lies in [0, 1] (logits passed by mistake)."""
    x = np.asarray(p, dtype=float)
    bad = ~((x >= 0) & (x <= 1))
    if np.any(bad):
        raise ValueError(f"{name}: expected probabilities in [0, 1], got {float(x[bad].ravel()[0]):g} (logits? use "
                         "dense_mean_probability)")
    return x


def _groups(groups, n: int, name: str = "groups") -> np.ndarray:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {g.shape}")
    return _binary(g, name).astype(bool)


def _sample_mask(mask, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Broadcast a ``[N]`` or ``[..., N, A]`` validity mask to ``shape`` (float)."""
    if mask is None:
        return np.ones(shape[-2:], dtype=float)
    m = np.asarray(mask)
    if m.ndim == 1:
        if m.shape[0] != shape[-2]:
            raise ValueError(f"{name}: expected {shape[-2]} samples, got {m.shape[0]}")
        m = m[:, None]
    return _binary(m, name).astype(float)


def _vec(v, a: int, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    if v.ndim == 0:
        return np.full(a, float(v))
    if v.shape[-1] != a:
        raise ValueError(f"{name}: expected {a} attributes on the last axis, got shape {v.shape}")
    return v


def _div(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num, dtype=float) / np.asarray(den, dtype=float)
