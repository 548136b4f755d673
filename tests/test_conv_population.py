"""Conv populations: the im2col ("patches") convolution and the strided-slice max-pool equal XLA's operations in
value and gradient; the formulation rule; every conv model of the zoo trained in a population equals the same
model trained alone (bit for bit under the CPU rule, to float tolerance under vmap), BatchNorm models included,
each with its own batch and running statistics; masks never touch BatchNorm parameters; evaluation uses each
model's running statistics."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairprune_jax import evaluate, masks as masks_lib, population, train
from fairprune_jax.data import load_split
from fairprune_jax.models import ModelSpec, get_model, path_str, resnet
from fairprune_jax.models.layers import CONV_LOWERINGS, conv_lowering, conv_patches, conv_xla, max_pool

HERE = Path(__file__).resolve().parent
CONV_MODELS = ("lenet5", "conv2", "conv4", "conv6", "resnet20", "resnet32", "resnet56", "vgg11", "vgg16",
               "resnet18", "mobilenet_v1")
FAST = ("lenet5", "conv2", "resnet20")  # the others are marked heavy (minutes each to compile on CPU): -m heavy
# input sizes that keep every model's feature maps non-empty at the least cost
INPUT = {"vgg11": (16, 16, 1), "vgg16": (16, 16, 1), "resnet18": (16, 16, 1), "mobilenet_v1": (16, 16, 1),
         "resnet20": (14, 14, 1), "resnet32": (14, 14, 1), "resnet56": (14, 14, 1)}


def _small_resnet(input_shape=(14, 14, 1)) -> ModelSpec:
    """ResNet-20's code (basic blocks, BatchNorm, 1x1 shortcut convolutions) at depth 8 and width 4: the BatchNorm
    checks below compile in seconds rather than minutes (ResNet-20 itself is in the every-model test)."""
    return ModelSpec("resnet8_w4", resnet.CifarResNet(depth=8, width=4), input_shape, 10, False, has_batch_stats=True)


def _normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - 0.1307) / 0.3081).astype(np.float32)


@pytest.fixture(scope="module")
def mnist_slice():
    split = load_split("mnist", "train")
    return jnp.asarray(_normalise(split.images[:256])), jnp.asarray(split.labels[:256])


def _cfg(epochs=1, batch_size=32):
    return dict(epochs=epochs, batch_size=batch_size,
                optimizer=dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4))


def _maxdiff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _at(tree, i):
    return jax.tree.map(lambda a: a[i:i + 1], tree)


def _resized(x: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    return x if x.shape[1:] == shape else jax.image.resize(x, (x.shape[0], *shape), "linear")


# ----------------------------------------------------------------------------------------------- lowerings


CASES = [  # (input [B, H, W, C], kernel [kh, kw, in, out], strides, padding, groups)
    ((2, 28, 28, 1), (5, 5, 1, 6), (1, 1), "SAME", 1),  # LeNet-5 conv_0
    ((2, 14, 14, 6), (5, 5, 6, 16), (1, 1), "VALID", 1),  # LeNet-5 conv_1
    ((2, 9, 9, 4), (3, 3, 4, 8), (2, 2), ((1, 1), (1, 1)), 1),  # ResNet downsampling conv
    ((2, 9, 9, 4), (1, 1, 4, 8), (2, 2), "VALID", 1),  # 1x1 shortcut, stride 2
    ((2, 16, 16, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), 1),  # ResNet-18 stem
    ((2, 10, 10, 8), (3, 3, 1, 8), (2, 2), ((1, 1), (1, 1)), 8),  # depthwise (MobileNet)
    ((2, 10, 10, 8), (3, 3, 4, 8), (1, 1), "SAME", 2),  # grouped: falls back to XLA
    ((2, 7, 6, 3), (3, 2, 3, 5), (1, 2), "SAME", 1),  # uneven kernel, strides and image
]


@pytest.mark.parametrize("xs, ks, strides, padding, groups", CASES)
def test_patches_convolution_equals_xla_in_value_and_gradient(xs, ks, strides, padding, groups):
    key = jax.random.key(0)
    x = jax.random.normal(key, xs)
    k = jax.random.normal(jax.random.fold_in(key, 1), ks) / np.sqrt(np.prod(ks[:3]))

    def loss(lower, x, k):
        y = lower(x, k, strides, padding, groups)
        return jnp.sum(jnp.sin(y)), y

    (la, ya), ga = jax.value_and_grad(lambda x, k: loss(conv_xla, x, k), argnums=(0, 1), has_aux=True)(x, k)
    (lb, yb), gb = jax.value_and_grad(lambda x, k: loss(conv_patches, x, k), argnums=(0, 1), has_aux=True)(x, k)
    assert ya.shape == yb.shape
    np.testing.assert_allclose(yb, ya, rtol=1e-5, atol=1e-5)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_conv_lowering_context_and_default():
    assert set(CONV_LOWERINGS) == {"xla", "patches"}
    from fairprune_jax.models import layers

    assert layers.default_conv_lowering("cpu") == "patches" and layers.default_conv_lowering("gpu") == "xla"
    with conv_lowering("xla"):
        assert layers.current_conv_lowering() == "xla"
        with conv_lowering(None):
            assert layers.current_conv_lowering() == layers.default_conv_lowering()
        assert layers.current_conv_lowering() == "xla"
    with pytest.raises(ValueError, match="conv lowering: unknown 'fft'"):
        with conv_lowering("fft"):
            pass
    # the lowering really changes the traced program: no convolution op under "patches"
    spec = get_model("lenet5")
    v = jax.eval_shape(spec.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    for name, has_conv in (("xla", True), ("patches", False)):
        with conv_lowering(name):
            text = str(jax.make_jaxpr(lambda v, x: spec.apply(v, x)[0])(v, x))
        assert ("conv_general_dilated" in text) == has_conv


def test_max_pool_equals_reduce_window_bit_for_bit_with_ties():
    """Value and gradient of `layers.max_pool` are those of `nn.max_pool` exactly, also where a window holds
    several equal maxima (the zero background of MNIST after ReLU, and equal positive values): the gradient goes to
    the first maximum in row-major order. Odd sizes drop the last row/column like VALID pooling."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(3, 9, 7, 4)).astype(np.float32)  # many ties, odd sizes
    x[0] = np.maximum(rng.normal(size=(9, 7, 4)), 0).astype(np.float32)
    x = jnp.asarray(x)
    w = jnp.asarray(rng.normal(size=(3, 4, 3, 4)).astype(np.float32))

    def loss(pool, x):
        return jnp.sum(pool(x) * w)

    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(max_pool(x), ref(x))
    ga, gb = jax.grad(lambda x: loss(ref, x))(x), jax.grad(lambda x: loss(max_pool, x))(x)
    np.testing.assert_array_equal(gb, ga)
    assert int(jnp.sum(gb != 0)) == 3 * 4 * 3 * 4  # one position per window
    gv = jax.vmap(jax.grad(lambda x: loss(max_pool, x[None])))(x)  # under vmap too
    np.testing.assert_array_equal(gv, jax.vmap(jax.grad(lambda x: loss(ref, x[None])))(x))
    np.testing.assert_array_equal(max_pool(x, 3), nn.max_pool(x, (3, 3), strides=(3, 3)))


