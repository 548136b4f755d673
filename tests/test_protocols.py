"""Pruning protocols on a real MNIST slice: exact requested sparsity (masks.sparsity / count_zeros), nested
masks, rewinding, pruned weights exactly zero after (re)training, resumable iterative pruning, GMP."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairprune_jax import masks, protocols, schedules, scores, train
from fairprune_jax.data import load_split
from fairprune_jax.models import get_model

SPEC = get_model("mlp_100_30")
CFG = dict(epochs=2, batch_size=128, optimizer=dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4))


@pytest.fixture(scope="module")
def setup():
    split = load_split("mnist", "train")
    x = jnp.asarray(((split.images[:2048].astype(np.float32) / 255 - 0.1307) / 0.3081))
    y = jnp.asarray(split.labels[:2048])
    keys = train.as_keys([0, 1])
    dense, _ = train.fit(SPEC, CFG, keys, x, y)
    return x, y, keys, dense


def _at(tree, *idx):
    return jax.tree.map(lambda a: a[idx], tree)


def _n_prunable(exclude_output=False):
    p = jax.eval_shape(SPEC.init, jax.random.key(0))["params"]
    return masks.num_prunable(p, SPEC.prunable(exclude_output))


def _assert_pruned_zero(variables, mask):
    for p, m in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(mask)):
        assert p.shape == m.shape and bool(jnp.all(jnp.where(m, 0.0, p) == 0.0))


def test_finetune_config_and_bad_criteria(setup):
    from ml_collections import ConfigDict

    ft = protocols.finetune_config(ConfigDict(CFG), lr_scale=0.1, epochs=1)
    assert ft["optimizer"]["lr"] == pytest.approx(0.005) and ft["epochs"] == 1 and CFG["optimizer"]["lr"] == 0.05
    x, y, keys, dense = setup
    with pytest.raises(ValueError, match="criterion"):
        protocols.one_shot(SPEC, CFG, dense, ["mp", "magnitude"], [0.5], keys, x, y)
    with pytest.raises(ValueError, match="sparsities"):
        protocols.one_shot(SPEC, CFG, dense, ["mp"], [0.5, 1.0], keys, x, y)


def test_one_shot_every_criterion_exact_sparsity_and_fine_tuning(setup):
    x, y, keys, dense = setup
    criteria = ["mp", "mp_norm", "mp_layer", "random", "gp", "up"]
    grid = [0.3, 0.9]
    ft = protocols.finetune_config(CFG, lr_scale=0.1, epochs=1)
    v, m, hist = protocols.one_shot(SPEC, ft, dense, criteria, grid, keys, x, y, exclude_output=True)
    pred = SPEC.prunable(exclude_output=True)
    n = _n_prunable(exclude_output=True)
    assert hist["loss"].shape == (2, 6, 2, 1) and np.all(np.isfinite(hist["loss"]))
    for s in range(2):
        for j, c in enumerate(criteria):
            for k, target in enumerate(grid):
                mk = _at(m, s, j, k)
                assert int(masks.count_zeros(mk, pred)) == round(target * n), (c, target)
                assert float(masks.sparsity(mk, pred)) == pytest.approx(target, abs=1 / n)
                assert bool(jnp.all(mk["head"]["kernel"]))  # the excluded output layer stays dense
                if c == "mp_layer":  # the same fraction in every prunable layer
                    for leaf in (mk["hidden_0"]["kernel"], mk["hidden_1"]["kernel"]):
                        assert int((~leaf).sum()) == round(target * leaf.size)
    _assert_pruned_zero(v, m)
    # fine-tuning changed the surviving weights, starting from the dense weights of the same seed
    moved = jnp.abs(_at(v, 1, 4, 0)["params"]["hidden_0"]["kernel"] - dense["params"]["hidden_0"]["kernel"][1])
    assert float(jnp.max(jnp.where(_at(m, 1, 4, 0)["hidden_0"]["kernel"], moved, 0))) > 0
    # independent checks of the wiring on seed 1: MP keeps the largest |w|; UP equals the direct computation
    w = np.concatenate([np.abs(np.asarray(dense["params"][layer]["kernel"][1])).ravel()
                        for layer in ("hidden_0", "hidden_1")])
    kept = np.concatenate([np.asarray(_at(m, 1, 0, 1)[layer]["kernel"]).ravel() for layer in ("hidden_0", "hidden_1")])
    assert w[kept].min() >= w[~kept].max()
    d1 = _at(dense, 1)
    g = scores.batch_gradient(SPEC, d1, None, x[:128], y[:128])
    up = scores.compute("up", d1["params"], grads=g, lam=5e-4)
    direct = masks.threshold(up, 0.9, prunable=pred)
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(_at(m, 1, 5, 1))))
    # the random criterion gives different masks for different seeds (keys folded per seed)
    assert not bool(jnp.all(_at(m, 0, 3, 1)["hidden_0"]["kernel"] == _at(m, 1, 3, 1)["hidden_0"]["kernel"]))


def test_iterative_nests_masks_and_rewinds_to_init(setup):
    """With 0 retraining epochs every level's weights are exactly the rewind point (init) under the mask."""
    x, y, keys, dense = setup
    init = train.init_population(SPEC, keys)
    cfg0 = dict(CFG, epochs=0)
    criteria = ["mp", "up", "random"]
    levels = list(protocols.iterative(SPEC, cfg0, keys, x, y, criteria, 3, dense=(dense, init)))
    assert [r.level for r in levels] == [0, 1, 2, 3]
    pred = SPEC.prunable()
    n = _n_prunable()
    assert levels[0].sparsity == 0.0
    np.testing.assert_array_equal(levels[0].variables["params"]["head"]["bias"][:, 2], dense["params"]["head"]["bias"])
    for prev, r in zip(levels[:-1], levels[1:]):
        assert r.sparsity == pytest.approx(schedules.iterative_sparsity(r.level))
        for s in range(2):
            for j in range(3):
                mk = _at(r.masks, s, j)
                assert int(masks.count_zeros(mk, pred)) == round(r.sparsity * n)
                # nested: nothing pruned before is revived
                for a, b in zip(jax.tree.leaves(mk), jax.tree.leaves(_at(prev.masks, s, j))):
                    assert not bool(jnp.any(a & ~b))
                expect = masks.apply(_at(init, s)["params"], mk)
                for a, b in zip(jax.tree.leaves(expect), jax.tree.leaves(_at(r.variables, s, j)["params"])):
                    np.testing.assert_array_equal(a, b)
    # level 1 of MP scored the DENSE weights: it keeps the largest trained |w| (not the init's)
    w = np.abs(np.asarray(dense["params"]["hidden_0"]["kernel"][0]))
    k1 = np.asarray(levels[1].masks["hidden_0"]["kernel"][0, 0])
    w_all = np.concatenate([np.abs(np.asarray(dense["params"][ly]["kernel"][0])).ravel()
                            for ly in ("hidden_0", "hidden_1", "head")])
    kept_all = np.concatenate([np.asarray(levels[1].masks[ly]["kernel"][0, 0]).ravel()
                               for ly in ("hidden_0", "hidden_1", "head")])
    assert w_all[kept_all].min() >= w_all[~kept_all].max() and w[k1].size > 0


