"""Benchmark: confusion counts of a whole population in one call vs a per-model Python loop.

Population: 16 seeds x 4 criteria x 10 sparsities of LeNet-300-100 (640 networks) on the full MNIST test split
(10k), random boolean masks of the right structure (any valid mask times the same). Both paths run in the same
process on the same inputs and must give identical counts; then peak memory (ru_maxrss) of the vectorised path is
measured in fresh subprocesses for two chunk sizes.

    python -m benchmarks.bench_evaluate                  # full benchmark (a few minutes on 2 CPU cores)
    python -m benchmarks.bench_evaluate --seeds 4        # smaller population
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax import data, evaluate
from fairprune_jax.models import get_model

SPARSITIES = np.array([0.0, .2, .36, .488, .5904, .67232, .8, .892626, .95, .99])


def setup(seeds: int, criteria: int, n_sparsities: int):
    """Normalised MNIST test split, dense LeNet variables [S], random masks [S, M, P]."""
    spec = get_model("lenet_300_100")
    split = data.load_split("mnist", "test")
    images = jnp.asarray((split.images.astype(np.float32) / 255.0 - 0.1307) / 0.3081)
    labels = jnp.asarray(split.labels)
    root = jax.random.key(0)
    variables = jax.jit(jax.vmap(spec.init))(jax.random.split(jax.random.fold_in(root, 0), seeds))
    prunable = spec.prunable()
    sp = jnp.asarray(SPARSITIES[:n_sparsities], jnp.float32)
    lead = (seeds, criteria, n_sparsities)

    @jax.jit
    def make_masks(params, key):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        out = []
        for i, (path, leaf) in enumerate(leaves):
            shape = leaf.shape[1:]  # drop the seed axis
            if prunable(path, jnp.zeros(shape)):
                def one_seed(s, i=i, shape=shape):
                    # a flat draw reshaped (XLA:CPU compiles a many-D threefry far slower); one seed at a time
                    # so the float draws never exceed [M, P, ...]
                    k = jax.random.fold_in(jax.random.fold_in(key, i), s)
                    u = jax.random.uniform(k, (int(np.prod(lead[1:] + shape)),)).reshape(lead[1:] + shape)
                    return u >= sp.reshape((1, -1) + (1,) * len(shape))

                out.append(jax.lax.map(one_seed, jnp.arange(seeds)))
            else:
                out.append(jnp.ones(lead + shape, jnp.bool_))
        return jax.tree_util.tree_unflatten(treedef, out)

    masks = make_masks(variables["params"], jax.random.fold_in(root, 1))
    return spec, variables, masks, images, labels


def make_single(spec, num_classes: int):
    """A sensible jitted single-model evaluation: mask, forward on the whole split, confusion by one-hot matmul."""

    @jax.jit
    def single(variables, mask, images, labels):
        params = jax.tree.map(lambda m, p: jnp.where(m, p, 0.0), mask, variables["params"])
        logits, _ = spec.apply({**variables, "params": params}, images, train=False)
        pred = jnp.argmax(logits, -1)
        y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
        p = jax.nn.one_hot(pred, num_classes, dtype=jnp.float32)
        return jnp.round(y.T @ p).astype(jnp.int32)

    return single


def run_loop(spec, variables, masks, images, labels):
    single = make_single(spec, spec.num_outputs)
    s, m, p = jax.tree.leaves(masks)[0].shape[:3]
    out = np.zeros((s, m, p, spec.num_outputs, spec.num_outputs), np.int64)
    for i in range(s):
        v = jax.tree.map(lambda a: a[i], variables)
        for j in range(m):
            for k in range(p):
                mk = jax.tree.map(lambda a: a[i, j, k], masks)
                out[i, j, k] = np.asarray(single(v, mk, images, labels))
    return out


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS so it cannot hide a later peak (glibc only; no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_child(args) -> None:
    """Subprocess body: resident memory after setup, and the peak during the vectorised evaluation.

    The peak is VmHWM after resetting it once the population is built (so setup does not mask it); where the
    reset is unsupported it falls back to ru_maxrss (a lifetime peak). The first call includes compilation
    (LLVM's own memory); the second, steady-state call is the evaluation alone.
    """
    spec, variables, masks, images, labels = setup(args.seeds, args.criteria, args.sparsities)
    jax.block_until_ready(masks)
    out = {"chunk": args.chunk}
    for name in ("first", "steady"):
        _release_freed_memory()
        resettable = _reset_peak_rss()
        base = _proc_status_kib("VmRSS") or 0
        t0 = time.perf_counter()
        evaluate.confusion_counts(spec, variables, images, labels, masks=masks, chunk=args.chunk,
                                  batch_size=args.batch_size)
        dt = time.perf_counter() - t0
        peak = _proc_status_kib("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out[name] = {"rss_before_mib": base / 1024, "peak_mib": (peak or 0) / 1024, "seconds": dt,
                     "peak_is_lifetime": not resettable}
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--criteria", type=int, default=4)
    ap.add_argument("--sparsities", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--mem-chunks", default="16,128", help="chunk sizes for the peak-memory subprocesses ('' = skip)")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args)
        return

    spec, variables, masks, images, labels = setup(args.seeds, args.criteria, args.sparsities)
    jax.block_until_ready(masks)
    n_models = args.seeds * args.criteria * args.sparsities
    print(f"backend={jax.default_backend()} devices={jax.devices()} cpus={os.cpu_count()} "
          f"load_avg={os.getloadavg()[0]:.1f} models={n_models} test_examples={images.shape[0]} "
          f"chunk={args.chunk} batch_size={args.batch_size}")

    # Compute bound: one model's forward is ~2·N·(784·300 + 300·100 + 100·10) FLOPs; time the dominant GEMM.
    flops = 2 * images.shape[0] * sum(int(np.prod(l.shape[1:])) for l in jax.tree.leaves(variables["params"])
                                      if l.ndim == 3)
    gemm = jax.jit(lambda x, w: x @ w)
    x2d, w1 = images.reshape(images.shape[0], -1), variables["params"]["hidden_0"]["kernel"][0]
    jax.block_until_ready(gemm(x2d, w1))
    _, t_gemm = timed(lambda: [jax.block_until_ready(gemm(x2d, w1)) for _ in range(5)])
    gflops = 5 * 2 * x2d.shape[0] * x2d.shape[1] * w1.shape[1] / t_gemm / 1e9
    print(f"roofline: {flops / 1e9:.2f} GFLOP per model; one [N,784]x[784,300] GEMM runs at {gflops:.0f} GFLOP/s, "
          f"so {n_models} models need >= {n_models * flops / gflops / 1e9:.1f} s of matmul on this machine")

    kw = dict(masks=masks, chunk=args.chunk, batch_size=args.batch_size)
    counts, t_first = timed(evaluate.confusion_counts, spec, variables, images, labels, **kw)
    _, t_vec = timed(evaluate.confusion_counts, spec, variables, images, labels, **kw)
    print(f"vectorised: first call (with compile) {t_first:.2f} s, steady {t_vec:.2f} s "
          f"({1e3 * t_vec / n_models:.1f} ms/model, {n_models * flops / t_vec / 1e9:.0f} GFLOP/s)")
    acc = evaluate.accuracy(counts)
    print(f"accuracy range over the population: {np.nanmin(acc):.4f} .. {np.nanmax(acc):.4f}")

    if not args.skip_loop:
        single = make_single(spec, spec.num_outputs)
        v0 = jax.tree.map(lambda a: a[0], variables)
        m0 = jax.tree.map(lambda a: a[0, 0, 0], masks)
        jax.block_until_ready(single(v0, m0, images, labels))  # compile outside the timing
        loop_counts, t_loop = timed(run_loop, spec, variables, masks, images, labels)
        same = np.array_equal(loop_counts, counts)
        if not same:  # f32 matmuls of different shapes round differently: near-tied logits can flip
            diff = np.abs(loop_counts - counts).sum((-2, -1)) // 2
            same = (f"False: {int(diff.sum())} of {n_models * images.shape[0]} predictions differ, in "
                    f"{int((diff > 0).sum())} models (max {int(diff.max())} per model)")
        print(f"per-model loop ({n_models} jitted calls): {t_loop:.2f} s ({1e3 * t_loop / n_models:.1f} ms/model, "
              f"{n_models * flops / t_loop / 1e9:.0f} GFLOP/s); identical counts: {same}")
        print(f"speed-up vectorised/loop: {t_loop / t_vec:.2f}x steady, {t_loop / t_first:.2f}x incl. compile")

    for c in [int(x) for x in args.mem_chunks.split(",") if x]:
        cmd = [sys.executable, "-m", "benchmarks.bench_evaluate", "--memory-child", "--chunk", str(c),
               "--seeds", str(args.seeds), "--criteria", str(args.criteria), "--sparsities", str(args.sparsities),
               "--batch-size", str(args.batch_size)]
        child = subprocess.run(cmd, check=True, capture_output=True, text=True)
        res = json.loads(child.stdout.strip().splitlines()[-1])
        for name in ("first", "steady"):
            r = res[name]
            print(f"memory chunk={c:4d} {name:6s} call: RSS before {r['rss_before_mib']:.0f} MiB, peak "
                  f"{r['peak_mib']:.0f} MiB (+{r['peak_mib'] - r['rss_before_mib']:.0f} MiB)"
                  f"{' [lifetime peak]' if r['peak_is_lifetime'] else ''}, {r['seconds']:.1f} s"
                  f"{' incl. compile' if name == 'first' else ''}")

if __name__ == "__main__":
    main()
