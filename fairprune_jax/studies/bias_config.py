"""The bias study's config check: the shared checks (`studies.checks`) plus what only this study has; every bad
value is refused at the boundary with a ValueError naming its field.

The schema is `fairprune_jax.studies.schema.bias_config`; this module only reads a config.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

from fairprune_jax import planted as planted_lib
from fairprune_jax.studies import bias_layout, checks, runner
from fairprune_jax.studies.bias_data import CELEB_A_ATTRIBUTES, PLANTED_SOURCE

DATASETS = ("planted_mnist", "planted_fashion_mnist", "celeb_a")
PROTOCOLS = tuple(bias_layout.PROTOCOLS)
config_field = checks.field  # the dotted reader, where the bias study used to find it


def validate_config(cfg: Any) -> None:
    """Refuse bad values at the boundary with a ValueError naming the config field."""
    cfg = runner.normalize(cfg)
    ds = checks.field(cfg, "dataset")
    if ds not in DATASETS:
        checks.fail("dataset", f"unknown dataset {ds!r}; known: {', '.join(DATASETS)}")
    checks.check_common(cfg, protocols=bias_layout.PROTOCOLS, eval_chunk_min=0)
    for dotted, what in (("models", "model"), ("prune.criteria", "criterion")):
        values = tuple(checks.field(cfg, dotted))
        if len(values) != 1:
            checks.fail(dotted, f"{values}: a bias workdir holds one {what}; run one workdir per {what}")
    protocol = checks.field(cfg, "prune.protocol")
    checks.check_sparsities(checks.field(cfg, "prune.sparsities", ()))
    checks.check_training(cfg, "train", min_epochs=1)
    checks.check_training(cfg, "finetune", min_epochs=1 if protocol == "gmp" else 0)
    if protocol == "gmp":
        checks.check_gmp(cfg, "finetune")
    if checks.field(cfg, "eval.r2_constant", "authors") not in ("authors", "nan"):
        checks.fail("eval.r2_constant", f"{checks.field(cfg, 'eval.r2_constant')!r} is not 'authors' or 'nan'")
    band = checks.field(cfg, "eval.band")
    for b in (band, *tuple(checks.field(cfg, "eval.bands", ()) or ())):
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not 0.0 < float(b) < 0.5:
            checks.fail("eval.band(s)", f"{b!r} outside (0, 0.5)")
    checks.integer(cfg, "data.max_eval_examples", 0)
    if ds in PLANTED_SOURCE:
        _check_planted(cfg, PLANTED_SOURCE[ds])
    else:
        size = tuple(checks.field(cfg, "data.image_size", ()) or ())
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            checks.fail("data.image_size", f"{size!r} is not a pair of positive integers")
        prot = tuple(checks.field(cfg, "data.protected", ()) or ())
        if not prot:
            checks.fail("data.protected", "no protected attribute given")
        for p in prot:
            if p not in CELEB_A_ATTRIBUTES:
                checks.fail("data.protected", f"{p!r} is not a CelebA attribute")


def _check_planted(cfg: Any, src: str) -> None:
    """The planted data's fields: source folder, probabilities, target, trigger, corner, sizes."""
    d = checks.field(cfg, "data.source_dir", "")
    if d and not (pathlib.Path(os.fspath(d)).expanduser() / src).is_dir():
        checks.fail("data.source_dir", f"folder {d} has no {src}/ subfolder")
    for f in ("p1", "p0", "test_p1", "test_p0"):
        checks.probability(cfg, f"data.planted.{f}")
    target = checks.field(cfg, "data.planted.target", "")
    names = planted_lib.attribute_names(src)
    if target and target not in names:
        checks.fail("data.planted.target", f"{target!r} not in {names}")
    trig = checks.field(cfg, "data.planted.trigger")
    if trig not in planted_lib.TRIGGERS:
        checks.fail("data.planted.trigger", f"{trig!r} not in {planted_lib.TRIGGERS}")
    corner = checks.field(cfg, "data.planted.corner")
    if corner not in planted_lib.CORNERS:
        checks.fail("data.planted.corner", f"{corner!r} not in {planted_lib.CORNERS}")
    ps = checks.integer(cfg, "data.planted.patch_size", 1)
    if ps > 28:
        checks.fail("data.planted.patch_size", f"{ps} does not fit a 28×28 image")
    checks.integer(cfg, "data.planted.val_size", 1)
    checks.integer(cfg, "data.planted.key_seed", 0)