def test_iterative_retrains_with_rewind_step_and_resumes(setup):
    x, y, keys, _ = setup
    cfg = dict(CFG, epochs=1)
    run = list(protocols.iterative(SPEC, cfg, keys, x, y, ["mp"], 2, rewind_step=3))
    init = train.init_population(SPEC, keys)
    rewind = run[0].state.rewind
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(rewind), jax.tree.leaves(init))) > 0
    for r in run[1:]:
        _assert_pruned_zero(jax.tree.map(lambda a: a[:, 0], r.variables), jax.tree.map(lambda a: a[:, 0], r.masks))
        assert r.history["loss"].shape == (2, 1, 1)
    resumed = list(protocols.iterative(SPEC, cfg, keys, x, y, ["mp"], 2, resume=run[1].state))
    assert [r.level for r in resumed] == [2]
    for a, b in zip(jax.tree.leaves((run[2].variables, run[2].masks)),
                    jax.tree.leaves((resumed[0].variables, resumed[0].masks))):
        np.testing.assert_array_equal(a, b)


def test_gmp_post_training_reaches_final_sparsity(setup):
    """GMP on the converged dense models with Adam 1e-4 (paper 2's post-training variant)."""
    x, y, keys, dense = setup
    cfg = dict(epochs=3, batch_size=128, optimizer=dict(name="adam", lr=1e-4))
    finals = [0.9]
    v, m, hist = protocols.gmp(SPEC, cfg, keys, x, y, ["mp", "up"], finals, start=0, end=2, every=1,
                               init_variables=dense)
    pred = SPEC.prunable()
    n = _n_prunable()
    assert hist["prune_epochs"] == [0, 1] and hist["loss"].shape == (2, 2, 1, 3)
    for s in range(2):
        for j in range(2):
            for k, f in enumerate(finals):
                assert int(masks.count_zeros(_at(m, s, j, k), pred)) == round(f * n)
    _assert_pruned_zero(v, m)
    with pytest.raises(ValueError, match="tcfg.epochs"):
        protocols.gmp(SPEC, dict(cfg, epochs=1), keys, x, y, ["mp"], finals, start=0, end=2, init_variables=dense)
    # epoch 0 trained at the schedule's initial sparsity (.05 of the converged model: a low loss), epoch 1 at
    # .9, where the loss jumps
    assert np.all(hist["loss"][..., 0] < 0.5) and np.all(hist["loss"][..., 1] > hist["loss"][..., 0])


