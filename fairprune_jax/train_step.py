"""One model's training: its keys, state, masked step and epoch, as pure functions (`train` vectorises them over a
population).

Keys. Each model has one key; `purpose_key(key, "init")` initialises it and `purpose_key(key, "data")` orders
its data (epoch e uses `fold_in(data_key, e)`). A model trained alone, in a vmapped group or in a different
chunk therefore sees the same init and the same batches. Batches: the last incomplete batch of every epoch
is DROPPED (each epoch is `N // batch_size` steps over a fresh permutation).

Masks. With a mask (bool tree shaped like `params`, leading axes like the params), the gradient is masked
before the optimizer (so momentum/Adam moments of pruned weights are never fed), the optimizer's parameter-
shaped state is masked when a state is created or re-masked, the update is masked and the new weights are
re-masked after every step: pruned weights stay EXACTLY zero and their optimizer state exactly zero.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairprune_jax import optim
from fairprune_jax.models import ModelSpec

PyTree = Any
Variables = dict[str, Any]

# fold_in constants per purpose: the same seed key gives independent streams for each use.
KEY_PURPOSES: dict[str, int] = {"init": 0, "data": 1, "random_scores": 2, "finetune_data": 3}


class TrainState(NamedTuple):
    """State of one model (or, with leading axes, of a population)."""

    params: PyTree
    batch_stats: PyTree  # {} for models without BatchNorm
    opt_state: PyTree
    step: jax.Array  # int32 number of optimizer steps taken


# ----------------------------------------------------------------------------------------------- keys


def seed_keys(seeds: Any) -> jax.Array:
    """Typed PRNG keys [S] from integer seeds: `jax.random.key(seed)` each."""
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def as_keys(keys: Any) -> jax.Array:
    """Typed key array [S] from typed keys, raw uint32 keys [S, 2] or integer seeds [S]."""
    if isinstance(keys, jax.Array) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if keys.ndim != 1:
            raise ValueError(f"seed_keys: expected a 1-d array of keys, got shape {keys.shape}")
        return keys
    arr = np.asarray(keys)
    if arr.dtype == np.uint32 and arr.ndim == 2:
        return jax.random.wrap_key_data(jnp.asarray(arr))
    if np.issubdtype(arr.dtype, np.integer) and arr.ndim == 1:
        return seed_keys(arr)
    raise ValueError(f"seed_keys: expected typed keys [S], raw uint32 keys [S, 2] or int seeds [S]; got "
                     f"{arr.dtype} {arr.shape}")


def purpose_key(key: jax.Array, purpose: str) -> jax.Array:
    """`fold_in(key, KEY_PURPOSES[purpose])`; works on one key or (vmapped) on many."""
    if purpose not in KEY_PURPOSES:
        raise ValueError(f"purpose: unknown {purpose!r}; known: {', '.join(KEY_PURPOSES)}")
    return jax.random.fold_in(key, KEY_PURPOSES[purpose])


def flip_crop(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Random horizontal flip and random `pad`-pixel translation (pad, then crop back) of a batch [B, H, W, C].

    The reference CIFAR augmentation (docs/methods.md §6). The padding is 0 in the normalised space (the mean colour).
    Deterministic given `key`.
    """
    k_flip, k_crop = jax.random.split(key)
    b, h, w, c = images.shape
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    x = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
    return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(x, offsets)


# ----------------------------------------------------------------------------------------------- one model


def mask_tree(tree: PyTree, mask: PyTree | None) -> PyTree:
    """`where(mask, x, 0)` leaf by leaf (the identity without a mask)."""
    if mask is None:
        return tree
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype)), tree, mask)


def mask_opt_state(tx: optax.GradientTransformation, opt_state: PyTree, mask: PyTree | None) -> PyTree:
    """Zero the entries of every params-shaped part of the optimizer state (momentum, Adam moments) at pruned
    positions, so a newly pruned weight carries no momentum."""
    if mask is None:
        return opt_state
    return optax.tree_utils.tree_map_params(
        tx, lambda v, m: jnp.where(m, v, jnp.zeros((), v.dtype)), opt_state, mask)


def init_state(tx: optax.GradientTransformation, variables: Variables, mask: PyTree | None = None) -> TrainState:
    """A fresh optimizer state for (masked) variables of one model."""
    params = mask_tree(variables["params"], mask)
    return TrainState(params, variables.get("batch_stats", {}), tx.init(params), jnp.zeros((), jnp.int32))


