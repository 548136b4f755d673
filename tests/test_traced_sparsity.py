"""masks.threshold refuses a NaN or out-of-range sparsity whether it is concrete or traced (jit / vmap), so a wrong
grid can never come back as masks (docs/methods.md §5, "Traced sparsities")."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairprune_jax import counts, masks, protocols, train
from fairprune_jax.models import get_model, kernel_predicate

SPEC = get_model("mlp_100_30")
PRED = kernel_predicate()
_rng = np.random.default_rng(0)
SC = {name: {"kernel": jnp.asarray(_rng.standard_normal(shape), jnp.float32), "bias": jnp.zeros(shape[-1])}
      for name, shape in (("a", (12, 9)), ("b", (9, 4)))}  # small: the tests compile many variants
BAD = [1.5, 2.0, -0.1, float("nan"), float("inf")]


def _threshold(sc, s):
    return masks.threshold(sc, s, prunable=PRED)


def _layerwise(sc, s):
    return masks.threshold(sc, None, prunable=PRED, scope="layerwise", layer_sparsities={"a/kernel": s, "b/kernel": s})


# compiled once for the module (scores passed as arguments: no constant folding)
GRID = jax.jit(jax.vmap(_threshold, in_axes=(None, 0)))
SEEDS_GRID = jax.jit(jax.vmap(jax.vmap(_threshold, in_axes=(None, 0)), in_axes=(0, None)))


@pytest.mark.parametrize("bad", BAD)
def test_concrete_bad_sparsity_is_a_value_error_naming_the_argument(bad):
    with pytest.raises(ValueError, match=r"sparsity: must be in \[0, 1\)"):
        masks.threshold(SC, bad, prunable=PRED)
    with pytest.raises(ValueError, match=r"sparsity"):
        masks.threshold(SC, np.float32(bad), prunable=PRED)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("how", ["vmap", "jit", "jit_vmap_seeds"])
def test_traced_bad_sparsity_fails_the_call(bad, how):
    grid = jnp.asarray([0.5, bad], jnp.float32)
    if how == "vmap":  # the README's grid pattern: vmap alone
        run = lambda: jax.vmap(lambda s: _threshold(SC, s))(grid)  # noqa: E731
    elif how == "jit":
        run = lambda: GRID(SC, grid)  # noqa: E731
    else:  # seeds x sparsities
        run = lambda: SEEDS_GRID(jax.tree.map(lambda x: jnp.stack([x, -x]), SC), grid)  # noqa: E731
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"SparsityRangeError: sparsity: must be in \[0, 1\), got"):
        jax.block_until_ready(run())


def test_traced_layer_sparsities_are_checked_too():
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"layer_sparsities\['[ab]/kernel'\]: must be in"):
        jax.block_until_ready(jax.jit(jax.vmap(_layerwise, in_axes=(None, 0)))(SC, jnp.asarray([0.3, 1.2])))


def test_valid_traced_grids_give_exact_nested_masks():
    grid = [0.0, 0.3, 0.9, 0.99999999]  # the last rounds up to exactly 1.0 in float32: the fully pruned mask
    out = GRID(SC, jnp.asarray(grid, jnp.float32))
    kernels = [np.asarray(out[k]["kernel"]).reshape(len(grid), -1) for k in ("a", "b")]
    pruned = (~np.concatenate(kernels, axis=1)).sum(axis=1)
    n = 12 * 9 + 9 * 4
    assert pruned.tolist() == [round(float(np.float32(g)) * n) for g in grid] == [0, 43, 130, 144]
    assert np.all(np.concatenate(kernels, axis=1)[1:] <= np.concatenate(kernels, axis=1)[:-1])  # nested
    assert all(np.asarray(out[k]["bias"]).all() for k in ("a", "b"))


def test_checked_sparsity_passes_concrete_and_exact_values_through():
    assert masks.checked_sparsity(0.5) == 0.5
    exact = counts.exact(np.array([0.5, 0.9]))
    assert masks.checked_sparsity(exact) is exact


def test_the_protocols_carry_no_callback():
    """The pipelines pass counts.ExactSparsity (checked on the host): their compiled pruning has no host callback."""
    keys = train.seed_keys([0, 1])
    variables = train.init_population(SPEC, keys)
    x = jnp.zeros((8, 28, 28, 1), jnp.float32)
    y = jnp.zeros((8,), jnp.int32)
    fn = protocols._compiled_prune(SPEC, "mp", False, 5e-4, False, True)
    text = fn.lower(variables, None, keys, counts.exact(np.array([0.5, 0.9])), x, y).as_text()
    assert "callback" not in text.lower()
    with pytest.raises(ValueError, match=r"sparsity"):  # and a bad grid never reaches them
        protocols.prune_population(SPEC, "mp", variables, np.array([0.5, 1.5]), keys, (x, y), grid=True)
