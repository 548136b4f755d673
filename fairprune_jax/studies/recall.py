"""The recall-distortion study as a resumable pipeline (docs/methods.md §4–8); `experiments/sweep.py` is its thin `main`.

Stages, each a unit of work whose result is committed atomically to the workdir (so a killed run resumes):

    data     load the split(s) once (offline TFDS route for MNIST/Fashion-MNIST), optional imbalance
    dense    train S seeds of every model in one vmapped program          -> checkpoint  dense/<model>
             evaluate them                                                 -> recall part <model>.dense
    prune    per model × criterion: one-shot + fine-tune over all sparsities (S×P models, one program),
             or per model × level: iterative pruning with rewinding (S×M models), or GMP per criterion
             evaluate every pruned model                                  -> recall part <model>.<unit>
    analysis α_t per network, E[α_t] per cell (Tier A/B), pooled cluster OLS (Tier C), Welch tests
    report   report.md + PNG plots                                         (`experiments.report` rebuilds it)

Seeds: model s of a population uses `jax.random.key(config.seed + s)`; dense models are shared across criteria
(paired design, docs/methods.md §6), and pruned models are compared with the dense model of the same seed.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from fairprune_jax import data as data_lib
from fairprune_jax import models as models_lib
from fairprune_jax import multihost
from fairprune_jax.studies import budget, spine

PROTOCOLS = ("one_shot", "iterative", "gmp", "budget")
RECALL_TABLE = "recall"


# ------------------------------------------------------------------------------------------------ validation

def validate_config(config: ml_collections.ConfigDict) -> None:
    """Refuse bad values at the boundary, naming the offending field."""
    from fairprune_jax import scores
    from fairprune_jax.train import AUGMENTATIONS

    fail = spine.fail
    if config.dataset not in data_lib.DATASETS:
        fail("dataset", f"unknown dataset {config.dataset!r}; known: {', '.join(sorted(data_lib.DATASETS))}")
    if data_lib.DATASETS[config.dataset].multilabel:
        fail("dataset", f"{config.dataset!r} is multi-label; the recall study needs classes "
                        "(use experiments.bias for attributes)")
    if not config.models:
        fail("models", "empty; give at least one model name")
    for m in config.models:
        if m not in models_lib.available():
            fail("models", f"unknown model {m!r}; known: {', '.join(models_lib.available())}")
    if int(config.num_seeds) < 1:
        fail("num_seeds", f"{config.num_seeds} seeds; need at least 1 (5 or more for intervals worth reading)")
    if config.prune.protocol not in PROTOCOLS:
        fail("prune.protocol", f"unknown protocol {config.prune.protocol!r}; known: {', '.join(PROTOCOLS)}")
    if not config.prune.criteria:
        fail("prune.criteria", "empty; give at least one criterion")
    for c in config.prune.criteria:
        if c not in scores.CRITERIA:
            fail("prune.criteria", f"unknown criterion {c!r}; known: {', '.join(scores.CRITERIA)}")
    if len(set(config.prune.criteria)) != len(config.prune.criteria):
        fail("prune.criteria", f"duplicates in {tuple(config.prune.criteria)}")
    if config.prune.protocol in ("one_shot", "gmp", "budget"):
        spine.check_sparsities(tuple(config.prune.sparsities))
        if config.prune.protocol == "budget":
            budget.validate(config)
    else:
        if int(config.prune.levels) < 1:
            fail("prune.levels", f"{config.prune.levels}; need at least 1 level")
        if not 0.0 < float(config.prune.fraction) < 1.0:
            fail("prune.fraction", f"{config.prune.fraction} outside (0, 1)")
    if float(config.prune.lambda_up) < 0:
        fail("prune.lambda_up", f"{config.prune.lambda_up} is negative")
    gmp_post = config.prune.protocol == "gmp" and bool(config.prune.gmp.post_training)
    spine.check_training(config, "train", min_epochs=1)
    spine.check_training(config, "finetune", min_epochs=1 if gmp_post else 0)
    for section in ("train", "finetune"):
        if config[section].augment not in AUGMENTATIONS:
            fail(f"{section}.augment", f"unknown augmentation {config[section].augment!r}; "
                                       f"known: {', '.join(AUGMENTATIONS)}")
    _check_imbalance(config.data.imbalance, data_lib.DATASETS[config.dataset].num_classes)
    if int(config.data.max_train_examples) < 0:
        fail("data.max_train_examples", f"{config.data.max_train_examples} is negative (0 = the whole split)")
    if config.data.route not in ("auto", "offline", "tfds"):
        fail("data.route", f"unknown route {config.data.route!r}; use auto, offline or tfds")
    if config.data.source_dir and not Path(config.data.source_dir).expanduser().is_dir():
        fail("data.source_dir", f"folder {config.data.source_dir} does not exist")
    if int(config.eval.chunk) < 1:
        fail("eval.chunk", f"{config.eval.chunk}; need at least 1")


def _check_imbalance(imb: Any, num_classes: int) -> None:
    """Classes are distinct indices of the dataset, each with a kept fraction in (0, 1]."""
    if len(imb.classes) != len(imb.fractions):
        spine.fail("data.imbalance", f"{len(imb.classes)} classes but {len(imb.fractions)} fractions")
    for c in imb.classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes:
            spine.fail("data.imbalance.classes", f"{c!r} is not a class index in [0, {num_classes})")
    if len(set(imb.classes)) != len(imb.classes):
        spine.fail("data.imbalance.classes", f"duplicates in {tuple(imb.classes)}")
    for f in imb.fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < float(f) <= 1.0:
            spine.fail("data.imbalance.fractions", f"{f!r} outside (0, 1] (the kept fraction of a class)")


# ------------------------------------------------------------------------------------------------------ data

@dataclasses.dataclass(frozen=True)
class StudyData:
    """Device arrays of the study and the per-class training counts (after any imbalance)."""

    train: data_lib.DeviceSplit
    test: data_lib.DeviceSplit
    num_classes: int
    train_counts: pd.DataFrame
    input_shape: tuple[int, ...]


def load_data(config: ml_collections.ConfigDict) -> StudyData:
    """Load train/test once, apply the imbalance and the training-size cap, and place them on the device."""
    ds = data_lib.info(config.dataset)
    kw = dict(source_dir=config.data.source_dir or None, tfds_dir_=config.data.tfds_dir or None,
              route=config.data.route, download=bool(config.data.download),
              image_size=tuple(config.data.image_size) if any(config.data.image_size) else None,
              mirror=config.data.mirror or None)  # idx files absent locally are downloaded
    train = data_lib.load_split(config.dataset, "train", **kw)
    test = data_lib.load_split(config.dataset, "test", **kw)
    k = ds.num_classes
    imb = config.data.imbalance
    if imb.classes:
        train, table = data_lib.subsample_classes(train, dict(zip(map(int, imb.classes), map(float, imb.fractions))),
                                                  key=jax.random.key(int(imb.seed)), num_classes=k)
    else:
        counts = data_lib.class_counts(train.labels, k)
        table = pd.DataFrame({"class": np.arange(k), "n_before": counts, "fraction": 1.0, "n_after": counts})
    cap = int(config.data.max_train_examples)
    if cap > 0:
        train = data_lib.Split(train.images[:cap], train.labels[:cap])
        table["n_after"] = data_lib.class_counts(train.labels, k)
    return StudyData(data_lib.to_device(train, ds, lazy=True), data_lib.to_device(test, ds), k, table,
                     tuple(train.images.shape[1:]))


# ------------------------------------------------------------------------------------------------ population

def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    """The integer seeds of the population: config.seed, config.seed + 1, ..."""
    return [int(config.seed) + s for s in range(int(config.num_seeds))]


def _ckpt_dir(wd) -> Path:
    return wd.path / "checkpoints"


def _actual_sparsity(spec, mask_tree: Any, exclude_output: bool, lead: int) -> np.ndarray:
    """Realised t of every model: fraction of eligible weights that are zero, read from the masks."""
    from fairprune_jax import masks as masks_lib

    fn = lambda m: masks_lib.sparsity(m, spec.prunable(exclude_output))  # noqa: E731
    for _ in range(lead):
        fn = jax.vmap(fn)
    return np.asarray(fn(mask_tree), np.float64)


def _evaluate_rows(config, spec, study: StudyData, variables, masks, *, criteria: Sequence[str],
                   requested: Any, levels: Sequence[int], exclude_output: bool, loss: Any = None) -> pd.DataFrame:
    """Evaluate a population [S, M, P] (variables may be [S] with masks [S, M, P]) and build its tidy rows.

    Divergence guard: a network whose parameters or training losses (``loss`` [S, M, P, E] when given) are
    non-finite gets ``diverged=True``, ``diverged_epoch`` (first non-finite epoch, -1 if only the parameters
    show it) and NaN recall / accuracy / confidence, so its argmax-of-NaN predictions never count as recall."""
    from fairprune_jax import evaluate

    res = evaluate.evaluate_population(spec, variables, study.test.images, study.test.labels, masks=masks,
                                       num_classes=study.num_classes, chunk=int(config.eval.chunk),
                                       batch_size=int(config.eval.batch_size), mesh=spine.mesh_of(config))
    counts = res.counts
    if counts.ndim == 3:  # dense [S, K, K]
        counts = counts[:, None, None]
    s, m, p = counts.shape[:3]
    actual = (np.zeros((s, m, p)) if masks is None
              else _actual_sparsity(spec, masks, exclude_output, 3).reshape(s, m, p))
    rows = evaluate.recall_table(
        counts, dataset=config.dataset, model=spec.name, criteria=list(criteria), seeds=seeds_of(config),
        requested_sparsity=np.broadcast_to(np.asarray(requested, np.float64), (s, m, p)), actual_sparsity=actual,
        levels=list(levels), mean_confidence=res.mean_confidence.reshape(s, m, p),
        frac_uncertain=res.frac_uncertain.reshape(s, m, p))
    lead = 1 if masks is None else 3
    d = spine.diverged_models(variables, lead)
    bad = np.broadcast_to(d[:, None, None] if lead == 1 else d.reshape(s, m, p), (s, m, p))
    epoch = (np.full((s, m, p), -1) if loss is None
             else np.broadcast_to(spine.first_bad_epoch(np.asarray(loss)), (s, m, p)))
    bad = bad | (epoch >= 0)
    k = study.num_classes
    rows["diverged"] = np.repeat(bad.ravel(), k)
    rows["diverged_epoch"] = np.repeat(epoch.ravel(), k).astype(np.int64)
    rows.loc[rows["diverged"], ["recall", "accuracy", "mean_confidence", "frac_uncertain"]] = np.nan
    return rows


def _protocol_kwargs(config) -> dict:
    """Keyword arguments every protocol call shares."""
    return dict(exclude_output=bool(config.exclude_output), lam=float(config.prune.lambda_up),
                grad_batch=int(config.prune.grad_batch), mesh=spine.mesh_of(config))


def train_dense(config, wd, spec, study: StudyData, keys: jax.Array, progress: spine.Progress):
    """Dense models of every seed: restored from the checkpoint, or trained in one vmapped program and saved."""
    from fairprune_jax import checkpoints, train

    name = f"dense-{spec.name}"
    like = jax.eval_shape(lambda k: train.init_population(spec, k), keys)
    capture = int(config.prune.rewind_step) if config.prune.protocol == "iterative" else 0
    if checkpoints.exists(_ckpt_dir(wd), name):
        saved = checkpoints.restore(_ckpt_dir(wd), name, like={"dense": like, "rewind": like})
        return saved["dense"], saved["rewind"]
    n = int(keys.shape[0])
    chunk = int(config.train.chunk) or None
    total = int(config.train.epochs) * spine.chunks(spec, n, chunk, config)
    with wd.stage_timer(f"dense.{spec.name}"), progress.bar(total, f"dense {spec.name} ×{n} seeds", "epoch") as bar:
        dense, hist = train.fit(spec, config.train, keys, study.train.images, study.train.labels, chunk=chunk,
                                progress=progress.epochs(bar), capture_step=capture or None,
                                mesh=spine.mesh_of(config))
        spine.check_dense(dense, np.asarray(hist["loss"]), seeds_of(config), spec.name)
    rewind = hist["snapshot"] if capture else train.init_population(spec, keys)
    checkpoints.save(_ckpt_dir(wd), name, {"dense": dense, "rewind": rewind})
    return dense, rewind


def _commit_grid_unit(config, wd, spec, study, criterion: str, sparsities: np.ndarray, variables, masks,
                      loss: Any) -> None:
    """Save a criterion's pruned population [S, 1, P] (optional), evaluate it, and commit its rows: the part
    file's atomic rename is what marks the unit done."""
    from fairprune_jax import checkpoints

    key = f"{spec.name}.{criterion}"
    if config.save_pruned:
        checkpoints.save(_ckpt_dir(wd), f"pruned-{spec.name}-{criterion}", {"variables": variables, "masks": masks})
    with wd.stage_timer(f"evaluate.{key}"):
        rows = _evaluate_rows(config, spec, study, variables, masks, criteria=[criterion],
                              requested=sparsities[None, None, :], levels=range(len(sparsities)),
                              exclude_output=bool(config.exclude_output), loss=loss)
    wd.append_table(RECALL_TABLE, key, rows)