# ----------------------------------------------------------------------------------------------- the rule


def test_formulation_rule_and_override():
    mlp, lenet = get_model("lenet_300_100"), get_model("lenet5")
    assert not population.has_conv(mlp) and population.has_conv(lenet)
    assert population.choose(mlp, "cpu") == population.Formulation("vmap", "xla")
    assert population.choose(mlp, "gpu") == population.Formulation("vmap", "xla")
    assert population.choose(lenet, "cpu") == population.Formulation("map", "patches")
    assert population.choose(lenet, "gpu") == population.Formulation("vmap", "xla")
    with population.override("vmap+patches"):
        assert population.choose(mlp, "cpu") == population.Formulation("vmap", "patches")
        with population.override(None):
            assert population.choose(lenet, "cpu") == population.Formulation("map", "patches")
    assert str(population.choose(lenet, "cpu")) == "map+patches"
    for bad, match in (("map", "expected 'vectorise\\+conv'"), ("pmap+xla", "formulation.vectorise: unknown"),
                       ("map+fft", "formulation.conv: unknown")):
        with pytest.raises(ValueError, match=match):
            population.parse(bad)


def test_mapped_evaluation_splits_batches_to_bound_the_patches(mnist_slice, monkeypatch):
    """The im2col patches of a layer are kh·kw times its input; a mapped evaluation runs each model on micro-batches
    whose largest intermediate fits population.EVAL_BYTES, and the counts do not change."""
    lenet, conv2 = get_model("lenet5"), get_model("conv2")
    assert population.intermediate_bytes(lenet, "patches") == 28 * 28 * 25 * 4  # conv_0's patches
    assert population.intermediate_bytes(lenet, "xla") == 28 * 28 * 6 * 4  # conv_0's output
    assert population.intermediate_bytes(conv2, "patches") == 28 * 28 * 9 * 64 * 4
    mapped = population.Formulation("map", "patches")
    assert population.eval_microbatch(conv2, mapped, 2500) == 125  # 125 * 1.8 MB <= 256 MiB < 250 * 1.8 MB
    assert population.eval_microbatch(conv2, mapped, 2500, budget=1) == 1
    assert population.eval_microbatch(lenet, mapped, 2000) == 2000
    assert population.eval_microbatch(conv2, population.Formulation("vmap", "patches"), 2500) == 2500
    x, y = mnist_slice
    spec = get_model("lenet5_double")  # 120 kB per example
    assert population.intermediate_bytes(spec, "patches") == 100 * 25 * 12 * 4  # conv_1's patches
    monkeypatch.setattr(population, "EVAL_BYTES", 40 * 120_000)  # batches of 96 run as 3 micro-batches of 32
    assert population.eval_microbatch(spec, mapped, 96) == 32
    v = train.init_population(spec, train.as_keys([0, 1]))
    with population.override("vmap+patches"):
        ref = evaluate.evaluate_population(spec, v, x, y, batch_size=96)
    with population.override("map+patches"):
        got = evaluate.evaluate_population(spec, v, x, y, batch_size=96)
    np.testing.assert_array_equal(got.counts, ref.counts)
    np.testing.assert_allclose(got.mean_confidence, ref.mean_confidence, rtol=1e-6)


