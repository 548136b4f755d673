"""The recall study's workdir as its writer (`studies.recall`) and its readers (`report.recall`, claims) see it:
table names, unit keys, checkpoint names, seed blocks, and what each protocol commits. Pure Python (no JAX).

Layout (besides the spine's ``config.json``, ``timings.json``, ``.lock``)::

    results/recall/<model>.<unit>[.seeds=a-b].parquet   tidy rows, one per network × class (the analysis input)
    results/model_sizes/<model>.parquet                  model, n_params, n_prunable
    results/mask_agreement/<model>[.seeds=a-b].parquet   grid protocols with save_pruned: one row per
                                                         (model, seed, sparsity_index, requested_sparsity,
                                                         criterion_a, criterion_b), agreement of the two masks
    results/criteria/run.parquet                         the run's criteria as the registry describes them
    checkpoints/dense-<model>[-seeds=a-b]                dense (and rewind) variables [S, ...]
    checkpoints/pruned-<model>-<criterion>[-seeds=a-b]   pruned variables + masks [S, 1, P, ...] (save_pruned)
    checkpoints/iter-<model>-L<ll>[-seeds=a-b]           the last finished iterative level (to resume)
    seed_blocks.json                                     the seed blocks, in the order they were added
    train_class_counts.csv                               per-class training counts after any imbalance

Units are per model and seed block: seeds added later (a larger ``num_seeds`` on an existing workdir) form a block
of their own, so the earlier seeds' parts are never rewritten; the first block's keys carry no suffix.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from fairprune_jax.studies.layout import ProtocolLayout, Registry

RECALL = "recall"
MODEL_SIZES = "model_sizes"
MASK_AGREEMENT = "mask_agreement"
CRITERIA = "criteria"
CRITERIA_KEY = "run"
TABLES = (RECALL, MODEL_SIZES, MASK_AGREEMENT, CRITERIA)
DENSE = "dense"
CHECKPOINTS = "checkpoints"
SEED_BLOCKS_FILE = "seed_blocks.json"
CLASS_COUNTS_FILE = "train_class_counts.csv"


class SeedBlock(NamedTuple):
    """Population indices [start, stop) trained together: seeds ``config.seed + start`` ... ``+ stop - 1``."""

    start: int
    stop: int

    def suffix(self, sep: str = ".") -> str:
        """'' for the first block (the keys of a workdir that never grew), else ``<sep>seeds=<a>-<b>``."""
        return "" if self.start == 0 else f"{sep}seeds={self.start}-{self.stop - 1}"

    @property
    def size(self) -> int:
        return self.stop - self.start


def seed_blocks(recorded: list[list[int]] | None, num_seeds: int) -> list[SeedBlock]:
    """The blocks of a workdir holding ``recorded`` blocks (``seed_blocks.json``; None: one block) run with
    ``num_seeds``: the recorded ones, plus one block of the new seeds when ``num_seeds`` grew."""
    blocks = [SeedBlock(int(a), int(b)) for a, b in (recorded or [])]
    held = blocks[-1].stop if blocks else 0
    if num_seeds > held:
        blocks.append(SeedBlock(held, int(num_seeds)))
    return blocks


def unit_key(model: str, name: str, block: SeedBlock = SeedBlock(0, 0)) -> str:
    """Key of a recall-table part: ``<model>.<name>`` (+ the block's suffix)."""
    return f"{model}.{name}{block.suffix()}"


def level_name(level: int) -> str:
    """Unit name of iterative level ``level``: ``L01`` ..."""
    return f"L{int(level):02d}"


def dense_checkpoint(model: str, block: SeedBlock) -> str:
    return f"dense-{model}{block.suffix('-')}"


def pruned_checkpoint(model: str, criterion: str, block: SeedBlock) -> str:
    return f"pruned-{model}-{criterion}{block.suffix('-')}"


def iterative_checkpoint(model: str, level: int, block: SeedBlock) -> str:
    return f"iter-{model}-{level_name(level)}{block.suffix('-')}"


def agreement_key(model: str, block: SeedBlock) -> str:
    return f"{model}{block.suffix()}"


# ------------------------------------------------------------------------------------------------ budget grid

NO_FINETUNING = "none"


def setting_label(epochs: int, lr: float, momentum: float) -> str:
    """The label of a budget setting: 'none' for 0 epochs, else 'e<E>_lr<lr>_m<momentum>' (a safe unit key)."""
    return NO_FINETUNING if int(epochs) == 0 else f"e{int(epochs)}_lr{float(lr):g}_m{float(momentum):g}"


def budget_settings(config: Any) -> list[dict[str, Any]]:
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


# ------------------------------------------------------------------------------------------------ protocols

PROTOCOLS: Registry[ProtocolLayout] = Registry("protocol")


def register_protocol(layout: ProtocolLayout) -> ProtocolLayout:
    """Add a protocol's layout (the study registers its computation with `studies.recall.protocol`)."""
    return PROTOCOLS.add(layout.name, layout)


def _grid_words(config: Any) -> str:
    return f"sparsities {tuple(config.prune.sparsities)}"


def _budget_words(config: Any) -> str:
    b = config.prune.budget
    return (f"{_grid_words(config)}; fine-tuning budgets: epochs {tuple(b.epochs)} × lr {tuple(b.lrs)} × momentum "
            f"{tuple(b.momenta)} (wd {config.finetune.optimizer.weight_decay:g}) at fixed masks")


def _levels_words(config: Any) -> str:
    p = config.prune
    return f"levels 1–{p.levels} (s_L = 1 − {1 - p.fraction:g}^L, rewind to step {p.rewind_step})"


register_protocol(ProtocolLayout("one_shot", lambda c: list(c.prune.criteria), _grid_words))
register_protocol(ProtocolLayout(
    "iterative", lambda c: [level_name(lvl) for lvl in range(1, int(c.prune.levels) + 1)], _levels_words,
    grid=False, sections=("train",)))
register_protocol(ProtocolLayout("gmp", lambda c: list(c.prune.criteria), _grid_words))
register_protocol(ProtocolLayout(
    "budget", lambda c: [f"{cr}.{s['setting']}" for cr in c.prune.criteria for s in budget_settings(c)],
    _budget_words))


def protocol(config: Any) -> ProtocolLayout:
    """The layout of the config's protocol."""
    return PROTOCOLS[config.prune.protocol]


def expected_units(config: Any, blocks: list[SeedBlock] | None = None) -> list[str]:
    """Keys of every recall-table part a finished run of ``config`` holds (for the incomplete-run banner)."""
    blocks = blocks or seed_blocks(None, int(config.num_seeds))
    per_model = protocol(config).unit_names(config)
    return [unit_key(m, u, b) for m in config.models for b in blocks for u in (DENSE, *per_model)]
