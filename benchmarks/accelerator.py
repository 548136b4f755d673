"""One prepared accelerator measurement: S = 1, 8, 64 seeds of LeNet-300-100 and of LeNet-5 on MNIST, each a one-shot
grid (dense training, MP/GP/UP/random pruning at 3 sparsities, one fine-tuning epoch, evaluation of every network on
the test split), with the epoch time per model and the peak device memory; the figures are written into the
"Accelerators" section of docs/performance.md (between its `accelerator-figures` markers) with the machine, the date
and the command. Aimed at under 5 minutes on one GPU; `--budget-s` skips the configurations that would start after it.

    python -m benchmarks.accelerator                   # on the GPU machine: measure and write docs/performance.md
    python -m benchmarks.accelerator --no-write        # measure, print only
    python -m benchmarks.accelerator --quick --doc /tmp/perf.md   # CPU smoke run of the script itself (tiny sizes)

A run on CPU is refused unless `--quick` (then its rows say "smoke run, not a measurement") or `--allow-cpu`.
"""
from __future__ import annotations

import argparse
import datetime
import os
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

if __name__ == "__main__":  # every CPU core a device, as the entry points do (no effect on a GPU/TPU host)
    from fairprune_jax import sharding as _sharding

    _sharding.use_all_cores()

import jax  # noqa: E402
import numpy as np  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
BEGIN, END = "<!-- accelerator-figures:begin -->", "<!-- accelerator-figures:end -->"
CRITERIA = ("mp", "gp", "up", "random")
SPARSITIES = (0.5, 0.9, 0.98)


class Sizes(NamedTuple):
    """What one configuration runs: training / test examples, dense epochs, fine-tuning epochs."""

    n_train: int
    n_test: int
    dense_epochs: int
    ft_epochs: int


FULL = Sizes(60000, 10000, 2, 1)
QUICK = Sizes(512, 256, 2, 1)


def check_doc(path: Path) -> str:
    """The text of `path`; ValueError naming the file unless it holds the markers exactly once each, in order."""
    if not path.is_file():
        raise ValueError(f"--doc: {path} does not exist")
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"--doc: {path} must hold the lines {BEGIN} and {END} once each, in that order")
    return text


def render(rows: list[dict[str, Any]], *, device: str, date: str, command: str, smoke: bool) -> str:
    """The markdown written between the markers: provenance line and one table row per configuration."""
    head = (f"Measured on **{device}**, {date}, with `{command}`." if not smoke else
            f"Smoke run of the script on **{device}**, {date} (`{command}`): tiny sizes, **not a measurement**.")
    lines = [head, "", "| model | S | s / model-epoch | first epoch (compile) s | one-shot grid s | evaluation s | "
             "total s | peak memory GiB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['S']} | skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['S']} | {r['epoch_per_model']:.3f} | {r['first_epoch']:.1f} | "
                     f"{r['grid']:.1f} | {r['eval']:.1f} | {r['total']:.1f} | {r['peak_gib']:.2f} |")
    return "\n".join(lines)


def write_doc(path: Path, body: str) -> None:
    """Replace what lies between the markers of `path` with `body` (atomically: a temporary file renamed)."""
    text = check_doc(path)
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text[:start] + "\n" + body + "\n" + text[stop:])
    os.replace(tmp, path)


