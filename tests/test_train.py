"""Optimisers, schedules, losses and vmapped multi-seed training (masked and unmasked) on real MNIST slices."""
from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fairprune_jax import optim, train
from fairprune_jax.data import load_split
from fairprune_jax.models import ModelSpec, get_model, path_str
from fairprune_jax.models.layers import BatchNorm, Dense


def _normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - 0.1307) / 0.3081).astype(np.float32)


@pytest.fixture(scope="module")
def mnist_slice():
    split = load_split("mnist", "train")
    return jnp.asarray(_normalise(split.images[:2048])), jnp.asarray(split.labels[:2048])


SGD = dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)


def _cfg(epochs=2, batch_size=128, **opt):
    return dict(epochs=epochs, batch_size=batch_size, optimizer=dict(SGD, **opt))


def _maxdiff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _random_masks(spec, params, keys, keep=0.5):
    """Per-model random masks: prunable kernels keep ~`keep`, everything else all-True."""
    pred = spec.prunable()

    def one(p, k):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(p)
        out = [jax.random.bernoulli(jax.random.fold_in(k, i), keep, x.shape) if pred(path, x)
               else jnp.ones(x.shape, jnp.bool_) for i, (path, x) in enumerate(leaves)]
        return jax.tree_util.tree_unflatten(treedef, out)

    return jax.vmap(one)(params, keys)


# ----------------------------------------------------------------------------------------------- optim


def test_sgd_momentum_coupled_weight_decay_matches_pytorch_formula():
    """PyTorch SGD: d = g + wd·w; buf = μ·buf + d; w -= lr·buf (nesterov: w -= lr·(d + μ·buf))."""
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    grads = [np.array([0.3, 0.1, -0.2], np.float32), np.array([-0.1, 0.4, 0.2], np.float32),
             np.array([0.05, -0.3, 0.1], np.float32)]
    lr, mu, wd = 0.1, 0.9, 0.01
    for nesterov in (False, True):
        tx = optim.make_optimizer(dict(name="sgd", lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd),
                                  steps_per_epoch=10, epochs=1)
        w, st = jnp.asarray(w0), None
        st = tx.init(w)
        ref_w, buf = w0.astype(np.float64), np.zeros(3)
        for g in grads:
            u, st = tx.update(jnp.asarray(g), st, w)
            w = optax.apply_updates(w, u)
            d = g + wd * ref_w
            buf = mu * buf + d
            ref_w = ref_w - lr * ((d + mu * buf) if nesterov else buf)
        np.testing.assert_allclose(w, ref_w, rtol=1e-6)


def test_adam_first_step_is_lr_times_sign():
    tx = optim.make_optimizer(dict(name="adam", lr=1e-4), steps_per_epoch=5, epochs=1)
    w = jnp.asarray([1.0, 2.0, 3.0])
    u, _ = tx.update(jnp.asarray([0.5, -2.0, 1e-3]), tx.init(w), w)
    np.testing.assert_allclose(u, [-1e-4, 1e-4, -1e-4 * 1e-3 / (1e-3 + 1e-8)], rtol=1e-5)


def test_schedules():
    step = optim.make_schedule(dict(name="step", boundaries=[2, 4]), lr=0.1, steps_per_epoch=10, epochs=6)
    got = [float(step(jnp.asarray(s))) for s in (0, 19, 20, 39, 40, 59)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    cos = optim.make_schedule(dict(name="cosine", warmup_epochs=1), lr=0.2, steps_per_epoch=10, epochs=5)
    vals = np.asarray([float(cos(jnp.asarray(s))) for s in range(50)])
    np.testing.assert_allclose(vals[:10], 0.2 * np.arange(1, 11) / 10, rtol=1e-6)
    k = np.arange(10, 50)
    np.testing.assert_allclose(vals[10:], 0.1 * (1 + np.cos(np.pi * (k - 10) / 40)), rtol=1e-5, atol=1e-7)
    const = optim.make_schedule(None, lr=0.3, steps_per_epoch=10, epochs=2)
    assert float(const(jnp.asarray(7))) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="schedule.name"):
        optim.make_schedule(dict(name="exp"), lr=0.1, steps_per_epoch=1, epochs=1)
    with pytest.raises(ValueError, match="optimizer.name"):
        optim.make_optimizer(dict(name="rmsprop", lr=0.1), steps_per_epoch=1, epochs=1)
    with pytest.raises(ValueError, match="optimizer.lr"):
        optim.make_optimizer(dict(name="sgd"), steps_per_epoch=1, epochs=1)


