"""The recovery-budget protocol of the recall study (an extension, docs/methods.md §6): fixed one-shot masks,
fine-tuned under every setting of a grid of budgets, so the budget can enter the pooled regression as a factor.

Per model × criterion, the masks of every seed and sparsity are computed once from the dense models (the masks of
the one-shot protocol; saved as the criterion's pruned checkpoint with ``save_pruned``). Budget settings:

    none                     the pruned dense model, no fine-tuning (0 epochs)
    e<E>_lr<lr>_m<momentum>  E epochs of masked fine-tuning at that lr and momentum (other optimiser fields from
                             config.finetune.optimizer, e.g. its weight decay)

For each (lr, momentum) ONE run of max(E) epochs is trained and read after every E of the grid: the data order of
epoch e is the seed's fine-tuning stream at e whatever the length of the run, and the schedule must be constant,
so the E-epoch reading is the E-epoch run. The rows of each (criterion, setting) are one committed part
(`<model>.<criterion>.<setting>`); a unit is the un-tuned setting or one (lr, momentum) run, so a killed run
resumes between runs. Rows carry `setting`, `ft_epochs`, `ft_lr`, `ft_momentum`; the dense rows (shared) carry none.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from fairprune_jax import checkpoints, protocols
from fairprune_jax.studies import checks
from fairprune_jax.studies import recall_layout as L
from fairprune_jax.studies.recall_protocols import evaluate_rows, protocol, protocol_kwargs
from fairprune_jax.studies.runner import Context, Unit

# the budget grid's names live in the layout (its readers use them too)
NO_FINETUNING = L.NO_FINETUNING
settings = L.budget_settings
setting_label = L.setting_label


def validate(config: Any) -> None:
    """The budget grid: distinct non-negative epoch counts (at least one > 0), positive learning rates, momenta in
    [0, 1), and a constant fine-tuning schedule (other schedules depend on the run's length)."""
    checks.check_sparsities(tuple(config.prune.sparsities))
    if "budget" not in config.prune:
        checks.fail("prune.budget", "missing: the budget protocol needs prune.budget.{epochs, lrs, momenta} "
                                    "(see configs/mnist_budget.py)")
    b = config.prune.budget
    epochs = tuple(b.get("epochs", ()))
    if not epochs or any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 0 for e in epochs):
        checks.fail("prune.budget.epochs", f"{epochs!r}; need non-negative integers, e.g. (0, 1, 2, 5)")
    if len(set(epochs)) != len(epochs) or max(epochs) == 0:
        checks.fail("prune.budget.epochs", f"{epochs!r}; need distinct values, at least one above 0")
    for field, lo, hi in (("lrs", 0.0, math.inf), ("momenta", 0.0, 1.0)):
        vals = tuple(b.get(field, ()))
        if not vals:
            checks.fail(f"prune.budget.{field}", "empty")
        for v in vals:
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            if bad or not lo <= v < hi or (field == "lrs" and v <= 0):
                checks.fail(f"prune.budget.{field}", f"{v!r} outside {'(0, inf)' if field == 'lrs' else '[0, 1)'}")
        if len(set(vals)) != len(vals):
            checks.fail(f"prune.budget.{field}", f"duplicates in {vals!r}")
    name = config.finetune.schedule.get("name", "constant") if config.finetune.get("schedule") else "constant"
    if name != "constant":
        checks.fail("finetune.schedule.name", f"{name!r}; the budget protocol reads E-epoch runs off one longer "
                                              "run, which needs a constant learning rate")


def unit_names(config: Any) -> list[str]:
    """Per-model unit names: '<criterion>.<setting>'."""
    return L.PROTOCOLS["budget"].unit_names(config)


def finetune_config(config: Any, lr: float, momentum: float, epochs: int) -> dict[str, Any]:
    """config.finetune as a dict with this setting's lr, momentum and number of epochs."""
    ft = config.finetune.to_dict()
    ft["optimizer"] = dict(ft["optimizer"], lr=float(lr), momentum=float(momentum))
    ft["epochs"] = int(epochs)
    return ft


