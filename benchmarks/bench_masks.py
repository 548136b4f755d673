"""Benchmark: global magnitude masks for 64 seeds x 10 sparsities of LeNet-300-100 in ONE jitted call, against a
per-seed, per-sparsity Python loop over the jitted single-model function, measured in the same run.

    python -m benchmarks.bench_masks [--seeds 64] [--repeats 3] [--method select|rank] [--rank-grid]
    python -m benchmarks.bench_masks --host-devices 2   # the seed axis on a 2-device `seed` mesh of CPU devices

--method picks the implementation of the library rule that both paths use (default "select": int-key sort +
boundary search; "rank": stable argsort -> rank >= n). --rank-grid also times the grid call with "rank" for
comparison (no loop; it must give identical masks). With either method the grid sorts once per seed and each
extra sparsity costs one pass over the weights, so with per-seed cost S, per-mask cost e and per-call overhead d
the ratio is P(S + e + d) / (S + P e) for P sparsities: about P = 10 unless batching over seeds itself gains.
XLA's CPU sort runs on one core, so a single CPU device leaves the second core idle; --host-devices N splits the
CPU into N JAX devices and places the seed axis on a `seed` mesh over them (fairprune_jax.sharding), the way a
population is spread over GPUs. The loop stays a per-mask loop on one device.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if "--host-devices" in sys.argv:  # must be set before JAX starts
    _n = sys.argv[sys.argv.index("--host-devices") + 1]
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={_n}"

import jax
import jax.numpy as jnp

from fairprune_jax import masks, scores, sharding
from fairprune_jax.models import get_model


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", choices=masks.METHODS, default="select")
    ap.add_argument("--rank-grid", action="store_true")
    ap.add_argument("--host-devices", type=int, default=1, help="CPU devices for the grid call's seed mesh")
    args = ap.parse_args()

    spec = get_model("lenet_300_100")
    prunable = spec.prunable()
    keys = jax.random.split(jax.random.key(0), args.seeds)
    params = jax.vmap(spec.init)(keys)["params"]
    sparsities = jnp.asarray([0.2, 0.36, 0.488, 0.5904, 0.67232, 0.7379, 0.7903, 0.8322, 0.8658, 0.8926])

    def make(method):
        def one(p, s):  # one model, one sparsity
            return masks.threshold(scores.magnitude(p), s, prunable=prunable, scope="global", method=method)
        return one

    one = make(args.method)
    single = jax.jit(one)
    grid = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))  # [S, P, ...]

    per_seed = [jax.tree.map(lambda x, i=i: x[i], params) for i in range(args.seeds)]  # slicing is not timed
    if args.host_devices > 1:
        params = sharding.shard_models(params, sharding.seed_mesh(jax.devices()[:args.host_devices]))
    per_s = [sparsities[j] for j in range(len(sparsities))]
    t0 = time.perf_counter()
    jax.block_until_ready(grid(params, sparsities))
    compile_grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(single(per_seed[0], sparsities[0]))
    compile_single = time.perf_counter() - t0

    def run_grid():
        return jax.block_until_ready(grid(params, sparsities))

    def run_loop():
        return [[jax.block_until_ready(single(p, s)) for s in per_s] for p in per_seed]

    t_grid = _best_of(run_grid, args.repeats)
    t_loop = _best_of(run_loop, max(1, args.repeats - 1))

    # the two paths must agree exactly (spot check a few cells) and counts must be exact
    out = run_grid()
    n = masks.num_prunable(per_seed[0], prunable)
    for i in (0, args.seeds - 1):
        for j in (0, len(sparsities) - 1):
            ref = single(per_seed[i], sparsities[j])
            got = jax.tree.map(lambda x: x[i, j], out)
            assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), ref, got)))
            assert int(masks.count_zeros(got, prunable)) == int(masks.n_zero(sparsities[j], n))

    cells = args.seeds * len(sparsities)
    print(f"method: {args.method}")
    print(f"device: {jax.devices()[0].platform} x {args.host_devices} for the grid call, {cells} masks ({args.seeds} seeds x {len(sparsities)} sparsities), "
          f"{n} prunable weights each")
    print(f"compile: grid {compile_grid:.2f} s, single {compile_single:.2f} s")
    print(f"one jitted call (vmap seeds x sparsities): {t_grid * 1e3:9.1f} ms")
    print(f"Python loop over jitted single-model fn:   {t_loop * 1e3:9.1f} ms  ({t_loop / cells * 1e3:.2f} ms/mask)")
    print(f"speed-up: {t_loop / t_grid:.1f}x")
    if args.rank_grid:
        other = "rank" if args.method == "select" else "select"
        g2 = jax.jit(jax.vmap(jax.vmap(make(other), in_axes=(None, 0)), in_axes=(0, None)))
        out2 = jax.block_until_ready(g2(params, sparsities))
        assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), out, out2)))
        t2 = _best_of(lambda: jax.block_until_ready(g2(params, sparsities)), args.repeats)
        print(f"grid call with method={other!r}:          {t2 * 1e3:9.1f} ms (identical masks)")


if __name__ == "__main__":
    main()
