"""The memory budget: how many models (`chunk`) and examples (`batch`) a population call holds at once.

Why: a population call that holds every model and every example at once can need more memory than the machine has
(48 small max-pooled CNNs evaluated on 10,000 images at once need about 57 GB); on a CPU host the process is then
killed without a message. So every public function that runs a population (`evaluate.evaluate_population` /
`confusion_counts` / `population_logits`, `train.fit` / `predict` and the protocols built on them,
`protocols.prune_population`'s scoring) sizes its chunk and batch by ONE rule, this module's `fit`:

1. Start from the function's own default (chunk, batch), or from the values the caller gave.
2. Compile the very program the call will run at that size (`jax.jit(...).lower(...).compile()`; nothing runs,
   and the call then reuses the compiled program) and read XLA's memory analysis of it: its arguments, outputs and
   temporaries, less what the caller already holds (the population it passed in), plus on CPU the largest
   convolution's workspace (`conv_workspace`: XLA's CPU convolutions build their im2col outside the analysis),
   times the devices that share one memory (every local device of a CPU host; one on an accelerator). That is the
   call's `need`.
3. If the need fits the budget, run as asked: the defaults are unchanged wherever they fit, so are the results.
   If not, and the chunk is free, lower it to the largest multiple of the mesh's device count that fits, then
   the batch (a line through two measured sizes, checked by compiling again). An explicit chunk or batch that
   does not fit is refused: one `ValueError` line, before anything runs, naming the arguments to change.

The budget (`budget`) is a fraction of the device's TOTAL memory: the host's RAM on CPU (`/proc/meminfo`
MemTotal, or the cgroup limit when lower), an accelerator's ``bytes_limit``. The fraction is `DEFAULT_FRACTION`
(0.5: the rest is left for the caller's own arrays, the results and other programs), or the environment variable
``FAIRPRUNE_MEMORY_FRACTION``, or `limit(...)` within a block. The total, not what is free at the moment, so the
chunk a call chooses does not depend on what else runs: the same config and seeds give the same bits.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import numpy as np

DEFAULT_FRACTION = 0.5
FRACTION_ENV = "FAIRPRUNE_MEMORY_FRACTION"

_override: dict[str, float | int | None] = {"bytes": None, "fraction": None}


class Budget(NamedTuple):
    """The bytes a population call may use on one memory pool, and where that figure comes from."""

    bytes: int
    total: int  # the pool's memory
    fraction: float | None  # bytes / total; None for a budget set in bytes (`limit(bytes)`)
    where: str  # e.g. "host memory (cpu)", "memory of cuda:0"

    def describe(self) -> str:
        if self.fraction is None:
            return f"the memory budget of {fmt_bytes(self.bytes)} (memory.limit)"
        return (f"the memory budget of {fmt_bytes(self.bytes)} ({self.fraction:.0%} of the "
                f"{fmt_bytes(self.total)} {self.where})")


class Plan(NamedTuple):
    """The chunk and batch a call runs with, what they need and the budget they fit."""

    chunk: int
    batch: int | None
    need: int
    budget: Budget


def fmt_bytes(n: float) -> str:
    """1.5 GB, 340 MB, 12 kB (decimal units)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


# ------------------------------------------------------------------------------------------------ the budget


def _cgroup_limit() -> int | None:
    """The container's memory limit (cgroup v2, then v1), None when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(text)
    return None


def host_memory() -> int:
    """Total RAM of this host in bytes (MemTotal, or the cgroup limit when lower)."""
    total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if total is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def device_memory(device: jax.Device | None = None) -> tuple[int, str]:
    """(total bytes, description) of the memory `device` computes in: the host's RAM for a CPU device, the
    accelerator's `bytes_limit` (what XLA may allocate) otherwise."""
    device = device if device is not None else jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit") or stats.get("bytes_reservable_limit")
        if limit:
            return int(limit), f"memory of {device}"
    return host_memory(), f"host memory ({device.platform})"


def _fraction() -> float:
    if _override["fraction"] is not None:
        return float(_override["fraction"])
    text = os.environ.get(FRACTION_ENV, "").strip()
    if not text:
        return DEFAULT_FRACTION
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{FRACTION_ENV}: need a fraction in (0, 1], got {text!r}")
    return value


def budget(device: jax.Device | None = None) -> Budget:
    """The bytes a population call may use on the memory pool of `device` (default: the first local device)."""
    total, where = device_memory(device)
    if _override["bytes"] is not None:
        return Budget(int(_override["bytes"]), total, None, where)
    frac = _fraction()
    return Budget(int(total * frac), total, frac, where)


