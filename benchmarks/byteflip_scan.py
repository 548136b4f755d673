"""Byte-flip scan: flip single bytes of stored files (one at a time, restored after each) and classify every flip.

detected  the library refuses the file (CorruptFileError naming it)
harmless  the file reads back and every decoded value is identical
SILENT    the file reads back with a changed value (the failure the checksums exist to prevent)

It works on copies (every flip is restored, but a detected flip moves the file aside): make two small workdirs and
scan them, e.g. (about 12 minutes on a 2-core CPU; LEGACY rows are the same files without their checksums, as
workdirs of earlier versions hold them, read by the range rules alone)

    python -m experiments.sweep --config=mnist:smoke --workdir=scan/recall
    python -m experiments.bias --config=planted_mnist:smoke --workdir=scan/bias
    python -m benchmarks.byteflip_scan scan/recall scan/bias [stride]
"""
from __future__ import annotations

import collections
import os
import pathlib
import sys

import numpy as np
import pandas as pd

from fairprune_jax import checkpoints, results, verified
from fairprune_jax.files import CorruptFileError, checksum_path

verified.notify = lambda msg: None  # the unverified note is expected for the legacy copies
STRIDE = int(sys.argv[3]) if len(sys.argv) > 3 else 7


def positions(size: int, stride: int, cap: int | None) -> list[int]:
    """Every ``stride``-th byte; for large files (more than ``cap`` such bytes) ``cap`` evenly spread positions plus
    every byte of the first and last 256 (headers, zip central directory, footers)."""
    every = list(range(0, size, stride))
    if cap is None or len(every) <= cap:
        return every
    spread = np.linspace(0, size - 1, cap).astype(int).tolist()
    return sorted(set(spread) | set(range(min(256, size))) | set(range(max(0, size - 256), size)))


def flips(path: pathlib.Path, stride: int, cap: int | None = None):
    data = bytearray(path.read_bytes())
    for i in positions(len(data), stride, cap):
        orig = data[i]
        data[i] = orig ^ 0xFF
        path.write_bytes(bytes(data))
        yield i
        data[i] = orig
    path.write_bytes(bytes(data))


def classify(read, reference) -> str:
    try:
        got = read()
    except CorruptFileError:
        return "detected"
    return "harmless" if same(got, reference) else "SILENT"


def same(a, b) -> bool:
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


def scan_part(wd: results.Workdir, table: str, key: str, counts: collections.Counter, label: str,
              include_sidecar: bool = True) -> None:
    path = wd.part_path(table, key)
    ref = wd.read_part(table, key)
    targets = [path] + ([checksum_path(path)] if include_sidecar and checksum_path(path).exists() else [])
    for target in targets:
        for _ in flips(target, STRIDE):
            counts[(label, target.suffix, classify(lambda: wd.read_part(table, key), ref))] += 1
    report(counts)


def report(counts: collections.Counter) -> None:
    print(pd.Series(counts).unstack(fill_value=0).to_string(), flush=True)
    print("-" * 40, flush=True)


def scan_npz(path: pathlib.Path, counts: collections.Counter, label: str) -> None:
    ref = results.load_npz(path)
    for target in [path, checksum_path(path)]:
        for _ in flips(target, STRIDE, cap=2500):
            counts[(label, target.suffix, classify(lambda: results.load_npz(path), ref))] += 1
    report(counts)


def scan_checkpoint(directory: pathlib.Path, name: str, like, counts: collections.Counter, label: str,
                    max_flips_per_file: int = 400) -> None:
    ref = checkpoints.restore(directory, name, like=like, repair=False)

    def read():
        checkpoints._verified.clear()  # verify every flip from scratch (the cache keys on size and mtime)
        return checkpoints.restore(directory, name, like=like, repair=False)

    for f in sorted(p for p in (directory / name).rglob("*") if p.is_file()):
        for _ in flips(f, STRIDE, cap=max_flips_per_file):
            counts[(label, f.name if f.name in (checkpoints.MANIFEST,) else "file", classify(read, ref))] += 1
    report(counts)


def strip_checksums(root: pathlib.Path) -> None:
    """Make a legacy copy: no part sidecars, no checkpoint manifests (as written before checksums)."""
    for side in root.rglob("*.sha256"):
        side.unlink()
    for man in root.rglob(checkpoints.MANIFEST):
        man.unlink()


def main() -> None:
    import jax

    from fairprune_jax import models, train

    recall_dir, bias_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    counts: collections.Counter = collections.Counter()
    rwd, bwd = results.Workdir.existing(recall_dir), results.Workdir.existing(bias_dir)
    if os.environ.get("LEGACY_ONLY"):
        return legacy(recall_dir, bias_dir, rwd, bwd, counts)
    for key in rwd.keys("recall"):
        scan_part(rwd, "recall", key, counts, "recall part")
    for key in bwd.keys("metrics"):
        scan_part(bwd, "metrics", key, counts, "bias metrics part")
    for npz in sorted((bias_dir / "artifacts" / "logits").glob("*.npz")):
        scan_npz(npz, counts, "bias logits npz")
    spec = models.get_model("lenet_300_100")
    like = jax.eval_shape(lambda k: train.init_population(spec, k), train.seed_keys(range(3)))
    scan_checkpoint(recall_dir / "checkpoints", "dense-lenet_300_100", {"dense": like, "rewind": like}, counts,
                    "recall dense checkpoint")
    legacy(recall_dir, bias_dir, rwd, bwd, counts)


def legacy(recall_dir, bias_dir, rwd, bwd, counts) -> None:
    """The same parts without their checksums (what workdirs written before this change hold): rules only."""
    strip_checksums(recall_dir)
    strip_checksums(bias_dir)
    for key in rwd.keys("recall"):
        scan_part(rwd, "recall", key, counts, "LEGACY recall part", include_sidecar=False)
    for key in bwd.keys("metrics"):
        scan_part(bwd, "metrics", key, counts, "LEGACY bias metrics part", include_sidecar=False)
    print("FINAL")
    report(counts)


if __name__ == "__main__":
    main()
