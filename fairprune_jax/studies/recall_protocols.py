"""The recall study's protocols (one-shot, GMP, iterative; the budget grid is `studies.budget`) as units of the
runner, and the pieces every protocol shares: the evaluation of a population into tidy rows with the divergence
guard, and the commit of a grid criterion.

Protocols are a registry: a new one is a `ProtocolLayout` (what it writes, `studies.recall_layout`) and a units
function registered with :func:`protocol`::

    @recall_protocols.protocol(ProtocolLayout("mine", lambda c: list(c.prune.criteria), lambda c: "my grid"))
    def my_units(ctx, dense):
        ...  # yield runner.Unit(key, "prune", done, compute, commit) per unit
"""
from __future__ import annotations

import dataclasses
import shutil
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from fairprune_jax import checkpoints, evaluate, protocols, train
from fairprune_jax import masks as masks_lib
from fairprune_jax.studies import checks, schema, spine
from fairprune_jax.studies import recall_layout as L
from fairprune_jax.studies.layout import ProtocolLayout, Registry
from fairprune_jax.studies.runner import Context, Unit


# ------------------------------------------------------------------------------------------------ protocols

@dataclasses.dataclass(frozen=True)
class Protocol:
    """A protocol as the study runs it: its layout, its config check and its units for one model and seed block
    (``units(context, dense)``, ``dense()`` giving the block's (dense, rewind) variables); ``rewind_step(config)``:
    the dense training step whose weights the protocol rewinds to (captured while training; 0 = initialisation)."""

    layout: ProtocolLayout
    validate: Callable[[Any], None]
    units: Callable[[Context, Callable[[], Any]], Iterable[Unit]]
    rewind_step: Callable[[Any], int] = lambda config: 0


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def protocol(layout: ProtocolLayout | str, *, validate: Callable[[Any], None] = lambda config: None,
             rewind_step: Callable[[Any], int] = lambda config: 0):
    """Decorator registering a units function as a protocol: ``layout`` is a registered layout's name, or a new
    `ProtocolLayout` (registered here too)."""
    if not isinstance(layout, str):
        L.register_protocol(layout)
    layout = L.PROTOCOLS[layout.name if not isinstance(layout, str) else layout]

    def add(units: Callable[[Context, Callable[[], Any]], Iterable[Unit]]):
        PROTOCOLS.add(layout.name, Protocol(layout, validate, units, rewind_step))
        return units

    return add


# ------------------------------------------------------------------------------------------------ helpers

def _actual_sparsity(spec, mask_tree: Any, exclude_output: bool, lead: int) -> np.ndarray:
    """Realised t of every model: fraction of eligible weights that are zero, read from the masks."""
    return np.asarray(masks_lib.sparsity(mask_tree, spec.prunable(exclude_output), lead=lead), np.float64)


def evaluate_rows(ctx: Context, variables, masks, *, criteria: Sequence[str], requested: Any,
                  levels: Sequence[int], loss: Any = None) -> pd.DataFrame:
    """Evaluate a population [S, M, P] (variables may be [S] with masks [S, M, P]) and build its tidy rows.

    Divergence guard (`spine.guard`): a network whose parameters or training losses (``loss`` [S, M, P, E] when
    given) are non-finite, or whose last epoch's loss exploded, gets ``diverged=True``, ``diverged_epoch`` (first
    bad epoch, -1 if only the parameters show it) and NaN recall / accuracy / confidence, so its argmax-of-NaN
    predictions never count as recall."""
    config, spec, study = ctx.config, ctx.spec, ctx.data.data
    exclude_output = bool(config.exclude_output)
    res = evaluate.evaluate_population(spec, variables, study.test.images, study.test.labels, masks=masks,
                                       num_classes=study.num_classes, chunk=int(config.eval.chunk),
                                       batch_size=int(config.eval.batch_size), mesh=ctx.mesh)
    counts = res.counts
    if counts.ndim == 3:  # dense [S, K, K]
        counts = counts[:, None, None]
    s, m, p = counts.shape[:3]
    actual = (np.zeros((s, m, p)) if masks is None
              else _actual_sparsity(spec, masks, exclude_output, 3).reshape(s, m, p))
    rows = evaluate.recall_table(
        counts, dataset=config.dataset, model=spec.name, criteria=list(criteria), seeds=list(ctx.seeds),
        requested_sparsity=np.broadcast_to(np.asarray(requested, np.float64), (s, m, p)), actual_sparsity=actual,
        levels=list(levels), mean_confidence=res.mean_confidence.reshape(s, m, p),
        frac_uncertain=res.frac_uncertain.reshape(s, m, p))
    lead = 1 if masks is None else 3
    verdict = spine.guard(config, spec, variables, loss, lead)
    shape = (s, m, p)
    widen = lambda x: np.broadcast_to(x[:, None, None] if x.ndim == 1 else x, shape)  # noqa: E731
    bad, epoch = widen(verdict.diverged), widen(verdict.epoch)
    k = study.num_classes
    rows["diverged"] = np.repeat(bad.ravel(), k)
    rows["diverged_epoch"] = np.repeat(epoch.ravel(), k).astype(np.int64)
    rows.loc[rows["diverged"], ["recall", "accuracy", "mean_confidence", "frac_uncertain"]] = np.nan
    return rows