def test_finetune_is_one_shot_fine_tuning_in_the_finetune_data_order(setup):
    x, y, keys, dense = setup
    ft = protocols.finetune_config(CFG, lr_scale=0.1, epochs=1)
    v, m, hist = protocols.one_shot(SPEC, ft, dense, ["mp", "random"], [0.5, 0.8], keys, x, y)
    v2, hist2 = protocols.finetune(SPEC, ft, dense, m, keys, x, y)
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(hist["loss"], hist2["loss"])
    # independent: model (seed 1, random, 0.8) trained alone with seed 1's fine-tuning key, and NOT the dense order
    one = lambda tree: jax.tree.map(lambda a: a[1, 1, 1][None], tree)  # noqa: E731
    for purpose, same in (("finetune_data", True), ("data", False)):
        alone, _ = train.fit(SPEC, ft, train.purpose_key(keys[1], purpose)[None], x, y, masks=one(m),
                             init_variables=jax.tree.map(lambda a: a[1:2], dense))
        close = all(np.allclose(a, b, atol=1e-5) for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(one(v))))
        assert close == same


def test_finetune_broadcasts_dense_over_any_mask_population(setup):
    x, y, keys, dense = setup
    pred = SPEC.prunable()
    grid = jnp.array([0.5, 0.9])
    mp = jax.vmap(lambda p: jax.vmap(lambda s: masks.threshold(scores.magnitude(p), s, prunable=pred))(grid))(
        dense["params"])  # [S, P]
    layer = jax.vmap(lambda p: jax.vmap(lambda s: masks.threshold(scores.magnitude(p), s, prunable=pred,
                                                                 scope="layerwise"))(grid))(dense["params"])
    composed = jax.tree.map(lambda *a: jnp.stack(a, axis=1), mp, masks.intersect(mp, layer))  # [S, 2, P]
    ft = protocols.finetune_config(CFG, lr_scale=0.1, epochs=1)
    v, hist = protocols.finetune(SPEC, ft, dense, composed, keys, x, y)
    assert jax.tree.leaves(v["params"])[0].shape[:3] == (2, 2, 2) and hist["loss"].shape == (2, 2, 2, 1)
    _assert_pruned_zero(jax.tree.map(lambda a: a.reshape(8, *a.shape[3:]), v),
                        jax.tree.map(lambda a: a.reshape(8, *a.shape[3:]), composed))
    # masks [S] (no extra axes) fine-tune one model per seed
    v1, hist1 = protocols.finetune(SPEC, ft, dense, _at(mp, slice(None), 0), keys, x, y)
    assert hist1["loss"].shape == (2, 1)
    np.testing.assert_allclose(hist1["loss"], hist["loss"][:, 0, 0], rtol=1e-5)
    with pytest.raises(ValueError, match="masks: leading axes"):
        protocols.finetune(SPEC, ft, dense, _at(composed, slice(0, 1)), keys, x, y)
    with pytest.raises(ValueError, match="dense_variables"):
        protocols.finetune(SPEC, ft, _at(dense, slice(0, 1)), composed, keys, x, y)
    with pytest.raises(ValueError, match="masks/head/bias: dtype int32 is not bool"):
        protocols.finetune(SPEC, ft, dense, jax.tree.map(lambda a: a.astype(jnp.int32), composed), keys, x, y)


