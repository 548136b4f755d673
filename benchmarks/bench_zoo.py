"""Datasets × models: the time of one training epoch of every registered model that fits each shipped 28×28
dataset (MNIST, Fashion-MNIST), for S = 1 and S = 8 seeds trained in one program, printed as a markdown table.

Everything runs with the sweep's defaults: every CPU core a JAX device of the `seed` mesh
(`sharding.use_all_cores`), automatic chunks (`train.resolve_chunk`), the training set on the device as uint8
pixels, batch 128, plain SGD at lr 0.1 (the dense recipe of the default configs).

The slice. Each model trains on the first `steps` batches of 128 images of the training split, `steps` chosen from
the model's forward FLOPs (XLA's cost analysis of one image) so that a slice epoch of S = 8 costs about `--tflop`
TFLOP, within [`--min-steps`, `--max-steps`]; the table states the slice. One `train.fit` call per cell trains
1 + `--repeats` epochs: the first compiles (its wall from the call's start is the "first call" column), the warm
ones are timed from the end of one epoch to the end of the next (`progress` stamps, each after the epoch's loss
reached the host), the fastest kept, summed over the population's chunks. The full-split epoch (60,000 images:
468 batches of 128, the last partial batch dropped) is extrapolated linearly from the slice, seconds × 468 /
steps: an epoch is a `lax.scan` of identical steps, and no per-call cost (population init, transfers) is in the
timed interval.

Baselines in the same run: each row's per-seed cost at S = 8 against its own S = 1 (what training a population in
one program gains per model), and every model's S = 1 epoch against LeNet-300-100's. Each model runs in its own
process, so its peak RSS is its own; a model whose next cell takes more than `--timeout` seconds (compilation
included) is stopped there, and the cells it did not finish are shown as "> limit". The header states the machine's load average, since other work on the machine inflates walls.

    python -m benchmarks.bench_zoo                                  # every model, both datasets
    python -m benchmarks.bench_zoo --models lenet_300_100 mlp_100_30 --datasets mnist
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time

from fairprune_jax import sharding

B = 128
N_TRAIN = 60_000
FULL_STEPS = N_TRAIN // B  # 468: the last partial batch of an epoch is dropped
DATASETS = ("mnist", "fashion_mnist")
SEEDS = (1, 8)
REFERENCE = "lenet_300_100"
TRAIN = {"epochs": 1, "batch_size": B, "optimizer": {"name": "sgd", "lr": 0.1}}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def forward_flops(model: str, input_shape: tuple[int, ...], num_outputs: int) -> float:
    """FLOPs of one image's forward pass, from XLA's cost analysis of the lowered program (nothing computed)."""
    import jax
    import jax.numpy as jnp

    from fairprune_jax import models

    spec = models.get_model(model, num_outputs=num_outputs, input_shape=input_shape)
    variables = jax.eval_shape(spec.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    cost = jax.jit(lambda v, x: spec.apply(v, x)[0]).lower(variables, x).cost_analysis()
    return float(cost["flops"])


def slice_steps(flops: float, tflop: float, lo: int, hi: int, seeds: int = max(SEEDS)) -> int:
    """Batches in the slice: an S-seed slice epoch of about `tflop` TFLOP (a step ≈ 3 forward passes)."""
    per_step = 3 * flops * B * seeds
    return int(min(max(tflop * 1e12 // per_step, lo), hi))


def fits(model: str, input_shape: tuple[int, ...], num_outputs: int) -> bool:
    """Whether the registered model accepts the dataset's images (`models.check_spec`: shapes only)."""
    from fairprune_jax import models

    try:
        models.check_spec(models.get_model(model, num_outputs=num_outputs, input_shape=input_shape))
    except ValueError:
        return False
    return True


