"""Canonical JSON of a config and its fingerprint: what makes two runs "the same config" for a workdir.

A config (ConfigDict, dict, dataclass-like) becomes plain JSON values (tuples -> lists, numpy scalars -> Python,
paths -> str), serialised with sorted keys; the fingerprint is the SHA-256 of that text without the ignored
fields (dotted paths allowed), so fields that never change results (where to write, how chatty) do not count.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: Top-level config keys that never change results (where to write, how chatty), left out of the fingerprint.
DEFAULT_IGNORE: tuple[str, ...] = ("workdir", "fresh", "progress")


def to_json_value(value: Any, where: str) -> Any:
    """Plain JSON value for a config leaf: tuples -> lists, numpy scalars/arrays -> Python, paths -> str."""
    if hasattr(value, "to_dict") and callable(value.to_dict):  # ConfigDict / FrozenConfigDict
        value = value.to_dict()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, np.generic):
                k = k.item()
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise ValueError(f"config key {k!r} at {where or '<root>'!r} must be a str or int")
            sk = str(k)
            if sk in out:
                raise ValueError(f"config keys at {where or '<root>'!r} collide as strings: {sk!r}")
            out[sk] = to_json_value(v, f"{where}.{sk}" if where else sk)
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return to_json_value(value.tolist(), where)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(
        f"config field {where!r} has a value of type {type(value).__name__} ({value!r}) that cannot be stored "
        "as JSON; use str/int/float/bool/None, lists/tuples or nested dicts"
    )


def canonical_config(config: Any) -> dict[str, Any]:
    """The config (``ConfigDict``, ``FrozenConfigDict`` or mapping) as plain JSON data, field references resolved."""
    out = to_json_value(config, "")
    if not isinstance(out, dict):
        raise ValueError(f"config must be a ConfigDict or a mapping, got {type(config).__name__}")
    return out


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def _drop(config: dict[str, Any], ignore: Iterable[str]) -> dict[str, Any]:
    """Copy of ``config`` without the (possibly dotted) keys in ``ignore``."""
    config = json.loads(canonical_json(config))  # deep copy
    for dotted in ignore:
        node: Any = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


def fingerprint(config: Any, ignore: Iterable[str] = DEFAULT_IGNORE) -> str:
    """sha256 (hex) of the canonical JSON of the config without the ``ignore``-d keys."""
    relevant = _drop(canonical_config(config), ignore)
    return hashlib.sha256(canonical_json(relevant).encode("ascii")).hexdigest()


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Dotted path -> canonical JSON text of each leaf (lists and empty dicts are leaves)."""
    if isinstance(data, dict) and data:
        out: dict[str, str] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: canonical_json(data)}


_ABSENT = "<absent>"


def config_diff(old: Any, new: Any, ignore: Iterable[str] = DEFAULT_IGNORE) -> list[tuple[str, str, str]]:
    """Sorted ``(dotted_path, old_json, new_json)`` for every result-affecting field that differs;
    a field missing on one side shows as ``<absent>``."""
    a = _flatten(_drop(canonical_config(old), ignore))
    b = _flatten(_drop(canonical_config(new), ignore))
    # A dict that became a leaf (or vice versa) shows up as the leaf plus its former children.
    return [
        (k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)
    ]


def short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
