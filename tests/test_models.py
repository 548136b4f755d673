"""Model registry: every model inits and applies with the right output shape, declares its prunable leaves
(= conv/dense kernels, minus the head when excluded), uses the reference initialisation, and keeps BatchNorm
state per model under vmap."""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairprune_jax.models import ModelSpec, available, check_spec, get_model, path_str, resnet
from fairprune_jax.models.layers import BatchNorm, Dense

CIFAR = {"conv2", "conv4", "conv6", "resnet20", "resnet32", "resnet56", "vgg11", "vgg16"}
ATTRIBUTE = {"resnet18", "mobilenet_v1"}
BN = {"resnet20", "resnet32", "resnet56", "vgg11", "vgg16", "resnet18", "mobilenet_v1"}
EXPECTED = {"lenet_300_100", "mlp_100_30", "lenet5", "lenet5_half", "lenet5_double", "conv2", "conv4", "conv6",
            "resnet20", "resnet32", "resnet56", "vgg11", "vgg16", "resnet18", "mobilenet_v1"}
# published parameter counts (10 outputs; ResNet-18/MobileNetV1 with 1000 ImageNet outputs on 224×224×3)
PARAM_COUNTS = {"lenet_300_100": 266_610, "mlp_100_30": 81_840, "lenet5": 61_706, "conv2": 4_301_642,
                # LeNet-5 at half / double width, by hand: conv 5x5 1->3->8 (12->32), dense 200-60-42-10 (800-240-168-10)
                "lenet5_half": 15_738, "lenet5_double": 244_362,
                "conv4": 2_425_930, "conv6": 2_262_602, "resnet20": 272_474, "vgg16": 14_728_266}


def _build(name: str):
    if name in CIFAR:
        return get_model(name, input_shape=(32, 32, 3))
    if name in ATTRIBUTE:
        return get_model(name, num_outputs=40, multilabel=True)
    return get_model(name)


def test_registry_has_every_model():
    assert EXPECTED <= set(available())


