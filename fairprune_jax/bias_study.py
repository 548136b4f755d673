"""The bias study (paper 2, Iofinova et al. CVPR 2023; SCIENCE.md §6–7) as a resumable pipeline.

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
6. report    ``report.md`` + PNGs from the stored tables only (`fairprune_jax.bias_study_report`).

Tables (``results/<table>/<key>.parquet``, key ``population=dense`` or ``sparsity=<s>``): ``train_history``,
``prune``, ``metrics``, ``cies``, ``identification``, ``attenuation``, ``attributes``, ``regression``.

Key purposes: seed s of the population uses ``jax.random.key(config.seed + s)``; dense init/data order via
`train.purpose_key`; fine-tuning data order from ``purpose_key(k, "finetune_data")`` (the same for every sparsity,
so the populations are paired); random scores from ``purpose_key(k, "random_scores")`` folded with the pruning step.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import pathlib
import sys
import time
from collections import Counter
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from fairprune_jax import checkpoints
from fairprune_jax import data as data_lib
from fairprune_jax import masks as masks_lib
from fairprune_jax import models as models_lib
from fairprune_jax import planted as planted_lib
from fairprune_jax import evaluate, protocols, schedules, scores, train
from fairprune_jax.analysis import bias as B
from fairprune_jax.results import atomic_write, make_key
from fairprune_jax.studies import spine

PyTree = Any

DATASETS = ("planted_mnist", "planted_fashion_mnist", "celeb_a")
PLANTED_SOURCE = {"planted_mnist": "mnist", "planted_fashion_mnist": "fashion_mnist"}
PROTOCOLS = ("gmp", "one_shot")
SCHEMES = ("default", "global", "group")
TRIGGER = "trigger"  # the protected attribute of the planted data
DEFAULT_CRITERION = "uncertainty"  # identification criterion used for attenuation and the report's headline
TABLES = ("train_history", "prune", "metrics", "cies", "identification", "attenuation", "attributes",
          "regression")
EVAL_TABLES = ("metrics", "cies", "identification", "attenuation", "attributes", "regression")
DENSE_KEY = "population=dense"

# TFDS celeb_a attribute names in the order `data.examples_to_split` stacks them (sorted keys).
CELEB_A_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
assert list(CELEB_A_ATTRIBUTES) == sorted(CELEB_A_ATTRIBUTES)
assert all(CELEB_A_ATTRIBUTES[i] == n for n, i in data_lib.CELEB_A_PROTECTED.items())

_RANDOM_BASELINE = 0xB1A5  # fold_in constant of the random identification baseline (fixed across sparsities)


# ================================================================================================================
# config (the schema is `fairprune_jax.studies.schema.bias_config`)
# ================================================================================================================
def _field(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part, None) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def _int(cfg: Any, dotted: str, lo: int) -> int:
    v = _field(cfg, dotted)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"config.{dotted}: {v!r} is not an integer >= {lo}")
    return int(v)


def _prob(cfg: Any, dotted: str) -> float:
    v = _field(cfg, dotted)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"config.{dotted}: {v!r} is not a probability in [0, 1]")
    return float(v)


def validate_config(cfg: Any) -> None:
    """Refuse bad values at the boundary with a ValueError naming the config field."""
    ds = _field(cfg, "dataset")
    if ds not in DATASETS:
        raise ValueError(f"config.dataset: unknown dataset {ds!r}; known: {', '.join(DATASETS)}")
    model = _field(cfg, "model")
    if model not in models_lib.available():
        raise ValueError(f"config.model: unknown model {model!r}; known: {', '.join(models_lib.available())}")
    _int(cfg, "num_seeds", 1)
    _int(cfg, "seed", 0)
    protocol = _field(cfg, "prune.protocol")
    if protocol not in PROTOCOLS:
        raise ValueError(f"config.prune.protocol: unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    crit = _field(cfg, "prune.criterion")
    if crit not in scores.CRITERIA:
        raise ValueError(f"config.prune.criterion: unknown criterion {crit!r}; known: {', '.join(scores.CRITERIA)}")
    sp = _field(cfg, "prune.sparsities")
    spine.check_sparsities((sp,) if isinstance(sp, (int, float)) else tuple(sp or ()))
    spine.check_training(cfg, "train", min_epochs=1)
    spine.check_training(cfg, "finetune", min_epochs=1 if protocol == "gmp" else 0)
    for part in ("train", "finetune"):
        name = _field(cfg, f"{part}.optimizer.name")
        if name not in ("sgd", "adam"):
            raise ValueError(f"config.{part}.optimizer.name: unknown optimizer {name!r}; use 'sgd' or 'adam'")
    if protocol == "gmp":
        ft = _int(cfg, "finetune.epochs", 1)
        initial = _prob(cfg, "prune.gmp.initial")
        if initial >= 1.0:
            raise ValueError(f"config.prune.gmp.initial: {initial} outside [0, 1)")
        start, every = _int(cfg, "prune.gmp.start", 0), _int(cfg, "prune.gmp.every", 1)
        end = _int(cfg, "prune.gmp.end", 0) or max(ft - 1, start + 1)
        if end <= start or start >= ft:
            raise ValueError(f"config.prune.gmp.end: need start < end and start < finetune.epochs ({ft}); got "
                             f"start={start}, end={end}")
    band = _field(cfg, "eval.band")
    for b in (band, *tuple(_field(cfg, "eval.bands", ()) or ())):
        if not isinstance(b, (int, float)) or not 0.0 < float(b) < 0.5:
            raise ValueError(f"config.eval.band(s): {b!r} outside (0, 0.5)")
    _int(cfg, "eval.batch_size", 1)
    _int(cfg, "data.max_train_examples", 0)
    _int(cfg, "data.max_eval_examples", 0)
    for f in ("data.source_dir", "data.tfds_dir"):
        d = _field(cfg, f, "")
        if d and not pathlib.Path(os.fspath(d)).expanduser().is_dir():
            if f == "data.tfds_dir" and _field(cfg, "data.download", False):
                continue
            raise ValueError(f"config.{f}: folder {d!r} does not exist")
    if ds in PLANTED_SOURCE:
        src = PLANTED_SOURCE[ds]
        d = _field(cfg, "data.source_dir", "")
        if d and not (pathlib.Path(os.fspath(d)).expanduser() / src).is_dir():
            raise ValueError(f"config.data.source_dir: folder {d!r} has no {src}/ subfolder")
        for f in ("p1", "p0", "test_p1", "test_p0"):
            _prob(cfg, f"data.planted.{f}")
        target = _field(cfg, "data.planted.target", "")
        names = planted_lib.attribute_names(src)
        if target and target not in names:
            raise ValueError(f"config.data.planted.target: {target!r} not in {names}")
        trig = _field(cfg, "data.planted.trigger")
        if trig not in planted_lib.TRIGGERS:
            raise ValueError(f"config.data.planted.trigger: {trig!r} not in {planted_lib.TRIGGERS}")
        corner = _field(cfg, "data.planted.corner")
        if corner not in planted_lib.CORNERS:
            raise ValueError(f"config.data.planted.corner: {corner!r} not in {planted_lib.CORNERS}")
        ps = _int(cfg, "data.planted.patch_size", 1)
        if ps > 28:
            raise ValueError(f"config.data.planted.patch_size: {ps} does not fit a 28×28 image")
        _int(cfg, "data.planted.val_size", 1)
        _int(cfg, "data.planted.key_seed", 0)
    else:
        size = tuple(_field(cfg, "data.image_size", ()) or ())
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(f"config.data.image_size: {size!r} is not a pair of positive integers")
        prot = tuple(_field(cfg, "data.protected", ()) or ())
        if not prot:
            raise ValueError("config.data.protected: no protected attribute given")
        for p in prot:
            if p not in CELEB_A_ATTRIBUTES:
                raise ValueError(f"config.data.protected: {p!r} is not a CelebA attribute")


def resolve_workdir(cfg: Any, override: str | os.PathLike | None = None) -> pathlib.Path:
    """``override``, else the spine's default (``config.workdir`` or ``workdirs/<dataset>[-<variant>]``)."""
    return pathlib.Path(os.fspath(override)).expanduser() if override else spine.default_workdir(cfg)


