"""The bias study (paper 2, Iofinova et al. CVPR 2023; docs/methods.md §9–10) as units of the runner
(`studies.runner`); its workdir layout is `studies.bias_layout`, its report `report.bias` (built by the caller).

Units (each commits its own results, so a killed run resumes where it stopped):

1. data      (prepare) planted multi-label MNIST / Fashion-MNIST (`fairprune_jax.planted`) or CelebA through TFDS
             (40 attributes, protected Male/Young/Chubby/Pale_Skin, official train/validation/test partition).
2. dense     S seeds trained at once (`train.fit`, sigmoid head, BCE)      -> checkpoints/dense, train_history
3. prune     per sparsity of the grid (all seeds at that sparsity): a registered protocol (`protocol`): GMP
             post-training (cubic schedule, one pruning step per fine-tuning epoch, Adam 1e-4 by default) or one-shot
             + fine-tuning, with the configured criterion              -> checkpoints/sparse-sparsity=<s>, prune
4. predict   validation and test logits of every population               -> artifacts/logits/<key>.npz
5. evaluate  per population: every §6 metric per seed × attribute at τ = 0 and at calibrated thresholds (global,
             and per protected group = the countermeasure); per sparsity: CIEs of the pruned population vs the
             dense one, the dense susceptibility criteria scored against them (with a random baseline),
             attenuation, and the attribute-level regression              -> metrics, cies, identification, ...

A workdir holds one model and one criterion (``models`` and ``prune.criteria`` are lists of one).

Key purposes: seed s of the population uses ``jax.random.key(config.seed + s)``; dense init/data order via
`train.purpose_key`; fine-tuning data order from ``purpose_key(k, "finetune_data")`` (the same for every sparsity,
so the populations are paired); random scores from ``purpose_key(k, "random_scores")`` folded with the pruning step.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from fairprune_jax import checkpoints, deprecation, evaluate, multihost, protocols, schedules, train
from fairprune_jax import data as data_lib
from fairprune_jax import masks as masks_lib
from fairprune_jax import models as models_lib
from fairprune_jax.analysis.bias_tables import evaluate_sparse, population_metrics, tag_population
from fairprune_jax.results import load_npz, save_npz, verified_file
from fairprune_jax.studies import bias_layout as L
from fairprune_jax.studies import checks, runner, schema, spine
from fairprune_jax.studies.bias_config import validate_config
from fairprune_jax.studies.bias_data import PLANTED_SOURCE, StudyData, load_study_data
from fairprune_jax.studies.layout import Registry
from fairprune_jax.studies.runner import Context, Unit

PyTree = Any

# the names writer and readers share live in bias_layout
TABLES, EVAL_TABLES, DENSE_KEY, sparsity_key = L.TABLES, L.EVAL_TABLES, L.DENSE_KEY, L.sparsity_key


def resolve_workdir(cfg: Any, override: str | os.PathLike | None = None) -> pathlib.Path:
    """``override``, else the spine's default (``config.workdir`` or ``workdirs/<dataset>[-<variant>]``)."""
    return pathlib.Path(os.fspath(override)).expanduser() if override else spine.default_workdir(cfg)


def make_spec(cfg: Any, data: StudyData) -> models_lib.ModelSpec:
    """The configured model with a sigmoid head of ``len(data.names)`` outputs."""
    return models_lib.get_model(cfg.models[0], num_outputs=len(data.names), input_shape=data.input_shape,
                                multilabel=True)


def population_keys(cfg: Any) -> jax.Array:
    """Typed keys [S]: ``jax.random.key(seed + s)``."""
    return train.seed_keys(np.arange(int(cfg.num_seeds)) + int(cfg.seed))


# ================================================================================================================
# checkpoints (orbax, through `fairprune_jax.checkpoints`: a checkpoint exists completely or not at all)
# ================================================================================================================
def _mask_like(spec: models_lib.ModelSpec, n: int) -> PyTree:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bool_), spine.population_like(spec, n)["params"])


def sparse_like(spec: models_lib.ModelSpec, n: int) -> PyTree:
    """Abstract tree of a pruned-population checkpoint: {"variables": [n, ...], "masks": [n, ...] bool}."""
    return {"variables": spine.population_like(spec, n), "masks": _mask_like(spec, n)}