def test_map_chunks_pad_least_and_small_populations_use_fewer_devices():
    """Under a map a model's numbers do not depend on its neighbours, so chunks pad only up to the devices' share
    (LeNet-5: 247 kB of weights, at most 16 resident per device) and a population smaller than the mesh uses as many
    devices as it has models (one model: no mesh, every core on it)."""
    lenet = 246_824  # LeNet-5's parameter bytes
    assert [population.map_chunk(n, lenet, None) for n in (1, 3, 16, 17, 40)] == [1, 3, 16, 9, 14]
    assert population.map_chunk(5, 17 << 20, None) == 1  # Conv-2: one resident model
    assert population.map_chunk(6, 1000, None, group=4) == 8  # whole groups
    assert population.map_mesh(None, 3) is None

    class FakeMesh:  # what map_mesh reads (a sub-mesh of real devices: tests/conv_multidevice_checks.py)
        shape = {"seed": 4}

    mesh = FakeMesh()
    assert population.map_mesh(mesh, 1) is None and population.map_mesh(mesh, 4) is mesh
    assert population.map_mesh(mesh, 9) is mesh


# ----------------------------------------------------------------------------------------------- population == alone


def _population_vs_alone(name: str, x: jax.Array, y: jax.Array):
    shape = INPUT.get(name, (28, 28, 1))
    spec = get_model(name, input_shape=shape)
    x = _resized(x, shape)
    keys = train.as_keys([11, 12, 13])
    alone, ha = train.fit(spec, _cfg(), keys[1:2], x, y)
    group, hg = train.fit(spec, _cfg(), keys, x, y)
    return spec, keys, x, alone, ha, group, hg


