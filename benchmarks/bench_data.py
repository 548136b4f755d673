"""Load time of the full MNIST train split through the prepared TFDS ArrayRecord dataset.

Goal: under 2 s on a 2-core CPU after the one-time prepare, from disk to normalised float32 on the
device. Baseline measured in the same run: decompressing the original idx .gz files with numpy.

    python -m benchmarks.bench_data [--repeats 5] [--name mnist]
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax

from fairprune_jax import data


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="mnist")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ds = data.info(args.name)

    t = time.perf_counter()
    data.prepare_offline(args.name)
    print(f"prepare (one-time, or check if prepared): {time.perf_counter() - t:.2f} s")
    jax.block_until_ready(data.to_device(data.load_split(args.name, "test"), ds))  # warm up compile

    def tfds_load() -> None:
        jax.block_until_ready(data.to_device(data.load_split(args.name, "train"), ds))

    def host_only() -> None:
        data.load_split(args.name, "train")

    def idx_baseline() -> None:
        folder = data.source_folder(args.name)
        split = data.Split(data.read_idx(folder / "train-images-idx3-ubyte.gz")[..., None],
                           data.read_idx(folder / "train-labels-idx1-ubyte.gz"))
        jax.block_until_ready(data.to_device(split, ds))

    rows = [("TFDS ArrayRecord -> device float32", _time(tfds_load, args.repeats)),
            ("TFDS ArrayRecord -> host uint8", _time(host_only, args.repeats)),
            ("baseline: idx .gz -> device float32", _time(idx_baseline, args.repeats))]
    base = statistics.median(rows[-1][1])
    print(f"{args.name} train split (60000 x 28 x 28 x 1), median of {args.repeats}:")
    for label, times in rows:
        med = statistics.median(times)
        print(f"  {label:40s} {med:6.3f} s  (min {min(times):.3f})  ratio to baseline {med / base:5.2f}x")
    med = statistics.median(rows[0][1])
    print(f"goal < 2 s: {'met' if med < 2.0 else 'NOT met'} ({med:.3f} s)")


if __name__ == "__main__":
    main()