# ================================================================================================================
# data
# ================================================================================================================
class StudyData(NamedTuple):
    """Normalised training inputs and host-side evaluation labels of one study (P protected attributes)."""

    x_train: jax.Array  # float32 [N, H, W, C]
    y_train: jax.Array  # int32 [N, A]
    x_val: jax.Array
    y_val: np.ndarray  # int32 [Nv, A]
    x_test: jax.Array
    y_test: np.ndarray  # int32 [Nt, A]
    names: tuple[str, ...]  # [A]
    protected: tuple[str, ...]  # [P]
    g_val: np.ndarray  # int32 [P, Nv] TRUE protected labels
    g_test: np.ndarray  # int32 [P, Nt]
    pf: np.ndarray  # float [P, A] train prevalence of each attribute where g = 1
    nf: np.ndarray  # float [P, A] where g = 0
    prevalence: np.ndarray  # float [A] train prevalence
    triggered: np.ndarray | None  # int32 [Nt] planted trigger on the test set (BBA), None for CelebA
    ba_excluded: np.ndarray  # bool [P, A]: BA undefined by construction (the protected attribute itself)
    meta: dict  # sizes etc. for the report

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _prefix(n: int, limit: int) -> slice:
    return slice(0, n if limit <= 0 else min(n, limit))


