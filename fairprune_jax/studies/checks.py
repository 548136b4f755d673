"""The one config validator both studies run before a workdir is claimed: every bad value is refused with a
``ValueError`` ``config.<field>: <what is wrong>`` (the entry points print it as one ``error:`` line, exit 2).

`check_common` covers the shared sections (seeds, models, criteria, protocol, sparsities, the training sections
with their optimiser and schedule names, every batch size and chunk, the GMP window, the divergence guard, the
data folders); each study adds what only it has (`studies.recall.validate_config`, `studies.bias_config`).
`check_batch_sizes` runs once the data are loaded (still before the claim).
"""
from __future__ import annotations

import math
import numbers
import os
import pathlib
from typing import Any, Iterable, NoReturn

from fairprune_jax import models as models_lib
from fairprune_jax import optim, scores
from fairprune_jax.studies import schema
from fairprune_jax.train_config import AUGMENTATIONS


def fail(field: str, message: str) -> NoReturn:
    """Raise the one validation error style: ``config.<field>: <message>``."""
    raise ValueError(f"config.{field}: {message}")


def field(cfg: Any, dotted: str, default: Any = None) -> Any:
    """The value at ``dotted`` (e.g. ``"prune.gmp.start"``) of a ConfigDict, dict or object; ``default`` where a
    part is missing or the value is None."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part, None) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def integer(cfg: Any, dotted: str, lo: int) -> int:
    """The integer at ``dotted``, refused unless it is >= ``lo`` (bools and floats are not integers here)."""
    v = field(cfg, dotted)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        fail(dotted, f"{v!r} is not an integer >= {lo}")
    return int(v)


def number(cfg: Any, dotted: str, lo: float, hi: float = math.inf, *, open_lo: bool = False) -> float:
    """The finite number at ``dotted`` in [lo, hi] (or (lo, hi] with ``open_lo``)."""
    v = field(cfg, dotted)
    ok = not isinstance(v, (bool, str)) and isinstance(v, numbers.Real) and math.isfinite(float(v))
    if not ok or float(v) < lo or float(v) > hi or (open_lo and float(v) == lo):
        bound = (f"> {lo:g}" if open_lo else f">= {lo:g}") + (f" and <= {hi:g}" if math.isfinite(hi) else "")
        fail(dotted, f"{v!r}; need a finite number {bound}")
    return float(v)


def probability(cfg: Any, dotted: str) -> float:
    """The number at ``dotted``, refused unless it lies in [0, 1]."""
    v = field(cfg, dotted)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
        fail(dotted, f"{v!r} is not a probability in [0, 1]")
    return float(v)


def names(cfg: Any, dotted: str, known: Iterable[str], what: str) -> tuple[str, ...]:
    """A non-empty list of distinct names at ``dotted``, each one of ``known``."""
    values = field(cfg, dotted, ())
    if isinstance(values, str):
        fail(dotted, f"{values!r} is one name; give a list, e.g. ('{values}',)")
    values = tuple(values)
    known = list(known)
    if not values:
        fail(dotted, f"empty; give at least one {what}")
    for v in values:
        if v not in known:
            fail(dotted, f"unknown {what} {v!r}; known: {', '.join(known)}")
    if len(set(values)) != len(values):
        fail(dotted, f"duplicates in {values}")
    return values


def check_sparsities(values: Any, field_name: str = "prune.sparsities") -> None:
    """A non-empty grid of distinct sparsities in (0, 1): 0 is the dense model itself (its rows are the dense
    population's), so it is refused rather than computed and silently dropped from the statistics."""
    if isinstance(values, (int, float)):
        values = (values,)
    if not values:
        fail(field_name, "empty; give at least one target sparsity")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0:
            fail(field_name, f"{s!r} outside [0, 1)")
        if float(s) == 0.0:
            fail(field_name, "0 is the dense model (already in every table as the dense population); give targets "
                             "in (0, 1)")
    if len({float(s) for s in values}) != len(values):
        fail(field_name, f"repeated values in {tuple(values)}")


def check_training(config: Any, section: str, *, min_epochs: int) -> None:
    """A training section (train / finetune): epochs, batch size, chunk, the optimiser (name and every number),
    the learning-rate schedule (name, boundaries) and the augmentation."""
    tcfg = config[section]
    for name, lo in (("epochs", min_epochs), ("batch_size", 1), ("chunk", 0)):
        v = tcfg.get(name, lo)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            fail(f"{section}.{name}", f"{v!r} is not an integer >= {lo}")
    lr = field(tcfg, "optimizer.lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        fail(f"{section}.optimizer.lr", f"{lr!r}; need a finite positive learning rate")
    for name in ("momentum", "weight_decay"):
        v = tcfg.optimizer.get(name, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            fail(f"{section}.optimizer.{name}", f"{v!r}; need a finite number >= 0")
    try:
        optim.optimizer_fields(tcfg.optimizer, where=f"{section}.optimizer")
        optim.make_schedule(tcfg.get("schedule", None), lr=1.0, steps_per_epoch=1, epochs=max(int(tcfg.epochs), 1))
    except ValueError as e:
        text = str(e)
        raise ValueError("config." + (text if text.startswith(section) else f"{section}.{text}")) from None
    for b in tuple(field(tcfg, "schedule.boundaries", ()) or ()):
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 0:
            fail(f"{section}.schedule.boundaries", f"{b!r} is not an epoch (an integer >= 0)")
    augment = tcfg.get("augment", "none") or "none"
    if augment not in AUGMENTATIONS:
        fail(f"{section}.augment", f"unknown augmentation {augment!r}; known: {', '.join(AUGMENTATIONS)}")


def check_gmp(config: Any, section: str) -> None:
    """The GMP window of ``prune.gmp`` over the epochs of ``section``: initial sparsity in [0, 1), start >= 0,
    every >= 1, and (``end`` 0 read as `schema.gmp_end`) start < end and at least one epoch after the last
    pruning epoch, so the final sparsity is reached."""
    initial = probability(config, "prune.gmp.initial")
    if initial >= 1.0:
        fail("prune.gmp.initial", f"{initial} outside [0, 1)")
    start = integer(config, "prune.gmp.start", 0)
    integer(config, "prune.gmp.every", 1)
    raw = integer(config, "prune.gmp.end", 0)
    epochs = int(config[section].epochs)
    end = schema.gmp_end(raw, start, epochs)
    if end <= start or start >= epochs or end > epochs:
        fail("prune.gmp.end", f"need start < end <= {section}.epochs ({epochs}) and start < {section}.epochs; "
                              f"got start={start}, end={end}" + (" (end = 0 reads as epochs − 1)" if not raw else ""))


def check_common(config: Any, *, protocols: Iterable[str], eval_chunk_min: int) -> None:
    """The fields both studies share; ``protocols`` are the study's registered protocol names."""
    names(config, "models", models_lib.available(), "model")
    integer(config, "num_seeds", 1)
    integer(config, "seed", 0)
    protocol = field(config, "prune.protocol")
    known = list(protocols)
    if protocol not in known:
        fail("prune.protocol", f"unknown protocol {protocol!r}; known: {', '.join(known)}")
    names(config, "prune.criteria", scores.CRITERIA, "criterion")
    number(config, "prune.lambda_up", 0.0)
    integer(config, "prune.grad_batch", 1)
    integer(config, "eval.batch_size", 1)
    integer(config, "eval.chunk", eval_chunk_min)
    integer(config, "data.max_train_examples", 0)
    number(config, "divergence.max_loss_ratio", 1.0, open_lo=True)
    for f in ("data.source_dir", "data.tfds_dir"):
        d = field(config, f, "")
        if d and not pathlib.Path(os.fspath(d)).expanduser().is_dir():
            if f == "data.tfds_dir" and field(config, "data.download", False):
                continue
            fail(f, f"folder {d} does not exist")


def check_batch_sizes(config: Any, n_train: int, sections: tuple[str, ...]) -> None:
    """Each section's batch size, and the gradient criteria's scoring batch, fit the (subsampled) training split:
    a larger one would train on nothing."""
    for section in sections:
        bs = int(config[section].batch_size)
        if bs > n_train:
            fail(f"{section}.batch_size", f"{bs} is larger than the training split ({n_train} examples after "
                                          "subsampling); lower it or use more data")
    gb = int(field(config, "prune.grad_batch", 128))
    if gb > n_train:
        fail("prune.grad_batch", f"{gb} is larger than the training split ({n_train} examples after subsampling)")