def checkpoint_dir(wd: Any, name: str) -> pathlib.Path:
    """Where checkpoint ``name`` of a workdir is: ``<workdir>/checkpoints``, or ``artifacts/ckpt`` for a workdir of
    an earlier version that holds it there."""
    legacy = wd.path.joinpath(*L.LEGACY_CHECKPOINTS)
    return legacy if (legacy / name).is_dir() else wd.path / L.CHECKPOINTS


# ================================================================================================================
# training and pruning
# ================================================================================================================
def train_dense(spec: models_lib.ModelSpec, cfg: Any, data: StudyData, *,
                progress: Callable[[dict], None] | None = None) -> tuple[PyTree, np.ndarray]:
    """Dense population [S, ...] and per-epoch losses [S, E]."""
    variables, hist = train.fit(spec, cfg.train, population_keys(cfg), data.x_train, data.y_train,
                                chunk=int(cfg.train.chunk) or None, progress=progress, mesh=spine.mesh_of(cfg))
    return variables, np.asarray(hist["loss"])


@functools.lru_cache(maxsize=32)
def _compiled_sparsity(spec: models_lib.ModelSpec, exclude_output: bool) -> Callable:
    prunable = spec.prunable(exclude_output)
    return jax.jit(jax.vmap(lambda m: masks_lib.sparsity(m, prunable)))


def gmp_window(cfg: Any) -> tuple[int, int, int]:
    """(start, end, every) of post-training GMP over the fine-tuning epochs; ``end = 0`` in the config means
    ``finetune.epochs − 1`` (`schema.gmp_end`), so the last epoch trains at the final sparsity."""
    g = cfg.prune.gmp
    start, every = int(g.start), int(g.every)
    return start, schema.gmp_end(int(g.end), start, int(cfg.finetune.epochs)), every


def gmp_plan(cfg: Any, final: float) -> dict[int, float]:
    """Fine-tuning epoch → target sparsity of that pruning step (cubic GMP; the last step is exactly ``final``)."""
    start, end, every = gmp_window(cfg)
    initial = min(float(cfg.prune.gmp.initial), float(final))
    return {e: float(schedules.gmp_sparsity(e, final=float(final), initial=initial, start=start, end=end,
                                            every=every))
            for e in schedules.gmp_steps(start, end, every)}


PruneFn = Callable[..., tuple[PyTree, PyTree, dict]]
PROTOCOLS: Registry[PruneFn] = Registry("protocol")


def protocol(name: str) -> Callable[[PruneFn], PruneFn]:
    """Decorator registering how protocol ``name`` prunes the dense population to one sparsity:
    ``fn(spec, cfg, data, dense, sparsity, keys, criterion, **common) -> (variables, masks, history)`` with trees
    [S, 1, 1, ...] (`fairprune_jax.protocols`' layout) and ``history["loss"]`` [S, 1, 1, E]. Its words for the
    report are a `bias_layout.ProtocolLayout` of the same name."""
    L.PROTOCOLS[name]  # a protocol's layout comes first (ValueError naming the known ones)

    def add(fn: PruneFn) -> PruneFn:
        return PROTOCOLS.add(name, fn)

    return add


@protocol("one_shot")
def _one_shot(spec, cfg, data, dense, sparsity, keys, criterion, **common):
    return protocols.one_shot(spec, cfg.finetune, dense, (criterion,), (float(sparsity),), keys, data.x_train,
                              data.y_train, **common)


@protocol("gmp")
def _gmp(spec, cfg, data, dense, sparsity, keys, criterion, **common):
    start, end, every = gmp_window(cfg)
    return protocols.gmp(spec, cfg.finetune, keys, data.x_train, data.y_train, (criterion,), (float(sparsity),),
                         start=start, end=end, every=every, initial=min(float(cfg.prune.gmp.initial), float(sparsity)),
                         init_variables=dense, **common)


def prune_population(spec: models_lib.ModelSpec, cfg: Any, data: StudyData, dense: PyTree, sparsity: float, *,
                     progress: Callable[[dict], None] | None = None,
                     ) -> tuple[PyTree, PyTree, np.ndarray, np.ndarray]:
    """Prune the dense population to ``sparsity`` with the configured protocol and criterion.

    Returns (variables [S, ...], masks [S, ...], fine-tuning losses [S, E], realised sparsity [S]).
    """
    excl = bool(cfg.exclude_output)
    common = dict(exclude_output=excl, lam=float(cfg.prune.lambda_up), chunk=int(cfg.finetune.chunk) or None,
                  progress=progress, mesh=spine.mesh_of(cfg), grad_batch=int(cfg.prune.grad_batch))
    variables, mask, hist = PROTOCOLS[cfg.prune.protocol](spec, cfg, data, dense, sparsity, population_keys(cfg),
                                                          str(cfg.prune.criteria[0]), **common)
    first = lambda t: jax.tree.map(lambda x: x[:, 0, 0], t)  # noqa: E731  [S, M=1, P=1, ...] -> [S, ...]
    variables, mask = first(variables), first(mask)
    realised = np.asarray(_compiled_sparsity(spec, excl)(mask))
    return variables, mask, np.asarray(hist["loss"])[:, 0, 0], realised


