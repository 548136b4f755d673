"""Pruning protocols (docs/methods.md §6): one-shot + fine-tune, iterative pruning with rewinding (lottery), and
gradual magnitude pruning (cubic GMP), each usable with every criterion of `scores.CRITERIA`.

Populations. Criteria (M) and sparsities (P) become extra model axes next to the seeds (S): a protocol returns
variables and masks `[S, M, P, ...]` (one-shot, GMP) or `[S, M, ...]` per level (iterative). Training flattens
those axes into one model axis and trains it with `train.fit`/`train.run_population` (vmapped, chunked: one
compiled program for the whole grid). Pairing: every (criterion, sparsity) model of seed s starts from seed s's
dense/initial weights and sees the same data order, so differences between algorithms are paired. `finetune`
fine-tunes ANY mask population `[S, *lead]` (e.g. masks composed by hand) from its seeds' dense models the same
way; `one_shot` is pruning followed by `finetune`.

Scoring. Scores are computed from each model's current (masked) weights; gradient criteria (gp, up) use
`scores.batch_gradient` on the fixed batch (`scores.fixed_batch`: the first 128 training examples in storage
order, BN in train mode, state discarded; `grad_batch` changes its size). Random scores use
`fold_in(purpose_key(seed, "random_scores"), t)` with t the level (iterative), the pruning epoch (GMP) or 0
(one-shot). Masks come from `masks.threshold` with `prior` = the model's current mask (nested masks; exact
counts; one sort per model for a whole sparsity grid), the criterion's scope, and the same prunable predicate
`spec.prunable(exclude_output)` for every criterion.
"""
from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax import counts
from fairprune_jax import data
from fairprune_jax import masks as masks_lib
from fairprune_jax import memory
from fairprune_jax import progress as progress_lib
from fairprune_jax import schedules
from fairprune_jax import scores as scores_lib
from fairprune_jax import train
from fairprune_jax import validation
from fairprune_jax.models import ModelSpec, check_spec

PyTree = Any
Variables = dict[str, Any]


# ----------------------------------------------------------------------------------------------- helpers


def finetune_config(tcfg: Any, *, lr_scale: float = 0.1, epochs: int | None = None) -> dict:
    """A plain-dict copy of a training config with the learning rate multiplied by `lr_scale` (one-shot
    fine-tuning at a reduced lr) and, optionally, another number of epochs."""
    cfg = tcfg.to_dict() if hasattr(tcfg, "to_dict") else copy.deepcopy(dict(tcfg))
    opt = dict(cfg.get("optimizer") or {})
    if "lr" not in opt:
        raise ValueError("tcfg.optimizer.lr: missing learning rate")
    opt["lr"] = float(opt["lr"]) * float(lr_scale)
    cfg["optimizer"] = opt
    if epochs is not None:
        cfg["epochs"] = int(epochs)
    return cfg


def _check_criteria(criteria: Sequence[str]) -> tuple[str, ...]:
    if isinstance(criteria, str):
        criteria = (criteria,)
    criteria = tuple(criteria)
    if not criteria:
        raise ValueError("criteria: empty")
    for c in criteria:
        scores_lib.scope(c)  # ValueError naming unknown criteria
    if len(set(criteria)) != len(criteria):
        raise ValueError(f"criteria: duplicates in {criteria}")
    return criteria


def _check_sparsities(sparsities: Any) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(sparsities, dtype=np.float64))
    if arr.ndim != 1:
        raise ValueError(f"sparsities: expected a 1-d grid, got shape {arr.shape}")
    masks_lib.check_sparsity(arr, name="sparsities")
    return arr


def _leading(tree: PyTree) -> int:
    return int(jax.tree.leaves(tree)[0].shape[0])


def _repeat(tree: PyTree, times: int) -> PyTree:
    """[S, ...] -> [S * times, ...], each model repeated `times` times consecutively (s-major)."""
    return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0), tree)


def _reshape_lead(tree: PyTree, shape: tuple[int, ...]) -> PyTree:
    """Split the single leading model axis [N, ...] of every leaf into `shape` (prod(shape) = N)."""
    return jax.tree.map(lambda x: x.reshape(*shape, *x.shape[1:]), tree)


def _flatten_lead(tree: PyTree, k: int) -> PyTree:
    """Merge the first k axes of every leaf."""
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[k:]), tree)


