"""What the layout modules of both studies share: a protocol's layout (what it writes and how a report names it)
and the registry of them. Pure Python: reports import the layouts without JAX."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

COMMANDS_FILE = "commands.json"  # every workdir: the command lines of its runs, oldest first
TOTAL_STAGE = "total_this_run"  # timings.json: each run's whole wall time


@dataclasses.dataclass(frozen=True)
class ProtocolLayout:
    """A pruning protocol as its readers see it.

    ``unit_names(config)``: the per-model units it commits (after the dense one); ``describe(config)``: the words a
    report's set-up uses for it; ``grid``: whether its pruned populations are masks [S, 1, P] over the sparsity
    grid (one-shot, GMP, budget) rather than levels (iterative); ``sections``: the training sections it trains
    with (their batch sizes are checked against the data)."""

    name: str
    unit_names: Callable[[Any], list[str]]
    describe: Callable[[Any], str]
    grid: bool = True
    sections: tuple[str, ...] = ("train", "finetune")


class Registry(Generic[T]):
    """Name -> entry, in registration order; registering a taken name raises ValueError."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; known: {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, default: Any = None) -> Any:
        return self._entries.get(name, default)
