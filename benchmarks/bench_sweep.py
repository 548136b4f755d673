"""The benchmark grid (LeNet-300-100 on MNIST, 4 seeds x 10 dense epochs, then MP/random/GP/UP x 5 sparsities x 2
fine-tuning epochs) through the real sweep pipeline, against a FLOP lower bound measured in the same run.

Prints: the exact FLOP count of the grid from the model's kernel shapes (forward and weight-gradient GEMMs of every
layer, input-gradient GEMMs of layers 2..L, evaluation forwards on the test set); the rate XLA reaches on each of
those GEMM shapes in this run (one model, S models batched, S models fused into one wide GEMM) and the square-GEMM
peak; then, interleaved, `python -m experiments.sweep` runs of the grid per variant (wall, per-stage seconds from
the workdir's `timings.json`, peak RSS of the child), their medians and wall / bound, optionally beside the same
grid as a per-model PyTorch loop (`torch_loop.py`, run by another interpreter); and two levers measured at
library level, interleaved: shared-batch fusion (one fine-tuning epoch of the grid's 80 pruned models, `fuse` on/off)
and fewer elementwise passes (the library's masked step against the same step unmasked and a hand-fused update).

    python -m benchmarks.bench_sweep                        # 3 interleaved repeats of every variant
    python -m benchmarks.bench_sweep --repeats 1 --variants default one-device --no-fusion-lever
    git worktree add ../base <rev> && python -m benchmarks.bench_sweep --baseline ../base --default-sweep
                                                            # against another revision, and the default sweep
    python -m benchmarks.bench_sweep --levers-only --no-fusion-lever  # only the fewer-passes lever
    python -m benchmarks.bench_sweep --variants default torch-loop --torch-python /path/to/venv-with-torch/bin/python
                                                            # against a per-model PyTorch loop (torch_loop.py)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

B = 128
N_TRAIN, N_TEST = 60000, 10000
SEEDS, DENSE_EPOCHS, FT_EPOCHS = 4, 10, 2
CRITERIA = ("mp", "random", "gp", "up")
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
GRID = ["--config.num_seeds=4", "--config.train.epochs=10", "--config.train.optimizer.momentum=0.9",
        "--config.train.optimizer.weight_decay=5e-4", "--config.finetune.optimizer.lr=0.1",
        "--config.finetune.optimizer.momentum=0.9", "--config.finetune.optimizer.weight_decay=5e-4",
        "--config.prune.criteria=('mp','random','gp','up')", "--config.prune.sparsities=(0.5,0.8,0.9,0.95,0.98)",
        "--config.save_pruned=False"]
# variant -> (extra overrides, extra environment). "default" is the command as a user types it: every core a device
# of the seed mesh, cache-sized chunks. The others take levers away: every model of a unit at once ("whole"), one CPU
# device (auto chunks), and both (the defaults before the levers); "one-thread-ops" adds a lever: every operation
# single-threaded, each device on its own core. "baseline" runs another checkout; "torch-loop" the
# same grid as a per-model loop in eager PyTorch (benchmarks/torch_loop.py, under the --torch-python interpreter).
ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
VARIANTS = {
    "default": ([], {}),
    "whole": (["--config.train.chunk=100000", "--config.finetune.chunk=100000"], {}),
    "one-device": ([], ONE_DEVICE),
    "one-device-whole": (["--config.train.chunk=100000", "--config.finetune.chunk=100000"], ONE_DEVICE),
    "one-thread-ops": ([], {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}),
    "baseline": ([], {}),
    "torch-loop": ([], {}),
}


def kernel_shapes(model: str = "lenet_300_100") -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every Dense kernel of `model`, input to output, from its parameter shapes."""
    import jax

    from fairprune_jax.models import get_model

    spec = get_model(model)
    shapes = jax.eval_shape(spec.init, jax.random.key(0))["params"]
    kernels = [(int(leaf.shape[0]), int(leaf.shape[1])) for path, leaf in
               jax.tree_util.tree_leaves_with_path(shapes) if "kernel" in jax.tree_util.keystr(path)]
    chain, width = [], int(np.prod(spec.input_shape))  # params are stored by name: chain them by width
    while kernels:
        nxt = next((k for k in kernels if k[0] == width), None)
        if nxt is None:
            raise ValueError(f"{model}: kernels {kernels} do not chain from input width {width}")
        chain.append(nxt)
        kernels.remove(nxt)
        width = nxt[1]
    return chain


