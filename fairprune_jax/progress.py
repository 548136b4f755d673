"""Feedback on long library calls: one tqdm bar per call, advanced per chunk and epoch, 1-based, units named.

Every public population function (`train.fit`, `protocols.finetune` / `one_shot` / `prune_population` / ...,
`evaluate.evaluate_population` / `population_logits`) takes ``progress``:

- ``True`` (the default): a bar on stderr (`tqdm.auto`: a widget in Jupyter when ipywidgets is installed). It
  appears once the call has run `DELAY` seconds, so quick calls print nothing, and names where the call is, e.g.
  ``fit 48 models: 2/6 epoch [..., models=1-16/48, epoch=2/3, loss=0.412]``. While one compiled chunk runs, a
  background thread keeps its elapsed time moving, so a long step never looks like a hung kernel.
- ``False`` or ``None``: quiet.
- a callable: called with a dict after every unit instead of drawing a bar (the studies draw their own bars this
  way). Training calls it after every epoch of every chunk with ``{"chunk", "chunks", "epoch", "epochs",
  "models", "n_models", "loss"}``: ``chunk`` and ``epoch`` count from 1 (``epoch`` is the epoch just finished),
  ``models`` the 1-based (first, last) population indices of the chunk's models, ``loss`` their mean training
  losses of that epoch.

Only process 0 of a multi-process run draws bars.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Union

import jax
from tqdm.auto import tqdm

DELAY = 2.0  # seconds a call runs before its bar appears
HEARTBEAT = 1.0  # seconds between redraws of a bar while a chunk runs (a terminal or a notebook)
HEARTBEAT_LOG = 30.0  # the same when stderr is a file or pipe, where every redraw adds to the log

ProgressArg = Union[bool, None, Callable[[dict], None]]


def check(progress: Any, name: str = "progress") -> None:
    """ValueError unless `progress` is a bool, None or a callable."""
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise ValueError(f"{name}: expected True (a bar), False/None (quiet) or a callable taking a dict, got "
                         f"{type(progress).__name__}")


class Reporter:
    """One call's feedback: a tqdm bar (progress=True), nothing (False/None), or the caller's callback."""

    def __init__(self, progress: ProgressArg, *, total: int, desc: str, unit: str):
        check(progress)
        self.callback = progress if callable(progress) and not isinstance(progress, bool) else None
        show = progress is True and jax.process_index() == 0
        self.bar = tqdm(total=total, desc=desc, unit=unit, delay=DELAY, dynamic_ncols=True, leave=True) if show \
            else None
        self._stop = threading.Event()
        self._thread = None
        if self.bar is not None:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="fairprune-progress")
            self._thread.start()

    def _beat(self) -> None:
        bar = self.bar
        live = "ipykernel" in sys.modules or bool(getattr(sys.stderr, "isatty", lambda: False)())
        while not self._stop.wait(HEARTBEAT if live else HEARTBEAT_LOG):
            if bar._time() >= bar.start_t + bar.delay:
                bar.refresh()

    @property
    def active(self) -> bool:
        """Whether anyone listens (a bar or a callback): callers skip the work of reporting otherwise."""
        return self.callback is not None or self.bar is not None

    def step(self, n: int = 1, info: dict | None = None, **postfix: Any) -> None:
        """`n` units done: the callback gets `info`; the bar advances and shows `postfix` (e.g. models="1-8/48")."""
        if self.callback is not None and info is not None:
            self.callback(info)
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def note(self, **postfix: Any) -> None:
        """Show where the call is now (e.g. the chunk that starts), without advancing."""
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def span(first: int, last: int, total: int) -> str:
    """'9-16/48' (1-based, inclusive) or '5/48' for one model."""
    return f"{first}/{total}" if first == last else f"{first}-{last}/{total}"
