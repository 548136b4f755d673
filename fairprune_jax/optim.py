"""Optimisers, learning-rate schedules and losses (optax), built from a ConfigDict or plain kwargs.

Weight decay is COUPLED L2: `optax.add_decayed_weights(wd)` runs before the momentum/Adam transform, so the
decay term enters the momentum buffer exactly as PyTorch's `SGD(weight_decay=...)` does. This is the objective
L_CE + (wd/2)‖w‖² that the UP score assumes (docs/methods.md §4). optax's momentum (`trace`: m ← g + μ·m, then
w ← w − lr·m) is PyTorch's SGD without dampening; `nesterov=True` matches PyTorch's Nesterov variant.

Config fields (all optional except `lr`):
  optimizer: name ("sgd" | "adam"), lr, momentum (sgd; 0 = plain SGD), nesterov (sgd), weight_decay,
             b1, b2, eps (adam); the numbers must be finite and >= 0 (`optimizer_fields` refuses others, naming
             the field)
  schedule:  name ("constant" | "step" | "cosine"), boundaries (epochs, for "step"), factor (0.1, "step"),
             warmup_epochs (cosine and step; linear warm-up from lr/warmup_steps), end_value (cosine, 0)
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]


def _get(cfg: Any, name: str, default: Any) -> Any:
    """Field of a ConfigDict / dict / None, with a default."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(name, default)
        return default if value is None else value
    return getattr(cfg, name, default)


def check_number(value: Any, field: str, *, minimum: float = 0.0) -> float:
    """``value`` as a finite float >= ``minimum``; ValueError naming ``field`` otherwise (bools and strings too)."""
    if isinstance(value, (bool, str)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < minimum:
        raise ValueError(f"{field}: need a finite number >= {minimum:g}, got {value!r}")
    return x


def check_integer(value: Any, field: str, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (integral floats such as 128.0 pass); ValueError naming ``field``."""
    ok = not isinstance(value, (bool, str)) and isinstance(value, numbers.Real) and math.isfinite(float(value))
    if not ok or float(value) != int(value) or value < minimum:
        raise ValueError(f"{field}: need an integer >= {minimum}, got {value!r}")
    return int(value)


OPTIMIZER_DEFAULTS = {"name": "sgd", "lr": None, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0,
                      "b1": 0.9, "b2": 0.999, "eps": 1e-8}


def optimizer_fields(optimizer: Any = None, *, where: str = "optimizer", **overrides: Any) -> dict[str, Any]:
    """The optimizer fields of a ConfigDict/dict (keyword overrides win), validated, with defaults filled in.

    ValueError naming ``<where>.<field>`` for an unknown name, a missing lr, or a number (lr, momentum,
    weight_decay, b1, b2, eps) that is not finite and >= 0: a negative momentum or weight decay would otherwise be
    dropped silently and a negative lr would ascend the loss.
    """
    get = lambda n: overrides.get(n, _get(optimizer, n, OPTIMIZER_DEFAULTS[n]))  # noqa: E731
    out = {n: get(n) for n in OPTIMIZER_DEFAULTS}
    if out["name"] not in ("sgd", "adam"):
        raise ValueError(f"{where}.name: unknown optimizer {out['name']!r}; use 'sgd' or 'adam'")
    if out["lr"] is None:
        raise ValueError(f"{where}.lr: missing learning rate")
    for n in ("lr", "momentum", "weight_decay", "b1", "b2", "eps"):
        out[n] = check_number(out[n], f"{where}.{n}")
    if isinstance(out["nesterov"], str) or out["nesterov"] not in (True, False):
        raise ValueError(f"{where}.nesterov: expected a bool, got {out['nesterov']!r}")
    out["nesterov"] = bool(out["nesterov"])
    return out


def make_schedule(cfg: Any = None, *, lr: float | None = None, steps_per_epoch: int, epochs: int,
                  **overrides: Any) -> Schedule:
    """Learning rate as a function of the optimizer step count.

    "constant": lr. "step": lr·factor^(number of boundaries ≤ epoch), boundaries in epochs (PyTorch MultiStepLR
    with per-step granularity: the drop happens at the first step of the boundary epoch). "cosine": linear
    warm-up over `warmup_epochs` (lr·(k+1)/W at step k < W), then cosine decay from lr to `end_value` at the end
    of training.
    """
    get = lambda n, d: overrides.get(n, _get(cfg, n, d))  # noqa: E731
    name = get("name", "constant")
    base = check_number(lr if lr is not None else get("lr", 0.0), "lr")
    if steps_per_epoch <= 0 or epochs < 0:
        raise ValueError(f"schedule: steps_per_epoch={steps_per_epoch} and epochs={epochs} must be positive")
    warmup = int(round(float(get("warmup_epochs", 0)) * steps_per_epoch))
    total = max(int(epochs) * steps_per_epoch, 1)

    def warm(step: jax.Array, value: jax.Array) -> jax.Array:
        if warmup <= 0:
            return value
        return jnp.where(step < warmup, base * (step + 1) / warmup, value)

    if name == "constant":
        return lambda step: warm(step, jnp.asarray(base, jnp.float32))
    if name == "step":
        factor = float(get("factor", 0.1))
        bounds = jnp.asarray([int(b) * steps_per_epoch for b in get("boundaries", ())] or [total + 1], jnp.int32)
        has = len(tuple(get("boundaries", ()))) > 0

        def step_fn(step: jax.Array) -> jax.Array:
            n = jnp.sum(step >= bounds) if has else 0
            return warm(step, base * factor ** n)

        return step_fn
    if name == "cosine":
        end = float(get("end_value", 0.0))
        decay = max(total - warmup, 1)

        def cosine(step: jax.Array) -> jax.Array:
            frac = jnp.clip((step - warmup) / decay, 0.0, 1.0)
            return warm(step, end + (base - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))

        return cosine
    raise ValueError(f"schedule.name: unknown schedule {name!r}; use 'constant', 'step' or 'cosine'")


def make_optimizer(optimizer: Any = None, schedule: Any = None, *, steps_per_epoch: int, epochs: int,
                   where: str = "optimizer", **overrides: Any) -> optax.GradientTransformation:
    """SGD (momentum, Nesterov, coupled L2) or Adam (coupled L2), with the learning rate given by `schedule`.

    `optimizer` and `schedule` are ConfigDicts/dicts (fields in the module docstring); keyword overrides apply
    to the optimizer fields, e.g. `make_optimizer(name="sgd", lr=0.1, steps_per_epoch=468, epochs=40)`. Fields
    are validated by `optimizer_fields`; errors name them as ``<where>.<field>``.
    """
    f = optimizer_fields(optimizer, where=where, **overrides)
    lr_fn = make_schedule(schedule, lr=f["lr"], steps_per_epoch=steps_per_epoch, epochs=epochs)
    decay = [optax.add_decayed_weights(f["weight_decay"])] if f["weight_decay"] > 0 else []
    if f["name"] == "sgd":
        core = optax.sgd(lr_fn, momentum=f["momentum"] if f["momentum"] > 0 else None, nesterov=f["nesterov"])
    else:
        core = optax.adam(lr_fn, b1=f["b1"], b2=f["b2"], eps=f["eps"])
    return optax.chain(*decay, core)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of integer class labels [B] under softmax logits [B, K]."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def sigmoid_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy over examples and attributes; labels {0, 1} of shape [B, A]."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))


def loss_fn(multilabel: bool) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The training loss of a head: sigmoid BCE for multi-label heads, softmax cross-entropy otherwise."""
    return sigmoid_bce if multilabel else softmax_cross_entropy