def _stack(trees: list[PyTree], axis: int) -> PyTree:
    return jax.tree.map(lambda *xs: jnp.stack(xs, axis=axis), *trees)


def _random_keys(keys: jax.Array, t: Any) -> jax.Array:
    """Per-model keys of the random criterion at level/epoch t."""
    return jax.vmap(lambda k: jax.random.fold_in(train.purpose_key(k, "random_scores"), t))(keys)


# ----------------------------------------------------------------------------------------------- pruning


def prune_one(spec: ModelSpec, criterion: str, variables: Variables, prior: PyTree | None, key: jax.Array,
              sparsity: jax.Array, batch: tuple[jax.Array, jax.Array], *, exclude_output: bool = False,
              lam: float = scores_lib.LAMBDA_UP) -> PyTree:
    """Mask(s) of ONE model: score its (masked) weights with `criterion` and threshold at `sparsity`.

    `sparsity` may be a scalar (one mask) or a 1-d grid [P] (masks [P, ...] from one ranking). `prior` (a mask
    or None) is pruned first and never revived.
    """
    params = variables["params"]
    grads = None
    if scores_lib.needs_gradient(criterion):
        grads = scores_lib.batch_gradient(spec, variables, prior, *batch)
    score = scores_lib.compute(criterion, params, grads=grads, key=key, lam=lam, mask=prior)
    pred = spec.prunable(exclude_output)
    thr = lambda s: masks_lib.threshold(score, s, prunable=pred, scope=scores_lib.scope(criterion),  # noqa: E731
                                        prior=prior)
    if not isinstance(sparsity, counts.ExactSparsity):
        sparsity = jnp.asarray(sparsity, jnp.float32)
    ndim = jnp.ndim(sparsity.hi if isinstance(sparsity, counts.ExactSparsity) else sparsity)
    return thr(sparsity) if ndim == 0 else jax.vmap(thr)(sparsity)


@functools.lru_cache(maxsize=128)
def _compiled_prune(spec: ModelSpec, criterion: str, exclude_output: bool, lam: float, has_prior: bool,
                    grid: bool) -> Callable:
    """jit(vmap over models) of `prune_one`; the sparsity is shared ([P] grid) or per model ([N])."""

    def one(variables, prior, key, sparsity, images, labels):
        return prune_one(spec, criterion, variables, prior if has_prior else None, key, sparsity,
                         (images, labels), exclude_output=exclude_output, lam=lam)

    in_axes = (0, 0 if has_prior else None, 0, None if grid else 0, None, None)
    return jax.jit(jax.vmap(one, in_axes=in_axes))


