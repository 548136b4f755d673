"""Pruning scores (higher = keep), one tree per model with the structure of ``params`` (docs/methods.md §4).

Criteria are a registry (``CRITERIA``), every one applied with the same prunable-leaf predicate:
- ``mp``: raw magnitude |w|, one global threshold (open_lth).
- ``mp_norm``: |w| / (‖W_ℓ‖_F + 1e-8) with the norm of the *masked* kernel, one global threshold.
- ``mp_layer``: raw magnitude, the same fraction removed in every layer (layerwise scope).
- ``random``: U(0, 1) scores from a key (fold the key by seed and level upstream); a control, it tests no claim.
- ``gp``: |w ⊙ g|.
- ``up``: |−w ⊙ g + λ w²| (absolute value after the sum, so the terms can cancel; λ default 5e-4).

Adding a criterion is one function and one decorator, from anywhere (the studies, reports and claims take it
from the config's criteria list)::

    @scores.register("sq", description="w², a toy")
    def squared(params, **unused):
        return jax.tree.map(jnp.square, params)

A score function gets the model's current weights with its mask applied (``params``) and the keyword arguments
``grads`` (for ``needs_gradient``), ``key`` (for ``needs_key``) and ``lam`` (λ of UP); it returns a tree like
``params`` and must be traceable (it runs under ``jit`` and ``vmap``).

``g`` is ``batch_gradient``: the gradient of the mean cross-entropy only (no decay term) of the masked network
on one fixed batch (``fixed_batch``: the first 128 training examples in storage order), BatchNorm in train mode
with its updated state discarded. It is the gradient with respect to the effective (masked) weights, so it is
generally non-zero at pruned positions, as in the PyTorch reference; the threshold prunes those first anyway.
Scores are computed for every leaf; ``masks.threshold`` ignores non-prunable leaves.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fairprune_jax import masks as masks_lib
from fairprune_jax.validation import check_labels

PyTree = Any
LAMBDA_UP = 5e-4
NORM_EPS = 1e-8
SCOPES = ("global", "layerwise")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Criterion(NamedTuple):
    """A registered criterion: its score function and what it needs, how its scores are thresholded, and how
    reports show it."""

    name: str
    scope: str  # "global" or "layerwise"
    needs_gradient: bool
    needs_key: bool
    description: str
    fn: Callable[..., PyTree] | None = None  # fn(masked params, *, grads, key, lam) -> scores
    label: str = ""  # how reports name it (default: the name in capitals)
    control: bool = False  # a control (random pruning): compared against, never part of a claim


CRITERIA: dict[str, Criterion] = {}


def register(name: str, *, scope: str = "global", needs_gradient: bool = False, needs_key: bool = False,
             description: str = "", label: str = "", control: bool = False,
             ) -> Callable[[Callable[..., PyTree]], Callable[..., PyTree]]:
    """Decorator registering a score function as criterion ``name`` (lower-case letters, digits, ``_``).

    ``scope``: "global" (one threshold over all eligible weights) or "layerwise" (the same fraction per layer);
    ``needs_gradient`` / ``needs_key``: the function reads ``grads`` (`batch_gradient` of the masked network) /
    a PRNG ``key``; ``label``: the name reports show (default ``name.upper()``); ``control``: a baseline such as
    random pruning, which claims compare against but never test. Registering a taken name raises ValueError.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"criterion name {name!r}: use 1-32 lower-case letters, digits or '_', starting with a "
                         "letter (it becomes part of file names)")
    if scope not in SCOPES:
        raise ValueError(f"criterion {name!r}: scope {scope!r} is not one of {SCOPES}")
    if name in CRITERIA or name == "dense":
        raise ValueError(f"criterion {name!r} is already registered" if name != "dense" else
                         "criterion name 'dense' is reserved for the unpruned models")

    def add(fn: Callable[..., PyTree]) -> Callable[..., PyTree]:
        CRITERIA[name] = Criterion(name, scope, bool(needs_gradient), bool(needs_key),
                                   description or (fn.__doc__ or "").strip().split("\n")[0], fn,
                                   label or name.upper(), bool(control))
        return fn

    return add


def get(name: str) -> Criterion:
    """The registered criterion ``name`` (ValueError naming the known ones)."""
    if name not in CRITERIA:
        raise ValueError(f"criterion: unknown {name!r}; known: {', '.join(CRITERIA)}")
    return CRITERIA[name]


_criterion = get


def scope(criterion: str) -> str:
    """'global' or 'layerwise': the ``scope`` to pass to ``masks.threshold``."""
    return get(criterion).scope


def needs_gradient(criterion: str) -> bool:
    """Whether ``compute`` needs ``grads`` (from ``batch_gradient``)."""
    return get(criterion).needs_gradient


def needs_key(criterion: str) -> bool:
    """Whether ``compute`` needs a PRNG ``key``."""
    return get(criterion).needs_key


def _masked(params: PyTree, mask: Any) -> PyTree:
    return params if mask is None else masks_lib.apply(params, mask)


