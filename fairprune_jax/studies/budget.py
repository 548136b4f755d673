"""The recovery-budget protocol of the recall study (an extension, docs/methods.md §6): fixed one-shot masks,
fine-tuned under every setting of a grid of budgets, so the budget can enter the pooled regression as a factor.

Per model × criterion, the masks of every seed and sparsity are computed once from the dense models (the masks of
the one-shot protocol). Budget settings:

    none                     the pruned dense model, no fine-tuning (0 epochs)
    e<E>_lr<lr>_m<momentum>  E epochs of masked fine-tuning at that lr and momentum (other optimiser fields from
                             config.finetune.optimizer, e.g. its weight decay)

For each (lr, momentum) ONE run of max(E) epochs is trained and read after every E of the grid: the data order of
epoch e is the seed's fine-tuning stream at e whatever the length of the run, and the schedule must be constant,
so the E-epoch reading is the E-epoch run. The rows of each (criterion, setting) are one committed unit
(`<model>.<criterion>.<setting>`), so a killed run resumes between settings. Rows carry `setting`, `ft_epochs`,
`ft_lr`, `ft_momentum`; the dense rows (shared) carry none.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from fairprune_jax.studies import spine

NO_FINETUNING = "none"


def setting_label(epochs: int, lr: float, momentum: float) -> str:
    """The label of a budget setting: 'none' for 0 epochs, else 'e<E>_lr<lr>_m<momentum>' (a safe unit key)."""
    return NO_FINETUNING if int(epochs) == 0 else f"e{int(epochs)}_lr{float(lr):g}_m{float(momentum):g}"


def settings(config: Any) -> list[dict[str, Any]]:
    """Every budget setting of the config, 'none' first: dicts with setting, ft_epochs, ft_lr, ft_momentum."""
    b = config.prune.budget
    out = []
    if 0 in tuple(b.epochs):
        out.append(dict(setting=NO_FINETUNING, ft_epochs=0, ft_lr=0.0, ft_momentum=0.0))
    for lr in b.lrs:
        for mom in b.momenta:
            for e in sorted(int(x) for x in b.epochs if int(x) > 0):
                out.append(dict(setting=setting_label(e, lr, mom), ft_epochs=e, ft_lr=float(lr),
                                ft_momentum=float(mom)))
    return out


def validate(config: Any) -> None:
    """The budget grid: distinct non-negative epoch counts (at least one > 0), positive learning rates, momenta in
    [0, 1), and a constant fine-tuning schedule (other schedules depend on the run's length)."""
    if "budget" not in config.prune:
        spine.fail("prune.budget", "missing: the budget protocol needs prune.budget.{epochs, lrs, momenta} "
                                   "(see configs/mnist.py:budget)")
    b = config.prune.budget
    epochs = tuple(b.get("epochs", ()))
    if not epochs or any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 0 for e in epochs):
        spine.fail("prune.budget.epochs", f"{epochs!r}; need non-negative integers, e.g. (0, 1, 2, 5)")
    if len(set(epochs)) != len(epochs) or max(epochs) == 0:
        spine.fail("prune.budget.epochs", f"{epochs!r}; need distinct values, at least one above 0")
    for field, lo, hi in (("lrs", 0.0, math.inf), ("momenta", 0.0, 1.0)):
        vals = tuple(b.get(field, ()))
        if not vals:
            spine.fail(f"prune.budget.{field}", "empty")
        for v in vals:
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            if bad or not lo <= v < hi or (field == "lrs" and v <= 0):
                spine.fail(f"prune.budget.{field}", f"{v!r} outside {'(0, inf)' if field == 'lrs' else '[0, 1)'}")
        if len(set(vals)) != len(vals):
            spine.fail(f"prune.budget.{field}", f"duplicates in {vals!r}")
    name = config.finetune.schedule.get("name", "constant") if config.finetune.get("schedule") else "constant"
    if name != "constant":
        spine.fail("finetune.schedule.name", f"{name!r}; the budget protocol reads E-epoch runs off one longer "
                                             "run, which needs a constant learning rate")


def unit_names(config: Any) -> list[str]:
    """Per-model unit names: '<criterion>.<setting>'."""
    return [f"{c}.{s['setting']}" for c in config.prune.criteria for s in settings(config)]


def finetune_config(config: Any, lr: float, momentum: float, epochs: int) -> dict[str, Any]:
    """config.finetune as a dict with this setting's lr, momentum and number of epochs."""
    ft = config.finetune.to_dict()
    ft["optimizer"] = dict(ft["optimizer"], lr=float(lr), momentum=float(momentum))
    ft["epochs"] = int(epochs)
    return ft


def run(config, wd, spec, study, keys, dense, progress: spine.Progress, *, table: str,
        evaluate_rows) -> None:
    """Every (criterion, setting) unit of one model; finished units are skipped."""
    from fairprune_jax import protocols

    sparsities = np.asarray(config.prune.sparsities, np.float64)
    s_ = int(keys.shape[0])
    chunk = int(config.finetune.chunk) or None
    kw = dict(exclude_output=bool(config.exclude_output), lam=float(config.prune.lambda_up),
              grad_batch=int(config.prune.grad_batch), mesh=spine.mesh_of(config))
    grid = settings(config)
    for criterion in config.prune.criteria:
        todo = [s for s in grid if not wd.has(table, f"{spec.name}.{criterion}.{s['setting']}")]
        if not todo:
            continue
        pruned, masks, _ = protocols.one_shot(spec, finetune_config(config, 1.0, 0.0, 0), dense, [criterion],
                                              sparsities, keys, study.train.images, study.train.labels, **kw)

        def commit(setting: dict[str, Any], variables: Any, loss: Any) -> None:
            with wd.stage_timer(f"evaluate.{spec.name}.{criterion}.{setting['setting']}"):
                rows = evaluate_rows(config, spec, study, variables, masks, criteria=[criterion],
                                     requested=sparsities[None, None, :], levels=range(len(sparsities)),
                                     exclude_output=bool(config.exclude_output), loss=loss)
            rows = rows.assign(**setting)
            wd.append_table(table, f"{spec.name}.{criterion}.{setting['setting']}", rows)

        by_run: dict[tuple[float, float], list[dict[str, Any]]] = {}
        for s in todo:
            if s["setting"] == NO_FINETUNING:
                commit(s, pruned, None)  # the masked dense models [S, 1, P]
            else:
                by_run.setdefault((s["ft_lr"], s["ft_momentum"]), []).append(s)
        for (lr, mom), group in by_run.items():
            e_max = max(s["ft_epochs"] for s in group)
            n_models = s_ * len(sparsities)
            key = f"{spec.name}.{criterion}.lr{lr:g}.m{mom:g}"
            with wd.stage_timer(f"prune.{key}"), progress.bar(
                    e_max * spine.chunks(spec, n_models, chunk, config), f"budget {key} ×{n_models}", "epoch") as bar:
                out, hist = protocols.finetune(spec, finetune_config(config, lr, mom, e_max), dense, masks, keys,
                                               study.train.images, study.train.labels, chunk=chunk,
                                               progress=progress.epochs(bar), mesh=kw["mesh"],
                                               keep_epochs=tuple(s["ft_epochs"] for s in group))
            loss = np.asarray(hist["loss"])
            for s in group:
                e = s["ft_epochs"]
                commit(s, hist["at_epochs"][e], loss[..., :e])

