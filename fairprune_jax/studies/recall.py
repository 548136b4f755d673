"""The recall-distortion study (docs/methods.md §4–8) as units of the runner (`studies.runner`); its workdir layout
is `studies.recall_layout`, its report `report.recall` (built by the caller, `fairprune_jax.pipeline`).

Units, per model and seed block (seeds added to a workdir later form a block of their own):

    model_sizes  parameters and eligible weights of the model                  -> model_sizes/<model>
    dense        train the block's S seeds in one vmapped program              -> checkpoints/dense-<model>
    dense rows   evaluate them                                                  -> recall/<model>.dense
    protocol     one unit per criterion (one-shot, GMP), per level (iterative, all criteria together), or per
                 criterion × fine-tuning run (budget): prune, fine-tune, evaluate -> recall/<model>.<unit>
    agreement    grid protocols with save_pruned: mask agreement of every pair of criteria -> mask_agreement/<model>

Seeds: model s of a population uses `jax.random.key(config.seed + s)`; dense models are shared across criteria
(paired design, docs/methods.md §6), and pruned models are compared with the dense model of the same seed.
Protocols are a registry (`protocol`): a new one is a layout (`recall_layout.register_protocol`, what it writes)
plus a units function.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from fairprune_jax import checkpoints, deprecation, multihost, scores, train
from fairprune_jax import data as data_lib
from fairprune_jax import masks as masks_lib
from fairprune_jax import models as models_lib
from fairprune_jax.studies import budget, checks, runner, spine
from fairprune_jax.studies import recall_layout as L
from fairprune_jax.studies.recall_protocols import (PROTOCOLS, Protocol, append_rows, chunk_of, committed,
                                                     evaluate_rows, train_data)
from fairprune_jax.studies.runner import Context, Unit

RECALL_TABLE = L.RECALL  # the names writer and readers share live in recall_layout
assert "budget" in PROTOCOLS, budget.__name__  # the budget grid registers itself on import


# ------------------------------------------------------------------------------------------------ validation

def validate_config(config: ml_collections.ConfigDict) -> None:
    """Refuse bad values at the boundary, naming the offending field (`studies.checks`)."""
    config = runner.normalize(config)
    if config.dataset not in data_lib.DATASETS:
        checks.fail("dataset", f"unknown dataset {config.dataset!r}; known: {', '.join(sorted(data_lib.DATASETS))}")
    if data_lib.DATASETS[config.dataset].multilabel:
        checks.fail("dataset", f"{config.dataset!r} is multi-label; the recall study needs classes "
                               "(use experiments.bias for attributes)")
    n = config.get("num_seeds", None)
    if isinstance(n, int) and not isinstance(n, bool) and n < 1:
        checks.fail("num_seeds", f"{n} seeds; need at least 1 (5 or more for intervals worth reading)")
    checks.check_common(config, protocols=PROTOCOLS, eval_chunk_min=1)
    p = PROTOCOLS[config.prune.protocol]
    for section in ("train", "finetune"):
        needed = section in p.layout.sections and (section == "train" or _uses_finetune_epochs(config))
        checks.check_training(config, section, min_epochs=1 if needed else 0)
    p.validate(config)
    _check_imbalance(config.data.imbalance, data_lib.DATASETS[config.dataset].num_classes)
    if config.data.route not in ("auto", "offline", "tfds"):
        checks.fail("data.route", f"unknown route {config.data.route!r}; use auto, offline or tfds")
    if config.data.source_dir and not Path(config.data.source_dir).expanduser().is_dir():
        checks.fail("data.source_dir", f"folder {config.data.source_dir} does not exist")


def _uses_finetune_epochs(config: Any) -> bool:
    """Whether the protocol needs at least one fine-tuning epoch (post-training GMP prunes between them)."""
    return config.prune.protocol == "gmp" and bool(config.prune.gmp.post_training)


def _check_imbalance(imb: Any, num_classes: int) -> None:
    """Classes are distinct indices of the dataset, each with a kept fraction in (0, 1]."""
    if len(imb.classes) != len(imb.fractions):
        checks.fail("data.imbalance", f"{len(imb.classes)} classes but {len(imb.fractions)} fractions")
    for c in imb.classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes:
            checks.fail("data.imbalance.classes", f"{c!r} is not a class index in [0, {num_classes})")
    if len(set(imb.classes)) != len(imb.classes):
        checks.fail("data.imbalance.classes", f"duplicates in {tuple(imb.classes)}")
    for f in imb.fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < float(f) <= 1.0:
            checks.fail("data.imbalance.fractions", f"{f!r} outside (0, 1] (the kept fraction of a class)")


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
    train_split = data_lib.load_split(config.dataset, "train", **kw)
    test = data_lib.load_split(config.dataset, "test", **kw)
    k = ds.num_classes
    imb = config.data.imbalance
    if imb.classes:
        train_split, table = data_lib.subsample_classes(
            train_split, dict(zip(map(int, imb.classes), map(float, imb.fractions))),
            key=jax.random.key(int(imb.seed)), num_classes=k)
    else:
        counts = data_lib.class_counts(train_split.labels, k)
        table = pd.DataFrame({"class": np.arange(k), "n_before": counts, "fraction": 1.0, "n_after": counts})
    cap = int(config.data.max_train_examples)
    if cap > 0:
        train_split = data_lib.Split(train_split.images[:cap], train_split.labels[:cap])
        table["n_after"] = data_lib.class_counts(train_split.labels, k)
    return StudyData(data_lib.to_device(train_split, ds, lazy=True), data_lib.to_device(test, ds), k, table,
                     tuple(train_split.images.shape[1:]))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What `prepare` hands the run: the data and the seed blocks the workdir held before this run."""

    data: StudyData
    recorded: list[list[int]] | None