def protocol_kwargs(ctx: Context) -> dict:
    """Keyword arguments every protocol call shares."""
    c = ctx.config
    return dict(exclude_output=bool(c.exclude_output), lam=float(c.prune.lambda_up),
                grad_batch=int(c.prune.grad_batch), mesh=ctx.mesh)


def train_data(ctx: Context) -> tuple[Any, Any]:
    """The training images and labels on the device."""
    d = ctx.data.data
    return d.train.images, d.train.labels


def chunk_of(section: Any) -> int | None:
    """A training section's chunk (None: automatic)."""
    return int(section.chunk) or None


def append_rows(ctx: Context, key: str, rows: pd.DataFrame) -> None:
    """Commit a recall-table part."""
    ctx.workdir.append_table(L.RECALL, key, rows)


def grid_commit(ctx: Context, criterion: str, sparsities: np.ndarray, out: tuple) -> None:
    """Save a criterion's pruned population [S, 1, P] (with save_pruned), evaluate it and commit its rows (the
    part file's atomic rename marks the unit done)."""
    variables, masks, hist = out
    key = L.unit_key(ctx.spec.name, criterion, ctx.block)
    if ctx.config.save_pruned:
        checkpoints.save(ctx.checkpoints, L.pruned_checkpoint(ctx.spec.name, criterion, ctx.block),
                         {"variables": variables, "masks": masks})
    with ctx.workdir.stage_timer(f"evaluate.{key}"):
        rows = evaluate_rows(ctx, variables, masks, criteria=[criterion], requested=sparsities[None, None, :],
                             levels=range(len(sparsities)), loss=hist["loss"])
    append_rows(ctx, key, rows)


# ------------------------------------------------------------------------------------------------ units

def committed(ctx: Context, key: str) -> Callable[[], bool]:
    """Whether the recall-table part ``key`` is committed (a unit's ``done``)."""
    return lambda: ctx.workdir.has(L.RECALL, key)


@protocol("one_shot", validate=lambda c: checks.check_sparsities(tuple(c.prune.sparsities)))
def one_shot_units(ctx: Context, dense: Callable[[], Any]) -> Iterator[Unit]:
    """One unit per criterion: prune every seed to every sparsity, fine-tune S×P models at once, evaluate."""
    config, spec = ctx.config, ctx.spec
    sparsities = np.asarray(config.prune.sparsities, np.float64)
    n_models = len(ctx.seeds) * len(sparsities)
    for criterion in config.prune.criteria:
        key = L.unit_key(spec.name, criterion, ctx.block)

        def compute(criterion=criterion, key=key):
            with ctx.workdir.stage_timer(f"prune.{key}"), ctx.progress.training(
                    f"one-shot {key}", n_models, int(config.finetune.epochs)) as bar:
                return protocols.one_shot(spec, config.finetune, dense()[0], [criterion], sparsities, ctx.keys,
                                          *train_data(ctx), chunk=chunk_of(config.finetune),
                                          progress=ctx.progress.epochs(bar), **protocol_kwargs(ctx))

        yield Unit(key, "prune", committed(ctx, key), compute,
                   lambda out, criterion=criterion: grid_commit(ctx, criterion, sparsities, out))


def _check_gmp(config: Any) -> None:
    checks.check_sparsities(tuple(config.prune.sparsities))
    checks.integer(config, "prune.gmp.every", 1)
    checks.check_gmp(config, "finetune" if bool(config.prune.gmp.post_training) else "train")


