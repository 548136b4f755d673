"""Scores: docs/methods.md §4 toy vector and masks table (library vs emulated reference rule), UP/GP/MP relations,
the fixed-batch gradient against independent computations, and the dispatcher."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from fairprune_jax import masks, scores
from fairprune_jax.data import load_split
from fairprune_jax.models import ModelSpec, get_model, kernel_predicate, mlp

PRUNABLE = kernel_predicate()

# docs/methods.md §4 toy vector
W = np.array([0.5, -0.2, 0.01, 0.3, -0.05], np.float32)
G = np.array([0.001, 0.05, -0.3, -0.0015, 0.002], np.float32)
LAM = 5e-4


def toy_tree(v):
    return {"layer": {"kernel": jnp.asarray(np.asarray(v, np.float32).reshape(5, 1))}}


def flat(tree):
    return np.asarray(tree["layer"]["kernel"]).ravel()


def reference_keep(s, fraction):
    """The paper-1 reference rule: n_prune = ceil(f·n_remaining); thr = sort(scores)[n_prune]; keep s > thr."""
    n_prune = math.ceil(fraction * s.size)
    thr = np.sort(s)[n_prune]
    return s > thr


# ----------------------------------------------------------------------------------------------- toy vector


def test_toy_scores():
    w, g = toy_tree(W), toy_tree(G)
    np.testing.assert_allclose(flat(scores.magnitude(w)), [0.5, 0.2, 0.01, 0.3, 0.05], rtol=1e-6)
    np.testing.assert_allclose(flat(scores.gradient(w, g)), [5e-4, 1e-2, 3e-3, 4.5e-4, 1e-4], rtol=1e-5)
    up_signed = np.array([-3.75e-4, 1.002e-2, 3.00005e-3, 4.95e-4, 1.0125e-4])
    np.testing.assert_allclose(-W * G + LAM * W**2, up_signed, rtol=1e-5)  # the table's signed values
    np.testing.assert_allclose(flat(scores.undecayed(w, g, lam=LAM)), np.abs(up_signed), rtol=1e-5)
    # at g = -λw: UP = 2λw²
    stationary = toy_tree(-LAM * W)
    np.testing.assert_allclose(flat(scores.undecayed(w, stationary, lam=LAM)),
                               [2.5e-4, 4e-5, 1e-7, 9e-5, 2.5e-6], rtol=1e-5)


def test_toy_masks_table_library_vs_reference():
    w, g = toy_tree(W), toy_tree(G)
    crit = {"mp": scores.magnitude(w), "gp": scores.gradient(w, g), "up": scores.undecayed(w, g, lam=LAM)}
    library = {"mp": [1, 1, 0, 1, 0], "gp": [1, 1, 1, 0, 0], "up": [0, 1, 1, 1, 0]}
    reference = {"mp": [1, 0, 0, 1, 0], "gp": [0, 1, 1, 0, 0], "up": [0, 1, 1, 0, 0]}
    for name, sc in crit.items():
        keep = flat(masks.threshold(sc, 0.4, prunable=PRUNABLE)).astype(int)
        np.testing.assert_array_equal(keep, library[name], err_msg=name)
        assert (keep == 0).sum() == 2
        ref = reference_keep(flat(sc), 0.4).astype(int)
        np.testing.assert_array_equal(ref, reference[name], err_msg=name)
        assert (ref == 0).sum() == 3  # the reference's off-by-one


# ----------------------------------------------------------------------------------------------- relations


def test_up_with_zero_lambda_equals_gp_and_differs_otherwise():
    rng = np.random.default_rng(0)
    p = {"a": {"kernel": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)}}
    g = {"a": {"kernel": jnp.asarray(rng.standard_normal((6, 4)) * 1e-3, jnp.float32)}}
    np.testing.assert_array_equal(np.asarray(scores.undecayed(p, g, lam=0.0)["a"]["kernel"]),
                                  np.asarray(scores.gradient(p, g)["a"]["kernel"]))
    assert not np.allclose(scores.undecayed(p, g, lam=LAM)["a"]["kernel"], scores.gradient(p, g)["a"]["kernel"])


def _linear_spec(d, k, multilabel=False):
    return ModelSpec("linear", mlp.MLP((), k), (d,), k, multilabel)


def test_up_ranks_like_mp_at_stationary_point_of_decayed_loss():
    """Fit softmax regression to min CE + λ/2‖W‖² (scipy, float64), then g from batch_gradient ≈ −λW and UP ≡ MP."""
    lam = 0.05
    rng = np.random.default_rng(1)
    n, d, k = 256, 6, 3
    x = rng.standard_normal((n, d))
    y = np.argmax(x @ rng.standard_normal((d, k)) + 0.5 * rng.standard_normal((n, k)), axis=1)
    onehot = np.eye(k)[y]

    def loss_and_grad(theta):
        wk, b = theta[:d * k].reshape(d, k), theta[d * k:]
        z = x @ wk + b
        z = z - z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        ce = -np.mean(np.log(p[np.arange(n), y]))
        dz = (p - onehot) / n
        return ce + lam / 2 * np.sum(wk**2), np.concatenate([(x.T @ dz + lam * wk).ravel(), dz.sum(0)])

    res = scipy.optimize.minimize(loss_and_grad, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                                  options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000})
    wk, b = res.x[:d * k].reshape(d, k), res.x[d * k:]
    assert np.abs(loss_and_grad(res.x)[1]).max() < 1e-7
    spec = _linear_spec(d, k)
    params = {"head": {"kernel": jnp.asarray(wk, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}}
    grads = scores.batch_gradient(spec, {"params": params}, None, jnp.asarray(x, jnp.float32), jnp.asarray(y))
    g = np.asarray(grads["head"]["kernel"])
    np.testing.assert_allclose(g, -lam * wk, atol=2e-6)
    up = np.asarray(scores.undecayed(params, grads, lam=lam)["head"]["kernel"]).ravel()
    mp = np.asarray(scores.magnitude(params)["head"]["kernel"]).ravel()
    assert np.diff(np.sort(mp)).min() > 1e-3  # distinct magnitudes, so the order comparison is meaningful
    np.testing.assert_array_equal(np.argsort(up), np.argsort(mp))
    np.testing.assert_allclose(up, 2 * lam * wk.ravel()**2, rtol=1e-3)
    # at the unregularised start (W = 0 + noise) the same check would fail: g is not -λW there
    k0 = jnp.asarray(rng.standard_normal((d, k)) * 0.1, jnp.float32)
    w0 = {"head": {"kernel": k0, "bias": params["head"]["bias"]}}
    g0 = scores.batch_gradient(spec, {"params": w0}, None, jnp.asarray(x, jnp.float32), jnp.asarray(y))
    assert not np.allclose(np.asarray(g0["head"]["kernel"]), -lam * np.asarray(w0["head"]["kernel"]), atol=1e-3)


# ----------------------------------------------------------------------------------------------- gradients


@pytest.fixture(scope="module")
def mnist_batch():
    split = load_split("mnist", "train")
    images, labels = scores.fixed_batch(split.images, split.labels, size=32)
    x = (images.astype(np.float32) / 255.0 - 0.1307) / 0.3081
    return jnp.asarray(x), jnp.asarray(labels)


def test_fixed_batch_is_first_examples_in_storage_order():
    images, labels = np.arange(1000).reshape(200, 5), np.arange(200)
    bi, bl = scores.fixed_batch(images, labels)
    np.testing.assert_array_equal(bi, images[:128])
    np.testing.assert_array_equal(bl, labels[:128])
    bi, bl = scores.fixed_batch(images, labels, size=10, start=50)
    np.testing.assert_array_equal(bl, labels[50:60])
    with pytest.raises(ValueError, match="size"):
        scores.fixed_batch(images, labels, size=300)
    with pytest.raises(ValueError, match="labels"):
        scores.fixed_batch(images, labels[:10])


def test_batch_gradient_equals_hand_written_grad_of_masked_mlp(mnist_batch):
    x, y = mnist_batch
    spec = get_model("mlp_100_30")
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.1, jnp.float32),
                          jax.eval_shape(spec.init, jax.random.key(0))["params"])
    mask = jax.jit(lambda p: masks.threshold(scores.magnitude(p), 0.6, prunable=spec.prunable()))(params)
    grad_fn = jax.jit(lambda v, m: scores.batch_gradient(spec, v, m, x, y))
    got = grad_fn({"params": params}, mask)

    def hand_loss(p):  # the MLP written out; p are the effective (masked) weights
        h = x.reshape(x.shape[0], -1)
        h = jax.nn.relu(h @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
        h = jax.nn.relu(h @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"])
        z = h @ p["head"]["kernel"] + p["head"]["bias"]
        return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(z.shape[0]), y])

    masked = jax.tree.map(lambda w, m: w * m, params, mask)
    want = jax.jit(jax.grad(hand_loss))(masked)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # the mask matters: the dense gradient differs
    dense = grad_fn({"params": params}, masks.ones_like(params))
    assert not np.allclose(np.asarray(dense["head"]["kernel"]), np.asarray(got["head"]["kernel"]), atol=1e-6)


@pytest.mark.parametrize("multilabel", [False, True])
def test_batch_gradient_linear_model_against_numpy(multilabel):
    rng = np.random.default_rng(2)
    n, d, k = 40, 7, 4
    x = rng.standard_normal((n, d)).astype(np.float32)
    wk = (rng.standard_normal((d, k)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(k) * 0.1).astype(np.float32)
    z = x.astype(np.float64) @ wk + b
    if multilabel:
        y = (rng.random((n, k)) < 0.4).astype(np.int32)
        dz = (1 / (1 + np.exp(-z)) - y) / (n * k)  # mean BCE over all (example, attribute) pairs
    else:
        y = rng.integers(0, k, n).astype(np.int32)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - np.eye(k)[y]) / n
    spec = _linear_spec(d, k, multilabel)
    params = {"head": {"kernel": jnp.asarray(wk), "bias": jnp.asarray(b)}}
    grads = scores.batch_gradient(spec, {"params": params}, None, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(grads["head"]["kernel"]), x.T @ dz, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grads["head"]["bias"]), dz.sum(0), rtol=1e-4, atol=1e-7)


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(8, name="hidden_0")(x.reshape((x.shape[0], -1)))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        return nn.Dense(3, name="head")(nn.relu(x))


def test_batch_gradient_uses_batchnorm_train_mode_and_discards_state():
    spec = ModelSpec("bn_net", _BNNet(), (5,), 3, has_batch_stats=True)
    variables = spec.init(jax.random.key(0))
    variables = {**variables, "batch_stats": jax.tree.map(lambda s: s + 3.0, variables["batch_stats"])}
    before = jax.tree.map(np.asarray, variables)
    x = jax.random.normal(jax.random.key(1), (16, 5))
    y = jnp.arange(16) % 3

    def loss(p, train):
        v = {**variables, "params": p}
        if train:
            z, _ = spec.module.apply(v, x, train=True, mutable=["batch_stats"])
        else:
            z = spec.module.apply(v, x, train=False)
        return jnp.mean(-jax.nn.log_softmax(z)[jnp.arange(16), y])

    got = jax.jit(lambda v: scores.batch_gradient(spec, v, None, x, y))(variables)
    train_g = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], True)
    eval_g = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], False)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(train_g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.asarray(got["hidden_0"]["kernel"]), np.asarray(eval_g["hidden_0"]["kernel"]))
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)


# ----------------------------------------------------------------------------------------------- magnitude, random


def test_normalised_magnitude_on_masked_kernel_against_numpy():
    rng = np.random.default_rng(3)
    p = {"a": {"kernel": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)},
         "b": {"kernel": jnp.asarray(rng.standard_normal((4, 3)) * 10, jnp.float32)}}
    m = {"a": {"kernel": jnp.asarray(rng.random((5, 4)) < 0.5)}, "b": {"kernel": jnp.ones((4, 3), bool)}}
    got = scores.magnitude(p, normalize=True, mask=m)
    for k in p:
        w = np.asarray(p[k]["kernel"], np.float64) * np.asarray(m[k]["kernel"])
        np.testing.assert_allclose(np.asarray(got[k]["kernel"]), np.abs(w) / (np.linalg.norm(w) + 1e-8), rtol=1e-5)
    raw = scores.magnitude(p, mask=m)
    np.testing.assert_allclose(np.asarray(raw["a"]["kernel"]),
                               np.abs(np.asarray(p["a"]["kernel"]) * np.asarray(m["a"]["kernel"])))


def test_random_scores():
    p = {"a": {"kernel": jnp.zeros((30, 20))}, "b": {"kernel": jnp.zeros((30, 20))}}
    key = jax.random.key(0)
    r1, r2 = scores.random(key, p), scores.random(key, p)
    other = scores.random(jax.random.key(1), p)
    a = np.asarray(r1["a"]["kernel"])
    assert a.shape == (30, 20) and a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.05
    np.testing.assert_array_equal(a, np.asarray(r2["a"]["kernel"]))
    assert not np.array_equal(a, np.asarray(r1["b"]["kernel"]))  # leaves are independent
    assert not np.array_equal(a, np.asarray(other["a"]["kernel"]))


# ----------------------------------------------------------------------------------------------- dispatcher


def test_compute_dispatch_and_metadata():
    w, g = toy_tree(W), toy_tree(G)
    m = masks.ones_like(w)
    m["layer"]["kernel"] = m["layer"]["kernel"].at[0, 0].set(False)
    np.testing.assert_allclose(flat(scores.compute("mp", w)), np.abs(W))
    np.testing.assert_allclose(flat(scores.compute("mp_layer", w)), np.abs(W))
    np.testing.assert_allclose(flat(scores.compute("mp", w, mask=m))[0], 0.0)
    np.testing.assert_allclose(flat(scores.compute("mp_norm", w)), np.abs(W) / (np.linalg.norm(W) + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(flat(scores.compute("gp", w, grads=g)), np.abs(W * G), rtol=1e-6)
    np.testing.assert_allclose(flat(scores.compute("up", w, grads=g, lam=0.1)), np.abs(-W * G + 0.1 * W**2),
                               rtol=1e-6)
    assert flat(scores.compute("random", w, key=jax.random.key(0))).shape == (5,)
    assert set(scores.CRITERIA) == {"mp", "mp_norm", "mp_layer", "random", "gp", "up"}
    assert [scores.scope(c) for c in ("mp", "mp_norm", "mp_layer", "random", "gp", "up")] == \
        ["global", "global", "layerwise", "global", "global", "global"]
    assert [c for c in scores.CRITERIA if scores.needs_gradient(c)] == ["gp", "up"]
    with pytest.raises(ValueError, match="grads"):
        scores.compute("up", w)
    with pytest.raises(ValueError, match="key"):
        scores.compute("random", w)
    with pytest.raises(ValueError, match="unknown"):
        scores.compute("snip", w)
    with pytest.raises(ValueError, match="unknown"):
        scores.scope("snip")


@pytest.mark.parametrize("criterion", ["gp", "up"])
def test_compute_refuses_grads_that_do_not_match_params(criterion):
    w = {"a": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))}, "b": {"kernel": jnp.ones((4, 2))}}
    good = jax.tree.map(jnp.zeros_like, w)
    assert jax.tree.map(jnp.shape, scores.compute(criterion, w, grads=good)) == jax.tree.map(jnp.shape, w)
    bad = {**good, "b": {"kernel": jnp.ones((1, 2))}}  # would broadcast silently against (4, 2)
    with pytest.raises(ValueError, match=r"grads: leaf 'b/kernel' has shape \(1, 2\), params has \(4, 2\)"):
        scores.compute(criterion, w, grads=bad)
    bad = {**good, "a": {**good["a"], "kernel": jnp.ones((1, 3, 4))}}
    with pytest.raises(ValueError, match=r"grads: leaf 'a/kernel' has shape \(1, 3, 4\)"):  # also inside jit
        jax.jit(lambda g: scores.compute(criterion, w, grads=g))(bad)
    with pytest.raises(ValueError, match="grads: missing leaf 'b/kernel'"):
        scores.compute(criterion, w, grads={"a": good["a"]})


def test_batch_gradient_checks_labels(mnist_batch):
    x, y = mnist_batch
    spec = get_model("mlp_100_30")
    variables = {"params": jax.eval_shape(spec.init, jax.random.key(0))["params"]}
    with pytest.raises(ValueError, match=r"labels: values must be in \[0, 10\), got range \[0, 10\]"):
        scores.batch_gradient(spec, variables, None, x, jnp.asarray(y).at[0].set(10))
    with pytest.raises(ValueError, match=r"labels: values must be in \[0, 10\), got range \[-1, 9\]"):
        scores.batch_gradient(spec, variables, None, x, jnp.asarray(y).at[0].set(-1))
    with pytest.raises(ValueError, match="labels: dtype float32"):  # static checks also under jit
        jax.jit(lambda v, yy: scores.batch_gradient(spec, v, None, x, yy))(variables, jnp.asarray(y, jnp.float32))
    with pytest.raises(ValueError, match=r"labels: shape \(5,\)"):
        scores.batch_gradient(spec, variables, None, x, jnp.asarray(y)[:5])
