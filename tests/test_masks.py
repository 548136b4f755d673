"""Masks: exact counts (against a numpy emulation of the library rule), vmap == loop, nesting, ties, errors, I/O."""
from __future__ import annotations

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairprune_jax import mask_io, masks, scores, schedules
from fairprune_jax.models import get_model, kernel_predicate

PRUNABLE = kernel_predicate()
HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------- helpers


def make_tree(shapes, seed=0, *, ties=False):
    """Params-like tree {'layer_i': {'kernel', 'bias'}} with random (or heavily tied) values."""
    rng = np.random.default_rng(seed)
    tree = {}
    for i, shape in enumerate(shapes):
        if ties:
            k = rng.integers(0, 4, size=shape).astype(np.float32)
        else:
            k = rng.standard_normal(shape).astype(np.float32)
        bias = jnp.asarray(rng.standard_normal(shape[-1:]), jnp.float32)
        tree[f"layer_{i}"] = {"kernel": jnp.asarray(k), "bias": bias}
    return tree


def model_like(name, seed=0, *, ties=False):
    """A params tree with the model's structure (shapes from eval_shape, no init compile) and numpy values."""
    shapes = jax.eval_shape(get_model(name).init, jax.random.key(0))["params"]
    rng = np.random.default_rng(seed)

    def leaf(x):
        v = rng.standard_normal(x.shape).astype(np.float32) * 0.05
        return jnp.asarray(np.round(np.abs(v) * 100) / 100 if ties else v)

    return jax.tree.map(leaf, shapes)


def np_n_zero(s, n):
    """The spec's count: Python's round (halves to even) of the exact product of the value ``s`` holds and n.

    Pass ``np.float32(s)`` for sparsities that reach the library traced (jitted with x64 off).
    """
    return round(Fraction(float(s)) * n)


def np_keep(flat_scores, n, prior=None):
    """Keep-vector of the library rule by a numpy stable sort on (prior kept, score, index)."""
    x = np.asarray(flat_scores, np.float32)
    p = np.ones(x.shape, bool) if prior is None else np.asarray(prior)
    order = np.lexsort((np.arange(x.size), x, p))  # last key is primary: pruned (False) first
    keep = np.ones(x.size, bool)
    keep[order[:n]] = False
    return keep & p


def kernels(tree):
    """Prunable leaves in flatten (sorted-path) order, as numpy arrays."""
    return [np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if PRUNABLE(p, x)]


def trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


# a few fixed shape sets bound the number of compilations; the last spans many (128-element) blocks
SHAPE_SETS = [((1, 1),), ((3, 5),), ((7, 2), (2, 9)), ((9, 9), (4, 1), (1, 6)), ((40, 60), (60, 3))]
shapes_st = st.sampled_from(SHAPE_SETS)


@functools.partial(jax.jit, static_argnames=("scope", "method"))
def jthreshold(sc, s, prior=None, *, scope="global", method="select"):
    return masks.threshold(sc, s, prunable=PRUNABLE, prior=prior, scope=scope, method=method)


# ----------------------------------------------------------------------------------------------- exact counts


@HYP
@given(shapes=shapes_st, s=st.floats(0, 1, exclude_max=True), seed=st.integers(0, 2**16), ties=st.booleans(),
       use_prior=st.booleans())
def test_global_threshold_matches_numpy_rule(shapes, s, seed, ties, use_prior):
    sc = make_tree(shapes, seed, ties=ties)
    flat = np.concatenate([k.ravel() for k in kernels(sc)])
    rng = np.random.default_rng(seed + 1)
    # an all-True prior when unused: same compiled program, and equivalent to no prior
    def prior_leaf(p, x):
        return jnp.asarray(rng.random(x.shape) < 0.8) if use_prior and PRUNABLE(p, x) else jnp.ones(x.shape, bool)

    prior = jax.tree_util.tree_map_with_path(prior_leaf, sc)
    prior_flat = np.concatenate([k.ravel() for k in kernels(prior)])
    mask = jthreshold(sc, s, prior)
    n = np_n_zero(np.float32(s), flat.size)  # jthreshold traces s as float32
    got = np.concatenate([k.ravel() for k in kernels(mask)])
    np.testing.assert_array_equal(got, np_keep(flat, n, prior_flat))
    assert int(masks.count_zeros(mask, PRUNABLE)) == max(n, int((~prior_flat).sum()))
    assert all(bool(np.all(mask[k]["bias"])) for k in mask)  # non-prunable leaves stay dense