def predict_logits(spec: models_lib.ModelSpec, variables: PyTree, images: jax.Array, cfg: Any) -> np.ndarray:
    """float32 logits [S, N, A] on the host, through `evaluate.population_logits` (chunked, mesh-aware)."""
    return evaluate.population_logits(spec, variables, images, chunk=int(cfg.eval.chunk),
                                      batch_size=int(cfg.eval.batch_size), mesh=spine.mesh_of(cfg))


# ================================================================================================================
# the run
# ================================================================================================================
def prepare(cfg: Any, path: pathlib.Path) -> StudyData:
    """Load the data and check what depends on it (batch sizes), before the workdir is opened."""
    data = spine.load_guard(lambda: load_study_data(cfg), data_lib.tfds_dir(cfg.data.tfds_dir or None),
                            PLANTED_SOURCE.get(cfg.dataset, cfg.dataset))
    checks.check_batch_sizes(cfg, int(data.x_train.shape[0]), L.PROTOCOLS[cfg.prune.protocol].sections)
    return data


def start(ctx: Context) -> None:
    """Say what runs and record what the report needs of the data (meta.json)."""
    cfg, data = ctx.config, ctx.data
    sparsities = [float(s) for s in cfg.prune.sparsities]
    ctx.log(f"bias study: {cfg.dataset} / {cfg.models[0]} / {cfg.num_seeds} seeds / {cfg.prune.protocol} "
            f"{cfg.prune.criteria[0]} at {sparsities} -> {ctx.workdir.path}")
    if int(cfg.num_seeds) % 2 == 0:
        ctx.log(f"warning: {cfg.num_seeds} seeds (even): modal predictions can tie (ties go to 1); use an odd count")
    ctx.workdir.write_json(L.META_FILE, {"names": list(data.names), "protected": list(data.protected),
                                         "input_shape": list(data.input_shape), **data.meta})
    ctx.log(f"data: {data.meta['n_train']} train / {data.meta['n_val']} val / {data.meta['n_test']} test, "
            f"{len(data.names)} attributes, protected {list(data.protected)}; {spine.devices_line(cfg)}")


def _has_logits(ctx: Context, key: str) -> bool:
    """Whether population ``key``'s logits are stored and verified (a corrupt file is moved aside; in a
    multi-host run: process 0's answer)."""
    return multihost.agree(multihost.is_primary() and verified_file(ctx.workdir.path_for(L.logits_artifact(key))))


def _load_logits(ctx: Context, key: str) -> dict:
    z = load_npz(ctx.workdir.path_for(L.logits_artifact(key)), root=ctx.workdir.path)  # checksum-verified
    return {"val": z["val"], "test": z["test"]}


def _save_logits(ctx: Context, key: str, variables: PyTree) -> None:
    arrays = {"val": predict_logits(ctx.spec, variables, ctx.data.x_val, ctx.config),
              "test": predict_logits(ctx.spec, variables, ctx.data.x_test, ctx.config)}
    if multihost.is_primary():
        save_npz(ctx.workdir.path_for(L.logits_artifact(key)), arrays)  # with its .sha256
    multihost.barrier(f"logits:{key}")  # the others read them next


def _dense(ctx: Context) -> PyTree:
    """The dense population: kept from training, else restored from its checkpoint."""
    n = int(ctx.config.num_seeds)
    return ctx.remember("dense", lambda: checkpoints.restore(checkpoint_dir(ctx.workdir, L.DENSE_CHECKPOINT),
                                                             L.DENSE_CHECKPOINT,
                                                             like=spine.population_like(ctx.spec, n)))