@protocol("budget", validate=validate)
def units(ctx: Context, dense: Callable[[], Any]) -> Iterator[Unit]:
    """Per criterion: the un-tuned setting, then one unit per (lr, momentum) fine-tuning run."""
    config, spec, wd = ctx.config, ctx.spec, ctx.workdir
    sparsities = np.asarray(config.prune.sparsities, np.float64)
    chunk = int(config.finetune.chunk) or None
    grid = settings(config)
    n_models = len(ctx.seeds) * len(sparsities)
    images, labels = ctx.data.data.train.images, ctx.data.data.train.labels

    def part(criterion: str, setting: dict) -> str:
        return L.unit_key(spec.name, f"{criterion}.{setting['setting']}", ctx.block)

    for criterion in config.prune.criteria:
        def pruned(criterion: str = criterion) -> tuple[Any, Any]:
            """The criterion's one-shot masks and masked dense models [S, 1, P] (computed once per run)."""
            def make():
                out, masks, _ = protocols.one_shot(spec, finetune_config(config, 1.0, 0.0, 0), dense()[0],
                                                   [criterion], sparsities, ctx.keys, images, labels,
                                                   **protocol_kwargs(ctx))
                name = L.pruned_checkpoint(spec.name, criterion, ctx.block)
                if config.save_pruned and not checkpoints.exists(ctx.checkpoints, name):
                    checkpoints.save(ctx.checkpoints, name, {"variables": out, "masks": masks})
                return out, masks

            return ctx.remember(f"budget/{spec.name}/{criterion}/{ctx.block}", make)

        def commit(criterion: str, setting: dict, variables: Any, loss: Any) -> None:
            key = part(criterion, setting)
            with wd.stage_timer(f"evaluate.{key}"):
                rows = evaluate_rows(ctx, variables, pruned(criterion)[1], criteria=[criterion],
                                     requested=sparsities[None, None, :], levels=range(len(sparsities)), loss=loss)
            wd.append_table(L.RECALL, key, rows.assign(**setting))

        by_run: dict[tuple[float, float], list[dict[str, Any]]] = {}
        for s in grid:
            if s["setting"] == NO_FINETUNING:
                key = part(criterion, s)
                yield Unit(key, "prune", lambda key=key: wd.has(L.RECALL, key),
                           lambda criterion=criterion: pruned(criterion)[0],
                           lambda variables, criterion=criterion, s=s: commit(criterion, s, variables, None))
            else:
                by_run.setdefault((s["ft_lr"], s["ft_momentum"]), []).append(s)
        for (lr, mom), group in by_run.items():
            e_max = max(s["ft_epochs"] for s in group)
            key = L.unit_key(spec.name, f"{criterion}.lr{lr:g}.m{mom:g}", ctx.block)

            def compute(criterion=criterion, lr=lr, mom=mom, group=group, e_max=e_max, key=key):
                _, masks = pruned(criterion)
                with wd.stage_timer(f"prune.{key}"), ctx.progress.training(f"budget {key}", n_models,
                                                                           e_max) as bar:
                    _, hist = protocols.finetune(spec, finetune_config(config, lr, mom, e_max), dense()[0], masks,
                                                 ctx.keys, images, labels, chunk=chunk,
                                                 progress=ctx.progress.epochs(bar), mesh=ctx.mesh,
                                                 keep_epochs=tuple(s["ft_epochs"] for s in group))
                return hist

            def commit_run(hist, criterion=criterion, group=group):
                loss = np.asarray(hist["loss"])
                for s in group:
                    if not wd.has(L.RECALL, part(criterion, s)):
                        e = s["ft_epochs"]
                        commit(criterion, s, hist["at_epochs"][e], loss[..., :e])

            yield Unit(key, "prune", lambda group=group, criterion=criterion: all(
                wd.has(L.RECALL, part(criterion, s)) for s in group), compute, commit_run)
        ctx.memo.pop(f"budget/{spec.name}/{criterion}/{ctx.block}", None)