def run_one_shot(config, wd, spec, study, keys, dense, progress: spine.Progress) -> None:
    """One unit per criterion: prune every seed to every sparsity, fine-tune S×P models at once, evaluate."""
    from fairprune_jax import protocols

    sparsities = np.asarray(config.prune.sparsities, np.float64)
    n_models = int(keys.shape[0]) * len(sparsities)
    chunk = int(config.finetune.chunk) or None
    for criterion in config.prune.criteria:
        key = f"{spec.name}.{criterion}"
        if wd.has(RECALL_TABLE, key):
            continue
        epochs = int(config.finetune.epochs) * spine.chunks(spec, n_models, chunk, config)
        with wd.stage_timer(f"prune.{key}"), progress.bar(epochs, f"one-shot {key} ×{n_models}", "epoch") as bar:
            variables, masks, hist = protocols.one_shot(
                spec, config.finetune, dense, [criterion], sparsities, keys, study.train.images,
                study.train.labels, chunk=chunk, progress=progress.epochs(bar), **_protocol_kwargs(config))
        _commit_grid_unit(config, wd, spec, study, criterion, sparsities, variables, masks, hist["loss"])


def run_gmp(config, wd, spec, study, keys, dense, progress: spine.Progress) -> None:
    """One unit per criterion: gradual (cubic) pruning to every final sparsity, post-training from the dense
    models with the fine-tuning optimiser (paper 2), or during training from initialisation."""
    from fairprune_jax import protocols

    g = config.prune.gmp
    post = bool(g.post_training)
    tcfg = config.finetune if post else config.train
    epochs = int(tcfg.epochs)
    end = int(g.end) or max(1, (3 * epochs) // 4)
    sparsities = np.asarray(config.prune.sparsities, np.float64)
    n_models = int(keys.shape[0]) * len(sparsities)
    chunk = int(tcfg.chunk) or None
    for criterion in config.prune.criteria:
        key = f"{spec.name}.{criterion}"
        if wd.has(RECALL_TABLE, key):
            continue
        with wd.stage_timer(f"prune.{key}"), progress.bar(
                epochs * spine.chunks(spec, n_models, chunk, config), f"gmp {key} ×{n_models}", "epoch") as bar:
            variables, masks, hist = protocols.gmp(
                spec, tcfg, keys, study.train.images, study.train.labels, [criterion], sparsities,
                start=int(g.start), end=end, every=int(g.every), initial=float(g.initial),
                init_variables=dense if post else None, chunk=chunk, progress=progress.epochs(bar),
                **_protocol_kwargs(config))
        _commit_grid_unit(config, wd, spec, study, criterion, sparsities, variables, masks, hist["loss"])


def run_iterative(config, wd, spec, study, keys, dense, rewind, progress: spine.Progress) -> None:
    """One unit per level (all criteria together): score, prune 20% of the remaining weights, rewind, retrain.

    After each level its state is checkpointed; a rerun resumes after the last level whose rows were written.
    """
    from fairprune_jax import checkpoints, protocols

    criteria = list(config.prune.criteria)
    levels = int(config.prune.levels)
    exclude = bool(config.exclude_output)
    done = [lvl for lvl in range(1, levels + 1) if wd.has(RECALL_TABLE, f"{spec.name}.L{lvl:02d}")]
    resume = None
    last = max([lvl for lvl in done if checkpoints.exists(_ckpt_dir(wd), f"iter-{spec.name}-L{lvl:02d}")],
               default=0)
    if last == levels:
        return
    if last:
        like = _iter_state_like(spec, keys, len(criteria))
        saved = checkpoints.restore(_ckpt_dir(wd), f"iter-{spec.name}-L{last:02d}", like=like)
        resume = protocols.IterativeState(last, saved["variables"], saved["masks"], saved["rewind"])
    n_models = int(keys.shape[0]) * len(criteria)
    chunk = int(config.train.chunk) or None
    per_level = int(config.train.epochs) * spine.chunks(spec, n_models, chunk, config)
    bar = progress.bar(per_level * (levels - last), f"iterative {spec.name} L{last + 1}-{levels} ×{n_models}",
                       "epoch")
    gen = protocols.iterative(spec, config.train, keys, study.train.images, study.train.labels, criteria, levels,
                              fraction=float(config.prune.fraction), rewind_step=int(config.prune.rewind_step),
                              chunk=chunk, progress=progress.epochs(bar), resume=resume, dense=(dense, rewind),
                              **_protocol_kwargs(config))
    t0 = time.perf_counter()
    with bar:
        for result in gen:
            if result.level == 0:
                continue
            key = f"{spec.name}.L{result.level:02d}"
            wd.record_timing(f"prune.{key}", time.perf_counter() - t0)
            st = result.state
            checkpoints.save(_ckpt_dir(wd), f"iter-{spec.name}-L{result.level:02d}",
                             {"variables": st.variables, "masks": st.masks, "rewind": st.rewind})
            t1 = time.perf_counter()
            masks4 = jax.tree.map(lambda x: x[:, :, None], result.masks)
            vars4 = jax.tree.map(lambda x: x[:, :, None], result.variables)
            rows = _evaluate_rows(config, spec, study, vars4, masks4, criteria=criteria,
                                  requested=np.full((1, 1, 1), result.sparsity), levels=[result.level],
                                  exclude_output=exclude, loss=np.asarray(result.history["loss"])[:, :, None])
            wd.append_table(RECALL_TABLE, key, rows)
            wd.record_timing(f"evaluate.{key}", time.perf_counter() - t1)
            # Only the latest level's state is needed to resume; keep disk bounded.
            if result.level > 1:
                prev = _ckpt_dir(wd) / f"iter-{spec.name}-L{result.level - 1:02d}"
                if prev.exists():
                    import shutil

                    shutil.rmtree(prev, ignore_errors=True)
            t0 = time.perf_counter()


def _iter_state_like(spec, keys, m: int):
    from fairprune_jax import train

    one = jax.eval_shape(lambda k: train.init_population(spec, k), keys)
    sm = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0], m, *x.shape[1:]), x.dtype), one)
    mask = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bool_), sm["params"])
    return {"variables": sm, "masks": mask, "rewind": one}