N_CASES = (1, 2, 5, 6, 12, 50, 2580, 265200, 266200, 1_000_003, 15_000_000, 2**31 - 1)


def half_way_sparsities(n, count=40):
    """Sparsities s with s·n exactly k + 1/2: s = (2k + 1)/(2n) when that is a dyadic fraction (float-exact)."""
    odd = n >> ((n & -n).bit_length() - 1)  # n = 2^j · odd; (2k+1)/(2n) is dyadic iff odd | 2k+1
    return [(2 * k + 1) / (2 * n) for k in range((odd - 1) // 2, n, odd)][:count]


@pytest.mark.parametrize("n", N_CASES)
def test_n_zero_is_exact_round_half_even_concrete_and_traced(n):
    rng = np.random.default_rng(n % 1000)
    halves = half_way_sparsities(n) + half_way_sparsities(4 * n)  # 4n: s·n = (2k+1)/8, never a half
    s64 = np.concatenate([rng.random(3000), rng.random(200) * 1e-3, np.asarray(halves, float), [0.0, 0.988471]])
    s64 = s64[s64 < 1]
    s32 = s64.astype(np.float32)
    s32 = s32[s32 < 1]
    want64 = np.asarray([np_n_zero(v, n) for v in s64])
    want32 = np.asarray([np_n_zero(v, n) for v in s32])
    np.testing.assert_array_equal(np.asarray(masks.n_zero(s64, n)), want64)  # concrete: float64 on the host
    np.testing.assert_array_equal([int(masks.n_zero(float(v), n)) for v in s64[:50]], want64[:50])
    traced = jax.jit(jax.vmap(lambda s: masks.n_zero(s, n)))
    np.testing.assert_array_equal(np.asarray(traced(jnp.asarray(s32))), want32)  # traced float32, x64 off
    # half-way cases round to even, in both paths (float32 holds these dyadic s exactly)
    halves = half_way_sparsities(n)
    assert halves and all(Fraction(v) * n % 1 == Fraction(1, 2) for v in halves)
    even = [int(Fraction(v) * n) + int(Fraction(v) * n) % 2 for v in halves]
    np.testing.assert_array_equal(np.asarray(masks.n_zero(np.asarray(halves), n)), even)
    np.testing.assert_array_equal(np.asarray(traced(jnp.asarray(halves, jnp.float32))), even)
    if n == 265200:  # the reported case: round(262142.5017) = 262143 (float32 arithmetic gave 262142)
        assert int(masks.n_zero(0.988471, n)) == 262143 == int(jax.jit(lambda s: masks.n_zero(s, n))(0.988471))
        old = int(np.round(np.float32(0.988471) * np.float32(n)))
        assert old == 262142  # the product in float32 arithmetic is off by one here


def test_n_zero_traced_float64_with_x64_equals_concrete():
    rng = np.random.default_rng(1)
    s = np.concatenate([rng.random(2000), half_way_sparsities(265200), half_way_sparsities(12)])
    for n in (12, 265200, 15_000_000):
        with jax.enable_x64(True):
            got = np.asarray(jax.jit(jax.vmap(lambda v: masks.n_zero(v, n)))(jnp.asarray(s, jnp.float64)))
        np.testing.assert_array_equal(got, [np_n_zero(v, n) for v in s])


def test_n_zero_traced_out_of_range_is_clipped_and_concrete_nonfinite_raises():
    got = jax.jit(lambda s: masks.n_zero(s, 10))(jnp.asarray([-0.5, 1.0, 3.0, np.nan]))
    np.testing.assert_array_equal(np.asarray(got), [0, 10, 10, 0])
    with pytest.raises(ValueError, match="sparsity: must be finite"):
        masks.n_zero(float("nan"), 10)
    with pytest.raises(ValueError, match="n: need"):
        masks.n_zero(0.5, 2**31)


def test_threshold_exact_count_at_level_20_on_lenet_without_output_layer():
    pred = get_model("lenet_300_100").prunable(exclude_output=True)
    sc = scores.magnitude(model_like("lenet_300_100", 4))
    assert masks.num_prunable(sc, pred) == 265200
    fn = functools.partial(masks.threshold, prunable=pred)
    for m in (fn(sc, 0.988471), jax.jit(fn)(sc, 0.988471)):
        assert int(masks.count_zeros(m, pred)) == 262143


def test_no_prior_equals_all_true_prior_and_methods_agree():
    sc = make_tree(SHAPE_SETS[-1], 7, ties=True)
    for s in (0.0, 0.3, 0.71):
        a = jthreshold(sc, s)
        assert trees_equal(a, jthreshold(sc, s, masks.ones_like(sc)))
        assert trees_equal(a, jthreshold(sc, s, method="rank"))
        assert int(masks.count_zeros(a, PRUNABLE)) == np_n_zero(np.float32(s), 2580)


@HYP
@given(shapes=shapes_st, s=st.floats(0, 1, exclude_max=True), seed=st.integers(0, 2**16), ties=st.booleans())
def test_layerwise_threshold_counts_each_layer(shapes, s, seed, ties):
    sc = make_tree(shapes, seed, ties=ties)
    mask = jthreshold(sc, s, scope="layerwise")
    for k_sc, k_m in zip(kernels(sc), kernels(mask)):
        n = np_n_zero(np.float32(s), k_sc.size)
        np.testing.assert_array_equal(k_m.ravel(), np_keep(k_sc.ravel(), n))
        assert int((~k_m).sum()) == n


def test_methods_agree_on_lenet_with_ties():
    spec = get_model("lenet_300_100")
    sc = model_like("lenet_300_100", 3, ties=True)  # few distinct values -> big ties across blocks
    pred = spec.prunable()
    grid = jnp.asarray([0.0, 0.13, 0.5, 0.999])

    def run(method):
        fn = functools.partial(masks.threshold, prunable=pred, method=method)
        return jax.jit(jax.vmap(fn, in_axes=(None, 0)))(sc, grid)

    a, b = run("select"), run("rank")
    assert trees_equal(a, b)
    for i, s in enumerate(grid):
        assert int(masks.count_zeros(jax.tree.map(lambda x: x[i], a), pred)) == np_n_zero(float(s), 266200)


def test_lenet_grid_counts_vmap_over_sparsity_equals_loop():
    spec = get_model("lenet_300_100")
    pred = spec.prunable(exclude_output=True)
    params = model_like("lenet_300_100")
    sc = scores.magnitude(params)
    grid = jnp.asarray([0.0, 0.2, 0.36, 0.488, 0.5904, 0.892626, 0.988471])
    fn = jax.jit(functools.partial(masks.threshold, prunable=pred))
    stacked = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(sc, grid)
    n_elig = 784 * 300 + 300 * 100
    for i, s in enumerate(grid):
        single = fn(sc, s)
        assert trees_equal(jax.tree.map(lambda x: x[i], stacked), single)
        assert int(masks.count_zeros(single, pred)) == np_n_zero(float(s), n_elig)
        assert bool(jnp.all(single["head"]["kernel"]))  # excluded output layer stays dense
        np.testing.assert_allclose(float(masks.sparsity(single, pred)), np_n_zero(float(s), n_elig) / n_elig)
        k_total = n_elig + 100 * 10
        np.testing.assert_allclose(float(masks.kernel_sparsity(single)), np_n_zero(float(s), n_elig) / k_total,
                                   rtol=1e-6)


def test_vmap_over_seeds_and_sparsities_equals_loop():
    shapes = [(20, 12), (12, 7), (7, 3)]
    sc = jax.tree.map(lambda *xs: jnp.stack(xs), *[make_tree(shapes, seed) for seed in range(4)])
    grid = jnp.asarray([0.1, 0.5, 0.77])
    for scope in masks.SCOPES:
        fn = functools.partial(masks.threshold, prunable=PRUNABLE, scope=scope)
        out = jax.jit(jax.vmap(jax.vmap(fn, in_axes=(None, 0)), in_axes=(0, None)))(sc, grid)
        for i in range(4):
            for j in range(3):
                ref = jthreshold(jax.tree.map(lambda x: x[i], sc), float(grid[j]), scope=scope)
                assert trees_equal(jax.tree.map(lambda x: x[i, j], out), ref)
    # different seeds give different masks (the test above could not pass trivially)
    assert not trees_equal(jax.tree.map(lambda x: x[0, 1], out), jax.tree.map(lambda x: x[1, 1], out))


def test_layerwise_with_erk_targets_under_vmap():
    spec = get_model("mlp_100_30")
    pred = spec.prunable()
    params = model_like("mlp_100_30")
    sc = scores.magnitude(params)

    def fn(s):
        return masks.threshold(sc, None, prunable=pred, scope="layerwise",
                               layer_sparsities=schedules.erk_distribution(params, s, pred))

    out = jax.jit(jax.vmap(fn))(jnp.asarray([0.5, 0.9]))
    for i, s in enumerate((0.5, 0.9)):
        dist = schedules.erk_distribution(params, s, pred)
        for name, frac in masks.layer_sparsity(jax.tree.map(lambda x: x[i], out), pred).items():
            n_l = params[name.split("/")[0]]["kernel"].size
            assert abs(float(frac) * n_l - dist[name] * n_l) <= 1.0  # round(s_l N_l), s_l in float32


# ----------------------------------------------------------------------------------------------- rule details


def test_ties_break_by_sorted_path_then_index():
    # insertion order z, a: flatten order (sorted keys) puts 'a' first
    tree = {"z": {"kernel": jnp.ones((2, 3))}, "a": {"kernel": jnp.ones((3, 2))}}
    m = jthreshold(tree, 0.5)  # 6 of 12 go: all of 'a'
    assert not bool(jnp.any(m["a"]["kernel"])) and bool(jnp.all(m["z"]["kernel"]))
    m = jthreshold(tree, 7 / 12)  # 7 go: all 'a', then z[0, 0]
    np.testing.assert_array_equal(np.asarray(m["z"]["kernel"]), [[False, True, True], [True, True, True]])
    for method in masks.METHODS:  # eager and the other method give the same answer
        assert trees_equal(m, masks.threshold(tree, 7 / 12, prunable=PRUNABLE, method=method))


def test_negative_zero_ties_with_zero():
    tree = {"l": {"kernel": jnp.asarray([[0.0, -0.0, 0.0, -0.0]])}}
    m = masks.threshold(tree, 0.5, prunable=PRUNABLE)
    np.testing.assert_array_equal(np.asarray(m["l"]["kernel"]), [[False, False, True, True]])


def test_prior_pruned_go_first_and_are_never_revived():
    tree = make_tree([(10, 10)], seed=5)
    w = np.asarray(tree["layer_0"]["kernel"])
    sc = {"layer_0": {"kernel": jnp.abs(tree["layer_0"]["kernel"]), "bias": tree["layer_0"]["bias"]}}
    # prior prunes the 10 LARGEST scores: they must stay pruned, then the lowest go
    prior_k = np.ones(100, bool)
    prior_k[np.argsort(-np.abs(w).ravel())[:10]] = False
    prior = masks.ones_like(sc)
    prior["layer_0"]["kernel"] = jnp.asarray(prior_k.reshape(10, 10))
    m = masks.threshold(sc, 0.3, prunable=PRUNABLE, prior=prior)
    keep = np.asarray(m["layer_0"]["kernel"]).ravel()
    assert not keep[~prior_k].any()
    assert (~keep).sum() == 30
    expected = np_keep(np.abs(w).ravel(), 30, prior_k)
    np.testing.assert_array_equal(keep, expected)
    # asking for fewer zeros than the prior has: a concrete request is refused naming both sparsities ...
    with pytest.raises(ValueError, match=r"sparsity: 0\.05 \(5 of 100 weights\) is below the prior's sparsity 0\.1 "):
        masks.threshold(sc, 0.05, prunable=PRUNABLE, prior=prior)
    with pytest.raises(ValueError, match=r"layer_sparsities\['layer_0/kernel'\]: 0\.02 .* prior's sparsity 0\.1"):
        masks.threshold(sc, None, prunable=PRUNABLE, prior=prior, scope="layerwise",
                        layer_sparsities={"layer_0/kernel": 0.02})
    with pytest.raises(ValueError, match=r"sparsity \(layer 'layer_0/kernel'\): 0\.05 .* prior's sparsity 0\.1"):
        masks.threshold(sc, 0.05, prunable=PRUNABLE, prior=prior, scope="layerwise")
    # ... the same count is accepted, and a traced request returns the prior itself (documented)
    m = masks.threshold(sc, 0.1, prunable=PRUNABLE, prior=prior)
    np.testing.assert_array_equal(np.asarray(m["layer_0"]["kernel"]).ravel(), prior_k)
    for scope in masks.SCOPES:
        m = jthreshold(sc, 0.05, prior, scope=scope)
        np.testing.assert_array_equal(np.asarray(m["layer_0"]["kernel"]).ravel(), prior_k)


def test_iterative_masks_are_nested_with_exact_counts():
    spec = get_model("mlp_100_30")
    pred = spec.prunable()
    params = model_like("mlp_100_30", 2)
    n_elig = masks.num_prunable(params, pred)
    mask = masks.ones_like(params)

    @jax.jit
    def step(params, mask, s):
        return masks.threshold(scores.magnitude(params, mask=mask), s, prunable=pred, prior=mask)

    for level in range(1, 8):
        s = schedules.iterative_sparsity(level, 0.2)
        new = step(params, mask, s)
        assert trees_equal(masks.intersect(new, mask), new)  # new ⊆ old
        assert int(masks.count_zeros(new, pred)) == np_n_zero(np.float32(s), n_elig)
        # perturb surviving weights (retraining) so later levels use new scores
        params = jax.tree.map(lambda p: p * (1 + 0.1 * jnp.sin(level * p)), params)
        mask = new


# ----------------------------------------------------------------------------------------------- algebra & counts


def test_apply_and_counts_against_numpy():
    tree = make_tree([(6, 5), (5, 4)], seed=3)
    mask = masks.threshold(jax.tree.map(jnp.abs, tree), 0.4, prunable=PRUNABLE)
    applied = masks.apply(tree, mask)
    for k in tree:
        np.testing.assert_array_equal(np.asarray(applied[k]["kernel"]),
                                      np.where(np.asarray(mask[k]["kernel"]), np.asarray(tree[k]["kernel"]), 0))
        np.testing.assert_array_equal(np.asarray(applied[k]["bias"]), np.asarray(tree[k]["bias"]))
        assert applied[k]["kernel"].dtype == tree[k]["kernel"].dtype
    ls = masks.layer_sparsity(mask, PRUNABLE)
    assert set(ls) == {"layer_0/kernel", "layer_1/kernel"}
    for k in tree:
        np.testing.assert_allclose(float(ls[f"{k}/kernel"]), 1 - np.asarray(mask[k]["kernel"]).mean(), rtol=1e-6)
    zeros = sum((~np.asarray(mask[k]["kernel"])).sum() for k in tree)
    np.testing.assert_allclose(float(masks.sparsity(mask, PRUNABLE)), zeros / 50, rtol=1e-6)
    assert zeros == np_n_zero(0.4, 50)


def test_complement_intersect_union():
    tree = make_tree([(4, 4)], seed=1)
    a = masks.threshold(tree, 0.5, prunable=PRUNABLE)
    b = masks.threshold(jax.tree.map(lambda x: -x, tree), 0.25, prunable=PRUNABLE)
    ak, bk = np.asarray(a["layer_0"]["kernel"]), np.asarray(b["layer_0"]["kernel"])
    c = masks.complement(a, PRUNABLE)
    np.testing.assert_array_equal(np.asarray(c["layer_0"]["kernel"]), ~ak)
    assert bool(jnp.all(c["layer_0"]["bias"]))
    np.testing.assert_array_equal(np.asarray(masks.intersect(a, b)["layer_0"]["kernel"]), ak & bk)
    np.testing.assert_array_equal(np.asarray(masks.union(a, b)["layer_0"]["kernel"]), ak | bk)
    ones = masks.ones_like(tree)
    assert all(bool(jnp.all(x)) and x.dtype == jnp.bool_ for x in jax.tree.leaves(ones))


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), float("inf"), 1.5, np.float32(1.0), "half",
                                 jnp.asarray(1.0)])