@pytest.mark.parametrize("field, value, message", [
    ("momentum", -0.9, "need a finite number >= 0"), ("weight_decay", -1e-4, "need a finite number >= 0"),
    ("lr", -0.1, "need a finite number >= 0"), ("lr", float("nan"), "need a finite number"),
    ("lr", float("inf"), "need a finite number"), ("lr", "0.1", "expected a number"),
    ("momentum", None, None), ("b2", float("-inf"), "need a finite number"), ("nesterov", "yes", "expected a bool")])
def test_optimizer_fields_are_refused_naming_the_field(field, value, message):
    cfg = {**dict(name="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4), field: value}
    if message is None:  # None means "use the default" (ml_collections style)
        assert optim.optimizer_fields(cfg)[field] == optim.OPTIMIZER_DEFAULTS[field]
        return
    with pytest.raises(ValueError, match=f"^optimizer.{field}: {message}"):
        optim.make_optimizer(cfg, steps_per_epoch=1, epochs=1)
    with pytest.raises(ValueError, match=f"^train.optimizer.{field}: {message}"):
        train.read_config(dict(epochs=1, batch_size=8, optimizer=cfg), name="train")
    with pytest.raises(ValueError, match=f"^tcfg.optimizer.{field}: {message}"):
        train.make_tx(dict(epochs=1, batch_size=8, optimizer=cfg), 64)


@pytest.mark.parametrize("field, value", [("batch_size", "abc"), ("batch_size", "128"), ("batch_size", 0),
                                          ("batch_size", 12.5), ("batch_size", True), ("epochs", "abc"),
                                          ("epochs", -1), ("epochs", float("nan"))])
def test_train_config_integers_are_refused_naming_the_field(field, value):
    cfg = {**dict(epochs=1, batch_size=8, optimizer=SGD), field: value}
    with pytest.raises(ValueError, match=f"^train.{field}: need"):
        train.read_config(cfg, name="train")
    with pytest.raises(ValueError, match=f"^tcfg.{field}: need"):
        train.read_config(cfg)


def test_valid_configs_still_pass():
    cfg = train.read_config(dict(epochs=2.0, batch_size=np.int64(16), optimizer=dict(name="adam", lr=0)))
    assert (cfg.epochs, cfg.batch_size) == (2, 16) and isinstance(cfg.batch_size, int)
    f = optim.optimizer_fields(dict(name="sgd", lr=np.float32(0.1), momentum=0, nesterov=np.bool_(True)))
    assert f["lr"] == pytest.approx(0.1) and f["momentum"] == 0.0 and f["nesterov"] is True
    assert optim.check_integer(128.0, "x") == 128


def test_configdict_and_kwargs_give_the_same_optimizer():
    from ml_collections import ConfigDict

    cfg = ConfigDict(dict(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3))
    a = optim.make_optimizer(cfg, steps_per_epoch=3, epochs=2)
    b = optim.make_optimizer(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, steps_per_epoch=3,
                             epochs=2)
    w, g = jnp.asarray([1.0, -1.0]), jnp.asarray([0.2, 0.3])
    ua, _ = a.update(g, a.init(w), w)
    ub, _ = b.update(g, b.init(w), w)
    np.testing.assert_array_equal(ua, ub)


def test_losses_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 6)
    lse = np.log(np.exp(logits).sum(1))
    np.testing.assert_allclose(optim.softmax_cross_entropy(logits, labels),
                               np.mean(lse - logits[np.arange(6), labels]), rtol=1e-6)
    y = rng.integers(0, 2, (6, 4))
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(optim.sigmoid_bce(logits, y), np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))),
                               rtol=1e-5)
    assert optim.loss_fn(True) is optim.sigmoid_bce and optim.loss_fn(False) is optim.softmax_cross_entropy