# ------------------------------------------------------------------------------------------------------ run

def unit_keys(config: Any) -> list[str]:
    """Keys of every unit of the recall table a finished run has (for the report's incomplete-run warning)."""
    per_model = ([f"L{lvl:02d}" for lvl in range(1, int(config.prune.levels) + 1)]
                 if config.prune.protocol == "iterative" else budget.unit_names(config)
                 if config.prune.protocol == "budget" else list(config.prune.criteria))
    return [f"{m}.{u}" for m in config.models for u in ("dense", *per_model)]


def _prepare(config: ml_collections.ConfigDict) -> StudyData:
    """Load the data and check what depends on it (batch sizes), before the workdir is claimed."""
    study = spine.load_guard(lambda: load_data(config), data_lib.tfds_dir(config.data.tfds_dir or None),
                             config.dataset)
    sections = ("train",) if config.prune.protocol == "iterative" else ("train", "finetune")
    spine.check_batch_sizes(config, int(study.train.images.shape[0]), sections)
    return study


def _run_model(config, wd, study: StudyData, model_name: str, keys: jax.Array, progress: spine.Progress,
               log: Callable[[str], None]) -> None:
    """Dense population, its rows, then every pruning unit of one model."""
    spec = models_lib.get_model(model_name, num_outputs=study.num_classes, input_shape=study.input_shape)
    dense, rewind = train_dense(config, wd, spec, study, keys, progress)
    key = f"{spec.name}.dense"
    if not wd.has(RECALL_TABLE, key):
        with wd.stage_timer(f"evaluate.{key}"):
            rows = _evaluate_rows(config, spec, study, dense, None, criteria=["dense"], requested=0.0,
                                  levels=[0], exclude_output=bool(config.exclude_output))
        wd.append_table(RECALL_TABLE, key, rows)
    if multihost.is_primary():  # the others need not see the workdir's files
        dense_acc = wd.read_table(RECALL_TABLE).query("criterion == 'dense' and model == @spec.name")
        log(f"dense {spec.name}: test accuracy {dense_acc.groupby('seed')['accuracy'].first().mean():.4f} "
            f"(mean of {config.num_seeds} seeds)")
    if config.prune.protocol == "one_shot":
        run_one_shot(config, wd, spec, study, keys, dense, progress)
    elif config.prune.protocol == "gmp":
        run_gmp(config, wd, spec, study, keys, dense, progress)
    elif config.prune.protocol == "budget":
        budget.run(config, wd, spec, study, keys, dense, progress, table=RECALL_TABLE, evaluate_rows=_evaluate_rows)
    else:
        run_iterative(config, wd, spec, study, keys, dense, rewind, progress)


