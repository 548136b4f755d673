"""The bias study (paper 2, Iofinova et al. CVPR 2023; docs/methods.md §9–10) as a resumable pipeline.

Stages (each unit of work commits its own results, so a killed run resumes where it stopped):

1. data      planted multi-label MNIST / Fashion-MNIST (`fairprune_jax.planted`) or CelebA through TFDS (40
             attributes, protected Male/Young/Chubby/Pale_Skin, official train/validation/test partition).
2. dense     S seeds trained at once (`train.fit`, sigmoid head, BCE); checkpoint ``artifacts/ckpt/dense``.
3. prune     per sparsity of the grid (one unit = all seeds at that sparsity): GMP post-training (cubic schedule,
             one pruning step per fine-tuning epoch, Adam 1e-4 by default) or one-shot + fine-tuning, with any
             criterion of `scores.CRITERIA`; checkpoint ``artifacts/ckpt/sparse-sparsity=<s>`` (variables + masks).
4. predict   validation and test logits of every population (``artifacts/logits/<key>.npz``).
5. evaluate  per population: every §6 metric per seed × attribute at τ = 0 and at calibrated thresholds (global,
             and per protected group = the countermeasure); per sparsity: CIEs of the pruned population vs the
             dense one, the dense susceptibility criteria scored against them (with a random baseline),
             attenuation, and the attribute-level regression.
6. report    ``report.md``, ``tables/``, ``plots/`` from the stored tables only (`fairprune_jax.report.bias`).

Tables (``results/<table>/<key>.parquet``, key ``population=dense`` or ``sparsity=<s>``): ``train_history``,
``prune``, ``metrics``, ``cies``, ``identification``, ``attenuation``, ``attributes``, ``regression``.

Key purposes: seed s of the population uses ``jax.random.key(config.seed + s)``; dense init/data order via
`train.purpose_key`; fine-tuning data order from ``purpose_key(k, "finetune_data")`` (the same for every sparsity,
so the populations are paired); random scores from ``purpose_key(k, "random_scores")`` folded with the pruning step.
"""
from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import sys
import time
from collections import Counter
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from fairprune_jax import checkpoints
from fairprune_jax import data as data_lib
from fairprune_jax import masks as masks_lib
from fairprune_jax import models as models_lib
from fairprune_jax import evaluate, multihost, protocols, schedules, train
from fairprune_jax.analysis.bias_tables import evaluate_sparse, population_metrics, tag_population
from fairprune_jax.results import load_npz, make_key, save_npz, verified_file
from fairprune_jax.studies import spine
from fairprune_jax.studies.bias_config import config_field, validate_config
from fairprune_jax.studies.bias_data import PLANTED_SOURCE, StudyData, load_study_data

PyTree = Any

TABLES = ("train_history", "prune", "metrics", "cies", "identification", "attenuation", "attributes",
          "regression")
EVAL_TABLES = ("metrics", "cies", "identification", "attenuation", "attributes", "regression")
DENSE_KEY = "population=dense"


def resolve_workdir(cfg: Any, override: str | os.PathLike | None = None) -> pathlib.Path:
    """``override``, else the spine's default (``config.workdir`` or ``workdirs/<dataset>[-<variant>]``)."""
    return pathlib.Path(os.fspath(override)).expanduser() if override else spine.default_workdir(cfg)