# ----------------------------------------------------------------------------------------------- keys / config


def test_keys_and_config_validation(mnist_slice):
    x, y = mnist_slice
    k = train.as_keys([3, 4])
    assert jnp.issubdtype(k.dtype, jax.dtypes.prng_key) and k.shape == (2,)
    np.testing.assert_array_equal(jax.random.key_data(k), jax.random.key_data(train.as_keys(
        jax.random.key_data(k))))
    a, b = train.purpose_key(k[0], "init"), train.purpose_key(k[0], "data")
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    with pytest.raises(ValueError, match="purpose"):
        train.purpose_key(k[0], "dropout?")
    spec = get_model("mlp_100_30")
    with pytest.raises(ValueError, match="tcfg.epochs"):
        train.fit(spec, dict(batch_size=32, optimizer=SGD), [0], x, y)
    with pytest.raises(ValueError, match="x_train"):
        train.fit(spec, _cfg(), [0], x.reshape(-1, 784), y)
    with pytest.raises(ValueError, match="batch_size"):
        train.fit(spec, _cfg(batch_size=4096), [0], x, y)
    params = jax.eval_shape(spec.init, jax.random.key(0))["params"]
    bad = jax.tree.map(lambda p: jnp.ones((1, *p.shape), jnp.bool_), params)
    bad["hidden_0"] = {"kernel": bad["hidden_0"]["kernel"]}
    with pytest.raises(ValueError, match="masks"):
        train.fit(spec, _cfg(), [0], x, y, masks=bad)
    wrong = jax.tree.map(lambda p: jnp.ones((2, *p.shape), jnp.bool_), params)
    with pytest.raises(ValueError, match="masks: leaf 'head/bias' has shape.*use protocols.finetune"):
        train.fit(spec, _cfg(), [0], x, y, masks=wrong)


# ----------------------------------------------------------------------------------------------- training


def test_loss_falls_on_real_mnist_slice(mnist_slice):
    x, y = mnist_slice
    spec = get_model("mlp_100_30")
    v, hist = train.fit(spec, _cfg(), [0, 1], x, y)
    loss = hist["loss"]
    assert loss.shape == (2, 2)
    assert np.all(loss[:, 0] < math.log(10)) and np.all(loss[:, 1] < 0.75 * loss[:, 0]) and np.all(loss[:, 1] < 0.5)
    acc = (train.predict(spec, v, x).argmax(-1) == y).mean(axis=1)
    assert np.all(acc > 0.85)
    assert sorted(path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(v)[0]) == [
        "params/head/bias", "params/head/kernel", "params/hidden_0/bias", "params/hidden_0/kernel",
        "params/hidden_1/bias", "params/hidden_1/kernel"]
    assert all(leaf.shape[0] == 2 for leaf in jax.tree.leaves(v))


class _TinyConv(__import__("flax").linen.Module):
    @__import__("flax").linen.compact
    def __call__(self, x, train: bool = False):
        from fairprune_jax.models.layers import Conv

        x = __import__("flax").linen.relu(Conv(4, (5, 5), strides=(2, 2), name="conv_0")(x))
        return Dense(10, name="head")(x.reshape((x.shape[0], -1)))


