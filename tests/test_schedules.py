"""Schedules: docs/methods.md §6 test vectors (iterative, GMP) and ERK against an independent RigL-style loop."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairprune_jax import schedules
from fairprune_jax.models import get_model, kernel_predicate

PRUNABLE = kernel_predicate()


def lenet_shapes():
    return jax.eval_shape(get_model("lenet_300_100").init, jax.random.key(0))["params"]


def test_iterative_sparsity_vector():
    want = {1: .2, 2: .36, 3: .488, 4: .5904, 5: .67232, 10: .892626, 11: .914101, 15: .964816, 20: .988471}
    for level, s in want.items():
        assert abs(schedules.iterative_sparsity(level, 0.2) - s) < 5e-7
    assert schedules.iterative_sparsity(0) == 0.0
    np.testing.assert_allclose(schedules.iterative_schedule(5), [.2, .36, .488, .5904, .67232])
    traced = jax.jit(jax.vmap(lambda L: schedules.iterative_sparsity(L, 0.2)))(jnp.arange(1, 6))
    np.testing.assert_allclose(traced, [.2, .36, .488, .5904, .67232], rtol=1e-6)
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="fraction"):
            schedules.iterative_sparsity(1, bad)
    with pytest.raises(ValueError, match="level"):
        schedules.iterative_sparsity(-1)


def test_gmp_vector_and_last_step_hits_final():
    kw = dict(final=0.9, initial=0.05, start=10, end=81, every=10)
    steps = schedules.gmp_steps(10, 81, 10)
    assert steps == [10, 20, 30, 40, 50, 60, 70, 80]
    got = np.asarray([float(schedules.gmp_sparsity(e, **kw)) for e in steps])
    reference = [.05, .360945, .584968, .73632, .82925, .878006, .896839, .899998]
    np.testing.assert_allclose(got[:-1], reference[:-1], atol=1e-6)
    assert got[-1] == np.float32(0.9)  # library: exactly s_f; the reference formula gives .899998
    # the same values traced, vmapped over steps
    np.testing.assert_allclose(jax.jit(jax.vmap(lambda e: schedules.gmp_sparsity(e, **kw)))(jnp.asarray(steps)), got)
    # dense before the first pruning step, s_f after the last, held between pruning steps
    assert float(schedules.gmp_sparsity(9, **kw)) == 0.0
    assert float(schedules.gmp_sparsity(99, **kw)) == np.float32(0.9)
    assert float(schedules.gmp_sparsity(25, **kw)) == float(schedules.gmp_sparsity(20, **kw))
    unheld = float(schedules.gmp_sparsity(25, hold=False, **kw))
    np.testing.assert_allclose(unheld, 0.9 - 0.85 * (1 - 15 / 71) ** 3, rtol=1e-6)
    # monotone non-decreasing over all epochs
    all_s = np.asarray(jax.vmap(lambda e: schedules.gmp_sparsity(e, **kw))(jnp.arange(0, 100)))
    assert np.all(np.diff(all_s) >= 0)


def test_gmp_bad_arguments():
    with pytest.raises(ValueError, match="every"):
        schedules.gmp_steps(0, 10, 0)
    with pytest.raises(ValueError, match="start/end"):
        schedules.gmp_sparsity(3, final=0.9, start=10, end=10)
    with pytest.raises(ValueError, match="final"):
        schedules.gmp_sparsity(3, final=1.0, start=0, end=10)
    with pytest.raises(ValueError, match="initial"):
        schedules.gmp_sparsity(3, final=0.5, initial=0.6, start=0, end=10)


def test_uniform_distribution():
    d = schedules.uniform_distribution(lenet_shapes(), 0.7, PRUNABLE)
    assert d == {"hidden_0/kernel": 0.7, "hidden_1/kernel": 0.7, "head/kernel": 0.7}
    d = schedules.uniform_distribution(lenet_shapes(), 0.7, kernel_predicate(exclude_output=True))
    assert set(d) == {"hidden_0/kernel", "hidden_1/kernel"}
    with pytest.raises(ValueError, match="sparsity"):
        schedules.uniform_distribution(lenet_shapes(), 1.0, PRUNABLE)


def rigl_erk(shapes: dict[str, tuple], sparsity: float, power: float = 1.0) -> dict[str, float]:
    """Independent transcription of RigL's ERK loop (sets, while loop)."""
    dense: set[str] = set()
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for name, shape in shapes.items():
            n = float(np.prod(shape))
            if name in dense:
                rhs -= n * sparsity
            else:
                rhs += n * (1 - sparsity)
                raw[name] = (sum(shape) / np.prod(shape)) ** power
                divisor += raw[name] * n
        eps = rhs / divisor
        max_raw = max(raw.values())
        if max_raw * eps <= 1:
            break
        dense |= {name for name, r in raw.items() if r == max_raw}
    return {name: 0.0 if name in dense else 1 - eps * raw[name] for name in shapes}


@pytest.mark.parametrize("s", [0.5, 0.8, 0.9, 0.98])
def test_erk_matches_rigl_and_meets_overall_sparsity(s):
    params = lenet_shapes()
    shapes = {"head/kernel": (100, 10), "hidden_0/kernel": (784, 300), "hidden_1/kernel": (300, 100)}
    got = schedules.erk_distribution(params, s, PRUNABLE)
    want = rigl_erk(shapes, s)
    assert set(got) == set(want)
    for k in want:
        assert abs(got[k] - want[k]) < 1e-9, k
    sizes = {k: np.prod(v) for k, v in shapes.items()}
    overall = sum(got[k] * sizes[k] for k in got) / sum(sizes.values())
    assert abs(overall - s) < 1e-9
    assert all(0 <= v < 1 for v in got.values())
    # density ∝ (Σ dims)/(Π dims) among the non-capped layers
    free = [k for k in got if got[k] > 0]
    ratios = [(1 - got[k]) / (sum(shapes[k]) / np.prod(shapes[k])) for k in free]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    # traced sparsity gives the same (float32) values
    traced = jax.jit(lambda x: schedules.erk_distribution(params, x, PRUNABLE))(s)
    for k in want:
        np.testing.assert_allclose(float(traced[k]), got[k], atol=1e-5)


def test_erk_caps_dense_layer_and_handles_conv_shapes():
    params = lenet_shapes()
    d = schedules.erk_distribution(params, 0.9, PRUNABLE)
    assert d["head/kernel"] == 0.0 and d["hidden_0/kernel"] > d["hidden_1/kernel"] > 0.0
    conv = {"conv_0": {"kernel": jnp.zeros((3, 3, 3, 16))}, "conv_1": {"kernel": jnp.zeros((3, 3, 16, 32))},
            "head": {"kernel": jnp.zeros((32, 10)), "bias": jnp.zeros(10)}}
    shapes = {"conv_0/kernel": (3, 3, 3, 16), "conv_1/kernel": (3, 3, 16, 32), "head/kernel": (32, 10)}
    for s, power in ((0.7, 1.0), (0.95, 0.5)):
        got = schedules.erk_distribution(conv, s, PRUNABLE, power=power)
        want = rigl_erk(shapes, s, power)
        for k in want:
            assert abs(got[k] - want[k]) < 1e-9
    assert schedules.erk_distribution(conv, 0.0, PRUNABLE) == {k: 0.0 for k in shapes}