def step_gemms(layers: list[tuple[int, int]], batch: int = B) -> list[tuple[str, int, int, int]]:
    """(name, m, k, n) of the GEMMs of one training step: forward x[B,i]W[i,o], weight gradient x^T[i,B]dy[B,o],
    input gradient dy[B,o]W^T[o,i] (not for the first layer: its input is the data)."""
    out = []
    for j, (i, o) in enumerate(layers):
        out.append((f"fwd{j + 1}", batch, i, o))
        out.append((f"wgrad{j + 1}", i, batch, o))
        if j:
            out.append((f"igrad{j + 1}", batch, o, i))
    return out


def grid_flops(layers: list[tuple[int, int]], *, seeds: int = SEEDS, dense_epochs: int = DENSE_EPOCHS,
               pruned: int = len(CRITERIA) * len(SPARSITIES), ft_epochs: int = FT_EPOCHS, n_train: int = N_TRAIN,
               n_test: int = N_TEST, batch: int = B) -> dict[str, float]:
    """Exact GEMM FLOPs of the grid (2·m·k·n per GEMM): training steps (last partial batch dropped) of the dense
    and fine-tuned models, plus one evaluation forward of every model on the test set."""
    step = sum(2 * m * k * n for _, m, k, n in step_gemms(layers, batch))
    steps = n_train // batch
    dense = seeds * dense_epochs * steps * step
    finetune = seeds * pruned * ft_epochs * steps * step
    evaluation = seeds * (1 + pruned) * n_test * 2 * sum(i * o for i, o in layers)
    return {"step": float(step), "dense": float(dense), "finetune": float(finetune), "eval": float(evaluation),
            "total": float(dense + finetune + evaluation)}


def gemm_rate(m: int, k: int, n: int, *, models: int = 1, mode: str = "single", reps: int = 5) -> float:
    """FLOP/s XLA reaches on `models` GEMMs [m,k]x[k,n]: one at a time ("single", models=1), vmapped with both
    operands batched ("batched"), or with the left operand shared and the right ones side by side, one wide
    GEMM [m,k]x[k,n·models] ("fused"). A scan over 16 distinct left operands per call; the best of `reps`."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    lead = () if mode in ("single", "fused") else (models,)
    a = jax.random.normal(key, (16, *lead, m, k), jnp.float32)
    wide = n * models if mode == "fused" else n
    b = jax.random.normal(jax.random.fold_in(key, 1), (*lead, k, wide), jnp.float32)

    @jax.jit
    def run(a, b):
        return jax.lax.scan(lambda c, x: (c + jnp.matmul(x, b).sum(), None), 0.0, a)[0]

    jax.block_until_ready(run(a, b))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(run(a, b))
        best = min(best, time.perf_counter() - t)
    per_call = 16 * 2 * m * k * wide * (models if mode == "batched" else 1)
    return per_call / best


def bound_seconds(layers: list[tuple[int, int]], rates: dict[str, float], flops: dict[str, float]) -> float:
    """Lower bound: every training GEMM at the rate measured for its shape, evaluation at the fastest rate."""
    steps = (flops["dense"] + flops["finetune"]) / flops["step"]
    train = sum(steps * 2 * m * k * n / rates[name] for name, m, k, n in step_gemms(layers))
    return train + flops["eval"] / max(rates.values())


def timed_child(cmd: list[str], *, what: str, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> tuple[float, float, str]:
    """Run `cmd` to completion: (wall seconds, peak RSS in GiB, stdout). Output goes to temporary files, so a
    chatty child never blocks on a full pipe; a failure raises RuntimeError with the tail of its stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=None if env is None else {**os.environ, **env}, stdout=out, stderr=err,
                                cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if status:
            raise RuntimeError(f"{what} failed ({status}): {' '.join(cmd)}\n{err.read().decode()[-2000:]}")
        return wall, usage.ru_maxrss / 2**20, out.read().decode()


def run_sweep(workdir: Path, overrides: list[str], env: dict[str, str], config: str = "configs/mnist.py",
              checkout: Path | None = None) -> dict[str, float]:
    """One `python -m experiments.sweep` run in a fresh `workdir` (from `checkout`, another clone of the repository,
    when given): wall, peak RSS (GiB) and per-stage seconds."""
    cmd = [sys.executable, "-m", "experiments.sweep", f"--config={config}", *overrides,
           f"--config.workdir={workdir}", "--config.progress=False"]
    if checkout is not None:
        env = {**env, "PYTHONPATH": str(checkout)}
    wall, rss, _ = timed_child(cmd, what="sweep", env=env, cwd=checkout)
    stages = json.loads((workdir / "timings.json").read_text())
    out = {"wall": wall, "rss_gib": rss}
    for stage, runs in stages.items():
        group = stage.split(".")[0]
        out[group] = out.get(group, 0.0) + sum(r.get("seconds") or 0.0 for r in runs)
    return out