def test_vmapped_equals_alone_and_chunked(mnist_slice):
    """A seed trained alone equals the same seed inside a vmapped group to float tolerance, NOT bitwise: on CPU
    XLA fuses the batched backward pass (bias-gradient reductions, weight-gradient dots) differently for
    different population sizes S (the forward matmuls are bitwise equal), giving ~1e-8 gradient differences
    that grow to ~1e-7 over these 32 steps. Chunked training reuses ONE compiled function of the chunk's
    shape, and a model's result does not depend on its neighbours, so chunking is bitwise exact."""
    x, y = mnist_slice
    keys = train.as_keys([3, 5, 7, 9])
    spec = get_model("mlp_100_30")
    at = lambda t, i: jax.tree.map(lambda a: a[i], t)  # noqa: E731
    alone, ha = train.fit(spec, _cfg(), keys[1:2], x, y)
    group, hg = train.fit(spec, _cfg(), keys[:2], x, y)
    assert _maxdiff(at(alone, 0), at(group, 1)) < 1e-5
    np.testing.assert_allclose(ha["loss"][0], hg["loss"][1], rtol=1e-5)
    assert _maxdiff(at(group, 0), at(group, 1)) > 1e-2  # different seeds really differ
    chunked, hc = train.fit(spec, _cfg(), keys[:3], x, y, chunk=2)  # chunks [3, 5] and [7, 7 (padding)]
    other, ho = train.fit(spec, _cfg(), keys[2:], x, y)  # [7, 9]
    assert _maxdiff(at(chunked, slice(0, 2)), group) == 0.0
    assert _maxdiff(at(chunked, 2), at(other, 0)) == 0.0
    np.testing.assert_array_equal(hc["loss"], np.concatenate([hg["loss"], ho["loss"][:1]]))
    conv = ModelSpec("tiny_conv", _TinyConv(), (28, 28, 1), 10)
    xs, ys = x[:1024], y[:1024]
    c_alone, _ = train.fit(conv, _cfg(epochs=1, batch_size=64), keys[:1], xs, ys)
    c_group, _ = train.fit(conv, _cfg(epochs=1, batch_size=64), keys[:2], xs, ys)
    assert _maxdiff(c_alone, at(c_group, slice(0, 1))) < 1e-4


def test_masked_training_keeps_pruned_weights_and_momentum_exactly_zero(mnist_slice):
    x, y = mnist_slice
    spec = get_model("mlp_100_30")
    keys = train.as_keys([0, 1])
    init = train.init_population(spec, keys)
    masks = _random_masks(spec, init["params"], keys)
    cfg = _cfg(epochs=8)  # 128 steps with momentum and coupled decay
    v, hist = train.fit(spec, cfg, keys, x, y, masks=masks)
    for p, m in zip(jax.tree.leaves(v["params"]), jax.tree.leaves(masks)):
        assert bool(jnp.all(jnp.where(m, 0.0, p) == 0.0))
    # the kept weights did train, and the masks differ between the models of the population
    k0 = v["params"]["hidden_0"]["kernel"]
    moved = jnp.where(masks["hidden_0"]["kernel"], k0 - init["params"]["hidden_0"]["kernel"], 0)
    assert float(jnp.mean(jnp.abs(moved))) > 1e-3
    assert not np.array_equal(masks["hidden_0"]["kernel"][0], masks["hidden_0"]["kernel"][1])
    assert np.all(hist["loss"][:, -1] < hist["loss"][:, 0])
    # an all-True mask is exactly unmasked training
    ones = jax.tree.map(lambda m: jnp.ones_like(m), masks)
    a, _ = train.fit(spec, _cfg(epochs=1), keys, x, y, masks=ones)
    b, _ = train.fit(spec, _cfg(epochs=1), keys, x, y)
    assert _maxdiff(a, b) == 0.0


def test_optimizer_state_of_pruned_weights_is_zero_and_remask_clears_momentum(mnist_slice):
    x, y = mnist_slice
    spec = get_model("mlp_100_30")
    tx, _ = train.make_tx(_cfg(), int(x.shape[0]))
    v = spec.init(jax.random.key(0))
    mask = jax.tree.map(lambda m: m[0], _random_masks(spec, jax.tree.map(lambda a: a[None], v["params"]),
                                                        train.as_keys([9])))
    dense = train.init_state(tx, v)
    step = jax.jit(lambda st, m, i: train.train_step(spec, tx, st, m, x[i], y[i]))
    for i in range(3):  # build up momentum everywhere
        dense, _ = step(dense, None, jnp.arange(64) + 64 * i)
    trace = lambda st: st.opt_state[1][0].trace  # chain(add_decayed_weights, sgd) -> sgd's TraceState  # noqa
    assert float(jnp.abs(trace(dense)["hidden_0"]["kernel"]).min()) >= 0
    assert float(jnp.abs(jnp.where(mask["hidden_0"]["kernel"], 0, trace(dense)["hidden_0"]["kernel"])).max()) > 0
    st = jax.jit(lambda s, m: train.remask(tx, s, m))(dense, mask)
    for i in range(5):
        st, _ = step(st, mask, jnp.arange(64) + 64 * i)
        for t, p, m in zip(jax.tree.leaves(trace(st)), jax.tree.leaves(st.params), jax.tree.leaves(mask)):
            assert bool(jnp.all(jnp.where(m, 0.0, t) == 0.0)) and bool(jnp.all(jnp.where(m, 0.0, p) == 0.0))
    assert int(st.step) == 8