@contextlib.contextmanager
def limit(bytes: int | None = None, *, fraction: float | None = None) -> Iterator[None]:  # noqa: A002
    """Within the block, population calls size their chunks for a budget of `bytes`, or of `fraction` of the
    device's memory (for a small machine, or a test that makes the machine small)."""
    if (bytes is None) == (fraction is None):
        raise ValueError("limit: give exactly one of bytes= or fraction=")
    if bytes is not None and int(bytes) < 1:
        raise ValueError(f"bytes: need a positive number of bytes, got {bytes}")
    if fraction is not None and not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction: need a fraction in (0, 1], got {fraction}")
    saved = dict(_override)
    _override.update(bytes=None if bytes is None else int(bytes), fraction=fraction)
    try:
        yield
    finally:
        _override.update(saved)


# ------------------------------------------------------------------------------------------------ measuring


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of `tree` (concrete or abstract)."""
    return sum(math.prod(np.shape(x)) * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def abstract(tree: Any, sharding: Any = None) -> Any:
    """`jax.ShapeDtypeStruct` leaves (no data) for a tree of arrays, placed with `sharding` when given (so the
    program compiled for them is the one a call with placed arrays reuses)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree)


def _pool(mesh: Any) -> tuple[int, jax.Device]:
    """(devices of the mesh that share one memory pool, a device of this process)."""
    if mesh is None:
        return 1, jax.local_devices()[0]
    devs = list(mesh.devices.flat)
    local = [d for d in devs if d.process_index == jax.process_index()] or devs
    return (len(local) if local[0].platform == "cpu" else 1), local[0]


_SHAPE = r"(\w+)\[([\d,]*)\]"
_DEF = re.compile(r"%([\w.\-]+) = " + _SHAPE)
_CONV = re.compile(r"= " + _SHAPE + r"\S* convolution\(%([\w.\-]+), %([\w.\-]+)\), window=\{size=([\dx]+)"
                   r".*?dim_labels=(\w+)_(\w+)->(\w+)")
_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "s8": 1, "u8": 1, "pred": 1}


def conv_workspace(hlo_text: str) -> int:
    """Bytes XLA's CPU convolutions allocate outside its buffer assignment, for the largest convolution of an
    optimised HLO module: its patch matrix (output positions x window x input features, the im2col the Eigen
    kernels build) plus a copy of its output. Measured on small CNNs, a program's resident memory exceeds XLA's
    analysis by about that much (tests/test_memory.py checks one population against its resident memory)."""
    dims = lambda text: [int(d) for d in text.split(",") if d]  # noqa: E731
    shapes = {m.group(1): dims(m.group(3)) for m in _DEF.finditer(hlo_text)}
    worst = 0
    for m in _CONV.finditer(hlo_text):
        out, inp, window = dims(m.group(2)), shapes.get(m.group(3)), dims(m.group(5).replace("x", ","))
        in_labels, out_labels = m.group(6), m.group(8)
        if not out or inp is None or "f" not in in_labels or "f" not in out_labels:
            continue
        positions = math.prod(out) // max(out[out_labels.index("f")], 1)
        patch = positions * math.prod(window) * inp[in_labels.index("f")]
        worst = max(worst, (patch + math.prod(out)) * _BYTES.get(m.group(1), 4))
    return worst


def program_need(lowered: Any, *, resident: int = 0, mesh: Any = None) -> int | None:
    """Bytes a lowered program needs on one memory pool when it runs: XLA's analysis of the compiled program
    (arguments + outputs + temporaries − donated aliases) per device, plus, on CPU, the largest convolution's
    workspace (`conv_workspace`), times the devices sharing the pool, less the `resident` bytes its arguments
    already hold (the caller's arrays). None where the platform gives no analysis. Compiles (cached: the jitted
    function called with the same shapes reuses the executable)."""
    compiled = lowered.compile()
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    per_device = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                  - stats.alias_size_in_bytes)
    if _pool(mesh)[1].platform == "cpu":
        per_device += conv_workspace(compiled.as_text())
    return max(0, _pool(mesh)[0] * int(per_device) - int(resident))


def signature(*trees: Any) -> tuple:
    """A hashable description of trees of arrays (structure, shapes, dtypes, shardings): what a compiled program
    depends on besides its static arguments."""
    leaves, treedef = jax.tree_util.tree_flatten(trees)
    return (treedef, tuple((tuple(np.shape(x)), str(x.dtype), str(getattr(x, "sharding", None))) if
                           hasattr(x, "dtype") else repr(x) for x in leaves))


_needs: dict[Any, int | None] = {}