def run(config: ml_collections.ConfigDict, *, workdir: str | Path, fresh: bool = False,
        log: Callable[[str], None] = print):
    """Run (or resume) the whole study into `workdir`; returns the Workdir. Idempotent: finished units are skipped.

    The config is validated and the data loaded (batch sizes checked against it) before the workdir is claimed;
    the workdir is locked for the whole run (`spine.claim`)."""
    from fairprune_jax import train
    from fairprune_jax.report import recall as report_lib

    validate_config(config)
    multihost.initialize(config.distributed)  # several processes (pods, launch.py); a no-op unless enabled
    if not multihost.is_primary():
        log = lambda text: None  # noqa: E731 - process 0 speaks for the run
    t_start = time.perf_counter()
    with spine.claim(workdir, config, fresh=fresh, ignore=IGNORED_FIELDS, log=log,
                     prepare=lambda: _prepare(config)) as (wd, study):
        wd.record_timing("data", time.perf_counter() - t_start)
        wd.write_text("train_class_counts.csv", study.train_counts.to_csv(index=False))
        log(f"data: {config.dataset} train {study.train.images.shape[0]} / test {study.test.images.shape[0]} "
            f"examples; {spine.devices_line(config)}")
        keys = train.seed_keys(seeds_of(config))
        progress = spine.Progress(bool(config.progress) and multihost.is_primary())
        for model_name in config.models:
            _run_model(config, wd, study, model_name, keys, progress, log)
        wd.mark_done("prune")
        with wd.stage_timer("analysis+report"):
            summary = report_lib.build_report(wd) if multihost.is_primary() else ""
        wd.record_timing("total_this_run", time.perf_counter() - t_start)
    log(summary)
    return wd


# data.mirror only says where checksum-verified files come from, so it never changes results.
IGNORED_FIELDS = ("workdir", "progress", "variant", "mesh", "distributed", "train.chunk", "finetune.chunk",
                  "eval.chunk", "data.mirror")
