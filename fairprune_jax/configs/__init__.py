"""The experiments, as config files: each module defines ``get_config(variant="")`` returning an
ml_collections ConfigDict built on `fairprune_jax.studies.schema` and shows the values it sets.

They ship inside the package, so an installed wheel runs them by name (``fairprune-sweep --config=mnist``,
``--config=planted_mnist:smoke``); in the repository ``configs/`` is this folder, so
``--config=configs/mnist.py`` names the same file. Every file accepts the variant ``smoke`` (seconds, for tests);
the variants of earlier versions (``configs/mnist.py:wd`` ...) still work, warning once, and load their file.
"""
from __future__ import annotations

import importlib
import pathlib
from typing import Any

from fairprune_jax import deprecation

ROOT = pathlib.Path(__file__).resolve().parent

#: Variant names of earlier versions -> the config file that holds that experiment now.
MOVED = {
    "mnist": {"wd": "mnist_wd", "paper": "mnist_paper", "iterative": "mnist_iterative", "budget": "mnist_budget"},
    "fashion_mnist": {"wd": "fashion_mnist_wd", "paper": "fashion_mnist_paper",
                      "iterative": "fashion_mnist_iterative", "budget": "fashion_mnist_budget"},
    "cifar10": {"paper": "cifar10_paper"},
    "cifar100": {"paper": "cifar100_paper"},
    "planted_mnist": {"weak": "planted_mnist_weak"},
    "planted_fashion_mnist": {"weak": "planted_fashion_mnist_weak"},
    "celeba": {"paper": "celeba_paper"},
}


def names() -> list[str]:
    """Names of the packaged config files, sorted."""
    return sorted(p.stem for p in ROOT.glob("*.py") if not p.stem.startswith("_"))


def path(name: str) -> pathlib.Path:
    """The file of config ``name`` (ValueError listing the known names)."""
    if name not in names():
        raise ValueError(f"config {name!r}: no such config file; known: {', '.join(names())}")
    return ROOT / f"{name}.py"


def get(name: str, variant: str = "") -> Any:
    """``get_config(variant)`` of the packaged config ``name``."""
    path(name)
    return importlib.import_module(f"{__name__}.{name}").get_config(variant)


def moved(base: str, variant: str) -> Any:
    """The config an earlier variant name (``mnist`` + ``wd``) stands for, warning once that it is a file now."""
    target = MOVED[base][variant]
    deprecation.warn_once(f"configs/{base}.py:{variant}",
                          f"configs/{base}.py:{variant} is now the config file configs/{target}.py "
                          f"(--config={target}); the variant name will be removed in a later version")
    return get(target)