def _dense_units(ctx: Context, keys: list[str]) -> Iterator[Unit]:
    """Train the dense population (unless checkpointed, or no population needs it), predict and evaluate it."""
    cfg, wd, spec = ctx.config, ctx.workdir, ctx.spec
    n_seeds, epochs = int(cfg.num_seeds), int(cfg.train.epochs)

    def done() -> bool:
        return (checkpoints.exists(checkpoint_dir(wd, L.DENSE_CHECKPOINT), L.DENSE_CHECKPOINT)
                or all(_has_logits(ctx, k) for k in keys))

    def compute():
        with wd.stage_timer("dense"), ctx.progress.training(f"dense {spec.name}", n_seeds, epochs) as bar:
            variables, losses = train_dense(spec, cfg, ctx.data, progress=ctx.progress.epochs(bar))
            spine.check_dense(spine.guard(cfg, spec, variables, losses, 1), list(range(int(cfg.seed), int(cfg.seed)
                                                                                       + n_seeds)), spec.name)
        return variables, losses

    def commit(out) -> None:
        variables, losses = out
        hist = pd.DataFrame([{"seed": s, "epoch": e, "loss": float(losses[s, e])}
                             for s in range(losses.shape[0]) for e in range(losses.shape[1])])
        wd.append_table("train_history", "dense", hist, overwrite=True)
        checkpoints.save(wd.path / L.CHECKPOINTS, L.DENSE_CHECKPOINT, variables)  # the checkpoint commits the unit
        ctx.memo["dense"] = variables
        ctx.log(f"dense: trained {n_seeds} seeds × {epochs} epochs, final loss {float(losses[:, -1].mean()):.4f}")

    yield Unit("dense", "dense", done, compute, commit)

    def predict() -> None:
        with wd.stage_timer("predict"):
            _save_logits(ctx, "dense", _dense(ctx))

    yield Unit("predict:dense", "predict", lambda: _has_logits(ctx, "dense"), predict)

    def metrics() -> pd.DataFrame:
        with wd.stage_timer("evaluate"):
            lg = _load_logits(ctx, "dense")
            m = population_metrics(lg["val"], lg["test"], ctx.data, r2_constant=str(cfg.eval.r2_constant))
            return tag_population(m, "dense", 0.0)

    yield Unit("evaluate:dense", "evaluate", lambda: wd.has("metrics", DENSE_KEY), metrics,
               lambda m: wd.append_table("metrics", DENSE_KEY, m))


def _diverged_seeds(ctx: Context, key: str) -> np.ndarray:
    """bool [S]: seeds of the unit recorded as diverged (older workdirs have no column: none)."""
    wd = ctx.workdir
    p = wd.read_part("prune", key) if wd.has("prune", key) else pd.DataFrame()
    out = np.zeros(int(ctx.config.num_seeds), bool)
    if len(p) and "diverged" in p:
        out[p["seed"].to_numpy(int)] = p["diverged"].to_numpy(bool)
    return out


def _sparsity_units(ctx: Context, s: float) -> Iterator[Unit]:
    """Prune to ``s`` (or restore), predict, evaluate (metrics part last: it marks the population evaluated)."""
    cfg, wd, spec = ctx.config, ctx.workdir, ctx.spec
    key, n_seeds = sparsity_key(s), int(cfg.num_seeds)
    ck = L.sparse_checkpoint(key)
    held = f"sparse/{key}"

    def pruned_done() -> bool:
        # the prune part records which seeds diverged: without it the unit is redone
        return (_has_logits(ctx, key) or checkpoints.exists(checkpoint_dir(wd, ck), ck)) and wd.has("prune", key)

    def prune() -> tuple:
        dense = _dense(ctx)
        with wd.stage_timer("prune"), ctx.progress.training(f"{cfg.prune.protocol} {key}", n_seeds,
                                                            int(cfg.finetune.epochs)) as bar:
            t0 = time.perf_counter()
            out = prune_population(spec, cfg, ctx.data, dense, s, progress=ctx.progress.epochs(bar))
        return (*out, time.perf_counter() - t0)

    def commit_prune(out: tuple) -> None:
        variables, mask, losses, realised, seconds = out
        verdict = spine.guard(cfg, spec, variables, losses, 1)
        rows = [{"seed": i, "target": s, "realised": float(realised[i]),
                 "final_loss": float(losses[i, -1]) if losses.shape[1] else float("nan"),
                 "seconds": seconds, "diverged": bool(verdict.diverged[i]),
                 "diverged_epoch": int(verdict.epoch[i])} for i in range(len(realised))]
        wd.append_table("prune", key, tag_population(pd.DataFrame(rows), "sparse", s), overwrite=True)
        checkpoints.save(wd.path / L.CHECKPOINTS, ck, {"variables": variables, "masks": mask})  # commits the unit
        ctx.memo[held] = variables
        if verdict.diverged.any():
            ctx.log(f"warning: sparsity {s}: seeds {np.flatnonzero(verdict.diverged).tolist()} diverged "
                    "(non-finite or exploding loss); excluded from the statistics")

    yield Unit(f"prune:{key}", "prune", pruned_done, prune, commit_prune)

    def predict() -> None:
        variables = ctx.memo.pop(held, None)
        if variables is None:
            variables = checkpoints.restore(checkpoint_dir(wd, ck), ck, like=sparse_like(spec, n_seeds))["variables"]
        with wd.stage_timer("predict"):
            _save_logits(ctx, key, variables)

    yield Unit(f"predict:{key}", "predict", lambda: _has_logits(ctx, key), predict)

    def evaluate_unit() -> dict:
        with wd.stage_timer("evaluate"):
            return _evaluate(ctx, s, key)

    def commit_eval(tables: dict) -> None:
        for t in EVAL_TABLES:
            if t != "metrics" and not wd.has(t, key):
                wd.append_table(t, key, tables[t])
        if not wd.has("metrics", key):
            wd.append_table("metrics", key, tables["metrics"])

    yield Unit(f"evaluate:{key}", "evaluate", lambda: all(wd.has(t, key) for t in EVAL_TABLES), evaluate_unit,
               commit_eval)