def prune_population(spec: ModelSpec, criterion: str, variables: Variables, sparsity: Any, keys: jax.Array,
                     batch: tuple[jax.Array, jax.Array], *, prior: PyTree | None = None, grid: bool = False,
                     exclude_output: bool = False, lam: float = scores_lib.LAMBDA_UP, chunk: int | None = None,
                     progress: progress_lib.ProgressArg = True) -> PyTree:
    """Masks of a population [N, ...] (grid=False: `sparsity` [N] per model) or [N, P, ...] (grid=True:
    `sparsity` [P] shared). `keys` [N] are the criterion's keys (used by "random" only: key model s's random
    scores with `jax.random.fold_in(train.purpose_key(seed_key, "random_scores"), t)`, as the protocols do). A
    concrete sparsity travels as `counts.ExactSparsity`, so each mask zeroes exactly round(s·N) weights of its
    float64 value. `chunk` models are scored at once: None = all of them when that fits the memory budget
    (`fairprune_jax.memory`), fewer when not; an explicit chunk that does not fit is refused. `progress` as in
    `train.fit` (a bar per chunk, "models 1-16/48")."""
    progress_lib.check(progress)
    traced = isinstance(sparsity, jax.core.Tracer)
    s = counts.exact(sparsity) if not traced else jnp.asarray(sparsity, jnp.float32)
    fn = _compiled_prune(spec, criterion, bool(exclude_output), float(lam), prior is not None, bool(grid))
    n = _leading(variables)
    if traced or isinstance(jax.tree.leaves(variables)[0], jax.core.Tracer):  # inside jit: one vmapped call
        return fn(variables, prior, keys, s, *batch)
    take = lambda tree, idx: jax.tree.map(lambda x: x[idx], tree)  # noqa: E731

    def need_at(c_: int, _: int | None) -> int | None:
        if c_ >= n:  # all at once: the caller's own arrays, as they are
            args = (variables, prior, keys, s, *batch)
            resident = memory.tree_bytes((variables, prior, keys))
        else:
            part = lambda tree: jax.tree.map(  # noqa: E731
                lambda x: jax.ShapeDtypeStruct((c_,) + tuple(x.shape[1:]), x.dtype), tree)
            args, resident = (part(variables), part(prior), part(keys), s if grid else part(s), *batch), 0
        return memory.remembered((fn, memory.signature(*args), resident),
                                 lambda: memory.program_need(fn.lower(*args), resident=resident))

    c = memory.fit(need_at, what=f"scoring {n} models ({criterion})", n_models=n, chunk=chunk,
                   default_chunk=n).chunk
    if c >= n:
        with progress_lib.Reporter(progress, total=n, desc=f"score {criterion}", unit="model") as rep:
            out = fn(variables, prior, keys, s, *batch)
            rep.step(n, models=progress_lib.span(1, n, n))
        return out
    parts = []
    with progress_lib.Reporter(progress, total=n, desc=f"score {criterion}", unit="model") as rep:
        for start in range(0, n, c):
            rep.note(models=progress_lib.span(start + 1, min(start + c, n), n))
            idx = jnp.asarray(np.minimum(np.arange(start, start + c), n - 1))
            s_c = s if grid else take(s, idx)
            keep = min(c, n - start)
            out = fn(take(variables, idx), None if prior is None else take(prior, idx), keys[idx], s_c, *batch)
            parts.append(jax.tree.map(lambda x: x[:keep], out))
            rep.step(keep, models=progress_lib.span(start + 1, start + keep, n))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


def _check_data(spec: ModelSpec, x_train: Any, y_train: Any) -> tuple[jax.Array, jax.Array]:
    """The model contract and the training images and labels, checked like `train.fit` does, before any scoring
    (whose compiled functions are cached per spec) uses them."""
    check_spec(spec)
    validation.check_images(x_train, spec.input_shape, name="x_train")
    validation.check_labels(y_train, spec.num_outputs, n=int(np.shape(x_train)[0]), multilabel=spec.multilabel,
                            name="y_train")
    return data.device_images(x_train), jnp.asarray(y_train)


def _score_batch(x_train: Any, y_train: Any, size: int = 128) -> tuple[jax.Array, jax.Array]:
    xb, yb = scores_lib.fixed_batch(x_train, y_train, size=size)
    return jnp.asarray(xb), jnp.asarray(yb)


# ----------------------------------------------------------------------------------------------- one-shot


def one_shot(spec: ModelSpec, tcfg: Any, dense_variables: Variables, criteria: Sequence[str], sparsities: Any,
             seed_keys: Any, x_train: Any, y_train: Any, *, exclude_output: bool = False,
             lam: float = scores_lib.LAMBDA_UP, chunk: int | None = None,
             progress: progress_lib.ProgressArg = True, mesh: Any = None, grad_batch: int = 128,
             fuse: bool = False) -> tuple[Variables, PyTree, dict[str, Any]]:
    """Prune each converged dense model once per (criterion, sparsity) and fine-tune the pruned models.

    dense_variables: [S, ...] trained dense models; seed_keys [S] their seeds' keys.
    tcfg: the FINE-TUNING config (reduced lr, e.g. `finetune_config(dense_cfg, lr_scale=0.1, epochs=...)`);
        tcfg.epochs = 0 returns the pruned models without fine-tuning. A fresh optimizer state is used.
    Returns (variables [S, M, P, ...], masks [S, M, P, ...], history {"loss": [S, M, P, epochs],
    "criteria", "sparsities"}). The fine-tuning is `finetune` of these masks: all S·M·P models as one flattened,
    chunked population; the models of one seed share its data order (`purpose_key(seed, "finetune_data")`),
    so with `fuse` they can be trained as one shared-batch group (`train.run_population`).
    """
    criteria = _check_criteria(criteria)
    grid = _check_sparsities(sparsities)
    keys = train.as_keys(seed_keys)
    s_ = int(keys.shape[0])
    if _leading(dense_variables) != s_:
        raise ValueError(f"dense_variables: leading axis {_leading(dense_variables)} != {s_} seed keys")
    images, labels = _check_data(spec, x_train, y_train)
    batch = _score_batch(images, labels, grad_batch)
    rkeys = _random_keys(keys, 0)
    per_criterion = [prune_population(spec, c, dense_variables, grid, rkeys, batch, grid=True,
                                      exclude_output=exclude_output, lam=lam, progress=progress is True)
                     for c in criteria]
    mask = _stack(per_criterion, axis=1)  # [S, M, P, ...]
    variables, hist = finetune(spec, tcfg, dense_variables, mask, keys, images, labels, chunk=chunk,
                               progress=progress, mesh=mesh, fuse=fuse)
    return variables, mask, {"loss": hist["loss"], "criteria": criteria, "sparsities": grid}