def magnitude(params: PyTree, *, normalize: bool = False, mask: Any = None) -> PyTree:
    """|w| (of the masked params); with ``normalize`` divided by the Frobenius norm of each masked leaf + 1e-8."""
    w = _masked(params, mask)
    if not normalize:
        return jax.tree.map(jnp.abs, w)
    return jax.tree.map(lambda x: jnp.abs(x) / (jnp.sqrt(jnp.sum(jnp.square(x))) + NORM_EPS), w)


def random(key: jax.Array, params: PyTree) -> PyTree:
    """Independent U(0, 1) scores per leaf; leaf i uses ``fold_in(key, i)`` (flatten order)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = [jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(x), jnp.float32) for i, x in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def gradient(params: PyTree, grads: PyTree) -> PyTree:
    """GP: |w ⊙ g|."""
    return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)


def undecayed(params: PyTree, grads: PyTree, *, lam: float = LAMBDA_UP) -> PyTree:
    """UP: |−w ⊙ g + λ w²| (NOT |w g| + λ w²); λ → 0 gives GP, and at g = −λw it is 2λw² (ranks like MP)."""
    return jax.tree.map(lambda w, g: jnp.abs(-w * g + lam * jnp.square(w)), params, grads)


def cross_entropy(logits: jax.Array, labels: jax.Array, *, multilabel: bool = False) -> jax.Array:
    """Mean softmax CE with integer labels, or mean sigmoid BCE over all (example, attribute) pairs."""
    if multilabel:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def fixed_batch(images: Any, labels: Any, *, size: int = 128, start: int = 0) -> tuple[Any, Any]:
    """The fixed scoring batch: examples ``start .. start+size`` in storage order (default the first 128)."""
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"labels: {len(labels)} labels for {n} images")
    if size < 1 or start < 0 or start + size > n:
        raise ValueError(f"size/start: batch [{start}, {start + size}) outside the {n} examples")
    return images[start:start + size], labels[start:start + size]


def batch_gradient(spec: Any, variables: dict, mask: Any, images: jax.Array, labels: jax.Array) -> PyTree:
    """∂(mean CE)/∂params of the masked network on one batch (BN in train mode, its new state discarded).

    ``images`` are model inputs (already normalised); ``mask`` may be None (dense). Returns a params-shaped tree.
    ``labels`` are checked like ``train.fit``'s (values only when concrete, not under jit).
    """
    check_labels(labels, spec.num_outputs, n=int(jnp.shape(images)[0]), multilabel=spec.multilabel, name="labels")
    params = _masked(variables["params"], mask)

    def loss(p: PyTree) -> jax.Array:
        logits, _ = spec.apply({**variables, "params": p}, images, train=True)
        return cross_entropy(logits, labels, multilabel=spec.multilabel)

    return jax.grad(loss)(params)


def compute(criterion: str, params: PyTree, *, grads: PyTree = None, key: jax.Array | None = None,
            lam: float = LAMBDA_UP, mask: Any = None) -> PyTree:
    """Scores of ``criterion`` for (the masked) ``params``; GP/UP need ``grads``, random needs ``key``.

    ``grads`` must have the tree structure and every leaf shape of ``params`` (a ValueError names the first leaf
    that differs), so a stray broadcast such as a ``(1, ...)`` leaf cannot silently reach the scores.
    """
    c = get(criterion)
    if c.needs_gradient and grads is None:
        raise ValueError(f"grads: criterion {criterion!r} needs gradients (scores.batch_gradient)")
    if c.needs_gradient:
        masks_lib.validate(params, grads, name="grads", bool_leaves=False)
    if c.needs_key and key is None:
        raise ValueError(f"key: criterion {criterion!r} needs a PRNG key")
    return c.fn(_masked(params, mask), grads=grads, key=key, lam=lam)


# ------------------------------------------------------------------------------------------------ built-ins

@register("mp", description="raw |w|, global threshold (open_lth)")
def _mp(params: PyTree, **unused: Any) -> PyTree:
    return magnitude(params)


@register("mp_norm", description="|w| / (||W_l||_F + 1e-8) of the masked kernel, global", label="MP-norm")
def _mp_norm(params: PyTree, **unused: Any) -> PyTree:
    return magnitude(params, normalize=True)


@register("mp_layer", scope="layerwise", description="raw |w|, same fraction per layer", label="MP-layer")
def _mp_layer(params: PyTree, **unused: Any) -> PyTree:
    return magnitude(params)


@register("random", needs_key=True, control=True, description="U(0,1) scores")
def _random(params: PyTree, *, key: jax.Array, **unused: Any) -> PyTree:
    return random(key, params)


@register("gp", needs_gradient=True, description="|w * g|")
def _gp(params: PyTree, *, grads: PyTree, **unused: Any) -> PyTree:
    return gradient(params, grads)


@register("up", needs_gradient=True, description="|-w * g + lam * w^2| (undecayed pruning)")
def _up(params: PyTree, *, grads: PyTree, lam: float = LAMBDA_UP, **unused: Any) -> PyTree:
    return undecayed(params, grads, lam=lam)