def test_capture_step_snapshot_equals_shorter_run(mnist_slice):
    x, y = mnist_slice
    spec = get_model("mlp_100_30")
    keys = train.as_keys([4, 6])
    steps = int(x.shape[0]) // 128
    _, hist = train.fit(spec, _cfg(epochs=2), keys, x, y, capture_step=steps + 3)
    one, _ = train.fit(spec, _cfg(epochs=1), keys, x, y)
    assert _maxdiff(hist["snapshot"], one) > 0.0  # 3 more steps
    _, hist = train.fit(spec, _cfg(epochs=2), keys, x, y, capture_step=steps)
    assert _maxdiff(hist["snapshot"], one) == 0.0


class _BNNet(__import__("flax").linen.Module):
    @__import__("flax").linen.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        x = __import__("flax").linen.relu(BatchNorm(train, name="bn_0")(Dense(32, name="hidden_0")(x)))
        return Dense(10, name="head")(x)


def test_batchnorm_state_is_trained_per_seed(mnist_slice):
    x, y = mnist_slice
    spec = ModelSpec("bn_mlp", _BNNet(), (28, 28, 1), 10, has_batch_stats=True)
    keys = train.as_keys([1, 2])
    v, hist = train.fit(spec, _cfg(epochs=1, batch_size=64), keys, x, y)
    stats = v["batch_stats"]["bn_0"]
    assert stats["mean"].shape == (2, 32)
    assert not np.allclose(stats["mean"][0], stats["mean"][1]) and not np.allclose(stats["var"][0], 1.0)
    alone, _ = train.fit(spec, _cfg(epochs=1, batch_size=64), keys[1:], x, y)
    np.testing.assert_allclose(alone["batch_stats"]["bn_0"]["mean"][0], stats["mean"][1], rtol=1e-5, atol=1e-6)
    # eval mode uses the running statistics of each model
    logits = train.predict(spec, v, x[:256])
    assert logits.shape == (2, 256, 10) and np.all(hist["loss"] < math.log(10))


def test_progress_callback_and_history(mnist_slice):
    x, y = mnist_slice
    seen = []
    spec = get_model("mlp_100_30")
    init = train.init_population(spec, [0, 1, 2])
    out, hist = train.fit(spec, _cfg(), [0, 1, 2], x, y, chunk=2, progress=seen.append, init_variables=init)
    # 1-based: the chunk and the epoch just finished, with the population indices of the chunk's models
    assert [(d["chunk"], d["epoch"]) for d in seen] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [d["models"] for d in seen] == [(1, 2), (1, 2), (3, 3), (3, 3)]
    assert {(d["chunks"], d["epochs"], d["n_models"]) for d in seen} == {(2, 2, 3)}
    assert [len(d["loss"]) for d in seen] == [2, 2, 1, 1]
    np.testing.assert_array_equal(seen[3]["loss"], hist["loss"][2:, 1])
    # explicit init variables = the keys' own init; the caller's arrays are not consumed (no donation leak)
    again, _ = train.fit(spec, _cfg(), [0, 1, 2], x, y, chunk=2)
    assert _maxdiff(out, again) == 0.0
    traced = jax.jit(lambda k: train.init_population(spec, k))(train.as_keys([0, 1, 2]))
    assert _maxdiff(init, traced) == 0.0