def test_bad_sparsity_raises(bad):
    with pytest.raises(ValueError, match="sparsity"):
        masks.check_sparsity(bad)
    with pytest.raises(ValueError, match="sparsity"):
        masks.threshold(make_tree([(3, 3)]), bad, prunable=PRUNABLE)


def test_unknown_scope_and_misused_layer_sparsities():
    tree = make_tree([(3, 3), (3, 2)])
    with pytest.raises(ValueError, match="scope"):
        masks.threshold(tree, 0.5, prunable=PRUNABLE, scope="per_channel")
    with pytest.raises(ValueError, match="layer_sparsities"):
        masks.threshold(tree, 0.5, prunable=PRUNABLE, layer_sparsities={"layer_0/kernel": 0.5})
    with pytest.raises(ValueError, match="layer_1/kernel"):
        masks.threshold(tree, None, prunable=PRUNABLE, scope="layerwise", layer_sparsities={"layer_0/kernel": 0.5})
    with pytest.raises(ValueError, match="layer_sparsities"):
        masks.threshold(tree, None, prunable=PRUNABLE, scope="layerwise",
                        layer_sparsities={"layer_0/kernel": 0.5, "layer_1/kernel": 1.0})
    with pytest.raises(ValueError, match="method"):
        masks.threshold(tree, 0.5, prunable=PRUNABLE, method="bogus")
    with pytest.raises(ValueError, match="prunable"):
        masks.threshold(tree, 0.5, prunable=lambda p, x: False)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise_naming_leaf(value):
    tree = make_tree([(3, 3), (3, 2)])
    tree["layer_1"]["kernel"] = tree["layer_1"]["kernel"].at[0, 1].set(value)
    with pytest.raises(ValueError, match="layer_1/kernel"):
        masks.check_scores(tree)
    with pytest.raises(ValueError, match="layer_1/kernel"):
        masks.threshold(tree, 0.5, prunable=PRUNABLE)
    # +inf on a non-prunable leaf is allowed by threshold
    ok = make_tree([(3, 3)])
    ok["layer_0"]["bias"] = jnp.full((3,), jnp.inf)
    masks.threshold(ok, 0.5, prunable=PRUNABLE)