@pytest.mark.parametrize("name", [pytest.param(m, marks=() if m in FAST else pytest.mark.heavy)
                                  for m in CONV_MODELS])
def test_population_equals_alone_bit_for_bit_for_every_conv_model(name, mnist_slice):
    """Under the CPU rule (a map over the models) a model's training is the program it runs alone: weights,
    BatchNorm statistics and losses are bit-for-bit those of the model trained alone, and the models differ."""
    x, y = mnist_slice
    x, y = x[:64], y[:64]  # 2 steps of 32
    spec, keys, x, alone, ha, group, hg = _population_vs_alone(name, x, y)
    assert population.choose(spec) == population.Formulation("map", "patches")
    assert _maxdiff(alone, _at(group, 1)) == 0.0
    np.testing.assert_array_equal(ha["loss"][0], hg["loss"][1])
    assert _maxdiff(_at(group, 0), _at(group, 1)) > 1e-3
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(group))
    if spec.has_batch_stats:  # every model's statistics are its own, and were updated
        for s in range(3):
            own, _ = train.fit(spec, _cfg(), keys[s:s + 1], x, y) if s != 1 else (alone, None)
            assert _maxdiff(own["batch_stats"], _at(group["batch_stats"], s)) == 0.0
        mean = jax.tree.leaves(group["batch_stats"])[0]
        assert float(jnp.max(jnp.abs(mean[0] - mean[2]))) > 0


@pytest.mark.parametrize("name", ["lenet5", "resnet8_w4"])
def test_vmap_formulation_equals_alone_to_float_reordering(name, mnist_slice):
    """The vmap formulation (grouped convolutions; the accelerator rule) gives each model its own numbers too, up to
    the order of float sums: in float64 the population and the model alone agree to ~1e-12, so the float32 gap
    (~1e-3 for ResNet-20 after a few SGD steps; here its small sibling) is rounding amplified by the training dynamics, not a difference
    in what is computed (each model normalises with its own batch statistics)."""
    x, y = mnist_slice
    small = (12, 12, 1)  # the smallest LeNet-5 input; ResNet-20 takes any size (global mean pool)
    x, y = _resized(x[:64], small), y[:64]
    spec = _small_resnet(small) if name == "resnet8_w4" else get_model(name, input_shape=small)
    tx, _ = train.make_tx(_cfg(), 64)
    keys = train.as_keys([11, 12, 13])
    v32 = jax.device_get(train.init_population(spec, keys))
    data_keys = jax.vmap(lambda k: train.purpose_key(k, "data"))(keys)

    def gap(dtype) -> float:
        xx = jnp.asarray(np.asarray(x).astype(dtype))
        v = jax.tree.map(lambda a: jnp.asarray(np.asarray(a).astype(dtype)), v32)
        one = lambda st, k: train.train_epoch(spec, tx, 32, st, None, k, jnp.int32(0), xx, y)[0]  # noqa: E731
        with conv_lowering("xla"):
            st = jax.vmap(lambda v: train.init_state(tx, v))(v)
            pop = jax.jit(jax.vmap(one))(st, data_keys)
            alone = jax.jit(one)(jax.tree.map(lambda a: a[1], st), data_keys[1])
        assert all(a.dtype == dtype for a in jax.tree.leaves(pop.params))
        return _maxdiff((alone.params, alone.batch_stats), jax.tree.map(lambda a: a[1], (pop.params, pop.batch_stats)))

    g32 = gap(np.float32)
    with jax.enable_x64(True):
        g64 = gap(np.float64)
    assert g32 < 1e-2 and g64 < 1e-11 and g64 < 1e-5 * max(g32, 1e-7)