def remembered(key: Any, compute: Callable[[], int | None]) -> int | None:
    """`compute()` once per `key` (a call's program, e.g. its jitted function and `signature`): lowering a program
    again costs a trace even when its compilation is cached, and calls such as GMP's pruning repeat."""
    if key not in _needs:
        if len(_needs) > 1024:
            _needs.clear()
        _needs[key] = compute()
    return _needs[key]


# ------------------------------------------------------------------------------------------------ the rule


def _warn_unchecked(what: str) -> None:
    if not _warned:
        _warned.append(what)
        warnings.warn(f"{what}: this platform gives no memory analysis of compiled programs, so chunk and batch "
                      "sizes are not checked against the memory budget (fairprune_jax.memory)", stacklevel=3)


_warned: list[str] = []


def _largest(lo: int, hi: int, step: int, need_at: Callable[[int], int | None], limit: int) -> int | None:
    """The largest x = lo + k * step <= hi with need_at(x) <= limit (the need grows with x), None if `lo` does not
    fit: a line through the measured needs proposes x, each proposal is measured, then single steps down."""
    n_lo = need_at(lo)
    if n_lo is not None and n_lo > limit:
        return None
    x = hi
    for _ in range(6):
        n_x = need_at(x)
        if n_x is None or n_x <= limit:
            return x
        slope = (n_x - n_lo) / (x - lo) if n_lo is not None and x > lo else 0.0
        guess = lo + int((limit - n_lo) / slope) // step * step if slope > 0 else lo
        x = max(lo, min(x - step, guess))
    while x > lo and (need_at(x) or 0) > limit:
        x -= step
    return x


def fit(need_at: Callable[[int, int | None], int | None], *, what: str, n_models: int, chunk: int | None,
        default_chunk: int, unit: int = 1, batch: int | None = None, default_batch: int | None = None,
        n_examples: int | None = None, mesh: Any = None, names: Sequence[str] = ("chunk", "batch_size")) -> Plan:
    """The (chunk, batch) a population call runs with (the module's rule).

    `need_at(chunk, batch)` is the call's need at that size: `program_need` of its program lowered for that size
    (`jax.jit(f).lower(...)`), plus what the call holds outside the program; None where unknown. `chunk`/`batch`
    None (or 0) are free: they start from `default_chunk` (used as given: the caller's default, already rounded)
    and `default_batch` (at most `n_examples`); when that does not fit, the chunk is lowered to the largest
    multiple of `unit` that fits, then the batch. Given values are used as they are (a chunk at most the
    population, rounded up to `unit`) and must fit. `default_batch` None: the batch is not the call's to choose
    (training: the config's; `batch` is then that value, or None). ValueError, one line naming `names`, when
    nothing allowed fits."""
    bud = budget(_pool(mesh)[1])
    n_models, unit = max(int(n_models), 1), max(int(unit), 1)
    free_chunk = not chunk
    c = max(int(default_chunk), 1) if free_chunk else -(-min(max(int(chunk), 1), n_models) // unit) * unit
    free_batch = default_batch is not None and not batch
    size = lambda x: x if n_examples is None else max(1, min(int(x), int(n_examples)))  # noqa: E731
    bs = size(default_batch if free_batch else batch) if (batch or default_batch) else None
    seen: dict[tuple[int, int | None], int | None] = {}

    def need(c_: int, b_: int | None) -> int | None:
        if (c_, b_) not in seen:
            seen[(c_, b_)] = need_at(c_, b_)
        return seen[(c_, b_)]

    def fits(c_: int, b_: int | None) -> bool:
        n_ = need(c_, b_)
        if n_ is None:
            _warn_unchecked(what)
        return n_ is None or n_ <= bud.bytes

    if not fits(c, bs) and free_chunk and c > unit:
        c = _largest(unit, c - unit, unit, lambda v: need(v, bs), bud.bytes) or unit
    if not fits(c, bs) and free_batch and bs and bs > 1:
        bs = _largest(1, bs - 1, 1, lambda v: need(c, v), bud.bytes) or 1
    if not fits(c, bs):
        got = f"{c} model{'s' * (c != 1)}" + (f" x {bs} example{'s' * (bs != 1)}" if bs else "")
        fixed = [n for n, given in zip(names, (not free_chunk, bs is not None and not free_batch)) if given]
        hint = (f"pass a smaller {' or '.join(fixed)}" + (f" ({names[0]}=None chooses one that fits)"
                                                         if not free_chunk else "")
                if fixed else "even the smallest chunk and batch do not fit")
        raise ValueError(f"{what}: {got} at once need about {fmt_bytes(need(c, bs) or 0)}, more than "
                         f"{bud.describe()}; {hint}, or raise the budget (memory.limit, {FRACTION_ENV})")
    return Plan(c, bs, need(c, bs) or 0, bud)
