"""Group-sequential seeds (docs/methods.md §14): add seeds in looks until the claims decide or a cap is reached, with
Lan–DeMets O'Brien–Fleming alpha spending so that each claim's type-I error stays at its level.

A design fixes, before the first look, the seed counts of the looks n_1 < … < n_K = cap (from the current seeds in
steps of `chunk`); the information fraction of look k is t_k = n_k / n_K. Each side spends
f(t; a) = 2 − 2Φ(z_{1−a/2}/√t) of its share a of the level α (a = α/2 two-sided, α one-sided; gsDesign's `sfLDOF`,
ldbounds), α(t) the total, and the boundaries c_k solve

    P(|Z_1| < c_1, …, |Z_{k−1}| < c_{k−1}, |Z_k| ≥ c_k) = α(t_k) − α(t_{k−1})

for the canonical joint normal of the statistics (corr(Z_i, Z_j) = √(t_i/t_j)), computed by recursive numerical
integration of the score process on a grid (Armitage, McPherson & Rowe 1969; Jennison & Turnbull 2000, ch. 19)
and checked against published boundaries and scipy's multivariate normal in the tests. With seeds as the unit the
statistic at a look is a t on n_k − 1 degrees of freedom, so each boundary is applied at the same tail probability:
|T_k| ≥ t_{n_k−1}^{-1}(Φ(c_k)).

Several claims (a family, one per paper) share the looks; their family-wise error is held by Holm's procedure
carried into the sequential setting (Maurer & Bretz 2013; Ye, Li, Jiang & Wang 2013): each undecided claim is
tested at α/m_open, where m_open counts the claims not yet rejected, with boundaries recomputed at that level; a
rejection at a look frees its share for the others at the same look. Equivalence (TOST) stops a claim when both
one-sided tests cross their one-sided O'Brien–Fleming boundaries at the same α (intersection–union).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np
from scipy import stats as sps

GRID_PER_SD = 48  # integration points per unit of the standardised score (Simpson on an odd grid)
SPAN = 8.0  # the score is integrated over ±SPAN standard deviations


def obf_spending(t: np.ndarray | float, alpha: float = 0.05, sides: int = 2) -> np.ndarray:
    """Lan–DeMets O'Brien–Fleming-type spending of a test at level `alpha` (α(0) = 0, α(1) = α): each side spends
    f(t; a) = 2 − 2Φ(z_{1−a/2}/√t) of its share a = α/sides, the convention of gsDesign's `sfLDOF` and of
    ldbounds, whose published boundaries the tests reproduce."""
    t = np.asarray(t, float)
    a = alpha / sides
    z = sps.norm.isf(a / 2)
    with np.errstate(divide="ignore"):
        return np.where(t > 0, sides * 2 * sps.norm.sf(z / np.sqrt(np.where(t > 0, t, 1.0))), 0.0)


def _simpson_weights(n: int, h: float) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w * h / 3.0


def _grid(info: float, c: float, lower: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Points and Simpson weights of the continuation region of the score S = Z√I: (−c√I, c√I) two-sided,
    (lower√I, c√I) one-sided (lower = −SPAN when None)."""
    sd = np.sqrt(info)
    hi = min(c, SPAN) * sd
    lo = (-min(c, SPAN) if lower is None else max(lower, -SPAN)) * sd
    n = int(np.ceil((hi - lo) / sd * GRID_PER_SD)) | 1
    n = max(n, 3)
    x = np.linspace(lo, hi, n)
    return x, _simpson_weights(n, (hi - lo) / (n - 1))


def boundaries(fractions: Sequence[float], alpha: float = 0.05, sides: int = 2) -> np.ndarray:
    """Lan–DeMets O'Brien–Fleming boundaries c_1..c_K (z scale) for looks at information `fractions` (increasing,
    the last 1). Two-sided: reject when |Z_k| ≥ c_k; one-sided: when Z_k ≥ c_k."""
    return _boundaries(tuple(float(t) for t in fractions), float(alpha), int(sides))


@functools.lru_cache(maxsize=4096)
def _boundaries(fractions: tuple[float, ...], alpha: float, sides: int) -> np.ndarray:
    t = np.asarray(fractions)
    if np.any(np.diff(t) <= 0) or t[0] <= 0 or t[-1] > 1 + 1e-12:
        raise ValueError(f"fractions: expected increasing values in (0, 1], got {list(fractions)}")
    spend = np.diff(np.concatenate([[0.0], obf_spending(t, alpha, sides)]))
    info = t  # information ∝ fraction; the score S_k = Z_k √t_k has independent increments of variance Δt
    out = np.empty(len(t))
    density, points, weights = None, None, None
    for k in range(len(t)):
        if k == 0:
            def exit_prob(c: float) -> float:
                return sides * sps.norm.sf(c) if sides == 2 else sps.norm.sf(c)
        else:
            dv = info[k] - info[k - 1]
            sd_inc = np.sqrt(dv)
            p_prev, w_prev, f_prev = points, weights, density

            def exit_prob(c: float, p=p_prev, w=w_prev, f=f_prev, s=sd_inc, ik=info[k]) -> float:
                b = c * np.sqrt(ik)
                up = sps.norm.sf((b - p) / s)
                prob = up + (sps.norm.cdf((-b - p) / s) if sides == 2 else 0.0)
                return float(np.sum(w * f * prob))
        target = spend[k]
        if target <= 0:
            out[k] = np.inf
        else:
            lo, hi = 0.0, 40.0
            for _ in range(200):  # bisection: exit probability decreases in c
                mid = (lo + hi) / 2
                if exit_prob(mid) > target:
                    lo = mid
                else:
                    hi = mid
                if hi - lo < 1e-10:
                    break
            out[k] = (lo + hi) / 2
        # density of S_k on the continuation region, for the next look
        x, w = _grid(info[k], out[k], None if sides == 2 else -SPAN)
        if k == 0:
            f = sps.norm.pdf(x, scale=np.sqrt(info[0]))
        else:
            f = (w_prev * f_prev) @ sps.norm.pdf((x[None, :] - p_prev[:, None]) / sd_inc) / sd_inc
        density, points, weights = f, x, w
    return out


