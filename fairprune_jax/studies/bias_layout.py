"""The bias study's workdir as its writer (`studies.bias`) and its readers (`report.bias`, claims) see it: table
names, unit keys, checkpoint and logits names, and its protocols' words. Pure Python (no JAX).

Layout (besides the spine's ``config.json``, ``timings.json``, ``.lock``)::

    meta.json                                  attribute names, protected attributes, sizes, planting
    results/<table>/<key>.parquet              key population=dense or sparsity=<s>; tables below
    checkpoints/dense                          dense variables [S, ...]
    checkpoints/sparse-sparsity=<s>            pruned variables + masks [S, ...]
    artifacts/logits/<key>.npz                 validation and test logits of a population

Workdirs of earlier versions hold their checkpoints under ``artifacts/ckpt/``; they are read from there.
"""
from __future__ import annotations

from typing import Any

from fairprune_jax.files import make_key
from fairprune_jax.studies.layout import ProtocolLayout, Registry

TABLES = ("train_history", "prune", "metrics", "cies", "identification", "attenuation", "attributes",
          "regression")
EVAL_TABLES = ("metrics", "cies", "identification", "attenuation", "attributes", "regression")
DENSE_KEY = "population=dense"
DENSE_CHECKPOINT = "dense"
CHECKPOINTS = "checkpoints"
LEGACY_CHECKPOINTS = ("artifacts", "ckpt")  # where earlier versions wrote them
META_FILE = "meta.json"


def sparsity_key(s: float) -> str:
    """Key of the units of sparsity ``s``: ``sparsity=<s>``."""
    return make_key(sparsity=float(s))


def sparse_checkpoint(key: str) -> str:
    return f"sparse-{key}"


def logits_artifact(key: str) -> str:
    """The artifact name (`Workdir.path_for`) of a population's logits."""
    return f"logits/{key}.npz"


def expected_units(config: Any) -> list[str]:
    """Keys of the metrics parts a finished run holds (the incomplete-run banner)."""
    return [DENSE_KEY] + [sparsity_key(s) for s in config.prune.sparsities]


# ------------------------------------------------------------------------------------------------ protocols

PROTOCOLS: Registry[ProtocolLayout] = Registry("protocol")


def register_protocol(layout: ProtocolLayout) -> ProtocolLayout:
    """Add a protocol's layout (the study registers its computation with `studies.bias.protocol`)."""
    return PROTOCOLS.add(layout.name, layout)


def _gmp_words(config: Any) -> str:
    g = config.prune.gmp
    return f"; GMP from {g.initial} (start {g.start}, end {g.end or 'auto'}, every {g.every})"


def _units(config: Any) -> list[str]:
    return [sparsity_key(s) for s in config.prune.sparsities]


register_protocol(ProtocolLayout("gmp", _units, _gmp_words))
register_protocol(ProtocolLayout("one_shot", _units, lambda config: ""))