def test_mesh_population_equals_alone_bit_for_bit():
    """With 2 CPU devices (a subprocess), the map formulation spreads the models over the seed mesh (one model per
    core at a time) and each model is still bit-for-bit the model trained alone; evaluation agrees too."""
    script = HERE / "conv_multidevice_checks.py"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script)], cwd=HERE.parent, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "conv multidevice checks passed" in proc.stdout


# ----------------------------------------------------------------------------------------------- BatchNorm


def test_masks_never_touch_batchnorm_and_pruned_weights_stay_zero(mnist_slice):
    """Masks from the pruning rule are all-True on BatchNorm parameters (only conv/dense kernels are prunable); a
    masked ResNet (ResNet-20's blocks, `_small_resnet`) population trains its BN scale/bias and statistics while
    pruned kernels stay exactly zero."""
    x, y = mnist_slice
    small = (14, 14, 1)
    x, y = _resized(x[:64], small), y[:64]
    spec = _small_resnet(small)
    keys = train.as_keys([1, 2])
    init = train.init_population(spec, keys)
    pred = spec.prunable()
    mask = jax.vmap(lambda p: masks_lib.threshold(jax.tree.map(jnp.abs, p), 0.7, prunable=pred))(init["params"])
    leaves = jax.tree_util.tree_flatten_with_path(mask)[0]
    bn = [(path_str(p), m) for p, m in leaves if "bn" in path_str(p)]
    assert bn and all(bool(jnp.all(m)) for _, m in bn)
    assert all(path_str(p).endswith("kernel") for p, m in leaves if not bool(jnp.all(m)))
    out, _ = train.fit(spec, _cfg(), keys, x, y, masks=mask, init_variables=init)
    flat_out = dict((path_str(p), v) for p, v in jax.tree_util.tree_flatten_with_path(out["params"])[0])
    flat_init = dict((path_str(p), v) for p, v in jax.tree_util.tree_flatten_with_path(init["params"])[0])
    for name, m in ((path_str(p), m) for p, m in leaves):
        if name.endswith("kernel"):
            assert bool(jnp.all(jnp.where(m, 0.0, flat_out[name]) == 0.0)), name
    moved = [n for n, _ in bn if float(jnp.max(jnp.abs(flat_out[n] - flat_init[n]))) > 0]
    assert len(moved) == len(bn)
    stats = jax.tree.leaves(out["batch_stats"])
    assert all(float(jnp.max(jnp.abs(s[0] - s[1]))) > 0 for s in stats)


def test_evaluation_uses_each_models_running_statistics(mnist_slice):
    """Population evaluation of a BatchNorm model: every model's counts are those of its own eval-mode logits
    (running statistics, not the test batch's), whatever the formulation and whatever the other models."""
    x, y = mnist_slice
    small = (14, 14, 1)
    x = _resized(x, small)
    spec = _small_resnet(small)
    keys = train.as_keys([4, 5, 6])
    v, _ = train.fit(spec, _cfg(), keys, x[:64], y[:64])
    xt, yt = x[128:256], y[128:256]
    by_hand = []
    for s in range(3):
        one = jax.tree.map(lambda a: a[s], v)
        logits = spec.apply(one, xt, train=False)[0]
        batch_mode = spec.apply(one, xt, train=True)[0]  # the batch's own statistics: other predictions
        assert float(jnp.max(jnp.abs(logits - batch_mode))) > 1e-3
        pred = np.asarray(jnp.argmax(logits, -1))
        by_hand.append(np.array([[np.sum((np.asarray(yt) == i) & (pred == j)) for j in range(10)]
                                 for i in range(10)]))
    for form in ("map+patches", "vmap+xla"):
        with population.override(form):
            counts = evaluate.evaluate_population(spec, v, xt, yt, chunk=2).counts
        np.testing.assert_array_equal(counts, np.stack(by_hand))
