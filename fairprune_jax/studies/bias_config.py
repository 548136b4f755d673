"""The bias study's config check: every bad value is refused at the boundary with a ValueError naming its field.

The schema (defaults and variants) is `fairprune_jax.studies.schema.bias_config`; this module only reads a config.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from fairprune_jax import models as models_lib
from fairprune_jax import planted as planted_lib
from fairprune_jax import scores
from fairprune_jax.studies import spine
from fairprune_jax.studies.bias_data import CELEB_A_ATTRIBUTES, PLANTED_SOURCE

DATASETS = ("planted_mnist", "planted_fashion_mnist", "celeb_a")
PROTOCOLS = ("gmp", "one_shot")


def config_field(cfg: Any, dotted: str, default: Any = None) -> Any:
    """The value at ``dotted`` (e.g. ``"prune.gmp.start"``) of a ConfigDict, dict or object; ``default`` where a
    part is missing or the value is None."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part, None) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def _int(cfg: Any, dotted: str, lo: int) -> int:
    """The integer at ``dotted``, refused unless it is >= ``lo`` (bools are not integers here)."""
    v = config_field(cfg, dotted)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"config.{dotted}: {v!r} is not an integer >= {lo}")
    return int(v)


def _prob(cfg: Any, dotted: str) -> float:
    """The number at ``dotted``, refused unless it lies in [0, 1]."""
    v = config_field(cfg, dotted)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"config.{dotted}: {v!r} is not a probability in [0, 1]")
    return float(v)


def validate_config(cfg: Any) -> None:
    """Refuse bad values at the boundary with a ValueError naming the config field."""
    ds = config_field(cfg, "dataset")
    if ds not in DATASETS:
        raise ValueError(f"config.dataset: unknown dataset {ds!r}; known: {', '.join(DATASETS)}")
    model = config_field(cfg, "model")
    if model not in models_lib.available():
        raise ValueError(f"config.model: unknown model {model!r}; known: {', '.join(models_lib.available())}")
    _int(cfg, "num_seeds", 1)
    _int(cfg, "seed", 0)
    protocol = config_field(cfg, "prune.protocol")
    if protocol not in PROTOCOLS:
        raise ValueError(f"config.prune.protocol: unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    crit = config_field(cfg, "prune.criterion")
    if crit not in scores.CRITERIA:
        raise ValueError(f"config.prune.criterion: unknown criterion {crit!r}; known: {', '.join(scores.CRITERIA)}")
    sp = config_field(cfg, "prune.sparsities")
    spine.check_sparsities((sp,) if isinstance(sp, (int, float)) else tuple(sp or ()))
    spine.check_training(cfg, "train", min_epochs=1)
    spine.check_training(cfg, "finetune", min_epochs=1 if protocol == "gmp" else 0)
    for part in ("train", "finetune"):
        name = config_field(cfg, f"{part}.optimizer.name")
        if name not in ("sgd", "adam"):
            raise ValueError(f"config.{part}.optimizer.name: unknown optimizer {name!r}; use 'sgd' or 'adam'")
    if protocol == "gmp":
        ft = _int(cfg, "finetune.epochs", 1)
        initial = _prob(cfg, "prune.gmp.initial")
        if initial >= 1.0:
            raise ValueError(f"config.prune.gmp.initial: {initial} outside [0, 1)")
        start = _int(cfg, "prune.gmp.start", 0)
        _int(cfg, "prune.gmp.every", 1)
        end = _int(cfg, "prune.gmp.end", 0) or max(ft - 1, start + 1)
        if end <= start or start >= ft:
            raise ValueError(f"config.prune.gmp.end: need start < end and start < finetune.epochs ({ft}); got "
                             f"start={start}, end={end}")
    if config_field(cfg, "eval.r2_constant", "authors") not in ("authors", "nan"):
        raise ValueError(f"config.eval.r2_constant: {config_field(cfg, 'eval.r2_constant')!r} is not 'authors' or 'nan'")
    band = config_field(cfg, "eval.band")
    for b in (band, *tuple(config_field(cfg, "eval.bands", ()) or ())):
        if not isinstance(b, (int, float)) or not 0.0 < float(b) < 0.5:
            raise ValueError(f"config.eval.band(s): {b!r} outside (0, 0.5)")
    _int(cfg, "eval.batch_size", 1)
    _int(cfg, "data.max_train_examples", 0)
    _int(cfg, "data.max_eval_examples", 0)
    for f in ("data.source_dir", "data.tfds_dir"):
        d = config_field(cfg, f, "")
        if d and not pathlib.Path(os.fspath(d)).expanduser().is_dir():
            if f == "data.tfds_dir" and config_field(cfg, "data.download", False):
                continue
            raise ValueError(f"config.{f}: folder {d!r} does not exist")
    if ds in PLANTED_SOURCE:
        src = PLANTED_SOURCE[ds]
        d = config_field(cfg, "data.source_dir", "")
        if d and not (pathlib.Path(os.fspath(d)).expanduser() / src).is_dir():
            raise ValueError(f"config.data.source_dir: folder {d!r} has no {src}/ subfolder")
        for f in ("p1", "p0", "test_p1", "test_p0"):
            _prob(cfg, f"data.planted.{f}")
        target = config_field(cfg, "data.planted.target", "")
        names = planted_lib.attribute_names(src)
        if target and target not in names:
            raise ValueError(f"config.data.planted.target: {target!r} not in {names}")
        trig = config_field(cfg, "data.planted.trigger")
        if trig not in planted_lib.TRIGGERS:
            raise ValueError(f"config.data.planted.trigger: {trig!r} not in {planted_lib.TRIGGERS}")
        corner = config_field(cfg, "data.planted.corner")
        if corner not in planted_lib.CORNERS:
            raise ValueError(f"config.data.planted.corner: {corner!r} not in {planted_lib.CORNERS}")
        ps = _int(cfg, "data.planted.patch_size", 1)
        if ps > 28:
            raise ValueError(f"config.data.planted.patch_size: {ps} does not fit a 28×28 image")
        _int(cfg, "data.planted.val_size", 1)
        _int(cfg, "data.planted.key_seed", 0)
    else:
        size = tuple(config_field(cfg, "data.image_size", ()) or ())
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(f"config.data.image_size: {size!r} is not a pair of positive integers")
        prot = tuple(config_field(cfg, "data.protected", ()) or ())
        if not prot:
            raise ValueError("config.data.protected: no protected attribute given")
        for p in prot:
            if p not in CELEB_A_ATTRIBUTES:
                raise ValueError(f"config.data.protected: {p!r} is not a CelebA attribute")
