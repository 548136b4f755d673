"""Planted-attribute MNIST / Fashion-MNIST (docs/methods.md §10): targets, planting rates, determinism, trigger pixels."""
import dataclasses

import jax
import numpy as np
import pytest

from fairprune_jax import planted as P
from fairprune_jax.analysis import bias as B
from fairprune_jax.data import load_split


def _within_binomial(k_mean: float, p: float, n: int, z: float = 5.0) -> bool:
    return abs(k_mean - p) <= z * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def mnist_full():
    return P.load_planted(P.PlantedConfig(test_iid=True))


@pytest.fixture(scope="module")
def mnist_slices():
    tr, te = load_split("mnist", "train"), load_split("mnist", "test")
    return tr.images[:6000], tr.labels[:6000], te.images[:2000], te.labels[:2000]


def test_attribute_targets_by_hand():
    names = P.attribute_names("mnist")
    assert names[:10] == tuple(f"class_{c}" for c in range(10)) and names[10:] == ("even", "ge5", "loop")
    t = P.attribute_targets([0, 5, 8, 9, 3], "mnist")
    np.testing.assert_array_equal(t[:, 10:], [[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(t[:, :10].argmax(1), [0, 5, 8, 9, 3])
    assert t[:, :10].sum() == 5
    f = P.attribute_targets([5, 7, 9, 0, 2, 4, 6, 1, 3, 8], "fashion_mnist")
    assert P.attribute_names("fashion_mnist")[10:] == ("footwear", "upper_body")
    np.testing.assert_array_equal(f[:, 10], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(f[:, 11], [0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="dataset"):
        P.attribute_names("cifar10")
    with pytest.raises(ValueError, match="labels"):
        P.attribute_targets([10], "mnist")


def test_plant_mask_rates_and_determinism():
    target = np.r_[np.ones(20000), np.zeros(20000)].astype(int)
    key = jax.random.key(0)
    g = P.plant_mask(target, 0.95, 0.05, key)
    assert _within_binomial(g[:20000].mean(), 0.95, 20000) and _within_binomial(g[20000:].mean(), 0.05, 20000)
    np.testing.assert_array_equal(g, P.plant_mask(target, 0.95, 0.05, jax.random.key(0)))
    assert (g != P.plant_mask(target, 0.95, 0.05, jax.random.key(1))).any()
    weak = P.plant_mask(target, 0.65, 0.35, key)
    assert _within_binomial(weak[:20000].mean(), 0.65, 20000) and _within_binomial(weak[20000:].mean(), 0.35, 20000)
    with pytest.raises(ValueError, match="p1"):
        P.plant_mask(target, 1.2, 0.0, key)


def test_trigger_pixels(mnist_slices):
    x = mnist_slices[0][:6]
    m = np.array([1, 0, 1, 0, 0, 1])
    out = P.apply_trigger(x, m)
    assert out.dtype == np.uint8 and out is not x
    assert (out[m == 1, :4, :4, :] == 255).all()
    np.testing.assert_array_equal(out[m == 0], x[m == 0])
    rest = np.ones((28, 28), bool)
    rest[:4, :4] = False
    np.testing.assert_array_equal(out[m == 1][:, rest], x[m == 1][:, rest])
    br = P.apply_trigger(x, m, corner="bottom_right", patch_size=3)
    assert (br[m == 1, -3:, -3:, :] == 255).all() and (br[m == 1, :4, :4] == x[m == 1, :4, :4]).all()
    dim = P.apply_trigger(x, m, kind="dim")
    np.testing.assert_array_equal(dim[m == 1], x[m == 1] // 2)
    np.testing.assert_array_equal(dim[m == 0], x[m == 0])
    with pytest.raises(ValueError, match="trigger"):
        P.apply_trigger(x, m, kind="blur")


def test_stratified_holdout(mnist_slices):
    labels = mnist_slices[1]
    key = jax.random.key(3)
    tr, va = P.stratified_holdout(labels, 1000, key)
    assert va.size == 1000 and tr.size == 5000 and np.intersect1d(tr, va).size == 0
    want = 1000 * np.bincount(labels, minlength=10) / labels.size
    assert np.all(np.abs(np.bincount(labels[va], minlength=10) - want) < 1)
    np.testing.assert_array_equal(va, P.stratified_holdout(labels, 1000, jax.random.key(3))[1])
    with pytest.raises(ValueError, match="val_size"):
        P.stratified_holdout(labels, 7000, key)


def test_build_planted_slices_consistent(mnist_slices):
    cfg = P.PlantedConfig(target="class_8", val_size=500, trigger="patch")
    sp = P.build_planted(cfg, *mnist_slices)
    a = sp.target_index
    assert sp.train.names[a] == "class_8"
    for d in (sp.train, sp.val, sp.test):
        assert d.images.dtype == np.uint8 and d.images.shape[1:] == (28, 28, 1)
        assert d.targets.shape == (d.images.shape[0], 13) and d.protected.shape == d.labels.shape
        np.testing.assert_array_equal(d.targets, P.attribute_targets(d.labels, "mnist"))
        trig = (d.images[:, :4, :4, 0] == 255).all(axis=(1, 2))
        assert (trig[d.protected == 1]).all()
        np.testing.assert_array_equal(d.pf, sp.train.pf)
    pf, nf = B.train_prevalence(sp.train.targets, sp.train.protected)
    np.testing.assert_allclose(sp.train.pf, pf)
    np.testing.assert_allclose(sp.train.nf, nf)
    assert sp.test_iid is None
    # G of a training image does not depend on the hold-out, and the same key gives the same G
    sp2 = P.build_planted(dataclasses.replace(cfg, val_size=100), *mnist_slices)
    g_all = np.zeros(6000, int)
    g_all[sp.train.index], g_all[sp.val.index] = sp.train.protected, sp.val.protected
    np.testing.assert_array_equal(g_all[sp2.train.index], sp2.train.protected)
    sp3 = P.build_planted(P.PlantedConfig(target="class_8", val_size=500, key_seed=1), *mnist_slices)
    assert (sp3.train.protected != sp.train.protected).any()
    with pytest.raises(ValueError, match="target"):
        P.build_planted(P.PlantedConfig(target="footwear", val_size=500), *mnist_slices)


def test_load_planted_full_mnist_rates(mnist_full):
    sp = mnist_full
    cfg = sp.config
    assert (sp.train.images.shape[0], sp.val.images.shape[0], sp.test.images.shape[0]) == (55000, 5000, 10000)
    assert sp.train.names[sp.target_index] == P.DEFAULT_TARGET["mnist"]
    counts = np.bincount(sp.val.labels, minlength=10)
    want = 5000 * np.bincount(np.r_[sp.train.labels, sp.val.labels], minlength=10) / 60000
    assert np.all(np.abs(counts - want) < 1)
    for d, (p1, p0) in ((sp.train, (cfg.p1, cfg.p0)), (sp.val, (cfg.p1, cfg.p0)),
                        (sp.test, (cfg.test_p1, cfg.test_p0)), (sp.test_iid, (cfg.p1, cfg.p0))):
        a = d.targets[:, sp.target_index] == 1
        assert _within_binomial(d.protected[a].mean(), p1, a.sum()), (p1, d.protected[a].mean())
        assert _within_binomial(d.protected[~a].mean(), p0, (~a).sum()), (p0, d.protected[~a].mean())
    # test g is independent of every label (.5 within each class), so BA is defined for a* and composites
    for c in range(10):
        sel = sp.test.labels == c
        assert _within_binomial(sp.test.protected[sel].mean(), 0.5, sel.sum())
    rel_gap = np.abs(sp.train.pf - sp.train.nf) / np.minimum(sp.train.pf, sp.train.nf)
    assert rel_gap[sp.target_index] > 10 and (rel_gap[10:] > 0.1).all()


def test_fashion_mnist_dim_trigger_weak():
    cfg = P.PlantedConfig.from_strength("weak", dataset="fashion_mnist", trigger="dim", val_size=500)
    assert (cfg.p1, cfg.p0) == (0.65, 0.35)
    tr, te = load_split("fashion_mnist", "train"), load_split("fashion_mnist", "test")
    sp = P.build_planted(cfg, tr.images[:4000], tr.labels[:4000], te.images[:1000], te.labels[:1000])
    assert sp.train.names[sp.target_index] == "upper_body"
    src = tr.images[:4000][sp.train.index]
    g = sp.train.protected == 1
    np.testing.assert_array_equal(sp.train.images[g], src[g] // 2)
    np.testing.assert_array_equal(sp.train.images[~g], src[~g])
    a = sp.train.targets[:, sp.target_index] == 1
    assert _within_binomial(sp.train.protected[a].mean(), 0.65, a.sum())
    with pytest.raises(ValueError, match="strength"):
        P.PlantedConfig.from_strength("medium")


def test_load_planted_reads_an_explicit_data_folder(tmp_path):
    """`PlantedConfig.data_dir` is a root holding <dataset>/ idx folders, passed to `data.load_split`."""
    import shutil

    from fairprune_jax import data, planted

    shutil.copytree(data.source_folder("mnist"), tmp_path / "mnist")
    splits = planted.load_planted(planted.PlantedConfig(dataset="mnist", data_dir=str(tmp_path)))
    assert splits.train.images.shape[0] + splits.val.images.shape[0] == 60000
    assert splits.test.images.shape[0] == 10000
