"""Population evaluation: counts against an independent numpy computation on real MNIST, axes, chunking, tables."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fairprune_jax import data, evaluate
from fairprune_jax.models import get_model

N_TEST = 1200
S, M, P = 3, 2, 3
SPARS = np.array([0.0, 0.5, 0.9])


def _normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - 0.1307) / 0.3081).astype(np.float32)


@pytest.fixture(scope="module")
def spec():
    return get_model("lenet_300_100")


@pytest.fixture(scope="module")
def test_split():
    split = data.load_split("mnist", "test")
    return _normalise(split.images[:N_TEST]), split.labels[:N_TEST].astype(np.int32)


@pytest.fixture(scope="module")
def trained(spec):
    """Three LeNet-300-100 seeds, briefly trained (SGD, 60 steps of 128 on the first MNIST training images)."""
    train = data.load_split("mnist", "train")
    x = jnp.asarray(_normalise(train.images[:60 * 128]).reshape(60, 128, 28, 28, 1))
    y = jnp.asarray(train.labels[:60 * 128].reshape(60, 128))
    opt = optax.sgd(0.1)

    def fit(key):
        params = spec.init(key)["params"]

        def step(carry, batch):
            p, o = carry
            xb, yb = batch

            def loss(p):
                logits, _ = spec.apply({"params": p}, xb)
                return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

            g = jax.grad(loss)(p)
            upd, o = opt.update(g, o, p)
            return (optax.apply_updates(p, upd), o), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), (x, y))
        return {"params": params}

    keys = jax.random.split(jax.random.key(7), S)
    return jax.jit(jax.vmap(fit))(keys)


@pytest.fixture(scope="module")
def masks(spec, trained):
    """Random masks [S, M, P]: prunable kernels keep each weight with probability 1 − sparsity."""
    prunable = spec.prunable()

    @jax.jit
    def make(params):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        out = []
        for i, (path, leaf) in enumerate(leaves):
            shape = leaf.shape[1:]
            if prunable(path, np.zeros(shape)):
                # flat draw then reshape: XLA:CPU compiles a 5-D threefry ~10x slower
                u = jax.random.uniform(jax.random.fold_in(jax.random.key(3), i), (S * M * P * int(np.prod(shape)),))
                u = u.reshape((S, M, P) + shape)
                out.append(u >= jnp.asarray(SPARS, jnp.float32).reshape((1, 1, P) + (1,) * len(shape)))
            else:
                out.append(jnp.ones((S, M, P) + shape, bool))
        return jax.tree_util.tree_unflatten(treedef, out)

    return make(trained["params"])


def _numpy_logits(params: dict, mask: dict | None, x: np.ndarray) -> np.ndarray:
    """Independent forward pass of the ReLU MLP in float64 numpy."""
    h = x.reshape(len(x), -1).astype(np.float64)
    names = sorted(k for k in params if k.startswith("hidden_")) + ["head"]
    for name in names:
        w = np.asarray(params[name]["kernel"], np.float64)
        if mask is not None:
            w = np.where(np.asarray(mask[name]["kernel"]), w, 0.0)
        h = h @ w + np.asarray(params[name]["bias"], np.float64)
        if name != "head":
            h = np.maximum(h, 0.0)
    return h


def _numpy_confusion(labels: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    c = np.zeros((k, k), np.int64)
    np.add.at(c, (labels, pred), 1)
    return c


def _index(tree, *idx):
    return jax.tree.map(lambda a: np.asarray(a[idx]), tree)


def test_counts_recall_accuracy_match_numpy_on_mnist(spec, trained, masks, test_split):
    x, y = test_split
    res = evaluate.evaluate_population(spec, trained, x, y, masks=masks, chunk=5, batch_size=500)
    assert res.counts.shape == (S, M, P, 10, 10) and res.counts.dtype == np.int64
    assert res.mean_confidence.shape == (S, M, P) and res.frac_uncertain.shape == (S, M, P)
    acc = evaluate.accuracy(res.counts)
    assert acc[:, :, 0].min() > 0.8  # briefly trained dense nets are real classifiers
    for s in range(S):
        params = _index(trained["params"], s)
        for m in range(M):
            for p in range(P):
                logits = _numpy_logits(params, _index(masks, s, m, p), x)
                pred = logits.argmax(-1)
                top2 = np.sort(logits, -1)[:, -2:]
                near_tie = int((top2[:, 1] - top2[:, 0] < 1e-4).sum())
                ref = _numpy_confusion(y, pred, 10)
                assert np.abs(res.counts[s, m, p] - ref).sum() <= 2 * near_tie
                n_c = np.bincount(y, minlength=10)
                np.testing.assert_allclose(evaluate.recall(res.counts[s, m, p]), np.diag(ref) / n_c,
                                           atol=near_tie / n_c.min() + 1e-12)
                np.testing.assert_allclose(evaluate.accuracy(res.counts[s, m, p]), (pred == y).mean(),
                                           atol=near_tie / len(y) + 1e-12)
                z = logits - logits.max(-1, keepdims=True)
                conf = 1.0 / np.exp(z).sum(-1)
                np.testing.assert_allclose(res.mean_confidence[s, m, p], conf.mean(), rtol=1e-5)
                assert abs(res.frac_uncertain[s, m, p] - (conf < 0.9).mean()) <= 2 / len(y)


def test_population_axes_equal_per_model_loop(spec, trained, masks, test_split):
    x, y = test_split
    x, y = x[:400], y[:400]
    counts = evaluate.confusion_counts(spec, trained, x, y, masks=masks, chunk=4, batch_size=400)
    for s in range(S):
        v = jax.tree.map(lambda a: a[s], trained)
        for m in range(M):
            for p in range(P):
                single = evaluate.confusion_counts(spec, v, x, y, masks=jax.tree.map(lambda a: a[s, m, p], masks))
                assert single.shape == (10, 10)
                np.testing.assert_array_equal(counts[s, m, p], single)


def test_equal_leading_axes_and_broadcast_agree(spec, trained, masks, test_split):
    x, y = test_split
    x, y = x[:300], y[:300]
    full_vars = jax.tree.map(lambda a: jnp.broadcast_to(a[:, None, None], (S, M, P) + a.shape[1:]), trained)
    a = evaluate.confusion_counts(spec, trained, x, y, masks=masks)
    b = evaluate.confusion_counts(spec, full_vars, x, y, masks=masks)
    np.testing.assert_array_equal(a, b)
    # FrozenDict containers are accepted (same key paths)
    from flax.core import freeze

    np.testing.assert_array_equal(evaluate.confusion_counts(spec, trained, x, y, masks=freeze(masks)), a)
    # [S, M] masks on [S] variables: a middle number of axes
    c = evaluate.confusion_counts(spec, trained, x, y, masks=jax.tree.map(lambda q: q[:, :, 1], masks))
    np.testing.assert_array_equal(c, a[:, :, 1])


def test_chunking_and_batching_do_not_change_results(spec, trained, masks, test_split):
    x, y = test_split
    x, y = x[:700], y[:700]
    ref = evaluate.evaluate_population(spec, trained, x, y, masks=masks, chunk=64, batch_size=700)
    for chunk, bs in [(1, 700), (4, 256), (7, 333), (18, 100)]:
        got = evaluate.evaluate_population(spec, trained, x, y, masks=masks, chunk=chunk, batch_size=bs)
        np.testing.assert_array_equal(got.counts, ref.counts)
        np.testing.assert_allclose(got.mean_confidence, ref.mean_confidence, rtol=1e-5)
        np.testing.assert_array_equal(got.frac_uncertain, ref.frac_uncertain)


def test_dense_population_without_masks(spec, trained, test_split):
    x, y = test_split
    counts = evaluate.confusion_counts(spec, trained, x[:200], y[:200], batch_size=64)
    assert counts.shape == (S, 10, 10)
    np.testing.assert_array_equal(counts.sum((-2, -1)), 200)
    np.testing.assert_array_equal(counts.sum(-1)[0], np.bincount(y[:200], minlength=10))


def test_recall_accuracy_balanced_from_counts_with_absent_class():
    counts = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])  # class 1 absent from the split
    r = evaluate.recall(counts)
    np.testing.assert_allclose(r[[0, 2]], [0.75, 0.5])
    assert np.isnan(r[1])
    assert evaluate.accuracy(counts) == pytest.approx(5 / 8)
    assert evaluate.balanced_accuracy(counts) == pytest.approx(0.625)
    stacked = np.stack([counts, np.eye(3, dtype=int) * 4])
    np.testing.assert_allclose(evaluate.accuracy(stacked), [5 / 8, 1.0])
    np.testing.assert_array_equal(evaluate.class_counts(stacked), [[4, 0, 4], [4, 4, 4]])


def test_recall_table_rows_and_values():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 20, size=(2, 3, 4, 5, 5))
    counts[1, 2, 3, 4] = 0  # an absent class for one model
    act = rng.random((2, 3, 4))
    df = evaluate.recall_table(counts, dataset="mnist", model="lenet_300_100", criteria=["MP", "GP", "UP"],
                               seeds=[10, 11], requested_sparsity=[0, .2, .36, .488], actual_sparsity=act,
                               levels=[0, 1, 2, 3], mean_confidence=act, frac_uncertain=1 - act)
    assert list(df.columns[:13]) == list(evaluate.TABLE_COLUMNS)
    assert len(df) == 2 * 3 * 4 * 5
    row = df[(df.seed == 11) & (df.criterion == "UP") & (df.level == 3) & (df["class"] == 4)].iloc[0]
    assert row.n == 0 and np.isnan(row.recall) and row.actual_sparsity == act[1, 2, 3]
    row = df[(df.seed == 10) & (df.criterion == "GP") & (df.level == 2) & (df["class"] == 1)].iloc[0]
    c = counts[0, 1, 2]
    assert row.n == c[1].sum() and row.correct == c[1, 1] and row.recall == pytest.approx(c[1, 1] / c[1].sum())
    assert row.accuracy == pytest.approx(np.trace(c) / c.sum())
    assert row.requested_sparsity == pytest.approx(.36) and row.mean_confidence == act[0, 1, 2]
    dense = evaluate.recall_table(counts[:, 0, 0], dataset="mnist", model="m", criteria=["dense"], seeds=[1, 2],
                                  requested_sparsity=0.0, actual_sparsity=0.0)
    assert len(dense) == 10 and set(dense.criterion) == {"dense"} and (dense.level == 0).all()


def test_bad_inputs_raise_value_error(spec, trained, masks, test_split):
    x, y = test_split
    x, y = x[:50], y[:50]
    with pytest.raises(ValueError, match="masks: leading axes"):
        evaluate.confusion_counts(spec, trained, x, y, masks=jax.tree.map(lambda a: a[:2], masks))
    with pytest.raises(ValueError, match="not bool"):
        evaluate.confusion_counts(spec, trained, x, y, masks=jax.tree.map(lambda a: a.astype(jnp.float32), masks))
    with pytest.raises(ValueError, match="labels"):
        evaluate.confusion_counts(spec, trained, x, y + 10)
    with pytest.raises(ValueError, match="images"):
        evaluate.confusion_counts(spec, trained, x[:, :14], y)
    with pytest.raises(ValueError, match="hidden_0/kernel"):
        bad = {"params": {**trained["params"], "hidden_0": {**trained["params"]["hidden_0"],
                                                           "kernel": trained["params"]["hidden_0"]["kernel"][:, :5]}}}
        evaluate.confusion_counts(spec, bad, x, y)
    with pytest.raises(ValueError, match="num_classes"):
        evaluate.confusion_counts(spec, trained, x, y, num_classes=5)


def test_recall_table_takes_any_leading_axes():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 20, size=(2, 3, 2, 2, 4, 4))  # [S, M, P1, P2, K, K]: P1 x P2 become the index
    act = rng.random((2, 3, 2, 2))
    full = evaluate.recall_table(counts, dataset="d", model="m", criteria=list("abc"), seeds=[0, 1],
                                 requested_sparsity=0.5, actual_sparsity=act, mean_confidence=act)
    assert len(full) == 2 * 3 * 4 * 4 and sorted(set(full.sparsity_index)) == [0, 1, 2, 3]
    row = full[(full.seed == 1) & (full.criterion == "c") & (full.sparsity_index == 2) & (full["class"] == 3)]
    c = counts[1, 2, 1, 0]  # flat index 2 of (2, 2) is (1, 0)
    assert row.correct.item() == c[3, 3] and row.actual_sparsity.item() == act[1, 2, 1, 0]
    assert row.mean_confidence.item() == act[1, 2, 1, 0]
    level = evaluate.recall_table(counts[:, :, 0, 0], dataset="d", model="m", criteria=list("abc"), seeds=[0, 1],
                                  requested_sparsity=0.2, actual_sparsity=act[:, :, 0, 0])  # [S, M]
    assert len(level) == 2 * 3 * 4 and (level.sparsity_index == 0).all()
    grid = evaluate.recall_table(counts[:, 0, :, 0], dataset="d", model="m", criteria=["mp"], seeds=[0, 1],
                                 requested_sparsity=[0.5, 0.9], actual_sparsity=act[:, 0, :, 0])  # [S, P]: 1 criterion
    row = grid[(grid.seed == 1) & (grid.sparsity_index == 1) & (grid["class"] == 2)]
    assert len(grid) == 2 * 2 * 4 and row.requested_sparsity.item() == 0.9 and row.criterion.item() == "mp"
    assert row.correct.item() == counts[1, 0, 1, 0][2, 2] and row.actual_sparsity.item() == act[1, 0, 1, 0]
    one = evaluate.recall_table(counts[0, 0, 0, 0], dataset="d", model="m", criteria=["x"], seeds=[7],
                                requested_sparsity=0.0, actual_sparsity=0.0)  # one model [K, K]
    np.testing.assert_allclose(one.recall, evaluate.recall(counts[0, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"counts: expected \[\.\.\., K, K\]"):
        evaluate.recall_table(counts[..., :3], dataset="d", model="m", criteria=list("abc"), seeds=[0, 1],
                              requested_sparsity=0.0, actual_sparsity=0.0)
    with pytest.raises(ValueError, match="actual_sparsity"):
        evaluate.recall_table(counts, dataset="d", model="m", criteria=list("abc"), seeds=[0, 1],
                              requested_sparsity=0.0, actual_sparsity=act[:, :, 0])


def test_evaluate_label_errors_name_the_range(spec, trained, test_split):
    x, y = test_split
    x, y = x[:50], np.asarray(y[:50])
    for bad, got in ((10, r"\[\d, 10\]"), (-1, r"\[-1, \d\]")):
        yb = y.copy()
        yb[3] = bad
        with pytest.raises(ValueError, match=r"labels: values must be in \[0, 10\), got range " + got):
            evaluate.confusion_counts(spec, trained, x, yb)
    with pytest.raises(ValueError, match="labels: dtype float32"):
        evaluate.confusion_counts(spec, trained, x, y.astype(np.float32))
    with pytest.warns(UserWarning, match="images: values look unnormalised"):
        evaluate.confusion_counts(spec, trained, x * 0.3081 * 16 + 0.1307 * 16, y)  # raw 0-16 scale


def test_population_logits_take_any_leading_axes_and_masks(spec, trained, masks, test_split):
    """Logits [S, M, P, N, K] of dense [S] variables under masks [S, M, P], against an independent float64 forward
    of each masked model, whatever the chunk and batch; the argmax gives evaluate_population's counts."""
    x, y = test_split
    x, y = x[:240], y[:240]
    out = evaluate.population_logits(spec, trained, x, masks=masks, progress=False)
    assert out.shape == (S, M, P, 240, 10) and out.dtype == np.float32
    for s, m, p in [(0, 0, 0), (1, 1, 2), (2, 0, 1)]:
        want = _numpy_logits(_index(trained["params"], s), _index(masks, s, m, p), x)
        np.testing.assert_allclose(out[s, m, p], want, rtol=1e-4, atol=1e-4)
    chunked = evaluate.population_logits(spec, trained, x, masks=masks, chunk=5, batch_size=100, progress=False)
    np.testing.assert_allclose(chunked, out, rtol=1e-5, atol=1e-5)  # other shapes: other float-sum orders
    counts = evaluate.confusion_counts(spec, trained, x, y, masks=masks, progress=False)
    pred = out.argmax(-1)
    hand = np.stack([_numpy_confusion(y, q, 10) for q in pred.reshape(-1, 240)]).reshape(counts.shape)
    np.testing.assert_array_equal(hand, counts)
    # [S, M] masks (a middle number of axes) and one model (no leading axis)
    two = evaluate.population_logits(spec, trained, x, masks=jax.tree.map(lambda q: q[:, :, 1], masks),
                                     progress=False)
    np.testing.assert_allclose(two, out[:, :, 1], rtol=1e-6, atol=1e-6)
    one = evaluate.population_logits(spec, jax.tree.map(lambda a: a[0], trained), x, progress=False)
    assert one.shape == (240, 10)


def test_explicit_sizes_that_do_not_fit_are_refused_before_running(spec, trained, masks, test_split):
    from fairprune_jax import memory

    x, y = test_split
    seen = []
    with memory.limit(bytes=16 << 20):  # the 1200 test images alone take 3.8 MB
        with pytest.raises(ValueError, match=r"^evaluate_population: 18 models x 1200 examples at once need about "
                                             r".* pass a smaller chunk or batch_size"):
            evaluate.evaluate_population(spec, trained, x, y, masks=masks, chunk=18, batch_size=1200,
                                         progress=seen.append)
        assert seen == []
        got = evaluate.evaluate_population(spec, trained, x, y, masks=masks, progress=seen.append)
    assert len(seen) > 1  # the defaults (all 18 models x 1200 examples) were lowered to fit
    np.testing.assert_array_equal(got.counts, evaluate.confusion_counts(spec, trained, x, y, masks=masks))
    with pytest.raises(ValueError, match="chunk: need a positive integer, or None/0"):
        evaluate.evaluate_population(spec, trained, x, y, chunk=-2)