def peak_memory_gib() -> float:
    """Peak bytes in use on device 0 since the process started (accelerators), else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run_config(model: str, s: int, sizes: Sizes) -> dict[str, Any]:
    """Dense training, the one-shot grid and the evaluation of `s` seeds of `model`; seconds of each phase."""
    from fairprune_jax import data, evaluate, protocols, sharding, train
    from fairprune_jax.models import get_model

    info = data.info("mnist")
    tr, te = data.load_split("mnist", "train"), data.load_split("mnist", "test")
    x = data.normalize(tr.images[:sizes.n_train], info.mean, info.std)
    y = np.asarray(tr.labels[:sizes.n_train])
    xt = data.normalize(te.images[:sizes.n_test], info.mean, info.std)
    yt = np.asarray(te.labels[:sizes.n_test])
    spec = get_model(model)
    mesh = sharding.default_mesh()
    cfg = dict(epochs=sizes.dense_epochs, batch_size=128, optimizer=dict(name="sgd", lr=0.1, momentum=0.9,
                                                                          weight_decay=5e-4))
    keys = train.as_keys(np.arange(s))
    stamps: list[float] = []
    t0 = time.perf_counter()
    dense, _ = train.fit(spec, cfg, keys, x, y, mesh=mesh, progress=lambda _: stamps.append(time.perf_counter()))
    jax.block_until_ready(dense)
    t1 = time.perf_counter()
    epochs = [b - a for a, b in zip([t0, *stamps[:-1]], stamps)]
    ft = protocols.finetune_config(cfg, lr_scale=0.1, epochs=sizes.ft_epochs)
    variables, masks, _ = protocols.one_shot(spec, ft, dense, CRITERIA, SPARSITIES, keys, x, y, mesh=mesh)
    jax.block_until_ready(variables)
    t2 = time.perf_counter()
    res = evaluate.evaluate_population(spec, variables, xt, yt, masks=masks, mesh=mesh)
    dense_res = evaluate.evaluate_population(spec, dense, xt, yt, mesh=mesh)
    t3 = time.perf_counter()
    assert res.counts.sum() == s * len(CRITERIA) * len(SPARSITIES) * sizes.n_test
    assert dense_res.counts.sum() == s * sizes.n_test
    return {"model": model, "S": s, "epoch_per_model": min(epochs[1:] or epochs) / s, "first_epoch": epochs[0],
            "grid": t2 - t1, "eval": t3 - t2, "total": t3 - t0, "peak_gib": peak_memory_gib(),
            "dense_accuracy": float(np.mean(np.trace(dense_res.counts, axis1=-2, axis2=-1) / sizes.n_test))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet_300_100", "lenet5"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run of the script, e.g. on CPU)")
    ap.add_argument("--doc", type=Path, default=None, help=f"file to write the figures into (default {DOC})")
    ap.add_argument("--no-write", action="store_true", help="print the figures only")
    ap.add_argument("--allow-cpu", action="store_true", help="measure on a CPU-only machine (full sizes)")
    ap.add_argument("--budget-s", type=float, default=280.0, help="start no configuration after this many seconds")
    args = ap.parse_args(argv)
    platform = jax.devices()[0].platform
    try:
        if platform == "cpu" and not (args.quick or args.allow_cpu):
            raise ValueError("platform: no accelerator found (jax.devices() lists CPUs only); this script measures "
                             "a GPU/TPU. Use --quick for a smoke run of the script, --allow-cpu to measure the CPU")
        doc = args.doc if args.doc is not None else (None if args.quick else DOC)
        if doc is not None and not args.no_write:
            check_doc(doc)
        if min(args.seeds) < 1:
            raise ValueError(f"--seeds: need positive population sizes, got {args.seeds}")
        from fairprune_jax.models import available

        unknown = [m for m in args.models if m not in available()]
        if unknown:
            raise ValueError(f"--models: unknown model {unknown[0]!r}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    sizes = QUICK if args.quick else FULL
    device = f"{jax.devices()[0].device_kind} ({platform}, {jax.device_count()} device(s))"
    print(f"{device}; sizes {sizes._asdict()}", flush=True)
    start = time.perf_counter()
    rows = []
    for model in args.models:
        for s in sorted(args.seeds):
            if time.perf_counter() - start > args.budget_s:
                rows.append({"model": model, "S": s, "skipped": f"past the {args.budget_s:.0f} s budget"})
                print(rows[-1], flush=True)
                continue
            rows.append(run_config(model, s, sizes))
            r = rows[-1]
            print(f"{model} S={s}: {r['epoch_per_model']:.3f} s/model-epoch, first epoch {r['first_epoch']:.1f} s, "
                  f"grid {r['grid']:.1f} s, eval {r['eval']:.1f} s, total {r['total']:.1f} s, peak "
                  f"{r['peak_gib']:.2f} GiB, dense accuracy {r['dense_accuracy']:.3f}", flush=True)
    command = "python -m benchmarks.accelerator " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    body = render(rows, device=device, date=datetime.date.today().isoformat(), command=command.strip(),
                  smoke=args.quick or platform == "cpu")
    print(body)
    if doc is not None and not args.no_write:
        write_doc(doc, body)
        print(f"wrote {doc}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
