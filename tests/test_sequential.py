"""Group-sequential boundaries against published values and an independent multivariate-normal computation, the
t-scale boundaries' type-I error by simulation, and the family decisions (Holm carried over the looks)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from scipy.optimize import brentq

from fairprune_jax.analysis import sequential as S

# Lan–DeMets O'Brien–Fleming spending, two-sided α = .05 (α/2 per side), equally spaced looks: the boundaries of
# gsDesign (test.type=2, sfu=sfLDOF) and ldbounds.
PUBLISHED_LDOF = {
    2: (2.9626, 1.9686),
    3: (3.7103, 2.5114, 1.9930),
    4: (4.3326, 2.9631, 2.3590, 2.0141),
    5: (4.8769, 3.3569, 2.6803, 2.2898, 2.0310),
}
# Classical (constant-shape) boundaries, Jennison & Turnbull (2000) Tables 2.1 and 2.3: Pocock C_P and
# O'Brien–Fleming C_B for K equally spaced looks at two-sided α = .05.
POCOCK = {2: 2.178, 3: 2.289, 4: 2.361, 5: 2.413}
OBF = {2: 1.977, 3: 2.004, 4: 2.024, 5: 2.040}


@pytest.mark.parametrize("k", sorted(PUBLISHED_LDOF))
def test_lan_demets_obf_boundaries_match_published_values(k):
    b = S.boundaries(np.arange(1, k + 1) / k, 0.05, 2)
    np.testing.assert_allclose(b, PUBLISHED_LDOF[k], atol=2e-4)
    # the first boundary is analytic: its look spends all of α(t_1)
    assert b[0] == pytest.approx(sps.norm.isf(S.obf_spending(1 / k) / 2), abs=1e-8)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_integration_reproduces_classical_pocock_and_obf_constants(k):
    f = np.arange(1, k + 1) / k

    def total(shape):
        return lambda c: S.exit_probabilities(c * shape, f).sum() - 0.05

    cp = brentq(total(np.ones(k)), 1.5, 3.5)
    cb = brentq(total(np.sqrt(k / np.arange(1, k + 1))), 1.5, 3.5)
    assert cp == pytest.approx(POCOCK[k], abs=1e-3)
    assert cb == pytest.approx(OBF[k], abs=1e-3)


def test_cumulative_exit_equals_spending_by_an_independent_multivariate_normal():
    """P(cross by look k) under the null from scipy's multivariate normal (corr √(t_i/t_j)) equals α(t_k)."""
    f = np.array([0.25, 0.5, 0.75, 1.0])
    b = S.boundaries(f, 0.05, 2)
    cov = np.sqrt(np.minimum.outer(f, f) / np.maximum.outer(f, f))
    for k in range(1, len(f) + 1):
        mvn = sps.multivariate_normal(np.zeros(k), cov[:k, :k])
        # P(no crossing up to k) = P(|Z_i| < b_i for all i ≤ k): inclusion–exclusion over the box corners
        corners = np.array(np.meshgrid(*[[-1, 1]] * k)).reshape(k, -1).T
        stay = sum(np.prod(c) * mvn.cdf(c * b[:k]) for c in corners)
        assert 1 - stay == pytest.approx(S.obf_spending(f[k - 1]), abs=2e-5)


def test_one_sided_boundaries_spend_alpha_on_one_side():
    f = np.arange(1, 4) / 3
    b = S.boundaries(f, 0.05, 1)
    assert S.exit_probabilities(b, f, sides=1).sum() == pytest.approx(0.05, abs=1e-6)
    assert b[0] == pytest.approx(sps.norm.isf(S.obf_spending(1 / 3, 0.05, 1)), abs=1e-8)


def test_unequal_looks_and_bad_designs():
    f = np.array([5, 10, 20, 30]) / 30
    b = S.boundaries(f, 0.05)
    assert S.exit_probabilities(b, f).sum() == pytest.approx(0.05, abs=1e-6)
    assert np.all(np.diff(b) < 0)
    with pytest.raises(ValueError, match="fractions"):
        S.boundaries([0.5, 0.4, 1.0])
    with pytest.raises(ValueError, match="first look"):
        S.Design(1, 5, 30)
    with pytest.raises(ValueError, match="cap"):
        S.Design(10, 5, 5)
    assert S.Design(5, 5, 22).looks == (5, 10, 15, 20, 22)


def test_t_scale_boundaries_keep_the_type_one_error_by_simulation():
    """Normal per-seed values under the null, looks at 5, 10, ..., 30 seeds: the rejection rate is within Monte-Carlo
    error of .05 (8,000 simulated sequences, MCSE .0024), and ignoring the looks would inflate it."""
    design = S.Design(5, 5, 30)
    tb = design.t_bounds(0.05)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8000, design.cap))
    reject = np.zeros(len(x), bool)
    naive = np.zeros(len(x), bool)
    for k, n in enumerate(design.looks):
        t = sps.ttest_1samp(x[:, :n], 0.0, axis=1).statistic
        reject |= np.abs(t) >= tb[k]
        naive |= np.abs(t) >= sps.t.isf(0.025, n - 1)
    mcse = np.sqrt(0.05 * 0.95 / len(x))
    assert abs(reject.mean() - 0.05) < 3 * mcse
    assert naive.mean() > 0.08


def test_family_decisions_use_holm_across_claims_and_looks():
    design = S.Design(5, 5, 15)
    tb1 = design.t_bounds(0.05 / 2)  # two claims: the first step of Holm
    tb2 = design.t_bounds(0.05)  # after one rejection the other gets all of α
    # look 1: A crosses the Bonferroni bound; B is between the two bounds: rejected at the same look
    a = S.Hypothesis("A", [tb1[0] + 0.1])
    b = S.Hypothesis("B", [(tb1[0] + tb2[0]) / 2])
    got = S.decide(design, [a, b])
    assert got == {"A": ("reject", 0), "B": ("reject", 0)}
    # without A, B stays open
    c = S.Hypothesis("C", [0.0])
    assert S.decide(design, [c, b])["B"] == ("open", -1)
    # equivalence: both TOST statistics beyond the one-sided bound at look 2
    eb = design.t_bounds(0.05 / 2, sides=1)
    e = S.Hypothesis("E", [0.1, 0.0], [1.0, eb[1] + 0.1], [-1.0, -eb[1] - 0.1])
    assert S.decide(design, [e, c])["E"] == ("equivalent", 1)