@pytest.mark.slow
def test_lenet_300_100_full_mnist_reaches_975():
    """3 epochs of SGD (momentum .9, lr .1, cosine) on the full 60k: ≥ 97.5% test accuracy for both seeds."""
    tr, te = load_split("mnist", "train"), load_split("mnist", "test")
    spec = get_model("lenet_300_100")
    cfg = dict(epochs=3, batch_size=128, optimizer=dict(name="sgd", lr=0.1, momentum=0.9),
               schedule=dict(name="cosine"))
    v, _ = train.fit(spec, cfg, [0, 1], _normalise(tr.images), tr.labels)
    acc = (np.asarray(train.predict(spec, v, _normalise(te.images)).argmax(-1)) == te.labels).mean(axis=1)
    assert np.all(acc >= 0.975), acc


def test_flip_crop_is_a_keyed_flip_and_translation():
    x = jnp.arange(2 * 6 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 6, 3)
    key = jax.random.key(7)
    out = train.flip_crop(key, x, pad=2)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, train.flip_crop(key, x, pad=2))  # deterministic given the key
    # Independent reconstruction: each output is a window of the zero-padded (possibly flipped) image.
    k_flip, k_crop = jax.random.split(key)
    flip = np.asarray(jax.random.bernoulli(k_flip, 0.5, (2,)))
    off = np.asarray(jax.random.randint(k_crop, (2, 2), 0, 5))
    for i in range(2):
        img = np.asarray(x[i])[:, ::-1] if flip[i] else np.asarray(x[i])
        padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
        np.testing.assert_array_equal(out[i], padded[off[i, 0]:off[i, 0] + 6, off[i, 1]:off[i, 1] + 6])


def test_training_with_augmentation_runs_and_bad_value_is_refused():
    spec = get_model("mlp_100_30")
    x = jax.random.normal(jax.random.key(0), (256, 28, 28, 1))
    y = jax.random.randint(jax.random.key(1), (256,), 0, 10)
    cfg = dict(epochs=1, batch_size=64, optimizer=dict(name="sgd", lr=0.01), augment="flip_crop")
    out, hist = train.fit(spec, cfg, train.seed_keys([0, 1]), x, y)
    plain, _ = train.fit(spec, dict(cfg, augment="none"), train.seed_keys([0, 1]), x, y)
    assert np.isfinite(hist["loss"]).all()
    assert not np.allclose(out["params"]["head"]["kernel"], plain["params"]["head"]["kernel"])
    with pytest.raises(ValueError, match="tcfg.augment: unknown augmentation 'mixup'"):
        train.fit(spec, dict(cfg, augment="mixup"), train.seed_keys([0]), x, y)


def test_fit_refuses_bad_labels_and_warns_on_unnormalised_images(mnist_slice):
    x, y = mnist_slice
    spec = get_model("mlp_100_30")
    cfg = _cfg(epochs=1)
    for bad, rng in ((10, r"\[0, 10\]"), (-1, r"\[-1, 9\]")):
        with pytest.raises(ValueError, match=r"y_train: values must be in \[0, 10\), got range " + rng):
            train.fit(spec, cfg, [0], x, y.at[7].set(bad))
    with pytest.raises(ValueError, match="y_train: dtype float32, expected int class indices"):
        train.fit(spec, cfg, [0], x, y.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"y_train: shape \(2047,\), expected \[2048\]"):
        train.fit(spec, cfg, [0], x, y[:-1])
    with pytest.raises(ValueError, match="x_train: contains NaN"):
        train.fit(spec, cfg, [0], x.at[0, 0, 0, 0].set(jnp.nan), y)
    raw16 = np.asarray(x, np.float64) * 0.3081 * 16 + 0.1307 * 16  # float64 pixels on a 0-16 scale
    with pytest.warns(UserWarning, match=r"x_train: values look unnormalised.*data\.normalize"):
        train.fit(spec, cfg, [0], raw16, y)


def test_fit_checks_multilabel_targets_are_binary(mnist_slice):
    x, _ = mnist_slice
    spec = ModelSpec("ml", get_model("mlp_100_30").module, (28, 28, 1), 10, multilabel=True)
    targets = jnp.zeros((x.shape[0], 10), jnp.int32).at[0, 3].set(1)
    with pytest.raises(ValueError, match=r"y_train: values must be binary \{0, 1\}, got range \[0, 2\]"):
        train.fit(spec, _cfg(epochs=1), [0], x, targets.at[1, 1].set(2))
    with pytest.raises(ValueError, match=r"y_train: shape \(2048,\), expected \[2048, 10\]"):
        train.fit(spec, _cfg(epochs=1), [0], x, targets[:, 0])
    out, hist = train.fit(spec, _cfg(epochs=1), [0], x, targets.astype(bool))
    assert np.isfinite(hist["loss"]).all()