def test_validate_names_first_differing_path():
    params = make_tree([(3, 3), (3, 2)])
    mask = masks.ones_like(params)
    masks.validate(params, mask)
    wrong_shape = {**mask, "layer_1": {**mask["layer_1"], "kernel": jnp.ones((2, 3), bool)}}
    with pytest.raises(ValueError, match=r"layer_1/kernel.*shape"):
        masks.validate(params, wrong_shape)
    non_bool = {**mask, "layer_0": {**mask["layer_0"], "bias": jnp.ones((3,), jnp.float32)}}
    with pytest.raises(ValueError, match=r"layer_0/bias.*dtype"):
        masks.validate(params, non_bool)
    missing = {"layer_0": mask["layer_0"], "layer_1": {"kernel": mask["layer_1"]["kernel"]}}
    with pytest.raises(ValueError, match="layer_1/bias"):
        masks.validate(params, missing)
    renamed = {"layer_0": mask["layer_0"], "layer_9": mask["layer_1"]}
    with pytest.raises(ValueError, match="layer_1/bias"):
        masks.validate(params, renamed)
    with pytest.raises(ValueError, match="prior"):
        masks.threshold(params, 0.5, prunable=PRUNABLE, prior=non_bool)
    with pytest.raises(ValueError, match="layer_1/kernel"):
        masks.apply(params, wrong_shape)


