"""A small typed description of one stored run: what the analysis needs to know about a workdir besides its tables
(no ConfigDict, no JAX). `fairprune_jax.report.runs.describe` builds it from ``config.json`` and the run's tables."""
from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class Training:
    """One training section: epochs, batch size and the optimiser's name and numbers."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    """The ``analysis`` section of a recall run (how its report is computed)."""

    chance_factor: float = 1.5
    bootstrap: int = 2000
    level: float = 0.95
    welch_q: float = 0.05


@dataclasses.dataclass(frozen=True)
class RunDescription:
    """One stored run.

    ``criteria`` in the config's order (the reports' column order), ``labels`` how reports name them, ``controls``
    the criteria that are baselines (random pruning) and test no claim; ``seeds`` the integer seeds it holds;
    ``missing_units`` the units a finished run would hold that are not committed (empty when complete).
    """

    name: str
    study: str
    dataset: str
    models: tuple[str, ...]
    criteria: tuple[str, ...]
    labels: Mapping[str, str]
    controls: tuple[str, ...]
    protocol: str
    sparsities: tuple[float, ...]
    levels: int
    seeds: tuple[int, ...]
    exclude_output: bool
    train: Training
    finetune: Training
    analysis: AnalysisSettings
    missing_units: tuple[str, ...] = ()
    variant: str = ""

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    @property
    def complete(self) -> bool:
        return not self.missing_units

    def label(self, criterion: str) -> str:
        """How reports name ``criterion`` (its capitals when the run recorded no label)."""
        return self.labels.get(criterion, criterion.upper())