def finetune(spec: ModelSpec, tcfg: Any, dense_variables: Variables, masks: PyTree, seed_keys: Any, x_train: Any,
             y_train: Any, *, chunk: int | None = None, progress: progress_lib.ProgressArg = True,
             mesh: Any = None, fuse: bool = False, keep_epochs: tuple[int, ...] = ()
             ) -> tuple[Variables, dict[str, Any]]:
    """Masked fine-tuning of any mask population: every mask of seed s starts from seed s's dense weights.

    dense_variables: [S, ...] (e.g. from `train.fit`); seed_keys [S] their seeds' keys.
    masks: bool trees like params with leading axes [S, *lead] (any composition: criteria, sparsities, ...);
        the dense models broadcast over `lead` like `evaluate.evaluate_population` does.
    tcfg: the fine-tuning config (`finetune_config`); a fresh optimizer state; tcfg.epochs = 0 returns the
        masked dense models. Data order: the seed's fine-tuning stream (`purpose_key(seed, "finetune_data")`),
        shared by all its masks (paired), the one `one_shot` uses.
    keep_epochs: also return the variables after these epoch counts, as {"at_epochs": {e: [S, *lead, ...]}}
        (`train.fit`; with a constant learning rate they are the e-epoch fine-tunings).
    Returns (variables [S, *lead, ...], {"loss": [S, *lead, epochs], "at_epochs": {...}}); all S·prod(lead) models
    are trained as one flattened, chunked population; with `fuse` a seed's masks as one shared-batch group
    (`train.fit`; same results up to the order of float sums).
    """
    keys = train.as_keys(seed_keys)
    s_ = int(keys.shape[0])
    one = jax.eval_shape(spec.init, jax.random.key(0))
    var_lead = validation.leading_shape(dense_variables, one, "dense_variables")
    if var_lead != (s_,):
        raise ValueError(f"dense_variables: leading axes {var_lead}, expected ({s_},) for {s_} seed keys")
    validation.check_bool_leaves(masks, "masks")
    mask_lead = validation.leading_shape(masks, one["params"], "masks")
    if mask_lead[:1] != (s_,):
        raise ValueError(f"masks: leading axes {mask_lead} do not start with the {s_} seeds of dense_variables")
    lead = mask_lead[1:]
    r = int(np.prod(lead, dtype=np.int64))
    # adopt the params' container types (dict vs FrozenDict), as evaluate does
    masks = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(one["params"]), jax.tree.leaves(masks))
    ft_keys = jnp.repeat(jax.vmap(lambda k: train.purpose_key(k, "finetune_data"))(keys), r)
    out, hist = train.fit(spec, tcfg, ft_keys, x_train, y_train, masks=_flatten_lead(masks, len(mask_lead)),
                          init_variables=_repeat(dense_variables, r), chunk=chunk, progress=progress, mesh=mesh,
                          fuse=fuse, keep_epochs=keep_epochs)
    at = {e: _reshape_lead(v, mask_lead) for e, v in hist["at_epochs"].items()}
    return _reshape_lead(out, mask_lead), {"loss": hist["loss"].reshape(*mask_lead, -1), "at_epochs": at}


# ----------------------------------------------------------------------------------------------- iterative


class IterativeState(NamedTuple):
    """Everything needed to resume iterative pruning after `level` (checkpoint it; pass as `resume`)."""

    level: int
    variables: Variables  # [S, M, ...] final weights of this level (level 0: the dense model, repeated over M)
    masks: PyTree  # [S, M, ...]
    rewind: Variables  # [S, ...] the rewind point (init or step k of dense training), BN state included