def test_unknown_model_is_value_error():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_model("nope")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_init_apply_shapes_and_prunable_leaves(name):
    spec = _build(name)
    variables = jax.eval_shape(spec.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((3, *spec.input_shape), jnp.float32)
    for train in (False, True):
        logits, state = jax.eval_shape(lambda v, x: spec.apply(v, x, train=train), variables, x)
        assert logits.shape == (3, spec.num_outputs) and logits.dtype == jnp.float32
        assert set(state) == ({"batch_stats"} if (train and name in BN) else set())
    assert spec.has_batch_stats == (name in BN) == ("batch_stats" in variables)
    assert spec.multilabel == (name in ATTRIBUTE)
    params = variables["params"]
    assert params["head"]["kernel"].shape[-1] == spec.num_outputs
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    kernels = {path_str(p) for p, x in leaves if path_str(p).endswith("/kernel")}
    assert all(x.ndim in (2, 4) for p, x in leaves if path_str(p) in kernels)
    # every leaf of rank >= 2 is a kernel; everything else (biases, BN scale/bias) is 1-d
    assert {path_str(p) for p, x in leaves if x.ndim >= 2} == kernels
    pred, pred_ex = spec.prunable(), spec.prunable(exclude_output=True)
    assert {path_str(p) for p, x in leaves if pred(p, x)} == kernels
    assert {path_str(p) for p, x in leaves if pred_ex(p, x)} == kernels - {"head/kernel"}
    if name in PARAM_COUNTS:
        assert sum(math.prod(x.shape) for _, x in leaves) == PARAM_COUNTS[name]


def test_real_apply_lenet5_on_mnist():
    from fairprune_jax.data import load_split

    x = jnp.asarray((load_split("mnist", "test").images[:4].astype(np.float32) / 255 - 0.1307) / 0.3081)
    spec = get_model("lenet5")
    v = jax.jit(spec.init)(jax.random.key(1))
    logits, state = jax.jit(spec.apply)(v, x)
    assert logits.shape == (4, 10) and state == {} and bool(jnp.all(jnp.isfinite(logits)))
    # the same logits as the layers computed by hand (conv SAME, pool, conv VALID, pool, 3 dense)

    @jax.jit
    def by_hand(p, x):
        h = pool(jax.nn.relu(conv(p, x, "conv_0", "SAME")))
        h = pool(jax.nn.relu(conv(p, h, "conv_1", "VALID"))).reshape(4, -1)
        assert h.shape == (4, 400)
        for layer in ("hidden_0", "hidden_1"):
            h = jax.nn.relu(h @ p[layer]["kernel"] + p[layer]["bias"])
        return h @ p["head"]["kernel"] + p["head"]["bias"]

    def conv(p, h, layer, padding):
        out = jax.lax.conv_general_dilated(h, p[layer]["kernel"], (1, 1), padding,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + p[layer]["bias"]

    pool = lambda h: jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")  # noqa
    np.testing.assert_allclose(logits, by_hand(v["params"], x), rtol=1e-5, atol=1e-5)


def test_reference_initialisation():
    """Untruncated He-normal kernels, U(±1/√fan_in) biases, BN γ ~ U[0,1) (open_lth) or 1 (torchvision)."""
    spec = get_model("lenet_300_100")
    p = spec.init(jax.random.key(0))["params"]
    k = np.asarray(p["hidden_0"]["kernel"]).ravel()  # 784×300 draws of N(0, 2/784)
    sd = math.sqrt(2 / 784)
    assert abs(k.std() / sd - 1) < 0.01 and abs(k.mean()) < 3 * sd / math.sqrt(k.size)
    # a normal truncated at 2σ (Flax's default he_normal) never exceeds 2σ; 235,200 untruncated draws do
    # ~10,700 times
    assert (np.abs(k) > 2 * sd).mean() == pytest.approx(0.0455, abs=0.003)
    b = np.asarray(p["hidden_0"]["bias"])
    bound = 1 / math.sqrt(784)
    assert np.all(np.abs(b) <= bound) and np.abs(b).max() > 0.9 * bound
    hb = np.asarray(p["head"]["bias"])
    assert np.all(np.abs(hb) <= 1 / math.sqrt(100))

    # BN in a CIFAR-ResNet block (open_lth: γ ~ U[0,1), β = 0) and a ResNet-18 block (torchvision: γ = 1)
    x = jnp.zeros((1, 8, 8, 16))
    r = jax.jit(lambda k: resnet.BasicBlock(32, 2).init(k, x, train=False))(jax.random.key(0))
    gammas = np.concatenate([np.asarray(r["params"][b]["scale"]) for b in ("bn_0", "bn_1", "shortcut_bn")])
    assert gammas.min() >= 0 and gammas.max() < 1 and abs(gammas.mean() - 0.5) < 0.1 and gammas.std() > 0.2
    assert all(np.all(np.asarray(r["params"][b]["bias"]) == 0) for b in ("bn_0", "bn_1", "shortcut_bn"))
    conv_kernel = np.asarray(r["params"]["conv_0"]["kernel"])  # 3×3×16 -> 32, no bias (BN follows)
    assert abs(conv_kernel.std() / math.sqrt(2 / (9 * 16)) - 1) < 0.1 and "bias" not in r["params"]["conv_0"]
    assert np.all(np.asarray(r["batch_stats"]["bn_0"]["mean"]) == 0)
    assert np.all(np.asarray(r["batch_stats"]["bn_0"]["var"]) == 1)
    r18 = jax.jit(lambda k: resnet.BasicBlock(16, 1, bn_scale_uniform=False).init(k, x, train=False))(
        jax.random.key(0))
    assert np.all(np.asarray(r18["params"]["bn_0"]["scale"]) == 1) and "shortcut_conv" not in r18["params"]


class _TinyBN(__import__("flax").linen.Module):
    @__import__("flax").linen.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        return BatchNorm(train, name="bn")(Dense(4, name="hidden_0")(x))


def test_batchnorm_momentum_and_per_model_state_under_vmap():
    """new running mean = 0.9·old + 0.1·batch mean (PyTorch momentum 0.1), var with the biased batch var;
    vmapped models each update their own statistics from their own batch."""
    module = _TinyBN()
    keys = jax.random.split(jax.random.key(0), 2)
    v = jax.jit(jax.vmap(lambda k: module.init(k, jnp.zeros((1, 3)), train=False)))(keys)
    x = np.random.default_rng(1).normal(size=(2, 16, 3)).astype(np.float32) * np.float32([1, 3])[:, None, None]
    train_apply = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))
    _, new = jax.jit(jax.vmap(train_apply))(v, x)
    for s in range(2):
        h = np.asarray(x[s]) @ np.asarray(v["params"]["hidden_0"]["kernel"][s]) + np.asarray(
            v["params"]["hidden_0"]["bias"][s])
        np.testing.assert_allclose(new["batch_stats"]["bn"]["mean"][s], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new["batch_stats"]["bn"]["var"][s], 0.9 + 0.1 * h.var(0), rtol=1e-5)
        one = jax.tree.map(lambda a: a[s], v)
        _, alone = train_apply(one, x[s])
        np.testing.assert_allclose(alone["batch_stats"]["bn"]["mean"], new["batch_stats"]["bn"]["mean"][s],
                                   rtol=1e-6, atol=1e-7)
    assert not np.allclose(new["batch_stats"]["bn"]["var"][0], new["batch_stats"]["bn"]["var"][1])
    # eval mode uses the running averages: with mean 0, var 1, γ, β the output is γ·h/√(1+ε) + β
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(jax.tree.map(lambda a: a[0], v), x[0])
    p = v["params"]
    h = np.asarray(x[0]) @ np.asarray(p["hidden_0"]["kernel"][0]) + np.asarray(p["hidden_0"]["bias"][0])
    np.testing.assert_allclose(out, np.asarray(p["bn"]["scale"][0]) * h / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- custom models


class _Net(nn.Module):
    """A hand-written model with configurable mistakes."""

    hidden: Sequence[int] = (16,)
    width: int = 10
    out_name: str = "head"
    batchnorm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        for i, w in enumerate(self.hidden):
            x = nn.relu(nn.Dense(w, name=f"hidden_{i}")(x))
        if self.batchnorm:
            x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(self.width, name=self.out_name)(x)


@pytest.mark.parametrize("module, kwargs, match", [
    (_Net(hidden=[16]), {}, r"spec\.module: _Net is not hashable.*tuples instead of lists.*\['hidden'\]"),
    (_Net(width=12), {}, r"spec\.num_outputs: model 'net' returns logits of shape \(1, 12\).*\(1, 10\)"),
    (_Net(out_name="logits"), {}, r"spec\.output_layer: model 'net' has no top-level params entry 'head'"),
    (_Net(batchnorm=True), {}, r"spec\.has_batch_stats: False .* it has BatchNorm: pass has_batch_stats=True"),
    (_Net(), {"has_batch_stats": True}, r"spec\.has_batch_stats: True .* no BatchNorm"),
])
def test_custom_model_contract_is_checked_on_first_use(module, kwargs, match):
    spec = ModelSpec("net", module, (4, 4, 1), 10, **kwargs)
    with pytest.raises(ValueError, match=match):
        spec.init(jax.random.key(0))
    with pytest.raises(ValueError, match=match):
        check_spec(spec)


def test_custom_model_passes_and_predicate_knows_its_shapes():
    spec = ModelSpec("net", _Net(out_name="logits"), (4, 4, 1), 10, output_layer="logits")
    abstract = check_spec(spec)
    assert abstract["params"]["logits"]["kernel"].shape == (16, 10)
    pred = spec.prunable(exclude_output=True)
    params = spec.init(jax.random.key(0))["params"]
    kept = {path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(params)[0] if pred(p, x)}
    assert kept == {"hidden_0/kernel"}
    assert check_spec(spec) is abstract  # cached: checked once per spec


def test_input_shape_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match=r"spec\.input_shape: model 'lenet5' fails on one input of shape "
                                         r"\(8, 8, 1\).*at least 12x12"):
        get_model("lenet5", input_shape=(8, 8, 1)).init(jax.random.key(0))
    assert check_spec(get_model("lenet5", input_shape=(12, 12, 1)))["params"]["hidden_0"]["kernel"].shape == (16, 120)
    with pytest.raises(ValueError, match=r"spec\.input_shape: .*'conv4'.*\(2, 2, 3\)"):
        check_spec(get_model("conv4", input_shape=(2, 2, 3)))