# ----------------------------------------------------------------------------------------------- interop


def test_save_load_roundtrip_and_validation(tmp_path):
    spec = get_model("mlp_100_30")
    params = model_like("mlp_100_30")
    mask = masks.threshold(scores.magnitude(params), 0.7, prunable=spec.prunable())
    path = tmp_path / "mask.npz"
    mask_io.save(path, mask)
    assert trees_equal(mask_io.load(path, like_params=params), mask)
    assert trees_equal(mask_io.load(path), mask)  # nested dict from the path strings
    other = model_like("lenet_300_100")
    with pytest.raises(ValueError, match=r"mask\.npz.*head/kernel.*shape"):
        mask_io.load(path, like_params=other)
    extra = {**params, "extra": {"kernel": jnp.zeros((2, 2))}}
    with pytest.raises(ValueError, match="extra/kernel"):
        mask_io.load(path, like_params=extra)
    with pytest.raises(ValueError, match="expected bool"):
        mask_io.save(tmp_path / "bad.npz", jax.tree.map(lambda m: m.astype(jnp.uint8), mask))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="garbage.npz"):
        mask_io.load(tmp_path / "garbage.npz")
    with pytest.raises(ValueError, match="not found"):
        mask_io.load(tmp_path / "absent.npz")
    np.savez(tmp_path / "foreign.npz", a=np.ones(3, bool))
    with pytest.raises(ValueError, match="not a fairprune_jax mask"):
        mask_io.load(tmp_path / "foreign.npz")


