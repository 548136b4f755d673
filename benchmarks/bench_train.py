"""Epoch time per seed of LeNet-300-100 on MNIST (60k train, batch 128) trained S = 1, 8, 32 at a time in one
compiled program, against a FLOP lower bound measured on this machine in the same run.

Lower bound: one training step costs ≈ 3× the forward matmul FLOPs, 3 · 2·B·(784·300 + 300·100 + 100·10)
(the usual convention; the exact minimum is smaller because the input gradient of the first layer is not
needed: 2·B·(2·784·300 + 3·(300·100 + 100·10)), also printed). The machine's sustained float32 matmul rate is
measured with a jitted program made of exactly the step's matmuls (3 forward, 5 backward, batched over S like
the vmapped step), so the bound is "the step's matmuls and nothing else". Each S runs in its own subprocess so
its peak RSS (resource.getrusage) is its own.

    python -m benchmarks.bench_train            # S = 1, 8, 32, 3 timed epochs each (best kept)
    python -m benchmarks.bench_train --seeds 1 8 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

B = 128
LAYERS = ((784, 300), (300, 100), (100, 10))
N_TRAIN = 60000
STEPS = N_TRAIN // B


def forward_flops(batch: int = B) -> int:
    return 2 * batch * sum(i * o for i, o in LAYERS)


def step_flops_3x(batch: int = B) -> int:
    return 3 * forward_flops(batch)


def step_flops_exact(batch: int = B) -> int:
    (i0, o0), *rest = LAYERS
    return 2 * batch * (2 * i0 * o0 + 3 * sum(i * o for i, o in rest))


def _timeit(fn, *args, repeats: int = 7) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def matmul_rate(s: int, inner: int = 20) -> float:
    """FLOP/s of the step's matmuls (forward + backward, batched over s models), best of a few runs."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    ks = jax.random.split(key, 8)
    x = jax.random.normal(ks[0], (s, B, 784))
    ws = [jax.random.normal(ks[i + 1], (s, a, b)) * 0.05 for i, (a, b) in enumerate(LAYERS)]
    dys = [jax.random.normal(ks[i + 4], (s, B, b)) for i, (_, b) in enumerate(LAYERS)]

    def mm(a, b):
        return jnp.einsum("sij,sjk->sik", a, b)

    @jax.jit
    def step_matmuls(x, ws, dys0):
        def body(carry, _):
            x, acc = carry
            dys = [d * (1.0 + 1e-9 * acc) for d in dys0]  # carry-dependent: nothing is hoisted out of the loop
            h1 = mm(x, ws[0])
            h2 = mm(h1, ws[1])
            out = mm(h2, ws[2])
            dh2 = mm(dys[2], jnp.swapaxes(ws[2], 1, 2))
            dh1 = mm(dys[1] + dh2, jnp.swapaxes(ws[1], 1, 2))
            g0 = mm(jnp.swapaxes(x, 1, 2), dys[0] + dh1)
            g1 = mm(jnp.swapaxes(h1, 1, 2), dys[1])
            g2 = mm(jnp.swapaxes(h2, 1, 2), dys[2] + out)
            acc = acc + g0[:, :1, :1].sum() + g1[:, :1, :1].sum() + g2[:, :1, :1].sum()
            return (x + 1e-6 * acc, acc), None

        (_, acc), _ = jax.lax.scan(body, (x, jnp.zeros(())), None, length=inner)
        return acc

    t = _timeit(step_matmuls, x, ws, dys)
    return s * inner * step_flops_exact() / t


def square_rate(n: int = 1024) -> float:
    import jax

    a = jax.random.normal(jax.random.key(1), (n, n))
    f = jax.jit(lambda a: a @ a)
    return 2 * n ** 3 / _timeit(f, a)


def run_one(s: int, epochs: int) -> dict:
    """Train S LeNet-300-100 on MNIST for 1 + `epochs` epochs (the first includes compilation)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fairprune_jax import data, train
    from fairprune_jax.models import get_model

    mm_before = matmul_rate(s)
    split = data.load_split("mnist", "train")
    x = jnp.asarray((split.images.astype(np.float32) / 255.0 - 0.1307) / 0.3081)
    y = jnp.asarray(split.labels)
    spec = get_model("lenet_300_100")
    tcfg = dict(epochs=1 + epochs, batch_size=B, optimizer=dict(name="sgd", lr=0.05, momentum=0.9))
    stamps: list[float] = []
    t0 = time.perf_counter()
    train.fit(spec, tcfg, np.arange(s), x, y, progress=lambda d: stamps.append(time.perf_counter()))
    first = stamps[0] - t0
    per_epoch = min(b - a for a, b in zip(stamps[:-1], stamps[1:]))
    mm_rate = max(mm_before, matmul_rate(s))  # best of before/after: the machine may be shared
    return {"S": s, "first_epoch_s": first, "epoch_s": per_epoch, "epoch_s_per_seed": per_epoch / s,
            "matmul_flops": mm_rate, "square_flops": square_rate(),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "devices": str(jax.devices())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after the compiling one (best is kept)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(run_one(args.child, args.epochs)))
        return
    print(f"LeNet-300-100, MNIST {N_TRAIN} train, batch {B}, {STEPS} steps/epoch; "
          f"step FLOPs 3x-forward {step_flops_3x() / 1e6:.1f} M, exact {step_flops_exact() / 1e6:.1f} M")
    header = (f"{'S':>3} {'epoch/seed':>10} {'LB(3x)':>8} {'ratio':>6} {'LB(exact)':>9} {'ratio':>6} "
              f"{'mm GF/s':>8} {'sq GF/s':>8} {'1st ep':>7} {'peakRSS':>8}")
    print(header)
    for s in args.seeds:
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_train", "--child", str(s),
                              "--epochs", str(args.epochs)], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if out.returncode:
            print(out.stderr[-3000:])
            raise SystemExit(f"S={s}: child failed")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        lb3 = STEPS * step_flops_3x() / r["matmul_flops"]
        lbx = STEPS * step_flops_exact() / r["matmul_flops"]
        per = r["epoch_s_per_seed"]
        print(f"{s:>3} {per:>9.3f}s {lb3:>7.3f}s {per / lb3:>6.2f} {lbx:>8.3f}s {per / lbx:>6.2f} "
              f"{r['matmul_flops'] / 1e9:>8.1f} {r['square_flops'] / 1e9:>8.1f} {r['first_epoch_s']:>6.1f}s "
              f"{r['peak_rss_gib']:>6.2f}Gi")
    print("LB = steps/epoch × step FLOPs / measured matmul rate of the step's own matmuls at that S; "
          "ratio = measured / LB (goal ≤ 1.5 with the 3x convention).")


if __name__ == "__main__":
    main()