def epoch_seconds(stamps: list[tuple[int, float]]) -> float:
    """Seconds of one warm epoch of the whole population, from (chunk, time) stamps taken after every epoch of every
    chunk (chunks run one after another, their epochs in order): per chunk the fastest epoch after its first (which
    compiles or reads the compiled program), summed over the chunks."""
    per_chunk: dict[int, list[float]] = {}
    for chunk, t in stamps:
        per_chunk.setdefault(chunk, []).append(t)
    if any(len(ts) < 2 for ts in per_chunk.values()):
        raise ValueError("stamps: every chunk needs at least two epochs (one to compile, one to time)")
    return sum(min(b - a for a, b in itertools.pairwise(ts)) for ts in per_chunk.values())


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def run_model(model: str, datasets: list[str], tflop: float, lo: int, hi: int, repeats: int) -> None:
    """Child process: time one slice epoch of `model` for S = 1 and 8 on every dataset, one JSON line per result
    on stdout (the model's description, then a line per cell as it finishes, then the peak RSS)."""
    import jax
    import numpy as np

    from fairprune_jax import data, models, train

    mesh = sharding.default_mesh()
    first = data.info(datasets[0])
    spec = models.get_model(model, num_outputs=first.num_classes, input_shape=first.image_shape)
    flops = forward_flops(model, first.image_shape, first.num_classes)
    steps = slice_steps(flops, tflop, lo, hi)
    params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(models.check_spec(spec)["params"])))
    _emit({"model": model, "devices": len(jax.devices()), "flops": flops, "steps": steps, "params": params})
    for name in datasets:
        ds = data.info(name)
        spec = models.get_model(model, num_outputs=ds.num_classes, input_shape=ds.image_shape)
        split = data.load_split(name, "train")
        tr = data.to_device(data.Split(split.images[:steps * B], split.labels[:steps * B]), ds, lazy=True)
        for s in SEEDS:
            stamps: list[tuple[int, float]] = []  # (chunk, time) after every epoch of every chunk
            t0 = time.perf_counter()
            train.fit(spec, {**TRAIN, "epochs": 1 + repeats}, train.seed_keys(range(s)), tr.images, tr.labels,
                      mesh=mesh, progress=lambda d, stamps=stamps: stamps.append((d["chunk"], time.perf_counter())))
            first_s = stamps[0][1] - t0
            best = epoch_seconds(stamps)
            _emit({"cell": f"{name}/{s}", "first_s": first_s, "slice_s": best, "full_s": best * FULL_STEPS / steps})
            print(f"  {model} {name} S={s}: first call {first_s:.1f} s, slice epoch {best:.2f} s", file=sys.stderr,
                  flush=True)
    _emit({"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20})


def measure(model: str, args: argparse.Namespace) -> dict:
    """Run `model`'s child process and collect its JSON lines; stop it when `args.timeout` seconds pass without a
    new line (a cell, compilation included, taking longer than the limit)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_zoo", "--child", model, "--datasets", *args.datasets,
           "--tflop", str(args.tflop), "--min-steps", str(args.min_steps), "--max-steps", str(args.max_steps),
           "--repeats", str(args.repeats)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # end of output

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    row: dict = {"model": model, "cells": {}, "complete": False}
    while True:
        try:
            line = lines.get(timeout=args.timeout)
        except queue.Empty:
            proc.kill()
            print(f"  {model}: stopped, a cell took more than the {args.timeout:.0f} s limit", file=sys.stderr,
                  flush=True)
            break
        if line is None:
            break
        record = json.loads(line)
        if "cell" in record:
            row["cells"][record.pop("cell")] = record
        else:
            row.update(record)
    proc.wait()
    reader.join()
    if proc.returncode not in (0, -signal.SIGKILL) or "steps" not in row:
        raise SystemExit(f"error: {model}: the timing process failed (exit {proc.returncode})")
    row["complete"] = proc.returncode == 0
    return row


def _secs(x: float) -> str:
    """Seconds as the reports write durations: '0.42 s', '12.3 s', '3 min 05 s', '2 h 05 min'."""
    if x < 10:
        return f"{x:.2f} s"
    if x < 60:
        return f"{x:.1f} s"
    if x < 3600:
        m, s = divmod(round(x), 60)
        return f"{m} min {s:02d} s"
    h, m = divmod(round(x / 60), 60)
    return f"{h} h {m:02d} min"


def table(rows: list[dict], datasets: list[str], limit: float) -> str:
    """The markdown table: one row per model, per dataset the extrapolated full-split epoch at S = 1 and S = 8."""
    over = f"> {limit:.0f} s limit"

    def cell(r: dict, key: str, field: str = "full_s") -> str:
        return _secs(r["cells"][key][field]) if key in r["cells"] else over

    ref = next((r for r in rows if r["model"] == REFERENCE), None)
    head = ["model", "parameters", "slice (images)"]
    for name in datasets:
        head += [f"{name} S=1", f"{name} S=8"]
    head += ["per-seed speed-up at S=8", f"S=1 vs {REFERENCE}", "first call (compile)", "peak RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['params']:,}", f"{r['steps'] * B:,}"]
        cells += [cell(r, f"{name}/{s}") for name in datasets for s in SEEDS]
        both = [n for n in datasets if f"{n}/1" in r["cells"] and f"{n}/8" in r["cells"]]
        gain = (sum(r["cells"][f"{n}/1"]["full_s"] for n in both) * 8
                / sum(r["cells"][f"{n}/8"]["full_s"] for n in both)) if both else None
        cells.append(f"{gain:.2f}×" if gain else "–")
        one = [n for n in datasets if f"{n}/1" in r["cells"] and ref and f"{n}/1" in ref["cells"]]
        rel = (sum(r["cells"][f"{n}/1"]["full_s"] for n in one)
               / sum(ref["cells"][f"{n}/1"]["full_s"] for n in one)) if one else None
        cells.append(f"{rel:.1f}×" if rel else "–")
        cells.append(cell(r, f"{datasets[0]}/1", "first_s"))
        cells.append(f"{r['peak_rss_gib']:.2f} GiB" if r["complete"] else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=None, help="registered model names (default: every one that fits)")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--tflop", type=float, default=0.2, help="target TFLOP of an S=8 slice epoch (sizes the slice)")
    ap.add_argument("--min-steps", type=int, default=1, help="fewest batches of 128 in a slice")
    ap.add_argument("--max-steps", type=int, default=64, help="most batches of 128 in a slice")
    ap.add_argument("--repeats", type=int, default=1, help="timed slice epochs after the compiling one (best kept)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds a cell may take, compilation included, before its model is stopped")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        sharding.use_all_cores()  # before JAX starts, as the entry points do
        run_model(args.child, args.datasets, args.tflop, args.min_steps, args.max_steps, args.repeats)
        return

    from fairprune_jax import data, models

    unknown = sorted(set(args.models or ()) - set(models.available()))
    if unknown:
        raise SystemExit(f"error: --models: unknown {unknown}; known: {', '.join(models.available())}")
    shapes = [(data.info(n).image_shape, data.info(n).num_classes) for n in args.datasets]
    names = args.models or [m for m in models.available() if all(fits(m, *s) for s in shapes)]
    if REFERENCE in names:  # the baseline first, so its row exists whatever else happens
        names = [REFERENCE] + [m for m in names if m != REFERENCE]
    rows, t0, load0 = [], time.perf_counter(), os.getloadavg()[0]
    for i, model in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {model}", file=sys.stderr, flush=True)
        rows.append(measure(model, args))
    devices = rows[0]["devices"] if rows else 0
    print(f"One training epoch of the full training split (60,000 images, {FULL_STEPS} batches of {B}), "
          f"extrapolated linearly from the slice; S seeds in one program on {devices} device(s) of the seed mesh, "
          f"{len(os.sched_getaffinity(0))} cores; wall of this benchmark {_secs(time.perf_counter() - t0)}; 1-minute "
          f"load average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end.\n")
    print(table(rows, args.datasets, args.timeout))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