@pytest.mark.parametrize("bad, match", [(10, r"y_train: values must be in \[0, 10\), got range \[0, 10\]"),
                                        (-1, r"y_train: values must be in \[0, 10\), got range \[-1, 9\]")])
def test_protocols_refuse_bad_labels_before_scoring(setup, bad, match):
    x, y, keys, dense = setup
    y_bad = y.at[5].set(bad)
    with pytest.raises(ValueError, match=match):
        protocols.one_shot(SPEC, CFG, dense, ["gp"], [0.5], keys, x, y_bad)
    with pytest.raises(ValueError, match=match):
        next(protocols.iterative(SPEC, CFG, keys, x, y_bad, ["mp"], 1))
    with pytest.raises(ValueError, match="y_train: dtype float32"):
        protocols.finetune(SPEC, CFG, dense, jax.vmap(masks.ones_like)(dense["params"]), keys, x,
                           y.astype(jnp.float32))


def test_protocols_check_the_model_contract_first(setup):
    from fairprune_jax.models import ModelSpec, mlp

    x, y, keys, dense = setup
    listy = ModelSpec("listy", mlp.MLP([100, 30], 10), (28, 28, 1), 10)
    with pytest.raises(ValueError, match="spec.module: MLP is not hashable.*tuples instead of lists"):
        protocols.one_shot(listy, CFG, dense, ["mp"], [0.5], keys, x, y)


def test_finetune_fused_equals_unfused(setup):
    """A seed's masks share its fine-tuning data order, so with `fuse` they are trained as one shared-batch group
    (`train.run_population`); that only reorders float sums."""
    x, y, keys, dense = setup
    ft = protocols.finetune_config(CFG, lr_scale=0.1, epochs=1)
    v, m, hist = protocols.one_shot(SPEC, ft, dense, ["mp", "gp"], [0.5, 0.9], keys, x, y, fuse=True)
    v2, hist2 = protocols.finetune(SPEC, ft, dense, m, keys, x, y)
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hist["loss"], hist2["loss"], rtol=1e-5)
    assert float(jnp.max(jnp.abs(v["params"]["hidden_0"]["kernel"] - dense["params"]["hidden_0"]["kernel"][:, None,
                                                                                                         None]))) > 1e-3
    _assert_pruned_zero(v, m)


def test_prune_population_zeroes_round_s_n_of_the_float64_sparsity():
    """Pipeline masks take the exact count of the configured (float64) sparsity, not of its float32 value: at
    s = .995 on MLP 100-30 (N = 81,700 kernel weights) the two differ by one weight."""
    from fractions import Fraction

    spec = get_model("mlp_100_30")
    variables = train.init_population(spec, train.seed_keys([0]))
    n = sum(int(np.prod(v.shape[1:])) for p, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
            if "kernel" in jax.tree_util.keystr(p))
    s = 0.995
    assert n == 81_700 and round(Fraction(s) * n) != round(Fraction(float(np.float32(s))) * n)
    x, y = jnp.zeros((8, 28, 28, 1)), jnp.zeros((8,), jnp.int32)
    mask = protocols.prune_population(spec, "mp", variables, np.array([s]), train.seed_keys([0]), (x, y), grid=True)
    zeros = sum(int((~m).sum()) for m in jax.tree.leaves(mask))
    assert zeros == round(Fraction(s) * n)