def _recorded_blocks(path: Path) -> list[list[int]] | None:
    """The seed blocks a workdir holds: ``seed_blocks.json``, else one block of its stored ``num_seeds``."""
    f = path / L.SEED_BLOCKS_FILE
    if f.is_file():
        return json.loads(f.read_text())
    stored = path / "config.json"
    if stored.is_file():
        try:
            n = int(json.loads(stored.read_text())["config"]["num_seeds"])
        except (ValueError, KeyError, TypeError):
            return None
        return [[0, n]]
    return None


def prepare(config: ml_collections.ConfigDict, path: Path) -> Prepared:
    """Load the data and check what depends on it (batch sizes, seeds held), before the workdir is opened."""
    recorded = _recorded_blocks(path)
    held = recorded[-1][1] if recorded else 0
    if int(config.num_seeds) < held:
        checks.fail("num_seeds", f"{config.num_seeds} is fewer than the {held} seeds this workdir holds; keep "
                                 f"num_seeds >= {held} (more seeds are added as a new block) or use another "
                                 "--workdir")
    study = spine.load_guard(lambda: load_data(config), data_lib.tfds_dir(config.data.tfds_dir or None),
                             config.dataset)
    checks.check_batch_sizes(config, int(study.train.images.shape[0]), PROTOCOLS[config.prune.protocol]
                             .layout.sections)
    return Prepared(study, recorded)


def seeds_of(config: ml_collections.ConfigDict, block: L.SeedBlock | None = None) -> list[int]:
    """The integer seeds of the population (of one seed block): config.seed + index."""
    start, stop = (0, int(config.num_seeds)) if block is None else block
    return [int(config.seed) + s for s in range(start, stop)]


# ------------------------------------------------------------------------------------------------ start

def start(ctx: Context) -> None:
    """Record the seed blocks and the class counts, and say what runs."""
    config, wd, prep = ctx.config, ctx.workdir, ctx.data
    blocks = L.seed_blocks(prep.recorded, int(config.num_seeds))
    if multihost.is_primary():
        wd.write_json(L.SEED_BLOCKS_FILE, [list(b) for b in blocks])
        wd.write_text(L.CLASS_COUNTS_FILE, prep.data.train_counts.to_csv(index=False))
    multihost.barrier("seed_blocks")
    ctx.memo["blocks"] = [L.SeedBlock(*b) for b in wd.read_json(L.SEED_BLOCKS_FILE)]
    if len(ctx.memo["blocks"]) > 1 and prep.recorded and blocks[-1].start >= prep.recorded[-1][1]:
        ctx.log(f"num_seeds {config.num_seeds}: seeds {blocks[-1].start}–{blocks[-1].stop - 1} are a new block; "
                "the earlier seeds' results stay as they are")
    d = prep.data
    ctx.log(f"data: {config.dataset} train {d.train.images.shape[0]} / test {d.test.images.shape[0]} examples; "
            f"{spine.devices_line(config)}")


