"""Planted α_t populations fitted to stored recall runs, for choosing and checking the claims' estimands
(docs/methods.md §14; `benchmarks/simulate_claims.py` runs the study).

The generator works at the level the library measures, per-class recall, so α_t, α_null and the flags come out of
the same formulas as on real runs (`alpha_arrays` is `intensification.alpha` on arrays, checked by the tests):

- **dense network** of seed s: log e_{0,s,k} = m_k + σ0 η_{s,k} (e = 1 − recall, η ~ N(0, 1));
- **pruned network** (seed s, criterion c, sparsity j):
  log e_{t,s,c,j,k} = log e_{0,s,k} + μ_{c,j} + γ_{c,j,k} + κ_{c,j} (log e_{0,s,k} − m_k) + u_{s,c,j}
  + σ_{c,j} ε_{s,c,j,k},
  with γ a fixed class profile (Σ_k γ = 0: some classes lose more of their accuracy than others, the same in every
  seed), κ ≤ 0 the share of the dense network's own class-error deviations that pruning undoes (regression to the
  class means: with γ, what makes α_t differ from α_null), u ~ N(0, τ²_{c,j}) a network-level shift
  (correlated across criteria within a seed and sparsity, matrix R_u) and ε a multivariate Student t over criteria
  (ν_j, matrix R_ε): criteria that keep the same weights (GP and UP) collapse on the same classes of the same seed,
  which is what puts one seed's GP and UP networks at α_t ≈ −27 and −21 at 99% in the default MNIST sweep.

`fit` estimates every parameter from a stored run, per criterion and sparsity, from y = log(e_t/e_0) of each class
of each pruned network: μ + γ_k is the mean of y_k over seeds (γ shrunk towards 0 by its estimation noise,
James–Stein), κ the within-network slope of y − μ − γ on the dense seed deviation log e_0 − m, u the network's
mean of y − μ − γ − κ(log e_0 − m) over classes (τ its sd over seeds), and the residuals (rescaled for the fitted
degrees of freedom) give σ: per sparsity a Student t of location 0 is fitted
by maximum likelihood to the pooled residuals (ν by profile over a grid, one scale per criterion). R_u and R_ε come
from Kendall's τ between criteria (ρ = sin(πτ/2), exact for elliptical laws). Error rates are floored at 0.5/n_c.
`Population.scaled` moves a population towards its null (no error growth) for power studies.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

NU_GRID = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0, 20.0, 50.0, np.inf)
FLOOR = 0.5  # error counts are floored at 0.5/n_c (and capped at n_c − 0.5) before logs


@dataclasses.dataclass(frozen=True)
class Population:
    """A planted population of recall runs: K classes × criteria × sparsities (see the module docstring)."""

    name: str
    weights: np.ndarray  # [K] class shares of the test split
    n_class: np.ndarray  # [K] test examples per class (for the floor of error rates)
    log_e0: np.ndarray  # [K] mean dense log error per class
    sd_e0: float  # seed sd of dense log errors
    criteria: tuple[str, ...]
    sparsities: np.ndarray  # [J]
    mu: np.ndarray  # [C, J] mean log error growth of a network
    tau: np.ndarray  # [C, J] its sd over seeds
    gamma: np.ndarray  # [C, J, K] class profile of the log error growth (sums to 0 over classes)
    kappa: np.ndarray  # [C, J] slope on the dense network's own class-error deviation (regression to the mean)
    sigma: np.ndarray  # [C, J] Student-t scale of class residuals
    nu: np.ndarray  # [J] Student-t degrees of freedom (inf: normal)
    corr_u: np.ndarray  # [C, C]
    corr_e: np.ndarray  # [C, C]
    chance: float = 1.5

    def scaled(self, lam: float, *, criterion: str | None = None, shift: float = 0.0) -> "Population":
        """The population with every error growth μ and class profile γ multiplied by `lam` (0: no change in error
        rates but noise);
        with `criterion`, only that criterion's μ, shifted by `shift` instead (a planted criterion effect)."""
        mu, gamma = self.mu.copy(), self.gamma.copy()
        if criterion is None:
            mu, gamma = mu * lam, gamma * lam
        else:
            mu[self.criteria.index(criterion)] += shift
        return dataclasses.replace(self, mu=mu, gamma=gamma)

    def with_criterion_as(self, target: str, source: str) -> "Population":
        """`target` given `source`'s parameters (an exact null for target − source comparisons)."""
        i, j = self.criteria.index(target), self.criteria.index(source)
        arrays = {}
        for f in ("mu", "tau", "gamma", "kappa", "sigma"):
            a = getattr(self, f).copy()
            a[i] = a[j]
            arrays[f] = a
        cu, ce = self.corr_u.copy(), self.corr_e.copy()
        others = [k for k in range(len(self.criteria)) if k not in (i, j)]
        for c in (cu, ce):  # exchangeable pair: target correlates with the others as source does
            c[i, others] = c[j, others]
            c[others, i] = c[others, j]
        return dataclasses.replace(self, **arrays, corr_u=_psd(cu), corr_e=_psd(ce))


