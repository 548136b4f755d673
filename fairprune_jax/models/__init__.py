"""Model registry: every model is a `ModelSpec` that knows how to init, apply and which leaves are prunable.

Conventions shared by all models:
- `variables = {"params": ..., "batch_stats": ...}` ("batch_stats" only for models with BatchNorm).
- The output layer is the top-level params entry named `head`.
- Prunable leaves are conv and dense kernels (`kernel` leaves with ndim >= 2); biases and normalisation
  parameters never are. `exclude_output=True` also keeps `head/kernel` dense, identically for every criterion.
- `apply(variables, x, train=...)` returns `(logits, new_model_state)`; `new_model_state` is `{}` unless the
  model has BatchNorm and `train=True`.

Bringing your own model: wrap any `flax.linen.Module` whose `__call__(x, train=False)` returns logits [B, K] in
a `ModelSpec` (or a factory decorated with `register`). The contract is checked on first use (`check_spec`, once
per spec, with `jax.eval_shape`, so nothing is computed): the module is hashable (tuples, not lists, in its
fields), the input shape survives the model, the output layer is a top-level params entry named `output_layer`,
the logits are `num_outputs` wide, and a "batch_stats" collection exists exactly when `has_batch_stats=True`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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


@dataclasses.dataclass(frozen=True)
class KernelPredicate:
    """Prunable = a `kernel` leaf with ndim >= 2, optionally not under the output layer.

    `shapes` ((path string, one model's param shape) pairs, set by `ModelSpec.prunable`) lets the mask functions
    that rank or count (`masks.threshold`, `masks.sparsity`, ...) refuse a stacked population (`check_one_model`).
    """

    exclude_output: bool = False
    output_layer: str = "head"
    shapes: tuple[tuple[str, tuple[int, ...]], ...] | None = None

    def __call__(self, path: tuple, leaf: Any) -> bool:
        names = path_str(path).split("/")
        if names[-1] != "kernel" or getattr(leaf, "ndim", 0) < 2:
            return False
        return not (self.exclude_output and self.output_layer in names[:-1])

    def check_one_model(self, tree: Any, what: str = "tree") -> None:
        """ValueError naming the first leaf of `tree` with more dimensions than the model's (vmap it instead)."""
        ref = dict(self.shapes or ())
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = path_str(path)
            if name in ref and len(jnp.shape(leaf)) > len(ref[name]):
                raise ValueError(f"{what}: leaf {name!r} has shape {tuple(jnp.shape(leaf))} but the model's is "
                                 f"{ref[name]}: a stacked population? This function takes ONE model: jax.vmap "
                                 f"over the leading axes (masks.sparsity / layer_sparsity / count_zeros take lead=)")


def kernel_predicate(exclude_output: bool = False, output_layer: str = "head") -> PathPredicate:
    """Prunable = a `kernel` leaf with ndim >= 2, optionally not under the output layer."""
    return KernelPredicate(exclude_output, output_layer)


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
        check_spec(self)
        x = jnp.zeros((1, *self.input_shape), jnp.float32)
        return dict(self.module.init(key, x, train=False))

    def apply(self, variables: Variables, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, Variables]:
        """Logits for a batch, and the updated BatchNorm state when training."""
        check_spec(self)
        if train and self.has_batch_stats:
            logits, state = self.module.apply(variables, x, train=True, mutable=["batch_stats"])
            return logits, dict(state)
        return self.module.apply(variables, x, train=train), {}

    def prunable(self, exclude_output: bool = False) -> PathPredicate:
        """Predicate on (key path, leaf) of the params tree selecting prunable leaves; it knows the model's shapes,
        so the mask functions that rank or count refuse a stacked population naming the fix (vmap / lead=)."""
        shapes = tuple((path_str(p), tuple(x.shape))
                       for p, x in jax.tree_util.tree_flatten_with_path(check_spec(self)["params"])[0])
        return KernelPredicate(exclude_output, self.output_layer, shapes)


def _unhashable_fields(module: nn.Module) -> list[str]:
    return [f.name for f in dataclasses.fields(module)
            if isinstance(getattr(module, f.name, None), (list, dict, set))]


def check_spec(spec: ModelSpec) -> Variables:
    """Check the custom-model contract (module doc) once per spec; returns the abstract variables of one model.

    Cheap: `jax.eval_shape` traces init and apply without computing, and the result is cached per spec.
    ValueError naming the field to fix otherwise.
    """
    try:
        hash(spec)
    except TypeError:
        fields = _unhashable_fields(spec.module)
        raise ValueError(f"spec.module: {type(spec.module).__name__} is not hashable (jit needs it static); use "
                         f"tuples instead of lists/dicts in its fields {fields or ''}, e.g. hidden=(100, 30)"
                         ) from None
    return _check_spec(spec)


@functools.lru_cache(maxsize=256)
def _check_spec(spec: ModelSpec) -> Variables:
    def probe(key: jax.Array) -> tuple[Any, jax.Array]:
        x = jnp.zeros((1, *spec.input_shape), jnp.float32)
        variables = spec.module.init(key, x, train=False)
        return variables, spec.module.apply(variables, x, train=False)

    try:
        variables, logits = jax.eval_shape(probe, jax.random.key(0))
    except (ValueError, TypeError, ZeroDivisionError, IndexError) as e:
        raise ValueError(f"spec.input_shape: model {spec.name!r} fails on one input of shape "
                         f"{tuple(spec.input_shape)} ({type(e).__name__}: {e})") from e
    variables = dict(variables)
    empty = [path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(variables)[0] if 0 in x.shape]
    if empty:
        raise ValueError(f"spec.input_shape: {tuple(spec.input_shape)} is too small for model {spec.name!r} "
                         f"(leaf {empty[0]!r} is empty)")
    params = variables.get("params", {})
    if spec.output_layer not in params:
        raise ValueError(f"spec.output_layer: model {spec.name!r} has no top-level params entry "
                         f"{spec.output_layer!r} (it has {sorted(params)}); name the output layer "
                         f"{spec.output_layer!r} or pass output_layer=... to ModelSpec")
    if getattr(logits, "shape", None) != (1, spec.num_outputs):
        raise ValueError(f"spec.num_outputs: model {spec.name!r} returns logits of shape "
                         f"{getattr(logits, 'shape', type(logits).__name__)} for one example, expected "
                         f"(1, {spec.num_outputs})")
    if ("batch_stats" in variables) != bool(spec.has_batch_stats):
        fix = ("it has BatchNorm: pass has_batch_stats=True" if "batch_stats" in variables
               else "it has no BatchNorm: pass has_batch_stats=False")
        raise ValueError(f"spec.has_batch_stats: {spec.has_batch_stats} for model {spec.name!r}, but {fix}")
    return variables


_REGISTRY: dict[str, Callable[..., ModelSpec]] = {}


def register(name: str) -> Callable[[Callable[..., ModelSpec]], Callable[..., ModelSpec]]:
    """Decorator adding a model factory to the registry under `name` (then `get_model(name, ...)` builds it).

    The factory takes keyword arguments `num_outputs: int`, `input_shape: tuple[int, ...]` and
    `multilabel: bool` and returns a `ModelSpec` (module doc for the contract, checked on first use). Registering
    an existing name replaces it. Example::

        @models.register("my_mlp")
        def _my_mlp(num_outputs, input_shape, multilabel):
            return models.ModelSpec("my_mlp", MyMLP(hidden=(64,), num_outputs=num_outputs), input_shape,
                                    num_outputs, multilabel)
    """

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


def _register_lenet5(name: str, width: float) -> None:
    @register(name)
    def _lenet5(num_outputs: int, input_shape: tuple[int, ...], multilabel: bool) -> ModelSpec:
        return ModelSpec(name, conv.LeNet5(num_outputs, width), input_shape, num_outputs, multilabel)


# LeNet-5 and its half- and double-width versions: a conv family whose members differ in size only (RQ3)
for _name, _width in (("lenet5_half", 0.5), ("lenet5", 1.0), ("lenet5_double", 2.0)):
    _register_lenet5(_name, _width)


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