class LevelResult(NamedTuple):
    """One level of iterative pruning. Level 0 is the dense model (shared by all criteria)."""

    level: int
    sparsity: float  # nominal s_L = 1 − (1 − f)^L; the realised one is masks.sparsity of `masks`
    variables: Variables  # [S, M, ...]
    masks: PyTree  # [S, M, ...]
    history: dict[str, Any]  # {"loss": [S, M, epochs]}
    state: IterativeState


def iterative(spec: ModelSpec, tcfg: Any, seed_keys: Any, x_train: Any, y_train: Any, criteria: Sequence[str],
              levels: int, *, fraction: float = 0.2, rewind_step: int = 0, exclude_output: bool = False,
              lam: float = scores_lib.LAMBDA_UP, chunk: int | None = None,
              progress: progress_lib.ProgressArg = True, resume: IterativeState | None = None,
              mesh: Any = None,
              dense: tuple[Variables, Variables] | None = None, grad_batch: int = 128) -> Iterator[LevelResult]:
    """Iterative pruning with rewinding (lottery ticket style); a generator of `LevelResult`, level 0..levels.

    Level 0 trains the dense models from `purpose_key(seed, "init")` with `tcfg` (or takes `dense` =
    (dense variables [S], rewind variables [S]) if given) and records the rewind point: the initial variables
    (rewind_step=0) or those right after global step `rewind_step` of dense training. Level L ≥ 1, for every
    seed and criterion: score the previous level's final weights, remove `fraction` of the remaining prunable
    weights (target s_L = 1 − (1 − f)^L, nested in the previous mask), rewind the survivors (BN state
    included) to the rewind point and retrain with `tcfg` and a fresh optimizer, all S·M models as one
    population. Data order: each seed's own (`purpose_key(seed, "data")`), the same at every level.

    Callers evaluate/checkpoint each yielded level; `resume=result.state` restarts after that level.
    """
    criteria = _check_criteria(criteria)
    keys = train.as_keys(seed_keys)
    s_, m_ = int(keys.shape[0]), len(criteria)
    images, labels = _check_data(spec, x_train, y_train)
    batch = _score_batch(images, labels, grad_batch)
    if levels < 0 or int(levels) != levels:
        raise ValueError(f"levels: need a non-negative integer, got {levels!r}")
    if resume is None:
        if dense is None:
            out, hist = train.fit(spec, tcfg, keys, images, labels, progress=progress, mesh=mesh,
                                  capture_step=rewind_step if rewind_step > 0 else None)
            rewind = hist["snapshot"] if rewind_step > 0 else train.init_population(spec, keys)
        else:
            out, rewind = dense
            hist = {"loss": np.zeros((s_, 0), np.float32)}
        ones = jax.vmap(masks_lib.ones_like)(out["params"])
        state = IterativeState(0, _reshape_lead(_repeat(out, m_), (s_, m_)),
                               _reshape_lead(_repeat(ones, m_), (s_, m_)), rewind)
        loss = np.repeat(hist["loss"][:, None], m_, axis=1)
        yield LevelResult(0, 0.0, state.variables, state.masks, {"loss": loss}, state)
    else:
        state = resume
        if _leading(state.rewind) != s_:
            raise ValueError(f"resume.rewind: leading axis {_leading(state.rewind)} != {s_} seed keys")
    rewind_flat = _repeat(state.rewind, m_)  # [S*M] (s-major, like the flattened [S, M] axes)
    run_keys = jnp.repeat(keys, m_)
    for level in range(state.level + 1, levels + 1):
        target = schedules.iterative_sparsity(level, fraction)
        rkeys = _random_keys(keys, level)
        new_masks = []
        for j, c in enumerate(criteria):
            v_j = jax.tree.map(lambda x: x[:, j], state.variables)
            m_j = jax.tree.map(lambda x: x[:, j], state.masks)
            new_masks.append(prune_population(spec, c, v_j, np.full(s_, target), rkeys, batch, prior=m_j,
                                              exclude_output=exclude_output, lam=lam, progress=progress is True))
        mask = _stack(new_masks, axis=1)  # [S, M, ...]
        out, hist = train.fit(spec, tcfg, run_keys, images, labels, masks=_flatten_lead(mask, 2),
                              init_variables=rewind_flat, chunk=chunk, progress=progress, mesh=mesh)
        state = IterativeState(level, _reshape_lead(out, (s_, m_)), mask, state.rewind)
        yield LevelResult(level, float(target), state.variables, mask, {"loss": hist["loss"].reshape(s_, m_, -1)},
                          state)


