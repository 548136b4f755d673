"""Deprecations that warn once instead of breaking: moved functions, renamed config fields, old variant names.

A warning is a :class:`FairpruneDeprecationWarning` (a ``FutureWarning``, so Python shows it by default), issued
once per process and subject; the entry points print it as one line, ``deprecated: <message>``.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

_WARNED: set[str] = set()


class FairpruneDeprecationWarning(FutureWarning):
    """Something moved or was renamed; the message says what to use instead."""


def warn_once(subject: str, message: str, *, stacklevel: int = 3) -> None:
    """Issue ``message`` once per process for ``subject`` (a stable name of what is deprecated)."""
    if subject in _WARNED:
        return
    _WARNED.add(subject)
    warnings.warn(message, FairpruneDeprecationWarning, stacklevel=stacklevel)


def moved(fn: Callable[..., Any], old: str, new: str) -> Callable[..., Any]:
    """``fn`` under its old name ``old``: calling it warns once that it is now ``new``."""

    @functools.wraps(fn)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn_once(old, f"{old} moved to {new}; the old name will be removed in a later minor version")
        return fn(*args, **kwargs)

    alias.__doc__ = f"Deprecated alias of `{new}` (warns once). " + (fn.__doc__ or "")
    return alias


def one_line(message: warnings.WarningMessage | Warning | str) -> str:
    """The one-line form the entry points print."""
    text = str(getattr(message, "message", message))
    return "deprecated: " + " ".join(text.split())