def exit_probabilities(bounds: Sequence[float], fractions: Sequence[float], drift: float = 0.0,
                       sides: int = 2) -> np.ndarray:
    """P(stop at look k) for boundaries on the z scale when E[Z_k] = drift·√t_k (drift 0: the null), by the same
    recursive integration (the tests check it against simulation and against the spending it was built from)."""
    t = np.asarray(fractions, float)
    out = np.empty(len(t))
    pts = wts = dens = None
    for k in range(len(t)):
        c = float(bounds[k])
        mean_k = drift * t[k]  # E[S_k] = drift · info
        if k == 0:
            sd = np.sqrt(t[0])
            b = c * sd
            out[k] = sps.norm.sf((b - mean_k) / sd) + (sps.norm.cdf((-b - mean_k) / sd) if sides == 2 else 0.0)
            x, w = _grid(t[0], c, None if sides == 2 else -SPAN)
            x = x + 0.0
            f = sps.norm.pdf((x - mean_k) / sd) / sd
        else:
            dv = t[k] - t[k - 1]
            s = np.sqrt(dv)
            inc = drift * dv
            b = c * np.sqrt(t[k])
            out[k] = float(np.sum(wts * dens * (sps.norm.sf((b - pts - inc) / s)
                                                + (sps.norm.cdf((-b - pts - inc) / s) if sides == 2 else 0.0))))
            x, w = _grid(t[k], c, None if sides == 2 else -SPAN)
            f = (wts * dens) @ sps.norm.pdf((x[None, :] - pts[:, None] - inc) / s) / s
        pts, wts, dens = x, w, f
    return out


@dataclasses.dataclass(frozen=True)
class Design:
    """Looks at `first`, first + chunk, … up to `cap` seeds (the last look at the cap), family level `alpha`."""

    first: int
    chunk: int
    cap: int
    alpha: float = 0.05

    def __post_init__(self):
        if self.first < 2:
            raise ValueError(f"first look: at least 2 seeds, got {self.first}")
        if self.chunk < 1:
            raise ValueError(f"seed chunk: at least 1, got {self.chunk}")
        if self.cap < self.first:
            raise ValueError(f"cap: at least the first look's {self.first} seeds, got {self.cap}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: expected a level in (0, 1), got {self.alpha}")

    @property
    def looks(self) -> tuple[int, ...]:
        n = list(range(self.first, self.cap, self.chunk))
        return tuple(n + [self.cap])

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(n / self.cap for n in self.looks)

    def t_bounds(self, level: float, sides: int = 2) -> np.ndarray:
        """Boundaries on the t scale of each look: t_{n_k−1}^{-1}(Φ(c_k)) (one-sided c_k for sides=1)."""
        c = boundaries(self.fractions, level, sides)
        df = np.asarray(self.looks, float) - 1
        return sps.t.isf(sps.norm.sf(c), df)


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """One claim in a sequential family: its statistic at each look so far and, with a margin, the two TOST
    statistics (t_low: against −margin, t_high: against +margin; for cells the worst cell's)."""

    key: str
    t: Sequence[float]
    t_low: Sequence[float] = ()
    t_high: Sequence[float] = ()
    cells: int = 1  # a per-sparsity claim: its most significant cell, at its level / cells (Bonferroni)


def decide(design: Design, hyps: Sequence[Hypothesis]) -> dict[str, tuple[str, int]]:
    """Replay the looks observed so far: {key: (decision, look index)} with decision "reject" (the difference test
    crossed its boundary), "equivalent" (both TOST statistics crossed theirs) or "open". Holm across the family as in
    the module docstring; equivalence is tested per claim at the family level α/m (Bonferroni, conservative)."""
    m = len(hyps)
    state: dict[str, tuple[str, int]] = {h.key: ("open", -1) for h in hyps}
    n_looks = max((len(h.t) for h in hyps), default=0)
    eq_bounds = design.t_bounds(design.alpha / max(m, 1), sides=1) if m else np.array([])
    for k in range(min(n_looks, len(design.looks))):
        changed = True
        while changed:  # a rejection frees level for the others at the same look
            changed = False
            rejected = sum(1 for d, _ in state.values() if d == "reject")
            level = design.alpha / max(m - rejected, 1)
            for h in hyps:
                if state[h.key][0] != "open" or k >= len(h.t):
                    continue
                tb = design.t_bounds(level / max(h.cells, 1), sides=2)
                if np.isfinite(h.t[k]) and abs(h.t[k]) >= tb[k]:
                    state[h.key] = ("reject", k)
                    changed = True
        for h in hyps:
            if state[h.key][0] != "open" or k >= len(h.t_low) or k >= len(h.t_high):
                continue
            if np.isfinite(h.t_low[k]) and np.isfinite(h.t_high[k]) and h.t_low[k] >= eq_bounds[k] \
                    and -h.t_high[k] >= eq_bounds[k]:
                state[h.key] = ("equivalent", k)
    return state