def test_shared_order_group_finds_runs_of_equal_keys():
    keys = train.as_keys([3, 5])
    assert train.shared_order_group(jnp.repeat(keys, 4)) == 4
    assert train.shared_order_group(jnp.repeat(keys, 4), limit=3) == 2  # the largest divisor of 4 that fits
    assert train.shared_order_group(jnp.repeat(keys, 3), limit=2) == 1
    assert train.shared_order_group(keys) == 1
    assert train.shared_order_group(train.as_keys([3, 3, 5])) == 1  # runs of unequal length: no groups


def test_fused_groups_equal_unfused_and_alone(mnist_slice):
    """Models sharing a data key (a seed's pruned variants) can be trained as one shared-batch group; this only
    reorders float sums: fused == unfused to 1e-5 (also chunked, and the rewinding snapshot), and a model trained
    alone equals it inside the group to the tolerance of `test_vmapped_equals_alone_and_chunked`."""
    x, y = mnist_slice
    spec = get_model("mlp_100_30")
    seeds = train.as_keys([1, 2])
    r = 4
    keys = jnp.repeat(seeds, r)  # [1, 1, 1, 1, 2, 2, 2, 2]: groups of 4
    init = jax.tree.map(lambda a: jnp.repeat(a, r, axis=0), train.init_population(spec, seeds))
    masks = _random_masks(spec, init["params"], train.as_keys(list(range(2 * r))), keep=0.3)
    # lr .05 without momentum: a trajectory on which float-sum reordering stays at rounding size (with momentum .9
    # on these 2k examples the same reordering grows to ~3e-5 over 32 steps, like any change of compiled shape)
    cfg = _cfg(epochs=2, momentum=0.0)
    kw = dict(masks=masks, init_variables=init, capture_step=20)
    fused, hf = train.fit(spec, cfg, keys, x, y, fuse=True, **kw)
    plain, hp = train.fit(spec, cfg, keys, x, y, **kw)
    chunked, hc = train.fit(spec, cfg, keys, x, y, chunk=3, fuse=True, **kw)  # groups of 2 (divisor of 4 under 3)
    assert _maxdiff(fused, plain) < 1e-5 and _maxdiff(hf["snapshot"], hp["snapshot"]) < 1e-5
    assert _maxdiff(chunked, fused) < 1e-5
    np.testing.assert_allclose(hf["loss"], hp["loss"], rtol=1e-5)
    np.testing.assert_allclose(hc["loss"], hf["loss"], rtol=1e-5)
    assert _maxdiff(jax.tree.map(lambda a: a[5], fused), jax.tree.map(lambda a: a[6], fused)) > 1e-2  # masks differ
    at = lambda t, i: jax.tree.map(lambda a: a[i:i + 1], t)  # noqa: E731
    alone, ha = train.fit(spec, cfg, keys[5:6], x, y, masks=at(masks, 5), init_variables=at(init, 5))
    assert _maxdiff(alone, at(fused, 5)) < 1e-5
    np.testing.assert_allclose(ha["loss"][0], hf["loss"][5], rtol=1e-5)
    for p, m in zip(jax.tree.leaves(fused["params"]), jax.tree.leaves(masks)):
        assert bool(jnp.all(jnp.where(m, 0.0, p) == 0.0))


# ----------------------------------------------------------------------------------------------- chunks and pixels


def test_resolve_chunk_rounds_explicit_chunks_and_chooses_automatic_ones():
    lenet = train.param_bytes(jax.eval_shape(get_model("lenet_300_100").init, jax.random.key(0))["params"])
    assert lenet == 4 * 266610
    assert train.resolve_chunk(35, 8, lenet) == 8 and train.resolve_chunk(35, 100, lenet) == 35
    assert train.resolve_chunk(35, 3, lenet, group=2) == 4  # whole groups
    # automatic on CPU: 16 MiB / (4 x 1.07 MB) = 3 models per device at most, half of that at least, least padding
    assert train.resolve_chunk(35, None, lenet) == 3 and train.resolve_chunk(20, 0, lenet) == 2
    assert train.resolve_chunk(2, None, lenet) == 2
    with pytest.raises(ValueError, match="chunk: need a positive integer"):
        train.resolve_chunk(35, -1, lenet)