def criteria_table(names: Sequence[str]) -> pd.DataFrame:
    """The run's criteria as the registry describes them (reports take labels and controls from here)."""
    rows = []
    for i, name in enumerate(names):
        c = scores.get(name)
        rows.append(dict(order=i, criterion=name, label=c.label, scope=c.scope, needs_gradient=c.needs_gradient,
                         needs_key=c.needs_key, control=c.control, description=c.description))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ per model

def model_sizes(spec: models_lib.ModelSpec, exclude_output: bool) -> pd.DataFrame:
    """One row: the model's parameters and its eligible (prunable) weights under ``exclude_output``."""
    params = jax.eval_shape(spec.init, jax.random.key(0))["params"]
    n = int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))
    return pd.DataFrame([dict(model=spec.name, n_params=n,
                              n_prunable=int(masks_lib.num_prunable(params, spec.prunable(exclude_output))))])


def agreement_rows(ctx: Context, masks: dict[str, Any]) -> pd.DataFrame:
    """`masks.agreement` of every pair of criteria (a before b in the config), per seed and sparsity."""
    config, spec = ctx.config, ctx.spec
    prunable = spec.prunable(bool(config.exclude_output))
    sparsities = [float(s) for s in config.prune.sparsities]
    rows = []
    for a, b in itertools.combinations([c for c in config.prune.criteria if c in masks], 2):
        agree = np.asarray(masks_lib.agreement(masks[a], masks[b], prunable, lead=3), np.float64)  # [S, 1, P]
        for (i, seed), (j, s) in itertools.product(enumerate(ctx.seeds), enumerate(sparsities)):
            rows.append(dict(model=spec.name, seed=int(seed), sparsity_index=j, requested_sparsity=s,
                             criterion_a=a, criterion_b=b, agreement=float(agree[i, 0, j])))
    return pd.DataFrame(rows)


def _pruned_like(spec: models_lib.ModelSpec, s: int, p: int) -> dict:
    """Abstract tree of a grid checkpoint: variables and bool masks [S, 1, P, ...]."""
    one = jax.eval_shape(spec.init, jax.random.key(0))
    grid = lambda x, dtype: jax.ShapeDtypeStruct((s, 1, p, *x.shape), dtype)  # noqa: E731
    return {"variables": jax.tree.map(lambda x: grid(x, x.dtype), one),
            "masks": jax.tree.map(lambda x: grid(x, jnp.bool_), one["params"])}


def _agreement_unit(ctx: Context) -> Unit:
    """The mask agreement of the block's criteria, from their saved pruned checkpoints (a unit of its own, after
    the criteria)."""
    config, spec, block = ctx.config, ctx.spec, ctx.block
    key = L.agreement_key(spec.name, block)
    like = _pruned_like(spec, len(ctx.seeds), len(config.prune.sparsities))

    def compute() -> pd.DataFrame:
        names = {c: L.pruned_checkpoint(spec.name, c, block) for c in config.prune.criteria}
        masks = {c: checkpoints.restore(ctx.checkpoints, n, like=like)["masks"] for c, n in names.items()
                 if checkpoints.exists(ctx.checkpoints, n)}
        return agreement_rows(ctx, masks)

    return Unit(key, "agreement", lambda: ctx.workdir.has(L.MASK_AGREEMENT, key), compute,
                lambda rows: ctx.workdir.append_table(L.MASK_AGREEMENT, key, rows))


def _dense_units(ctx: Context, proto: Protocol) -> Iterator[Unit]:
    """The block's dense population (trained or restored) and its rows."""
    config, spec, block, wd = ctx.config, ctx.spec, ctx.block, ctx.workdir
    name = L.dense_checkpoint(spec.name, block)
    capture = proto.rewind_step(config)
    n = len(ctx.seeds)

    def train_dense():
        with wd.stage_timer(f"dense.{spec.name}{block.suffix()}"), ctx.progress.training(
                f"dense {spec.name}{block.suffix()}", n, int(config.train.epochs)) as bar:
            dense, hist = train.fit(spec, config.train, ctx.keys, *train_data(ctx), chunk=chunk_of(config.train),
                                    progress=ctx.progress.epochs(bar), capture_step=capture or None, mesh=ctx.mesh)
            spine.check_dense(spine.guard(config, spec, dense, hist["loss"], 1), list(ctx.seeds), spec.name)
        rewind = hist["snapshot"] if capture else train.init_population(spec, ctx.keys)
        return dense, rewind

    def commit(out):
        checkpoints.save(ctx.checkpoints, name, {"dense": out[0], "rewind": out[1]})
        ctx.memo[f"dense/{spec.name}/{block}"] = out

    yield Unit(f"{spec.name}.dense{block.suffix()}", "dense", lambda: checkpoints.exists(ctx.checkpoints, name),
               train_dense, commit)
    key = L.unit_key(spec.name, L.DENSE, block)

    def rows():
        with wd.stage_timer(f"evaluate.{key}"):
            return evaluate_rows(ctx, dense_of(ctx)[0], None, criteria=[L.DENSE], requested=0.0, levels=[0])

    def commit_rows(table: pd.DataFrame) -> None:
        append_rows(ctx, key, table)
        acc = table.groupby("seed")["accuracy"].first().mean()
        ctx.log(f"dense {spec.name}{block.suffix()}: test accuracy {acc:.4f} (mean of {n} seed{'s' * (n != 1)})")

    yield Unit(key, "evaluate", committed(ctx, key), rows, commit_rows)