# ----------------------------------------------------------------------------------------------- GMP


def gmp(spec: ModelSpec, tcfg: Any, seed_keys: Any, x_train: Any, y_train: Any, criteria: Sequence[str],
        sparsities: Any, *, start: int, end: int, every: int = 1, initial: float = 0.05,
        init_variables: Variables | None = None, exclude_output: bool = False, lam: float = scores_lib.LAMBDA_UP,
        chunk: int | None = None, progress: progress_lib.ProgressArg = True, grad_batch: int = 128,
        mesh: Any = None,
        ) -> tuple[Variables, PyTree, dict[str, Any]]:
    """Gradual pruning during training with the cubic schedule (`schedules.gmp_sparsity`), any criterion.

    Before epoch e ∈ `schedules.gmp_steps(start, end, every)`, every model is re-scored on its current weights
    and pruned (nested in its mask) to s(e) = s_f − (s_f − s_i)(1 − (e − start)/(end − start))³ (the last
    pruning epoch hits s_f exactly); the optimizer state continues, with the momentum of the newly pruned
    weights zeroed. Models: S seeds × M criteria × P final sparsities (`sparsities`), trained from
    `purpose_key(seed, "init")`, or from `init_variables` [S] (the "post-training" variant: a converged dense
    model fine-tuned with, e.g., Adam 1e-4). Criteria run one after another, each as one population of S·P
    models (chunked). Requires `tcfg.epochs > last pruning epoch` for the final sparsity to be reached.

    Returns (variables [S, M, P, ...], masks [S, M, P, ...], history {"loss": [S, M, P, epochs], ...}).
    """
    criteria = _check_criteria(criteria)
    finals = _check_sparsities(sparsities)
    steps = schedules.gmp_steps(start, end, every)
    keys = train.as_keys(seed_keys)
    s_, p_ = int(keys.shape[0]), len(finals)
    images, labels = _check_data(spec, x_train, y_train)
    epochs = train.read_config(tcfg).epochs
    if epochs <= steps[-1]:
        raise ValueError(f"tcfg.epochs: {epochs} epochs never reach the last pruning epoch {steps[-1]}")
    batch = _score_batch(images, labels, grad_batch)
    tx, _ = train.make_tx(tcfg, int(images.shape[0]))
    base = init_variables if init_variables is not None else train.init_population(spec, keys)
    if _leading(base) != s_:
        raise ValueError(f"init_variables: leading axis {_leading(base)} != {s_} seed keys")
    variables = _repeat(base, p_)  # [S*P] s-major
    run_keys = jnp.repeat(keys, p_)
    model_seed = np.repeat(np.arange(s_), p_)
    # the sparsity target of every (epoch, final) pair, computed once with the schedule's own rule
    targets = {e: np.asarray([float(schedules.gmp_sparsity(e, final=f, initial=min(initial, f), start=start,
                                                           end=end, every=every)) for f in finals])
               for e in steps}

    outs, masks_out, losses = [], [], []
    for c in criteria:
        def between(epoch: int, state: train.TrainState, mask: PyTree, idx: np.ndarray, c: str = c):
            if epoch not in targets:
                return state, mask
            s_target = targets[epoch][idx % p_]  # idx is s-major over (seed, final)
            rk = _random_keys(keys[model_seed[idx]], epoch)
            current = train.state_variables(state)
            new = prune_population(spec, c, current, s_target, rk, batch, prior=mask,
                                   exclude_output=exclude_output, lam=lam, progress=False)
            return train.remask_population(tx, state, new), new

        out, loss, mask, _, _ = train.run_population(spec, tcfg, run_keys, images, labels, variables=variables,
                                                  chunk=chunk, between_epochs=between, progress=progress,
                                                  mesh=mesh)
        outs.append(_reshape_lead(out, (s_, p_)))
        masks_out.append(_reshape_lead(mask, (s_, p_)))
        losses.append(loss.reshape(s_, p_, -1))
    return (_stack(outs, axis=1), _stack(masks_out, axis=1),
            {"loss": np.stack(losses, axis=1), "criteria": criteria, "sparsities": finals, "prune_epochs": steps})