def planted_study_data(splits: planted_lib.PlantedSplits, dataset: str, *, max_train: int = 0,
                       max_eval: int = 0) -> StudyData:
    """`StudyData` from planted splits: attributes = class indicators + composites, protected = the trigger."""
    ds = data_lib.info(dataset)
    tr, va, te = splits.train, splits.val, splits.test
    st, sv, se = _prefix(len(tr.targets), max_train), _prefix(len(va.targets), max_eval), \
        _prefix(len(te.targets), max_eval)
    names = tuple(tr.names)
    norm = lambda x: data_lib.normalize(x, ds.mean, ds.std)  # noqa: E731
    y_train = np.asarray(tr.targets[st], np.int32)
    meta = {"source": dataset, "target": names[splits.target_index], "p1": splits.config.p1,
            "p0": splits.config.p0, "test_p1": splits.config.test_p1, "test_p0": splits.config.test_p0,
            "trigger": splits.config.trigger,
            "n_train": int(y_train.shape[0]), "n_val": int(va.targets[sv].shape[0]),
            "n_test": int(te.targets[se].shape[0])}
    return StudyData(
        norm(tr.images[st]), jnp.asarray(y_train), norm(va.images[sv]), np.asarray(va.targets[sv], np.int32),
        norm(te.images[se]), np.asarray(te.targets[se], np.int32), names, (TRIGGER,),
        np.asarray(va.protected[sv], np.int32)[None], np.asarray(te.protected[se], np.int32)[None],
        np.asarray(tr.pf, float)[None], np.asarray(tr.nf, float)[None], y_train.mean(axis=0).astype(float),
        np.asarray(te.protected[se], np.int32), np.zeros((1, len(names)), bool), meta)


def celeba_study_data(train_split: data_lib.Split, val_split: data_lib.Split, test_split: data_lib.Split,
                      protected: Sequence[str], *, max_train: int = 0, max_eval: int = 0) -> StudyData:
    """`StudyData` from CelebA splits (labels int32 [N, 40] in `CELEB_A_ATTRIBUTES` order)."""
    ds = data_lib.info("celeb_a")
    names = CELEB_A_ATTRIBUTES
    parts = []
    for split, lim, what in ((train_split, max_train, "train"), (val_split, max_eval, "validation"),
                             (test_split, max_eval, "test")):
        y = np.asarray(split.labels)
        if y.ndim != 2 or y.shape[1] != len(names):
            raise ValueError(f"celeb_a {what}: labels of shape {y.shape}, expected [N, {len(names)}]")
        s = _prefix(len(y), lim)
        parts.append((split.images[s], y[s].astype(np.int32)))
    (xt, yt), (xv, yv), (xe, ye) = parts
    idx = [names.index(p) for p in protected]
    pf, nf = zip(*(B.train_prevalence(yt, yt[:, i]) for i in idx))
    excluded = np.zeros((len(idx), len(names)), bool)
    excluded[np.arange(len(idx)), idx] = True
    norm = lambda x: data_lib.normalize(x, ds.mean, ds.std)  # noqa: E731
    meta = {"source": "celeb_a", "image_size": list(xt.shape[1:3]), "n_train": int(len(yt)),
            "n_val": int(len(yv)), "n_test": int(len(ye))}
    return StudyData(norm(xt), jnp.asarray(yt), norm(xv), yv, norm(xe), ye, tuple(names), tuple(protected),
                     yv[:, idx].T.copy(), ye[:, idx].T.copy(), np.stack(pf).astype(float),
                     np.stack(nf).astype(float), yt.mean(axis=0).astype(float), None, excluded, meta)