def _evaluate(ctx: Context, s: float, key: str) -> dict:
    """Every evaluation table of sparsity ``s`` over the seeds that did not diverge."""
    wd, n_seeds = ctx.workdir, int(ctx.config.num_seeds)
    dense_m = wd.read_part("metrics", DENSE_KEY)
    dense_m = dense_m[dense_m["population"] == "dense"].drop(columns=["population", "sparsity"])
    keep = np.flatnonzero(~_diverged_seeds(ctx, key))
    dl, sl = _load_logits(ctx, "dense"), _load_logits(ctx, key)
    if len(keep) == 0:
        return {t: pd.DataFrame() for t in EVAL_TABLES}
    if len(keep) < n_seeds:
        pick = lambda lg: {k: v[keep] for k, v in lg.items()}  # noqa: E731
        renumber = dict(enumerate(keep))
        dense_m = dense_m[dense_m["seed"].isin(keep)].assign(seed=lambda f: f["seed"].map(
            {v: k for k, v in renumber.items()}))
        tables = evaluate_sparse(pick(dl), pick(sl), dense_m, ctx.data, s, ctx.config)
        return {t: f.assign(seed=f["seed"].map(renumber)) if "seed" in f else f for t, f in tables.items()}
    return evaluate_sparse(dl, sl, dense_m, ctx.data, s, ctx.config)


def units(ctx: Context) -> Iterator[Unit]:
    """The dense units, then prune / predict / evaluate per sparsity of the grid."""
    ctx = dataclasses.replace(ctx, spec=make_spec(ctx.config, ctx.data), seeds=tuple(
        range(int(ctx.config.seed), int(ctx.config.seed) + int(ctx.config.num_seeds))))
    sparsities = [float(s) for s in ctx.config.prune.sparsities]
    yield from _dense_units(ctx, ["dense"] + [sparsity_key(s) for s in sparsities])
    for s in sparsities:
        yield from _sparsity_units(ctx, s)


STUDY = runner.register(runner.Study("bias", validate_config, prepare, units, start, tables=TABLES))
IGNORED_FIELDS = STUDY.ignore


def __getattr__(name: str) -> Any:
    """``run`` (study and report in one call) moved to `fairprune_jax.pipeline.run`; ``RunSummary`` is
    `runner.RunSummary`. The old names warn once."""
    if name == "run":
        from fairprune_jax import pipeline  # deferred on purpose: a deprecated alias of a module above this one

        def run(cfg: Any, *, workdir: Any = None, fresh: bool = False, report: bool = True,
                echo: Callable[[str], None] | None = None) -> runner.RunSummary:
            deprecation.warn_once("studies.bias.run", "fairprune_jax.studies.bias.run moved to "
                                  "fairprune_jax.pipeline.run")
            return pipeline.run(cfg, workdir=workdir, fresh=fresh, report=report, log=echo, study="bias")

        return run
    if name == "RunSummary":
        return runner.RunSummary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