def state_variables(state: TrainState) -> Variables:
    """The Flax variables dict of a state (`batch_stats` only when the model has it)."""
    out = {"params": state.params}
    if jax.tree.leaves(state.batch_stats):
        out["batch_stats"] = state.batch_stats
    return out


def train_step(spec: ModelSpec, tx: optax.GradientTransformation, state: TrainState, mask: PyTree | None,
               images: jax.Array, labels: jax.Array) -> tuple[TrainState, jax.Array]:
    """One optimizer step of one model on one batch; returns the new state and the batch's mean loss.

    The loss is softmax CE (or sigmoid BCE for multi-label heads), with no decay term (weight decay is in the
    optimizer, coupled). Masked: gradient, update and new weights are zeroed at pruned positions.
    """
    loss_fn = optim.loss_fn(spec.multilabel)

    def objective(params: PyTree) -> tuple[jax.Array, PyTree]:
        variables = {"params": params}
        if spec.has_batch_stats:
            variables["batch_stats"] = state.batch_stats
        logits, new_state = spec.apply(variables, images, train=True)
        return loss_fn(logits, labels), new_state

    (loss, new_model_state), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grads = mask_tree(grads, mask)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = mask_tree(updates, mask)
    params = mask_tree(optax.apply_updates(state.params, updates), mask)
    batch_stats = new_model_state.get("batch_stats", state.batch_stats)
    return TrainState(params, batch_stats, opt_state, state.step + 1), loss


def epoch_permutation(data_key: jax.Array, epoch: jax.Array, n: int, batch_size: int) -> jax.Array:
    """Indices [N // B, B] of one epoch: a permutation keyed by (data key, epoch), last partial batch dropped."""
    steps = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
    return perm[: steps * batch_size].reshape(steps, batch_size)


def train_epoch(spec: ModelSpec, tx: optax.GradientTransformation, batch_size: int, state: TrainState,
                mask: PyTree | None, data_key: jax.Array, epoch: jax.Array, images: jax.Array, labels: jax.Array,
                capture_step: int | None = None, snapshot: Variables | None = None, augment: str = "none",
                shared: bool = False) -> tuple[TrainState, jax.Array, Variables | None]:
    """One epoch of one model: `lax.scan` of `train_step` over its batches. Returns (state, mean loss,
    snapshot), where the snapshot holds the variables right after global step `capture_step` (rewinding).
    augment="flip_crop" transforms every batch with `flip_crop`, keyed by (data key, epoch, step).

    shared=True: `state`, `mask` and `snapshot` carry a leading axis of R models that share this data order
    (e.g. the pruned variants of one seed). Each batch is gathered once and the step is vmapped over the R
    models with the batch unbatched, so the first layer's forward and weight gradient are one wide GEMM
    [B, in] x [in, R*out] instead of R small ones; every model's result is the one it gets alone up to the
    order of float sums. The losses are then [R]."""
    idx = epoch_permutation(data_key, epoch, images.shape[0], batch_size)
    epoch_key = jax.random.fold_in(data_key, epoch)
    step_fn = lambda st, m, xb, yb: train_step(spec, tx, st, m, xb, yb)  # noqa: E731
    capture = lambda st, snap: jax.tree.map(  # noqa: E731
        lambda s, v: jnp.where(st.step == capture_step, v, s), snap, state_variables(st))
    if shared:
        step_fn = jax.vmap(step_fn, in_axes=(0, 0, None, None))
        capture = jax.vmap(capture)

    def body(carry, step_and_idx):
        st, snap = carry
        step, batch_idx = step_and_idx
        xb = images[batch_idx]
        if augment == "flip_crop":
            xb = flip_crop(jax.random.fold_in(epoch_key, step), xb)
        st, loss = step_fn(st, mask, xb, labels[batch_idx])
        if capture_step is not None:
            snap = capture(st, snap)
        return (st, snap), loss

    steps = jnp.arange(idx.shape[0], dtype=jnp.int32)
    (state, snapshot), losses = jax.lax.scan(body, (state, snapshot), (steps, idx))
    return state, jnp.mean(losses, axis=0), snapshot