def load_study_data(cfg: Any) -> StudyData:
    """Load the configured dataset (no network unless ``config.data.download``)."""
    ds = cfg.dataset
    max_train, max_eval = int(cfg.data.max_train_examples), int(cfg.data.max_eval_examples)
    if ds in PLANTED_SOURCE:
        src = PLANTED_SOURCE[ds]
        p = cfg.data.planted
        pcfg = planted_lib.PlantedConfig(dataset=src, target=p.target or None, p1=p.p1, p0=p.p0,
                                         test_p1=p.test_p1, test_p0=p.test_p0, trigger=p.trigger,
                                         patch_size=p.patch_size, corner=p.corner, val_size=p.val_size,
                                         key_seed=p.key_seed)
        kw = dict(source_dir=cfg.data.source_dir or None, tfds_dir_=cfg.data.tfds_dir or None)
        tr, te = data_lib.load_split(src, "train", **kw), data_lib.load_split(src, "test", **kw)
        splits = planted_lib.build_planted(pcfg, tr.images, tr.labels, te.images, te.labels)
        return planted_study_data(splits, src, max_train=max_train, max_eval=max_eval)
    size = tuple(int(v) for v in cfg.data.image_size)
    kw = dict(route="tfds", tfds_dir_=cfg.data.tfds_dir or None, download=bool(cfg.data.download),
              image_size=size)
    splits = [data_lib.load_split("celeb_a", s, **kw) for s in ("train", "validation", "test")]
    return celeba_study_data(*splits, tuple(cfg.data.protected), max_train=max_train, max_eval=max_eval)


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
# evaluation (pure functions of logits and labels)
# ================================================================================================================
def _frame(metrics: dict[str, np.ndarray], names: Sequence[str], *, scheme: str, protected: str,
           notes: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    f = B.metrics_frame(metrics, names)
    f.insert(2, "scheme", scheme)
    f.insert(3, "protected", protected)
    f["note"] = ""
    for metric, reason in (notes or {}).items():
        r = np.asarray(reason, dtype=object)
        r = r[None] if r.ndim == 1 else r
        sel = f["metric"] == metric
        f.loc[sel, "note"] = [r[s, list(names).index(a)] for s, a in zip(f.loc[sel, "seed"], f.loc[sel, "attribute"])]
    return f


def _group_metrics(yhat: np.ndarray, data: StudyData, p: int) -> tuple[dict, dict]:
    y, g = data.y_test, data.g_test[p]
    ba = np.array(B.bias_amplification(yhat, y, g, data.pf[p], data.nf[p]), dtype=float)
    reason = np.array(B.bias_amplification_reasons(yhat, y, g, data.pf[p], data.nf[p]), dtype=object)
    exc = np.broadcast_to(data.ba_excluded[p], ba.shape)
    ba[exc] = np.nan
    reason[exc] = "protected_attribute_itself"
    ge = B.group_error_rates(yhat, y, g)
    m = {"ba": ba, "dfpr": ge.delta_fpr, "dfnr": ge.delta_fnr, "fpr_g0": ge.fpr[..., 0, :],
         "fpr_g1": ge.fpr[..., 1, :], "fnr_g0": ge.fnr[..., 0, :], "fnr_g1": ge.fnr[..., 1, :]}
    return m, {"ba": reason}


def population_metrics(val_logits, test_logits, data: StudyData) -> pd.DataFrame:
    """Every §6 metric of one population (per seed × attribute) as a tidy frame.

    Columns: seed, attribute, scheme, protected, metric, value, note (why a BA is NaN). Schemes: 'default' (τ = 0),
    'global' (calibrated on validation, group-agnostic), 'group' (calibrated within each protected group; its rows
    carry that protected attribute). Threshold-free metrics (auc, uncertainty, ece) and bba (τ = 0 always) appear
    once, under 'default'; protected is '' for metrics that involve no group.
    """
    zv, zt = np.asarray(val_logits, float), np.asarray(test_logits, float)
    names, y = data.names, data.y_test
    prob = B.sigmoid(zt)
    frames = [_frame({"auc": B.auc(prob, y), "uncertainty": B.uncertainty(zt), "ece": B.ece(prob, y)}, names,
                     scheme="default", protected="")]
    if data.triggered is not None:
        frames.append(_frame({"bba": B.trigger_bias_amplification(zt, y, data.triggered)}, names,
                             scheme="default", protected=data.protected[0]))
    schemes = [("default", "", B.predict(zt, 0.0)),
               ("global", "", B.predict(zt, B.calibrate_thresholds(zv, data.y_val)))]
    for p, name in enumerate(data.protected):
        tau = B.calibrate_thresholds_by_group(zv, data.y_val, data.g_val[p])
        schemes.append(("group", name, B.predict_by_group(zt, tau, data.g_test[p])))
    for scheme, prot, yhat in schemes:
        free = {"acc": B.accuracy(yhat, y), "predpos": B.positive_rate(yhat),
                "r2": B.interdependence(yhat).r2}
        frames.append(_frame(free, names, scheme=scheme, protected=prot))
        for p, name in enumerate(data.protected):
            if scheme == "group" and name != prot:
                continue
            m, notes = _group_metrics(yhat, data, p)
            frames.append(_frame(m, names, scheme=scheme, protected=name, notes=notes))
    out = pd.concat(frames, ignore_index=True)
    return out[["seed", "attribute", "scheme", "protected", "metric", "value", "note"]]


def relative_error_changes(dense: pd.DataFrame, sparse: pd.DataFrame) -> pd.DataFrame:
    """(sparse − dense)/dense of FPR/FNR per group (seed-paired), as extra rows '<metric>_rel'."""
    keys = ["seed", "attribute", "scheme", "protected", "metric"]
    rates = ("fpr_g0", "fpr_g1", "fnr_g0", "fnr_g1")
    d = dense[dense["metric"].isin(rates)][keys + ["value"]]
    s = sparse[sparse["metric"].isin(rates)][keys + ["value"]]
    m = s.merge(d, on=keys, suffixes=("", "_dense"))
    m["value"] = B.relative_change(m["value"].to_numpy(), m["value_dense"].to_numpy())
    m["metric"] = m["metric"] + "_rel"
    m["note"] = ""
    return m[keys[:4] + ["metric", "value", "note"]].reset_index(drop=True)


def metric_array(frame: pd.DataFrame, metric: str, names: Sequence[str], *, scheme: str = "default",
                 protected: str = "") -> np.ndarray:
    """[S, A] array of one metric from a `population_metrics` frame (attributes in ``names`` order)."""
    f = frame[(frame["metric"] == metric) & (frame["scheme"] == scheme) & (frame["protected"] == protected)]
    if f.empty:
        raise ValueError(f"frame: no rows for metric={metric!r}, scheme={scheme!r}, protected={protected!r}")
    return f.pivot(index="seed", columns="attribute", values="value").reindex(columns=list(names)).to_numpy(float)


def random_baseline(key: jax.Array, n_flagged: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(flags, scores): U(0, 1) scores and the ``n_flagged`` highest flagged (the same flagged fraction as the
    criterion it is compared with)."""
    s = np.asarray(jax.random.uniform(key, shape), float)
    flags = np.zeros(s.size, bool)
    flags[np.argsort(-s, axis=None, kind="stable")[:n_flagged]] = True
    return flags.reshape(shape), s


def identification_tables(dense_test_logits, sparse_test_logits, data: StudyData, *, band: float = 0.4,
                          bands: Sequence[float] = (0.3, 0.45), key: jax.Array | None = None,
                          ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """CIEs of the pruned population vs the dense one (τ = 0, modal predictions over seeds, sample-attribute pairs)
    and the dense-only criteria scored against them.

    Criteria: 'uncertainty' (U = 1[|p̄ − .5| < band], score −|p̄ − .5|), 'uncertainty_<b>' for the other bands
    (same score), 'disagreement' (dense seeds disagree; score −|mean vote − .5|) and 'random' (U(0,1) scores, as
    many flagged as 'uncertainty'). Returns (cies per attribute, identification rows (criterion, protected, subset,
    n, n_cie, n_flagged, flagged_fraction, precision, recall, f1, enrichment, auroc), the 'uncertainty' flags
    [N, A]).
    """
    zd, zs = np.asarray(dense_test_logits, float), np.asarray(sparse_test_logits, float)
    names, y = list(data.names), data.y_test
    yd, ys = B.predict(zd, 0.0), B.predict(zs, 0.0)
    ch = B.identify_cies(yd, ys, y)
    pbar = B.dense_mean_probability(zd)
    score = B.susceptibility_score(pbar)
    flags = B.susceptibility_flags(pbar, band)
    crits: dict[str, tuple[np.ndarray, np.ndarray]] = {DEFAULT_CRITERION: (flags, score)}
    for b in bands:
        crits[f"uncertainty_{b:g}"] = (B.susceptibility_flags(pbar, b), score)
    crits["disagreement"] = (B.disagreement_flags(yd), -np.abs(yd.mean(axis=0) - 0.5))
    key = jax.random.fold_in(jax.random.key(0), _RANDOM_BASELINE) if key is None else key
    crits["random"] = random_baseline(key, int(flags.sum()), flags.shape)
    rows = []
    for crit, (u, s) in crits.items():
        f = B.evaluate_flags(u, ch.cie, s)
        f.insert(0, "protected", "")
        f.insert(0, "criterion", crit)
        rows.append(f)
        for p, name in enumerate(data.protected):
            f = B.evaluate_flags(u, ch.cie, s, data.g_test[p])
            f = f[f["subset"] != "all"].copy()
            f.insert(0, "protected", name)
            f.insert(0, "criterion", crit)
            rows.append(f)
    ident = pd.concat(rows, ignore_index=True).drop(columns=["attribute"])
    n = y.shape[0]
    cie_rows = [{"attribute": "all", "n": int(ch.cie.size), "cie_rate": float(ch.cie.mean()),
                 "harmful_rate": float(ch.harmful.mean()), "flagged_fraction": float(flags.mean()),
                 "dense_mode_acc": float((ch.dense_mode == y).mean()),
                 "sparse_mode_acc": float((ch.sparse_mode == y).mean())}]
    for j, a in enumerate(names):
        cie_rows.append({"attribute": a, "n": n, "cie_rate": float(ch.cie[:, j].mean()),
                         "harmful_rate": float(ch.harmful[:, j].mean()), "flagged_fraction": float(flags[:, j].mean()),
                         "dense_mode_acc": float((ch.dense_mode[:, j] == y[:, j]).mean()),
                         "sparse_mode_acc": float((ch.sparse_mode[:, j] == y[:, j]).mean())})
    return pd.DataFrame(cie_rows), ident, flags


def attenuation_frame(dense_test_logits, sparse_test_logits, data: StudyData, flags) -> pd.DataFrame:
    """`bias.attenuation_table` for every protected attribute (flagged samples excluded / given the dense mode)."""
    yd = B.predict(np.asarray(dense_test_logits, float), 0.0)
    ys = B.predict(np.asarray(sparse_test_logits, float), 0.0)
    frames = []
    for p, name in enumerate(data.protected):
        t = B.attenuation_table(yd, ys, data.y_test, data.g_test[p], data.pf[p], data.nf[p], flags,
                                names=data.names)
        t.loc[t["attribute"].isin([a for a, x in zip(data.names, data.ba_excluded[p]) if x]), "ba"] = np.nan
        t.insert(0, "protected", name)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def attribute_frames(dense: pd.DataFrame, sparse: pd.DataFrame, data: StudyData,
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attribute-level table (seed means) and regression of ΔBA across attributes (OLS HC3 + Spearman) on dense
    predictors and, as a variant, on Δuncertainty/ΔR², per protected attribute."""
    names = data.names
    tables, regs = [], []
    arr = lambda f, m, prot="": metric_array(f, m, names, protected=prot)  # noqa: E731
    for p, name in enumerate(data.protected):
        t = B.attribute_table(
            names, ba_dense=arr(dense, "ba", name), ba_sparse=arr(sparse, "ba", name),
            dense_uncertainty=arr(dense, "uncertainty"), dense_r2=arr(dense, "r2"), prevalence=data.prevalence,
            pf=data.pf[p], nf=data.nf[p], sparse_uncertainty=arr(sparse, "uncertainty"),
            sparse_r2=arr(sparse, "r2"))
        t.insert(0, "protected", name)
        tables.append(t)
        for label, preds in (("dense", B.DENSE_PREDICTORS), ("delta", B.DELTA_PREDICTORS)):
            r = B.attribute_regression(t, predictors=preds)
            r.insert(0, "predictors", label)
            r.insert(0, "protected", name)
            regs.append(r)
    return pd.concat(tables, ignore_index=True), pd.concat(regs, ignore_index=True)


def _tag(df: pd.DataFrame, population: str, sparsity: float) -> pd.DataFrame:
    """Add the unit's sparsity and population ('dense'/'sparse'; the attenuation table has its own per-row
    population column, which is kept)."""
    df = df.copy()
    df.insert(0, "sparsity", float(sparsity))
    if "population" not in df.columns:
        df.insert(0, "population", population)
    return df


def evaluate_sparse(dense_logits: dict, sparse_logits: dict, dense_metrics: pd.DataFrame, data: StudyData,
                    sparsity: float, cfg: Any) -> dict[str, pd.DataFrame]:
    """All evaluation tables of one sparsity (the keys of `EVAL_TABLES`)."""
    m = population_metrics(sparse_logits["val"], sparse_logits["test"], data)
    m = pd.concat([m, relative_error_changes(dense_metrics, m)], ignore_index=True)
    key = jax.random.fold_in(jax.random.key(int(cfg.seed)), _RANDOM_BASELINE)
    cies, ident, flags = identification_tables(dense_logits["test"], sparse_logits["test"], data,
                                               band=float(cfg.eval.band), bands=tuple(cfg.eval.bands), key=key)
    att = attenuation_frame(dense_logits["test"], sparse_logits["test"], data, flags)
    attrs, reg = attribute_frames(dense_metrics, m, data)
    out = {"metrics": m, "cies": cies, "identification": ident, "attenuation": att, "attributes": attrs,
           "regression": reg}
    return {k: _tag(v, "sparse", sparsity) for k, v in out.items()}


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

    def load_logits(self, key: str) -> dict:
        with np.load(self.logits_path(key)) as z:
            return {"val": z["val"], "test": z["test"]}

    def save_logits(self, key: str, variables: PyTree) -> None:
        arrays = {"val": predict_logits(self.spec, variables, self.data.x_val, self.cfg),
                  "test": predict_logits(self.spec, variables, self.data.x_test, self.cfg)}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(self.logits_path(key), buf.getvalue())


def sparsity_key(s: float) -> str:
    return make_key(sparsity=float(s))


def _prepare(cfg: Any) -> StudyData:
    """Load the data and check what depends on it (batch sizes), before the workdir is claimed."""
    data = spine.load_guard(lambda: load_study_data(cfg), cfg.data.tfds_dir or data_lib.tfds_dir())
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
    progress = spine.Progress(bool(_field(cfg, "progress", True)))
    epochs = int(cfg.train.epochs)
    with progress.bar(epochs * spine.chunks(n_seeds, int(cfg.train.chunk)), "dense training", "epoch") as bar, \
            r.timed("dense"):
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
    if r.logits_path("dense").is_file():
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
        r.wd.append_table("metrics", DENSE_KEY, _tag(population_metrics(lg["val"], lg["test"], r.data), "dense", 0.0))
    r.computed["evaluate"] += 1


def _prune_unit(r: _Run, s: float, key: str) -> None:
    """Prune (or restore) the population at sparsity ``s`` and store its logits; diverged seeds are recorded."""
    ck = f"sparse-{key}"
    if checkpoints.exists(r.ckdir(), ck):
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
            r.wd.append_table("prune", key, _tag(pd.DataFrame(rows), "sparse", s), overwrite=True)
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
    dense_m = pd.read_parquet(r.wd.part_path("metrics", DENSE_KEY))
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
    with spine.Progress(bool(_field(r.cfg, "progress", True))).bar(len(sparsities), "prune + evaluate",
                                                                   "sparsity") as bar:
        for s in sparsities:
            key = sparsity_key(s)
            bar.set_postfix(sparsity=s)
            if r.logits_path(key).is_file():
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
    echo = echo or (lambda s: print(s, file=sys.stderr))
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
        if report:
            from fairprune_jax import bias_study_report

            with r.timed("report"):
                report_path = bias_study_report.write_report(wd)
            echo(bias_study_report.terminal_summary(wd))
            echo(f"report: {report_path}")
    echo("this run: computed " + (", ".join(f"{k}={v}" for k, v in sorted(r.computed.items())) or "nothing")
         + "; skipped " + (", ".join(f"{k}={v}" for k, v in sorted(r.skipped.items())) or "nothing")
         + "; seconds " + ", ".join(f"{k}={v:.1f}" for k, v in r.seconds.items()))
    return RunSummary(wd.path, dict(r.computed), dict(r.skipped), dict(r.seconds), report_path)


IGNORED_FIELDS = ("workdir", "fresh", "progress", "mesh", "eval.chunk")  # never change a result