@protocol("gmp", validate=_check_gmp)
def gmp_units(ctx: Context, dense: Callable[[], Any]) -> Iterator[Unit]:
    """One unit per criterion: gradual (cubic) pruning to every final sparsity, post-training from the dense
    models with the fine-tuning section (paper 2), or during training from initialisation."""
    config, spec = ctx.config, ctx.spec
    g = config.prune.gmp
    post = bool(g.post_training)
    tcfg = config.finetune if post else config.train
    epochs = int(tcfg.epochs)
    end = schema.gmp_end(int(g.end), int(g.start), epochs)
    sparsities = np.asarray(config.prune.sparsities, np.float64)
    n_models = len(ctx.seeds) * len(sparsities)
    for criterion in config.prune.criteria:
        key = L.unit_key(spec.name, criterion, ctx.block)

        def compute(criterion=criterion, key=key):
            with ctx.workdir.stage_timer(f"prune.{key}"), ctx.progress.training(f"gmp {key}", n_models,
                                                                                 epochs) as bar:
                return protocols.gmp(spec, tcfg, ctx.keys, *train_data(ctx), [criterion], sparsities,
                                     start=int(g.start), end=end, every=int(g.every), initial=float(g.initial),
                                     init_variables=dense()[0] if post else None, chunk=chunk_of(tcfg),
                                     progress=ctx.progress.epochs(bar), **protocol_kwargs(ctx))

        yield Unit(key, "prune", committed(ctx, key), compute,
                   lambda out, criterion=criterion: grid_commit(ctx, criterion, sparsities, out))


def _check_iterative(config: Any) -> None:
    checks.integer(config, "prune.levels", 1)
    if not 0.0 < float(config.prune.fraction) < 1.0:
        checks.fail("prune.fraction", f"{config.prune.fraction} outside (0, 1)")
    checks.integer(config, "prune.rewind_step", 0)


def _iter_state_like(spec, keys, m: int):
    one = jax.eval_shape(lambda k: train.init_population(spec, k), keys)
    sm = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0], m, *x.shape[1:]), x.dtype), one)
    mask = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bool_), sm["params"])
    return {"variables": sm, "masks": mask, "rewind": one}


@protocol("iterative", validate=_check_iterative, rewind_step=lambda c: int(c.prune.rewind_step))
def iterative_units(ctx: Context, dense: Callable[[], Any]) -> Iterator[Unit]:
    """One unit per level (all criteria together): score, prune 20% of the remaining weights, rewind, retrain.

    Each level's state is checkpointed (only the latest is kept) and is where the next level starts."""
    config, spec = ctx.config, ctx.spec
    criteria = list(config.prune.criteria)
    model, block = spec.name, ctx.block
    n_models = len(ctx.seeds) * len(criteria)
    memo = f"iterative/{model}/{block}"
    kw = dict(fraction=float(config.prune.fraction), rewind_step=int(config.prune.rewind_step),
              chunk=chunk_of(config.train), **protocol_kwargs(ctx))

    def state_before(level: int) -> protocols.IterativeState:
        held = ctx.memo.get(memo)
        if held is not None and held.level == level - 1:
            return held
        if level == 1:
            gen = protocols.iterative(spec, config.train, ctx.keys, *train_data(ctx), criteria, 0, dense=dense(), **kw)
            return next(gen).state
        name = L.iterative_checkpoint(model, level - 1, block)
        if not checkpoints.exists(ctx.checkpoints, name):
            raise ValueError(f"{ctx.workdir.path}: level {level - 1} of {model} is done but its checkpoint {name} "
                             f"is missing, so level {level} cannot start; rerun with --fresh")
        saved = checkpoints.restore(ctx.checkpoints, name, like=_iter_state_like(spec, ctx.keys, len(criteria)))
        return protocols.IterativeState(level - 1, saved["variables"], saved["masks"], saved["rewind"])

    for level in range(1, int(config.prune.levels) + 1):
        key = L.unit_key(model, L.level_name(level), block)

        def compute(level=level, key=key):
            state = state_before(level)
            with ctx.workdir.stage_timer(f"prune.{key}"), ctx.progress.training(
                    f"iterative {key}", n_models, int(config.train.epochs)) as bar:
                return next(protocols.iterative(spec, config.train, ctx.keys, *train_data(ctx), criteria, level,
                                                resume=state, progress=ctx.progress.epochs(bar), **kw))

        def commit(result, level=level, key=key):
            st = result.state
            checkpoints.save(ctx.checkpoints, L.iterative_checkpoint(model, level, block),
                             {"variables": st.variables, "masks": st.masks, "rewind": st.rewind})
            with ctx.workdir.stage_timer(f"evaluate.{key}"):
                masks4 = jax.tree.map(lambda x: x[:, :, None], result.masks)
                vars4 = jax.tree.map(lambda x: x[:, :, None], result.variables)
                rows = evaluate_rows(ctx, vars4, masks4, criteria=criteria, requested=np.full((1, 1, 1),
                                                                                              result.sparsity),
                                     levels=[level], loss=np.asarray(result.history["loss"])[:, :, None])
            append_rows(ctx, key, rows)
            ctx.memo[memo] = st
            if level > 1:  # only the latest level's state is needed to resume; keep disk bounded
                shutil.rmtree(ctx.checkpoints / L.iterative_checkpoint(model, level - 1, block), ignore_errors=True)

        yield Unit(key, "prune", committed(ctx, key), compute, commit)
    ctx.memo.pop(memo, None)