class Draw:
    """Arrays of one simulated batch: α, α_null, accuracies and flags [R, S, C, J] (R repetitions, S seeds)."""

    def __init__(self, alpha: np.ndarray, alpha_null: np.ndarray, a0: np.ndarray, at: np.ndarray,
                 flagged: np.ndarray):
        self.alpha, self.alpha_null, self.a0, self.at, self.flagged = alpha, alpha_null, a0, at, flagged

    @property
    def log_excess(self) -> np.ndarray:
        """log(α/α_null); −inf where α ≤ 0 < α_null (a network that distorts less than any uniform growth)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(self.alpha > 0, np.log(np.abs(self.alpha) / self.alpha_null), -np.inf)
        return np.where(self.alpha_null > 0, out, np.nan)


def _psd(c: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """The nearest correlation matrix with eigenvalues ≥ `floor` (clip, rescale the diagonal to 1)."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    m = (v * np.maximum(w, floor)) @ v.T
    d = np.sqrt(np.diag(m))
    return m / np.outer(d, d)


def alpha_arrays(r0: np.ndarray, rt: np.ndarray, weights: np.ndarray, tol: float = 1e-12
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(α_t, a_0, a_t) over the last axis (classes): accuracies as class-share-weighted recall, δ = r/a − 1 and
    α_t = Σδ0δt/Σδ0² (NaN below `tol`), as `intensification.alpha`."""
    a0, at = (r0 * weights).sum(-1), (rt * weights).sum(-1)
    d0, dt = r0 / a0[..., None] - 1.0, rt / at[..., None] - 1.0
    sxx = (d0 * d0).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(sxx >= tol, (d0 * dt).sum(-1) / sxx, np.nan)
    return alpha, a0, at


def sample(pop: Population, reps: int, seeds: int, rng: np.random.Generator) -> Draw:
    """`reps` independent runs of `seeds` seeds each from `pop`."""
    c, j = len(pop.criteria), len(pop.sparsities)
    k = len(pop.weights)
    cap_lo, cap_hi = FLOOR / pop.n_class, 1.0 - FLOOR / pop.n_class
    log_e0 = pop.log_e0 + pop.sd_e0 * rng.standard_normal((reps, seeds, k))
    e0 = np.clip(np.exp(log_e0), cap_lo, cap_hi)
    log_e0 = np.log(e0)
    lu = np.linalg.cholesky(pop.corr_u)
    le = np.linalg.cholesky(pop.corr_e)
    u = np.einsum("cd,rsjd->rscj", lu, rng.standard_normal((reps, seeds, j, c))) * pop.tau  # [R,S,C,J]
    z = np.einsum("cd,rsjkd->rscjk", le, rng.standard_normal((reps, seeds, j, k, c)))  # [R,S,C,J,K]
    nu = np.broadcast_to(pop.nu, (j,))
    w = np.ones((reps, seeds, j, k))
    for jj in range(j):
        if np.isfinite(nu[jj]):
            w[:, :, jj] = rng.chisquare(nu[jj], (reps, seeds, k)) / nu[jj]
    eps = z / np.sqrt(w)[:, :, None]
    dev = (log_e0 - pop.log_e0)[:, :, None, None, :]
    log_et = (log_e0[:, :, None, None, :] + (pop.mu + u)[..., None] + pop.gamma + pop.kappa[..., None] * dev
              + pop.sigma[..., None] * eps)
    et = np.clip(np.exp(np.minimum(log_et, 0.0)), cap_lo, cap_hi)  # e ≤ 1: no overflow from far tails
    r0 = np.broadcast_to((1.0 - e0)[:, :, None, None, :], et.shape)
    alpha, a0, at = alpha_arrays(r0, 1.0 - et, pop.weights)
    limit = pop.chance / k
    one_class = ((1.0 - et) > 0).sum(-1) <= 1
    flagged = (at <= limit) | (a0 <= limit) | one_class
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha_null = ((1 - at) / (1 - a0)) * (a0 / at)
    return Draw(alpha, alpha_null, a0, at, flagged)


# ---------------------------------------------------------------------------------------------- fitting

def _kendall_rho(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 4:
        return 0.0
    tau = sps.kendalltau(a[ok], b[ok]).statistic
    return float(np.sin(np.pi * tau / 2)) if np.isfinite(tau) else 0.0


def _t_scale(resid: np.ndarray, nu: float) -> tuple[float, float]:
    """(scale, log-likelihood) of a location-0 Student t with `nu` degrees of freedom (normal for inf)."""
    resid = resid[np.isfinite(resid)]
    if not np.isfinite(nu):
        scale = float(np.sqrt(np.mean(resid ** 2)))
        return scale, float(sps.norm.logpdf(resid, scale=scale).sum())
    _, _, scale = sps.t.fit(resid, fdf=nu, floc=0.0)
    return float(scale), float(sps.t.logpdf(resid, nu, scale=scale).sum())


def growth_table(long: pd.DataFrame, criteria: Sequence[str]) -> pd.DataFrame:
    """y = log(e_t/e_0) per pruned network of `criteria` and class (error rates floored at 0.5/n_c)."""
    sel = long[long["criterion"].isin(criteria) & np.isfinite(long["r0"]) & np.isfinite(long["rt"])].copy()
    n = sel["n"].to_numpy(float)
    e0 = np.clip(1 - sel["r0"].to_numpy(float), FLOOR / n, 1 - FLOOR / n)
    et = np.clip(1 - sel["rt"].to_numpy(float), FLOOR / n, 1 - FLOOR / n)
    sel["y"] = np.log(et) - np.log(e0)
    return sel[["criterion", "seed", "requested_sparsity", "class", "y"]]


def fit(long: pd.DataFrame, *, name: str, criteria: Sequence[str] = ("mp", "gp", "up"),
        chance: float = 1.5) -> Population:
    """A `Population` fitted to one run's long table (`intensification.long_table`), as in the module docstring."""
    criteria = tuple(c for c in criteria if c in set(long["criterion"]))
    if not criteria:
        raise ValueError("fit: none of the criteria in the long table")
    dense = long.drop_duplicates(["seed", "class"]).sort_values(["seed", "class"])
    classes = np.sort(dense["class"].unique())
    n_class = dense.groupby("class")["n"].first().reindex(classes).to_numpy(float)
    weights = n_class / n_class.sum()
    e0 = np.clip(1 - dense.pivot(index="seed", columns="class", values="r0").reindex(columns=classes)
                 .to_numpy(float), FLOOR / n_class, 1 - FLOOR / n_class)
    le0 = np.log(e0)
    m = le0.mean(0)
    sd0 = float(np.sqrt(((le0 - m) ** 2).sum() / max((le0.shape[0] - 1) * le0.shape[1], 1)))
    y = growth_table(long, criteria)
    spars = np.array(sorted(y["requested_sparsity"].unique()))
    c, j, k = len(criteria), len(spars), len(classes)
    mu, tau, sigma, kappa, nu = (np.zeros((c, j)), np.zeros((c, j)), np.zeros((c, j)), np.zeros((c, j)),
                                 np.full(j, np.inf))
    dev0 = pd.DataFrame(le0 - m, index=dense["seed"].unique(), columns=classes)
    gamma = np.zeros((c, j, k))
    resid: dict[tuple[int, int], np.ndarray] = {}
    shifts: dict[tuple[int, int], pd.Series] = {}
    for ci, crit in enumerate(criteria):
        for jj, s in enumerate(spars):
            g = y[(y["criterion"] == crit) & np.isclose(y["requested_sparsity"], s)]
            wide = g.pivot_table(index="seed", columns="class", values="y").reindex(columns=classes)  # [S, K]
            ys = wide.to_numpy(float)
            n_seeds = ys.shape[0]
            prof = np.nanmean(ys, 0)
            mu[ci, jj] = float(np.mean(prof))
            gam = prof - mu[ci, jj]
            d = dev0.reindex(index=wide.index).to_numpy(float)
            r0, dc = ys - prof, d - d.mean(1, keepdims=True)
            r0c = r0 - np.nanmean(r0, 1, keepdims=True)
            kappa[ci, jj] = float(np.nansum(r0c * dc) / np.sum(dc * dc)) if np.sum(dc * dc) > 0 else 0.0
            u = np.nanmean(r0 - kappa[ci, jj] * d, 1)
            r = r0 - kappa[ci, jj] * d - u[:, None]
            dof = max((n_seeds - 1) * (k - 1) - 1, 1)
            r_var = float(np.nansum(r ** 2) / dof)
            # James–Stein: γ̂ carries noise of variance σ²/S per class; shrink its spread by that share
            spread = float(np.mean(gam ** 2))
            gamma[ci, jj] = gam * (max(0.0, 1.0 - (r_var / max(n_seeds, 1)) / spread) if spread > 0 else 0.0)
            tau[ci, jj] = float(np.std(u, ddof=1)) if n_seeds > 1 else 0.0
            resid[ci, jj] = (r * np.sqrt(n_seeds * k / dof)).ravel()
            shifts[ci, jj] = pd.Series(u, index=wide.index)
    for jj in range(j):
        best = (-np.inf, np.inf, [0.0] * c)
        for cand in NU_GRID:
            fits = [_t_scale(resid[ci, jj], cand) for ci in range(c)]
            total = sum(ll for _, ll in fits)
            if total > best[0]:
                best = (total, cand, [sc for sc, _ in fits])
        nu[jj] = best[1]
        sigma[:, jj] = best[2]
    corr_u, corr_e = np.eye(c), np.eye(c)
    for a in range(c):
        for b in range(a + 1, c):
            ua = np.concatenate([shifts[a, jj].to_numpy() for jj in range(j)])
            ub = np.concatenate([shifts[b, jj].reindex(shifts[a, jj].index).to_numpy() for jj in range(j)])
            ea = np.concatenate([resid[a, jj] for jj in range(j)])
            eb = np.concatenate([resid[b, jj] for jj in range(j)])
            corr_u[a, b] = corr_u[b, a] = _kendall_rho(ua, ub)
            corr_e[a, b] = corr_e[b, a] = _kendall_rho(ea, eb)
    return Population(name, weights, n_class, m, sd0, criteria, spars, mu, tau, gamma, kappa, sigma, nu, _psd(corr_u),
                      _psd(corr_e), chance)


def describe(pop: Population) -> pd.DataFrame:
    """The fitted parameters, one row per criterion × sparsity (for the simulation's output)."""
    rows = []
    for ci, c in enumerate(pop.criteria):
        for jj, s in enumerate(pop.sparsities):
            rows.append(dict(population=pop.name, criterion=c, sparsity=s, mu=pop.mu[ci, jj], tau=pop.tau[ci, jj],
                             gamma_sd=float(np.std(pop.gamma[ci, jj])), kappa=pop.kappa[ci, jj],
                             sigma=pop.sigma[ci, jj], nu=pop.nu[jj]))
    return pd.DataFrame(rows)


def dense_pair_alpha(long: pd.DataFrame) -> np.ndarray:
    """α_t of one dense network against the dense network of another seed, for every ordered pair of seeds: what
    α_t is when nothing but the training seed changes (regression to the mean of the class deviations)."""
    dense = long.drop_duplicates(["seed", "class"]).sort_values(["seed", "class"])
    r = dense.pivot(index="seed", columns="class", values="r0").to_numpy(float)
    n = dense.groupby("class")["n"].first().to_numpy(float)
    out = []
    for s in range(len(r)):
        for t in range(len(r)):
            if s != t:
                out.append(alpha_arrays(r[s], r[t], n / n.sum())[0])
    return np.asarray(out, float)