def run_torch_loop(python: str) -> dict[str, float]:
    """One run of `benchmarks/torch_loop.py` (the grid as a per-model PyTorch loop) under interpreter `python`:
    wall, peak RSS (GiB), its per-phase seconds and its fastest / slowest fine-tuning epoch."""
    script = Path(__file__).resolve().parent / "torch_loop.py"
    cmd = [python, str(script), "--seeds", str(SEEDS), "--epochs", str(DENSE_EPOCHS), "--ft-epochs", str(FT_EPOCHS),
           "--criteria", *CRITERIA, "--sparsities", *map(str, SPARSITIES)]
    wall, rss, stdout = timed_child(cmd, what="torch loop")
    res = json.loads(stdout.strip().splitlines()[-1])
    spread = (res.get("epoch_seconds") or {}).get("finetune") or {}  # how steady the loop ran
    return ({"wall": wall, "rss_gib": rss} | {k: res[k] for k in ("dense", "finetune", "eval")}
            | {f"ft_epoch_{k}": spread[k] for k in ("min", "max") if k in spread})


def compare_recall(a: Path, b: Path) -> str:
    """How far two runs' recall tables are apart: differing test predictions (per-class correct counts), and the
    largest gap in mean accuracy per (model, criterion, sparsity), overall and up to 98% sparsity."""
    import pandas as pd

    keys = ["model", "criterion", "seed", "level", "sparsity_index", "class"]

    def table(wd: Path) -> pd.DataFrame:
        parts = sorted((wd / "results" / "recall").glob("*.parquet"))
        if not parts:
            raise ValueError(f"{wd} holds no recall table (results/recall/*.parquet)")
        return pd.concat([pd.read_parquet(p) for p in parts]).sort_values(keys).reset_index(drop=True)

    ta, tb = table(a), table(b)
    if len(ta) != len(tb) or not (ta[keys].to_numpy() == tb[keys].to_numpy()).all():
        raise ValueError(f"{a} and {b} hold different grids")
    diff = (ta["correct"] - tb["correct"]).abs()
    cell = ["model", "criterion", "requested_sparsity"]
    acc = [t.drop_duplicates(keys[:-1]).groupby(cell)["accuracy"].mean() for t in (ta, tb)]
    gap = (acc[0] - acc[1]).abs()
    low = gap[gap.index.get_level_values("requested_sparsity") <= 0.98]
    dense = diff[ta["criterion"] == "dense"].sum()
    return (f"predictions differing: {int(diff.sum())} of {int(ta['n'].sum())} ({diff.sum() / ta['n'].sum():.2%}; "
            f"dense models {int(dense)}); largest mean-accuracy gap per cell {gap.max():.4f} "
            f"({low.max():.4f} up to 98% sparsity)")


def fusion_lever(repeats: int) -> dict[str, list[float]]:
    """Seconds of one fine-tuning epoch of the grid's S·M·P pruned models (dense 1 epoch, one-shot masks) with
    shared-batch fusion on and off, interleaved; also the largest weight difference between the two."""
    import jax
    import jax.numpy as jnp

    from fairprune_jax import protocols, train
    from fairprune_jax.data import load_split
    from fairprune_jax.models import get_model

    split = load_split("mnist", "train")
    x = jnp.asarray((split.images.astype(np.float32) / 255.0 - 0.1307) / 0.3081)
    y = jnp.asarray(split.labels)
    spec = get_model("lenet_300_100")
    cfg = dict(epochs=1, batch_size=B, optimizer=dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4))
    keys = train.as_keys(list(range(SEEDS)))
    dense, _ = train.fit(spec, cfg, keys, x, y)
    _, masks, _ = protocols.one_shot(spec, dict(cfg, epochs=0), dense, CRITERIA, SPARSITIES, keys, x, y)
    times: dict[str, list[float]] = {"fused": [], "unfused": []}
    outs = {}
    for _ in range(repeats + 1):  # the first round compiles
        for name in times:
            t = time.perf_counter()
            outs[name] = jax.block_until_ready(
                protocols.finetune(spec, cfg, dense, masks, keys, x, y, fuse=name == "fused")[0])
            times[name].append(time.perf_counter() - t)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(outs["fused"]),
                                                              jax.tree.leaves(outs["unfused"])))
    return {k: v[1:] for k, v in times.items()} | {"maxdiff": [diff]}


