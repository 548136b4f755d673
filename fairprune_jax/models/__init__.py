"""Model registry: every model is a `ModelSpec` that knows how to init, apply and which leaves are prunable.

Conventions shared by all models:
- `variables = {"params": ..., "batch_stats": ...}` ("batch_stats" only for models with BatchNorm).
- The output layer is the top-level params entry named `head`.
- Prunable leaves are conv and dense kernels (`kernel` leaves with ndim >= 2); biases and normalisation
  parameters never are. `exclude_output=True` also keeps `head/kernel` dense, identically for every criterion.
- `apply(variables, x, train=...)` returns `(logits, new_model_state)`; `new_model_state` is `{}` unless the
  model has BatchNorm and `train=True`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax

from fairprune_jax.models import conv, mlp, mobilenet, resnet, vgg

Variables = dict[str, Any]
PathPredicate = Callable[[tuple, Any], bool]


def path_str(path: tuple) -> str:
    """'hidden_0/kernel' for a `jax.tree_util` key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def kernel_predicate(exclude_output: bool = False, output_layer: str = "head") -> PathPredicate:
    """Prunable = a `kernel` leaf with ndim >= 2, optionally not under the output layer."""

    def prunable(path: tuple, leaf: Any) -> bool:
        names = path_str(path).split("/")
        if names[-1] != "kernel" or getattr(leaf, "ndim", 0) < 2:
            return False
        return not (exclude_output and output_layer in names[:-1])

    return prunable


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A Flax module plus what the pruning and training code needs to know about it."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]  # one example, NHWC without N, e.g. (28, 28, 1)
    num_outputs: int
    multilabel: bool = False  # sigmoid head (attributes) instead of softmax (classes)
    has_batch_stats: bool = False
    output_layer: str = "head"

    def init(self, key: jax.Array) -> Variables:
        """Variables of one model; vmap over keys for a population."""
        import jax.numpy as jnp

        x = jnp.zeros((1, *self.input_shape), jnp.float32)
        return dict(self.module.init(key, x, train=False))

    def apply(self, variables: Variables, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, Variables]:
        """Logits for a batch, and the updated BatchNorm state when training."""
        if train and self.has_batch_stats:
            logits, state = self.module.apply(variables, x, train=True, mutable=["batch_stats"])
            return logits, dict(state)
        return self.module.apply(variables, x, train=train), {}

    def prunable(self, exclude_output: bool = False) -> PathPredicate:
        """Predicate on (key path, leaf) of the params tree selecting prunable leaves."""
        return kernel_predicate(exclude_output, self.output_layer)


_REGISTRY: dict[str, Callable[..., ModelSpec]] = {}


def register(name: str) -> Callable[[Callable[..., ModelSpec]], Callable[..., ModelSpec]]:
    def deco(fn: Callable[..., ModelSpec]) -> Callable[..., ModelSpec]:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str, *, num_outputs: int = 10, input_shape: tuple[int, ...] = (28, 28, 1),
              multilabel: bool = False) -> ModelSpec:
    """Build a registered model by name; unknown names are a ValueError listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"model: unknown model {name!r}; known models: {', '.join(available())}")
    return _REGISTRY[name](num_outputs=num_outputs, input_shape=tuple(input_shape), multilabel=multilabel)


@register("lenet_300_100")
def _lenet_300_100(num_outputs: int, input_shape: tuple[int, ...], multilabel: bool) -> ModelSpec:
    return ModelSpec("lenet_300_100", mlp.MLP((300, 100), num_outputs), input_shape, num_outputs, multilabel)


@register("mlp_100_30")
def _mlp_100_30(num_outputs: int, input_shape: tuple[int, ...], multilabel: bool) -> ModelSpec:
    return ModelSpec("mlp_100_30", mlp.MLP((100, 30), num_outputs), input_shape, num_outputs, multilabel)


@register("lenet5")
def _lenet5(num_outputs: int, input_shape: tuple[int, ...], multilabel: bool) -> ModelSpec:
    return ModelSpec("lenet5", conv.LeNet5(num_outputs), input_shape, num_outputs, multilabel)


def _register_conv_n(n: int, stages: tuple[int, ...]) -> None:
    @register(f"conv{n}")
    def _conv(num_outputs: int, input_shape: tuple[int, ...], multilabel: bool) -> ModelSpec:
        return ModelSpec(f"conv{n}", conv.ConvNet(stages, num_outputs=num_outputs), input_shape, num_outputs,
                         multilabel)


for _n, _stages in ((2, (64,)), (4, (64, 128)), (6, (64, 128, 256))):
    _register_conv_n(_n, _stages)


def _register_cifar_resnet(depth: int) -> None:
    @register(f"resnet{depth}")
    def _resnet(num_outputs: int, input_shape: tuple[int, ...], multilabel: bool) -> ModelSpec:
        return ModelSpec(f"resnet{depth}", resnet.CifarResNet(depth, num_outputs=num_outputs), input_shape,
                         num_outputs, multilabel, has_batch_stats=True)


for _depth in (20, 32, 56):
    _register_cifar_resnet(_depth)


def _register_vgg(depth: int) -> None:
    @register(f"vgg{depth}")
    def _vgg(num_outputs: int, input_shape: tuple[int, ...], multilabel: bool) -> ModelSpec:
        return ModelSpec(f"vgg{depth}", vgg.VGG(vgg.PLANS[depth], num_outputs), input_shape, num_outputs,
                         multilabel, has_batch_stats=True)


for _depth in (11, 16):
    _register_vgg(_depth)


@register("resnet18")
def _resnet18(num_outputs: int, input_shape: tuple[int, ...], multilabel: bool) -> ModelSpec:
    """Paper 2's CelebA model; pass `multilabel=True` (sigmoid/BCE head) for attribute prediction."""
    return ModelSpec("resnet18", resnet.ResNet((2, 2, 2, 2), num_outputs=num_outputs), input_shape, num_outputs,
                     multilabel, has_batch_stats=True)


@register("mobilenet_v1")
def _mobilenet_v1(num_outputs: int, input_shape: tuple[int, ...], multilabel: bool) -> ModelSpec:
    """Paper 2's second CelebA model; pass `multilabel=True` (sigmoid/BCE head) for attribute prediction."""
    return ModelSpec("mobilenet_v1", mobilenet.MobileNetV1(num_outputs=num_outputs), input_shape, num_outputs,
                     multilabel, has_batch_stats=True)