def test_jaxpruner_roundtrip():
    spec = get_model("mlp_100_30")
    pred = spec.prunable(exclude_output=True)
    params = model_like("mlp_100_30")
    mask = masks.threshold(scores.magnitude(params), 0.6, prunable=pred)
    jp = mask_io.to_jaxpruner(mask, pred)
    assert jp["head"]["kernel"] is None and jp["hidden_0"]["bias"] is None
    assert jp["hidden_0"]["kernel"].dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(jp["hidden_1"]["kernel"]), np.asarray(mask["hidden_1"]["kernel"]))
    assert trees_equal(mask_io.from_jaxpruner(jp, params), mask)
    bad = {**jp, "hidden_0": {**jp["hidden_0"], "kernel": jp["hidden_0"]["kernel"] * 3}}
    with pytest.raises(ValueError, match="hidden_0/kernel"):
        mask_io.from_jaxpruner(bad, params)
    missing = {k: v for k, v in jp.items() if k != "head"}
    with pytest.raises(ValueError, match="head"):
        mask_io.from_jaxpruner(missing, params)


# ----------------------------------------------------------------------------------------------- populations


def _population(name, n):
    """Params of n models stacked on a leading axis (different values per model)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[model_like(name, seed=s) for s in range(n)])


def test_spec_predicate_refuses_stacked_trees_and_lead_equals_nested_vmap():
    spec = get_model("mlp_100_30")
    pred = spec.prunable()
    params = _population("mlp_100_30", 2)
    with pytest.raises(ValueError, match=r"scores: leaf 'head/bias' has shape \(2, 10\) but the model's is "
                                         r"\(10,\).*vmap"):
        masks.threshold(scores.magnitude(params), 0.5, prunable=pred)
    per_seed = jax.vmap(lambda p: masks.threshold(scores.magnitude(p), 0.5, prunable=pred))(params)
    with pytest.raises(ValueError, match="mask: leaf 'head/bias'.*vmap"):
        masks.sparsity(per_seed, pred)
    # elementwise functions take populations as they are
    assert trees_equal(masks.complement(per_seed, pred), jax.vmap(lambda m: masks.complement(m, pred))(per_seed))
    # each seed gets exactly its own 50% (ranking the seeds together would not)
    np.testing.assert_array_equal(np.asarray(masks.sparsity(per_seed, pred, lead=1)), [0.5, 0.5])
    grid = jnp.array([0.3, 0.6, 0.9])
    pop = jax.vmap(lambda p: jax.vmap(lambda s: masks.threshold(scores.magnitude(p), s, prunable=pred))(grid))(
        params)  # [2, 3]
    nested = jax.vmap(jax.vmap(lambda m: masks.sparsity(m, pred)))(pop)
    np.testing.assert_array_equal(np.asarray(masks.sparsity(pop, pred, lead=2)), np.asarray(nested))
    n = masks.num_prunable(model_like("mlp_100_30"), pred)
    np.testing.assert_array_equal(np.asarray(masks.count_zeros(pop, pred, lead=2)),
                                  np.broadcast_to(np.round(np.asarray(grid) * n), (2, 3)))
    layers = masks.layer_sparsity(pop, pred, lead=2)
    assert sorted(layers) == ["head/kernel", "hidden_0/kernel", "hidden_1/kernel"]
    one = masks.layer_sparsity(jax.tree.map(lambda a: a[1, 2], pop), pred)
    assert all(layers[k].shape == (2, 3) and float(layers[k][1, 2]) == float(one[k]) for k in one)
    with pytest.raises(ValueError, match="lead"):
        masks.sparsity(pop, pred, lead=-1)


def test_load_broadcasts_leading_axes(tmp_path):
    spec = get_model("mlp_100_30")
    pred = spec.prunable()
    params = _population("mlp_100_30", 2)  # dense [S]
    grid = jnp.array([0.5, 0.9])
    pop = jax.vmap(lambda p: jax.vmap(lambda s: masks.threshold(scores.magnitude(p), s, prunable=pred))(grid))(
        params)  # [S, P]
    mask_io.save(tmp_path / "pop.npz", pop)
    one_model = jax.tree.map(lambda a: a[0], params)
    for like in (params, one_model):  # [S] params or one model's: both broadcast to the file's [S, P]
        loaded = mask_io.load(tmp_path / "pop.npz", like_params=like)
        assert trees_equal(loaded, pop)
    other = _population("mlp_100_30", 3)  # [3] params: not a prefix of the file's [2, 2]
    with pytest.raises(ValueError, match=r"pop\.npz: leaf 'head/bias' has shape \(2, 2, 10\)"):
        mask_io.load(tmp_path / "pop.npz", like_params=other)


@pytest.mark.parametrize("n", [300, 81_700, 265_200, 2**31 - 1])
def test_exact_sparsity_carries_the_float64_count_through_jit_and_vmap(n):
    """`counts.exact` splits a float64 sparsity into three float32 parts that sum to it exactly, and the traced
    count from them is round(s·N) of the float64 value, where the float32 value alone is off by one for ~0.3%."""
    from fractions import Fraction

    from fairprune_jax import counts

    s = np.random.default_rng(n).random(2000)
    s[:3] = (0.995, 0.988471, 1 - 0.8**20)
    ex = counts.exact(s)
    assert all(p.dtype == jnp.float32 for p in ex)
    assert all(sum(Fraction(float(p[i])) for p in ex) == Fraction(float(s[i])) for i in range(0, 2000, 97))
    want = np.array([round(Fraction(float(v)) * n) for v in s])
    traced = jax.jit(jax.vmap(lambda e: counts.n_zero(e, n)))(ex)
    np.testing.assert_array_equal(np.asarray(traced), want)
    np.testing.assert_array_equal(np.asarray(counts.n_zero(ex, n)), want)
    with pytest.raises(ValueError, match="sparsity"):
        counts.exact([0.5, 1.5])


def test_agreement_counts_kept_weights_shared_with_the_other_mask():
    pred = lambda path, x: True  # noqa: E731
    a = {"w": jnp.array([True, True, False, False]), "v": jnp.array([[True, False]])}
    b = {"w": jnp.array([True, False, True, False]), "v": jnp.array([[True, True]])}
    # a keeps w0, w1, v00 (3); b keeps w0 and v00 of those (2)
    assert float(masks.agreement(a, b, pred)) == pytest.approx(2 / 3)
    assert float(masks.agreement(b, a, pred)) == pytest.approx(2 / 4)
    assert float(masks.agreement(a, a, pred)) == 1.0
    none = jax.tree.map(jnp.zeros_like, a)
    assert np.isnan(float(masks.agreement(none, a, pred)))
    stacked = jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)
    np.testing.assert_allclose(masks.agreement(stacked, jax.tree.map(lambda x: jnp.stack([x, x]), a), pred, lead=1),
                               [1.0, 2 / 4])
    with pytest.raises(ValueError, match="b: leaf 'w' has shape"):
        masks.agreement(a, {"w": jnp.ones(3, bool), "v": b["v"]}, pred)


def test_agreement_of_an_unrelated_mask_is_about_its_density():
    k1, k2 = jax.random.split(jax.random.key(0))
    a = {"w": jax.random.bernoulli(k1, 0.1, (200_000,))}
    b = {"w": jax.random.bernoulli(k2, 0.1, (200_000,))}
    assert float(masks.agreement(a, b, lambda p, x: True)) == pytest.approx(0.1, abs=0.01)