def passes_lever(repeats: int, models: int = 16, steps: int = 100) -> dict[str, list[float]]:
    """Seconds per model-step of the masked SGD step (momentum .9, weight decay 5e-4) on real MNIST batches, `models`
    LeNets vmapped, `steps` steps scanned: the library's `train.train_step` (masks the gradient, the update and the
    new weights: several elementwise passes), the same step without a mask (a floor for the masking passes), and a
    hand-fused step doing the whole masked update in one expression (m ← mask·(g + wd·w + μm), w ← w − lr·m).
    Interleaved; also the largest weight difference between the library and the fused step."""
    import jax
    import jax.numpy as jnp

    from fairprune_jax import optim, train
    from fairprune_jax.data import load_split
    from fairprune_jax.models import get_model

    lr, mu, wd = 0.1, 0.9, 5e-4
    split = load_split("mnist", "train")
    n = steps * B
    x = jnp.asarray((split.images[:n].astype(np.float32) / 255.0 - 0.1307) / 0.3081).reshape(steps, B, 28, 28, 1)
    y = jnp.asarray(split.labels[:n]).reshape(steps, B)
    spec = get_model("lenet_300_100")
    tx = optim.make_optimizer(name="sgd", lr=lr, momentum=mu, weight_decay=wd, steps_per_epoch=steps, epochs=1)
    keys = train.as_keys(list(range(models)))
    variables = train.init_population(spec, keys)
    mask = jax.tree.map(lambda p: jax.random.bernoulli(jax.random.key(1), 0.2, p.shape), variables["params"])

    def fused_step(state, m, xb, yb):
        def objective(params):
            return optim.softmax_cross_entropy(spec.apply({"params": params}, xb, train=True)[0], yb)

        loss, g = jax.value_and_grad(objective)(state.params)
        mom = jax.tree.map(lambda g_, w, v, k: jnp.where(k, g_ + wd * w + mu * v, 0.0), g, state.params,
                           state.opt_state, m)
        return state._replace(params=jax.tree.map(lambda w, v: w - lr * v, state.params, mom), opt_state=mom), loss

    steps_of = {"library": lambda st, m, xb, yb: train.train_step(spec, tx, st, m, xb, yb),
                "unmasked": lambda st, m, xb, yb: train.train_step(spec, tx, st, None, xb, yb),
                "fused": fused_step}
    inits = {"library": jax.jit(jax.vmap(lambda v, m: train.init_state(tx, v, m))),
             "unmasked": jax.jit(jax.vmap(lambda v, m: train.init_state(tx, v, None))),
             "fused": jax.jit(jax.vmap(lambda v, m: train.TrainState(
                 train.mask_tree(v["params"], m), {}, jax.tree.map(jnp.zeros_like, v["params"]),
                 jnp.zeros((), jnp.int32))))}

    def compiled(fn):
        def one(st, m):
            return jax.lax.scan(lambda s_, i: fn(s_, m, x[i], y[i]), st, jnp.arange(steps))[0]
        return jax.jit(jax.vmap(one))

    runs = {k: compiled(f) for k, f in steps_of.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    outs = {}
    for _ in range(repeats + 1):  # the first round compiles
        for k, fn in runs.items():
            st = jax.block_until_ready(inits[k](variables, mask))
            t = time.perf_counter()
            outs[k] = jax.block_until_ready(fn(st, mask))
            times[k].append((time.perf_counter() - t) / (models * steps))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(outs["library"].params),
                                                              jax.tree.leaves(outs["fused"].params)))
    return {k: v[1:] for k, v in times.items()} | {"maxdiff": [diff]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--no-fusion-lever", action="store_true")
    ap.add_argument("--no-passes-lever", action="store_true")
    ap.add_argument("--levers-only", action="store_true", help="measure the levers, skip the sweeps")
    ap.add_argument("--default-sweep", action="store_true",
                    help="also time the default MNIST sweep, interleaved, for every variant")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout (e.g. `git worktree add ../base <rev>`) run as the 'baseline' variant")
    ap.add_argument("--torch-python", default=None,
                    help="an interpreter with torch: runs benchmarks/torch_loop.py as the 'torch-loop' variant")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("WORKDIR_A", "WORKDIR_B"),
                    help="only compare two finished runs' recall tables (same grid) and exit")
    args = ap.parse_args()
    if args.compare:
        try:
            print(compare_recall(*args.compare))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        return
    if "baseline" in args.variants and args.baseline is None:
        args.variants.remove("baseline")
    if "torch-loop" in args.variants and args.torch_python is None:
        args.variants.remove("torch-loop")
    bad = None
    if args.torch_python is not None and shutil.which(args.torch_python) is None:
        bad = f"--torch-python: {args.torch_python} is not an executable interpreter"
    if args.baseline is not None and not (args.baseline / "experiments" / "sweep.py").is_file():
        bad = f"--baseline: {args.baseline} is not a checkout of this repository"
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        sys.exit(2)
    print(f"load average: {os.getloadavg()}")
    layers = kernel_shapes()
    flops = grid_flops(layers)
    print(f"layers {layers}; FLOPs: " + ", ".join(f"{k} {v / 1e12:.3f} T" for k, v in flops.items() if k != "step"))
    pruned = len(CRITERIA) * len(SPARSITIES)
    rates, rows = {}, []
    for name, m, k, n in step_gemms(layers):
        single = gemm_rate(m, k, n)
        batched = gemm_rate(m, k, n, models=pruned, mode="batched")
        fused = gemm_rate(m, k, n, models=pruned, mode="fused") if name.startswith(("fwd", "wgrad")) else np.nan
        rates[name] = batched
        rows.append(f"  {name:7s} [{m},{k}]x[{k},{n}]: single {single / 1e9:6.1f}  batched x{pruned} "
                    f"{batched / 1e9:6.1f}  fused-wide {fused / 1e9:6.1f} GFLOP/s")
    square = gemm_rate(1024, 1024, 1024)
    print("GEMM rates (this run):\n" + "\n".join(rows) + f"\n  square 1024^3: {square / 1e9:.1f} GFLOP/s")
    bound, square_bound = bound_seconds(layers, rates, flops), flops["total"] / square
    print(f"lower bound: {bound:.1f} s at the batched per-shape rates, {square_bound:.1f} s at the square peak")
    if not args.no_fusion_lever:
        lev = fusion_lever(args.repeats)
        print(f"fusion lever (one fine-tuning epoch of {SEEDS * pruned} models): fused "
              f"{np.median(lev['fused']):.1f} s, unfused {np.median(lev['unfused']):.1f} s (medians of "
              f"{args.repeats}); max |w_fused - w_unfused| {lev['maxdiff'][0]:.2e}")
    if not args.no_passes_lever:
        lev = passes_lever(args.repeats)
        med = {k: float(np.median(v)) * 1e3 for k, v in lev.items() if k != "maxdiff"}
        print(f"passes lever (16 LeNets x 100 steps, ms per model-step, medians of {args.repeats}): library "
              f"{med['library']:.3f}, without mask {med['unmasked']:.3f} ({med['library'] / med['unmasked']:.2f}x), "
              f"hand-fused update {med['fused']:.3f} ({med['library'] / med['fused']:.2f}x); max |w_library - "
              f"w_fused| {lev['maxdiff'][0]:.2e}")
    if args.levers_only:
        return
    sweeps = {"grid": GRID} | ({"default MNIST sweep": []} if args.default_sweep else {})
    with tempfile.TemporaryDirectory() as tmp:
        for title, base in sweeps.items():
            results: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
            workdirs: dict[str, Path] = {}
            for r in range(args.repeats):
                for v in args.variants:
                    if v == "torch-loop":
                        if title != "grid":  # the loop implements the grid only
                            continue
                        res = run_torch_loop(args.torch_python)
                    else:
                        extra, env = VARIANTS[v]
                        workdirs[v] = Path(tmp) / f"{title[:4]}-{v}-{r}"
                        res = run_sweep(workdirs[v], base + extra, env,
                                        checkout=args.baseline if v == "baseline" else None)
                    results[v].append(res)
                    print(f"  {title} run {r} {v}: " + ", ".join(f"{k} {x:.1f}" for k, x in res.items()), flush=True)
            results = {v: runs for v, runs in results.items() if runs}
            walls = {v: float(np.median([x["wall"] for x in runs])) for v, runs in results.items()}
            for v, runs in results.items():
                med = {k: float(np.median([x[k] for x in runs])) for k in runs[0]}
                ratios = ", ".join(f"{walls[o] / walls[v]:.2f}x faster than {o}" for o in walls if o != v)
                against = (f" ({med['wall'] / bound:.2f}x the per-shape bound, {med['wall'] / square_bound:.2f}x the "
                           f"square-GEMM bound)" if title == "grid" else "")
                print(f"{title}, {v}: median wall {med['wall']:.1f} s{against}; {ratios}; "
                      + ", ".join(f"{k} {x:.1f}" for k, x in med.items() if k != "wall"))
            for v in workdirs:
                if v != "default" and "default" in workdirs:
                    print(f"{title}, default against {v}: {compare_recall(workdirs['default'], workdirs[v])}")


if __name__ == "__main__":
    main()
