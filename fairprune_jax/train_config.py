"""Reading a training section of a config (`epochs`, `batch_size`, `optimizer`, `schedule`, `augment`) and making
its optax transformation, cached per configuration so compiled training functions are reused across calls.
`fairprune_jax.train` re-exports everything here."""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
import optax

from fairprune_jax import optim


class TrainConfig(NamedTuple):
    """The fields `fit` reads from an ml_collections ConfigDict (see `fit`)."""

    epochs: int
    batch_size: int
    optimizer: Any
    schedule: Any
    augment: str = "none"


AUGMENTATIONS = ("none", "flip_crop")


def read_config(tcfg: Any, *, name: str = "tcfg") -> TrainConfig:
    """Validate and extract `epochs`, `batch_size`, `optimizer`, `schedule`, `augment` from a ConfigDict/dict.

    Errors name the field as ``<name>.<field>`` (e.g. ``name="train"`` gives ``train.optimizer.momentum``); the
    optimizer fields are checked by `optim.optimizer_fields`.
    """
    get = lambda n, d=None: optim._get(tcfg, n, d)  # noqa: E731
    epochs, batch = get("epochs"), get("batch_size", 128)
    if epochs is None:
        raise ValueError(f"{name}.epochs: need a non-negative integer, got None")
    epochs = optim.check_integer(epochs, f"{name}.epochs", minimum=0)
    batch = optim.check_integer(batch, f"{name}.batch_size", minimum=1)
    opt = get("optimizer")
    if opt is None:
        raise ValueError(f"{name}.optimizer: missing (fields name, lr, momentum, nesterov, weight_decay)")
    optim.optimizer_fields(opt, where=f"{name}.optimizer")
    augment = get("augment", "none") or "none"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"{name}.augment: unknown augmentation {augment!r}; known: {', '.join(AUGMENTATIONS)}")
    return TrainConfig(epochs, batch, opt, get("schedule", None), augment)


def freeze(cfg: Any) -> Any:
    """A hashable, order-independent copy of a (nested) ConfigDict/dict/list config."""
    if cfg is None or isinstance(cfg, (str, int, float, bool)):
        return cfg
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if isinstance(cfg, dict) or hasattr(cfg, "items"):
        return tuple(sorted((str(k), freeze(v)) for k, v in cfg.items()))
    if isinstance(cfg, (list, tuple)):
        return tuple(freeze(v) for v in cfg)
    if isinstance(cfg, np.ndarray):
        return tuple(cfg.tolist())
    return cfg


def _thaw(frozen: Any) -> Any:
    if isinstance(frozen, tuple) and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str)
                                         for i in frozen) and frozen:
        return {k: _thaw(v) for k, v in frozen}
    return frozen


@functools.lru_cache(maxsize=64)
def _cached_tx(opt: Any, sched: Any, steps: int, epochs: int) -> optax.GradientTransformation:
    return optim.make_optimizer(_thaw(opt), _thaw(sched), steps_per_epoch=steps, epochs=epochs)


def make_tx(tcfg: Any, n_train: int) -> tuple[optax.GradientTransformation, int]:
    """(optimizer, steps per epoch) for a training set of `n_train` examples (last partial batch dropped).

    The same configuration returns the same (cached) transformation object, so compiled training functions
    are reused across calls.
    """
    cfg = read_config(tcfg)
    steps = n_train // cfg.batch_size
    if steps < 1:
        raise ValueError(f"tcfg.batch_size: {cfg.batch_size} exceeds the {n_train} training examples")
    sched = freeze(cfg.schedule)
    constant = optim._get(cfg.schedule, "name", "constant") == "constant"
    # a constant schedule does not depend on the number of epochs: share one transformation (and compile)
    return _cached_tx(freeze(cfg.optimizer), sched, steps, 1 if constant else cfg.epochs), steps


def check_keep_epochs(keep_epochs: Any, epochs: int) -> tuple[int, ...]:
    """Sorted distinct epoch counts in [1, epochs]; ValueError naming `keep_epochs` otherwise."""
    out = []
    for e in tuple(keep_epochs or ()):
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 1 <= int(e) <= epochs:
            raise ValueError(f"keep_epochs: {e!r} is not an epoch count in [1, {epochs}]")
        out.append(int(e))
    return tuple(sorted(set(out)))