def test_auto_chunk_fills_accelerators_and_keeps_cpu_chunks_in_cache():
    from fairprune_jax import sharding

    assert sharding.auto_chunk(35, 10**6, None, platform="gpu") == 35
    assert sharding.auto_chunk(35, 10**6, None, platform="cpu") == 4  # cap 4: chunks of 4 pad 35 to 36
    assert sharding.auto_chunk(35, 10**9, None, platform="cpu") == 1  # one model already exceeds the budget
    assert sharding.auto_chunk(6, 10**6, None, platform="cpu", group=3) == 3
    assert sharding.auto_chunk(1, 10**6, None, platform="cpu") == 1
    # models per device do not depend on the device count (so neither do the numbers); only the padding does
    four = types.SimpleNamespace(shape={"seed": 4})  # size() reads the seed axis; the platform is given
    for n in (1, 2, 5, 20, 35, 80, 140):
        assert sharding.auto_chunk(n, 10**6, four, platform="cpu") == 4 * sharding.auto_chunk(n, 10**6, None,
                                                                                                platform="cpu")


def test_automatic_chunks_give_the_all_at_once_result(mnist_slice):
    """chunk=None splits 5 LeNets into chunks of 3 on a CPU; each model's result equals the all-at-once run's to
    float-sum order (a different batched shape compiles differently) and its own chunk-sized run's bitwise."""
    x, y = mnist_slice
    spec, keys = get_model("lenet_300_100"), train.as_keys([0, 1, 2, 3, 4])
    if jax.devices()[0].platform != "cpu":
        pytest.skip("the automatic chunk is cache-sized on CPUs only")
    auto, ha = train.fit(spec, _cfg(epochs=1), keys, x, y)
    whole, hw = train.fit(spec, _cfg(epochs=1), keys, x, y, chunk=5)
    first, _ = train.fit(spec, _cfg(epochs=1), keys[:3], x, y, chunk=3)
    assert _maxdiff(auto, whole) < 1e-5 and np.allclose(ha["loss"], hw["loss"], rtol=1e-5)
    assert _maxdiff(jax.tree.map(lambda a: a[:3], auto), first) == 0.0


def test_pixels_train_bit_identically_to_their_normalised_floats(mnist_slice):
    """`data.Pixels` (uint8 on the device, normalised batch by batch inside the step) give the same weights, bit
    for bit, as the floats `data.normalize` makes; masked fine-tuning and GP scoring through the protocols too."""
    from fairprune_jax import data, protocols

    split = load_split("mnist", "train")
    info = data.info("mnist")
    px = data.pixels(split.images[:2048], info.mean, info.std)
    floats = data.normalize(split.images[:2048], info.mean, info.std)
    y = mnist_slice[1]
    spec, keys = get_model("mlp_100_30"), train.as_keys([1, 2])
    a, ha = train.fit(spec, _cfg(), keys, px, y)
    b, hb = train.fit(spec, _cfg(), keys, floats, y)
    assert _maxdiff(a, b) == 0.0 and np.array_equal(ha["loss"], hb["loss"])
    pa, ma, _ = protocols.one_shot(spec, _cfg(epochs=1), a, ["gp"], [0.5], keys, px, y)
    pb, mb, _ = protocols.one_shot(spec, _cfg(epochs=1), a, ["gp"], [0.5], keys, floats, y)
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(ma), jax.tree.leaves(mb)))
    assert _maxdiff(pa, pb) == 0.0
    small = data.pixels(np.zeros((16, 4, 4, 1), np.uint8), info.mean, info.std)
    with pytest.raises(ValueError, match=r"x_train: shape \(16, 4, 4, 1\) is not"):
        train.fit(spec, _cfg(), keys, small, y[:16])