def dense_of(ctx: Context) -> tuple[Any, Any]:
    """The block's (dense, rewind) variables: kept from training, else restored from their checkpoint."""
    spec, block = ctx.spec, ctx.block

    def restore():
        like = jax.eval_shape(lambda k: train.init_population(spec, k), ctx.keys)
        saved = checkpoints.restore(ctx.checkpoints, L.dense_checkpoint(spec.name, block),
                                    like={"dense": like, "rewind": like})
        return saved["dense"], saved["rewind"]

    return ctx.remember(f"dense/{spec.name}/{block}", restore)


def units(ctx: Context) -> Iterator[Unit]:
    """Every unit of the run, in order: the criteria table, then per model its size, and per seed block its dense
    population, its rows, the protocol's units and the mask agreement."""
    config, wd = ctx.config, ctx.workdir
    yield Unit(L.CRITERIA_KEY, "record", lambda: wd.has(L.CRITERIA, L.CRITERIA_KEY),
               lambda: criteria_table(list(config.prune.criteria)),
               lambda t: wd.append_table(L.CRITERIA, L.CRITERIA_KEY, t))
    proto = PROTOCOLS[config.prune.protocol]
    study = ctx.data.data
    for model_name in config.models:
        spec = models_lib.get_model(model_name, num_outputs=study.num_classes, input_shape=study.input_shape)
        yield Unit(spec.name, "record", lambda spec=spec: wd.has(L.MODEL_SIZES, spec.name),
                   lambda spec=spec: model_sizes(spec, bool(config.exclude_output)),
                   lambda t, spec=spec: wd.append_table(L.MODEL_SIZES, spec.name, t))
        for block in ctx.memo["blocks"]:
            seeds = tuple(seeds_of(config, block))
            bctx = dataclasses.replace(ctx, spec=spec, block=block, seeds=seeds, keys=train.seed_keys(list(seeds)))
            yield from _dense_units(bctx, proto)
            yield from proto.units(bctx, lambda bctx=bctx: dense_of(bctx))
            if proto.layout.grid and config.save_pruned and len(config.prune.criteria) > 1:
                yield _agreement_unit(bctx)
            ctx.memo.pop(f"dense/{spec.name}/{block}", None)


STUDY = runner.register(runner.Study("recall", validate_config, prepare, units, start, tables=L.TABLES,
                                     growable=("num_seeds",)))
IGNORED_FIELDS = STUDY.ignore


def __getattr__(name: str) -> Any:
    """``run`` (study and report in one call) moved to `fairprune_jax.pipeline.run`, which returns a
    `runner.RunSummary`; the old name warns once and returns the Workdir as before."""
    if name == "run":
        from fairprune_jax import pipeline  # deferred on purpose: a deprecated alias of a module above this one

        def run(config: Any, *, workdir: Any, fresh: bool = False, log: Any = print) -> Any:
            deprecation.warn_once("studies.recall.run", "fairprune_jax.studies.recall.run moved to "
                                  "fairprune_jax.pipeline.run (it returns a RunSummary)")
            return pipeline.workdir_of(pipeline.run(config, workdir=workdir, fresh=fresh, log=log, study="recall"))

        return run
    if name in ("unit_keys",):
        return deprecation.moved(lambda config: L.expected_units(config), "studies.recall.unit_keys",
                                 "studies.recall_layout.expected_units")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