def make_spec(cfg: Any, data: StudyData) -> models_lib.ModelSpec:
    """The configured model with a sigmoid head of ``len(data.names)`` outputs."""
    return models_lib.get_model(cfg.model, num_outputs=len(data.names), input_shape=data.input_shape,
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
    ``finetune.epochs − 1``, so the last epoch trains at the final sparsity."""
    g, ft = cfg.prune.gmp, int(cfg.finetune.epochs)
    start, every = int(g.start), int(g.every)
    return start, int(g.end) or max(ft - 1, start + 1), every


def gmp_plan(cfg: Any, final: float) -> dict[int, float]:
    """Fine-tuning epoch → target sparsity of that pruning step (cubic GMP; the last step is exactly ``final``)."""
    start, end, every = gmp_window(cfg)
    initial = min(float(cfg.prune.gmp.initial), float(final))
    return {e: float(schedules.gmp_sparsity(e, final=float(final), initial=initial, start=start, end=end,
                                            every=every))
            for e in schedules.gmp_steps(start, end, every)}


def prune_population(spec: models_lib.ModelSpec, cfg: Any, data: StudyData, dense: PyTree, sparsity: float, *,
                     progress: Callable[[dict], None] | None = None,
                     ) -> tuple[PyTree, PyTree, np.ndarray, np.ndarray]:
    """Prune the dense population to ``sparsity`` with the configured protocol (`protocols.gmp` post-training from
    the dense weights, or `protocols.one_shot` + fine-tuning) and criterion.

    Returns (variables [S, ...], masks [S, ...], fine-tuning losses [S, E], realised sparsity [S]).
    """
    keys = population_keys(cfg)
    crit, excl = str(cfg.prune.criterion), bool(cfg.exclude_output)
    common = dict(exclude_output=excl, lam=float(cfg.prune.lambda_up), chunk=int(cfg.finetune.chunk) or None,
                  progress=progress, mesh=spine.mesh_of(cfg))
    if cfg.prune.protocol == "one_shot":
        variables, mask, hist = protocols.one_shot(spec, cfg.finetune, dense, (crit,), (float(sparsity),), keys,
                                                   data.x_train, data.y_train, **common)
    else:
        start, end, every = gmp_window(cfg)
        variables, mask, hist = protocols.gmp(spec, cfg.finetune, keys, data.x_train, data.y_train, (crit,),
                                              (float(sparsity),), start=start, end=end, every=every,
                                              initial=min(float(cfg.prune.gmp.initial), float(sparsity)),
                                              init_variables=dense, **common)
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
class RunSummary(NamedTuple):
    workdir: pathlib.Path
    computed: dict[str, int]  # units computed in this run, per stage
    skipped: dict[str, int]  # units found done, per stage
    seconds: dict[str, float]  # wall seconds of this run per stage
    report: pathlib.Path | None


class _Run(NamedTuple):
    """What every stage of one run reads: the config, the claimed workdir, the data, the model, the counters and a
    cache holding the dense population once restored or trained (only trained when something needs it)."""

    cfg: Any
    wd: Any
    data: StudyData
    spec: models_lib.ModelSpec
    computed: Counter
    skipped: Counter
    seconds: Counter
    echo: Callable[[str], None]
    cache: dict

    @contextlib.contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            with self.wd.stage_timer(stage):
                yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def ckdir(self) -> pathlib.Path:
        return self.wd.path_for("ckpt")

    def logits_path(self, key: str) -> pathlib.Path:
        return self.wd.path_for(f"logits/{key}.npz")

    def has_logits(self, key: str) -> bool:
        """Whether population ``key``'s logits are stored and verified (a corrupt file is moved aside; in a
        multi-host run: process 0's answer)."""
        return multihost.agree(multihost.is_primary() and verified_file(self.logits_path(key)))

    def load_logits(self, key: str) -> dict:
        z = load_npz(self.logits_path(key), root=self.wd.path)  # checksum-verified; CorruptFileError names it
        return {"val": z["val"], "test": z["test"]}

    def save_logits(self, key: str, variables: PyTree) -> None:
        arrays = {"val": predict_logits(self.spec, variables, self.data.x_val, self.cfg),
                  "test": predict_logits(self.spec, variables, self.data.x_test, self.cfg)}
        if multihost.is_primary():
            save_npz(self.logits_path(key), arrays)  # with its .sha256
        multihost.barrier(f"logits:{key}")  # the others read them next


def sparsity_key(s: float) -> str:
    return make_key(sparsity=float(s))


def _prepare(cfg: Any) -> StudyData:
    """Load the data and check what depends on it (batch sizes), before the workdir is claimed."""
    data = spine.load_guard(lambda: load_study_data(cfg), data_lib.tfds_dir(cfg.data.tfds_dir or None),
                            PLANTED_SOURCE.get(cfg.dataset, cfg.dataset))
    spine.check_batch_sizes(cfg, int(data.x_train.shape[0]), ("train", "finetune"))
    return data


def _dense(r: _Run) -> PyTree:
    """The dense population: restored from its checkpoint, or trained, guarded and saved."""
    if "dense" in r.cache:
        return r.cache["dense"]
    n_seeds, cfg = int(r.cfg.num_seeds), r.cfg
    if checkpoints.exists(r.ckdir(), "dense"):
        r.cache["dense"] = checkpoints.restore(r.ckdir(), "dense", like=spine.population_like(r.spec, n_seeds))
        return r.cache["dense"]
    progress = spine.Progress(bool(config_field(cfg, "progress", True)))
    epochs = int(cfg.train.epochs)
    total = epochs * spine.chunks(r.spec, n_seeds, int(cfg.train.chunk), cfg)
    with progress.bar(total, "dense training", "epoch") as bar, r.timed("dense"):
        variables, losses = train_dense(r.spec, cfg, r.data, progress=progress.epochs(bar))
        spine.check_dense(variables, losses, list(range(int(cfg.seed), int(cfg.seed) + n_seeds)), cfg.model)
        hist = pd.DataFrame([{"seed": s, "epoch": e, "loss": float(losses[s, e])}
                             for s in range(losses.shape[0]) for e in range(losses.shape[1])])
        r.wd.append_table("train_history", "dense", hist, overwrite=True)
        checkpoints.save(r.ckdir(), "dense", variables)  # the checkpoint commits the unit
    r.cache["dense"] = variables
    r.computed["dense"] += 1
    r.echo(f"dense: trained {n_seeds} seeds × {epochs} epochs in {r.seconds['dense']:.1f}s, final loss "
           f"{float(losses[:, -1].mean()):.4f}")
    return variables


def _dense_unit(r: _Run) -> None:
    """Dense logits and metrics (each skipped when stored)."""
    if r.has_logits("dense"):
        r.skipped["predict"] += 1
    else:
        dense = _dense(r)
        with r.timed("predict"):
            r.save_logits("dense", dense)
        r.computed["predict"] += 1
    if r.wd.has("metrics", DENSE_KEY):
        r.skipped["evaluate"] += 1
        return
    with r.timed("evaluate"):
        lg = r.load_logits("dense")
        m = population_metrics(lg["val"], lg["test"], r.data, r2_constant=str(r.cfg.eval.r2_constant))
        r.wd.append_table("metrics", DENSE_KEY, tag_population(m, "dense", 0.0))
    r.computed["evaluate"] += 1


def _prune_unit(r: _Run, s: float, key: str) -> None:
    """Prune (or restore) the population at sparsity ``s`` and store its logits; diverged seeds are recorded."""
    ck = f"sparse-{key}"
    if checkpoints.exists(r.ckdir(), ck) and r.wd.has("prune", key):  # the part records which seeds diverged
        r.skipped["prune"] += 1
        variables = checkpoints.restore(r.ckdir(), ck, like=sparse_like(r.spec, int(r.cfg.num_seeds)))["variables"]
    else:
        dense = _dense(r)
        with r.timed("prune"):
            t0 = time.perf_counter()
            variables, mask, losses, realised = prune_population(r.spec, r.cfg, r.data, dense, s)
            bad_epoch = spine.first_bad_epoch(losses)
            diverged = spine.diverged_models(variables, 1) | (bad_epoch >= 0)
            rows = [{"seed": i, "target": s, "realised": float(realised[i]),
                     "final_loss": float(losses[i, -1]) if losses.shape[1] else float("nan"),
                     "seconds": time.perf_counter() - t0, "diverged": bool(diverged[i]),
                     "diverged_epoch": int(bad_epoch[i])} for i in range(len(realised))]
            r.wd.append_table("prune", key, tag_population(pd.DataFrame(rows), "sparse", s), overwrite=True)
            checkpoints.save(r.ckdir(), ck, {"variables": variables, "masks": mask})  # commits the unit
        if diverged.any():
            r.echo(f"warning: sparsity {s}: seeds {np.flatnonzero(diverged).tolist()} diverged; excluded from "
                   "the statistics")
        r.computed["prune"] += 1
    with r.timed("predict"):
        r.save_logits(key, variables)
    r.computed["predict"] += 1


def _diverged_seeds(r: _Run, key: str) -> np.ndarray:
    """bool [S]: seeds of the unit recorded as diverged (older workdirs have no column: none)."""
    p = r.wd.read_table("prune", key_column="unit") if r.wd.has("prune", key) else pd.DataFrame()
    p = p[p["unit"] == key] if len(p) else p
    out = np.zeros(int(r.cfg.num_seeds), bool)
    if len(p) and "diverged" in p:
        out[p["seed"].to_numpy(int)] = p["diverged"].to_numpy(bool)
    return out


def _evaluate_unit(r: _Run, s: float, key: str) -> None:
    """Every evaluation table of sparsity ``s`` over the seeds that did not diverge (metrics part last: it marks
    the unit evaluated)."""
    dense_m = r.wd.read_part("metrics", DENSE_KEY)
    dense_m = dense_m[dense_m["population"] == "dense"].drop(columns=["population", "sparsity"])
    keep = np.flatnonzero(~_diverged_seeds(r, key))
    dl, sl = r.load_logits("dense"), r.load_logits(key)
    if len(keep) == 0:
        tables = {t: pd.DataFrame() for t in EVAL_TABLES}
    elif len(keep) < int(r.cfg.num_seeds):
        pick = lambda lg: {k: v[keep] for k, v in lg.items()}  # noqa: E731
        renumber = dict(enumerate(keep))
        dense_m = dense_m[dense_m["seed"].isin(keep)].assign(seed=lambda f: f["seed"].map(
            {v: k for k, v in renumber.items()}))
        tables = evaluate_sparse(pick(dl), pick(sl), dense_m, r.data, s, r.cfg)
        tables = {t: f.assign(seed=f["seed"].map(renumber)) if "seed" in f else f for t, f in tables.items()}
    else:
        tables = evaluate_sparse(dl, sl, dense_m, r.data, s, r.cfg)
    for t in EVAL_TABLES:
        if t != "metrics" and not r.wd.has(t, key):
            r.wd.append_table(t, key, tables[t])
    if not r.wd.has("metrics", key):
        r.wd.append_table("metrics", key, tables["metrics"])


def _sparsity_units(r: _Run, sparsities: list[float]) -> None:
    with spine.Progress(bool(config_field(r.cfg, "progress", True))).bar(len(sparsities), "prune + evaluate",
                                                                   "sparsity") as bar:
        for s in sparsities:
            key = sparsity_key(s)
            bar.set_postfix(sparsity=s)
            if r.has_logits(key):
                r.skipped["prune"] += 1
                r.skipped["predict"] += 1
            else:
                _prune_unit(r, s, key)
            if all(r.wd.has(t, key) for t in EVAL_TABLES):
                r.skipped["evaluate"] += 1
            else:
                with r.timed("evaluate"):
                    _evaluate_unit(r, s, key)
                r.computed["evaluate"] += 1
            bar.update(1)


def run(cfg: Any, *, workdir: str | os.PathLike | None = None, fresh: bool = False, report: bool = True,
        echo: Callable[[str], None] | None = None) -> RunSummary:
    """Run (or resume) the whole study; returns what was computed and skipped. See the module docstring.

    The config is validated and the data loaded (batch sizes checked against it) before the workdir is claimed;
    the workdir is locked for the whole run."""
    validate_config(cfg)
    multihost.initialize(cfg.get("distributed", None))  # several processes (pods, launch.py); off by default
    echo = echo or (lambda s: print(s, file=sys.stderr))
    if not multihost.is_primary():
        echo = lambda s: None  # noqa: E731 - process 0 speaks for the run
    path = resolve_workdir(cfg, workdir)
    sparsities = [float(s) for s in cfg.prune.sparsities]
    with spine.claim(path, cfg, fresh=fresh, ignore=IGNORED_FIELDS, log=echo, prepare=lambda: _prepare(cfg)) \
            as (wd, data):
        echo(f"bias study: {cfg.dataset} / {cfg.model} / {cfg.num_seeds} seeds / {cfg.prune.protocol} "
             f"{cfg.prune.criterion} at {sparsities} -> {wd.path}")
        if int(cfg.num_seeds) % 2 == 0:
            echo(f"warning: {cfg.num_seeds} seeds (even): modal predictions can tie (ties go to 1); use an odd count")
        wd.write_json("meta.json", {"names": list(data.names), "protected": list(data.protected),
                                    "input_shape": list(data.input_shape), **data.meta})
        echo(f"data: {data.meta['n_train']} train / {data.meta['n_val']} val / {data.meta['n_test']} test, "
             f"{len(data.names)} attributes, protected {list(data.protected)}")
        r = _Run(cfg, wd, data, make_spec(cfg, data), Counter(), Counter(), Counter(), echo, {})
        _dense_unit(r)
        _sparsity_units(r, sparsities)
        if not r.computed["dense"]:
            r.skipped["dense"] += 1  # trained in an earlier run (or not needed: every population has its logits)
        report_path = None
        if report and multihost.is_primary():
            from fairprune_jax.report import bias as bias_study_report

            with r.timed("report"):
                report_path = bias_study_report.write_report(wd)
            echo(bias_study_report.terminal_summary(wd))
            echo(f"report: {report_path}")
    echo("this run: computed " + (", ".join(f"{k}={v}" for k, v in sorted(r.computed.items())) or "nothing")
         + "; skipped " + (", ".join(f"{k}={v}" for k, v in sorted(r.skipped.items())) or "nothing")
         + "; seconds " + ", ".join(f"{k}={v:.1f}" for k, v in r.seconds.items()))
    return RunSummary(wd.path, dict(r.computed), dict(r.skipped), dict(r.seconds), report_path)


# never change a result (data.mirror only says where checksum-verified files come from)
IGNORED_FIELDS = ("workdir", "fresh", "progress", "mesh", "distributed", "train.chunk", "finetune.chunk",
                  "eval.chunk", "data.mirror")
