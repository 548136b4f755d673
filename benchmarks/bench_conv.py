"""Conv populations on CPU: a population of S conv nets trained as one program against the same S models trained one
by one, in the same run, interleaved, medians; with the exact FLOP count of a step and the rate of every convolution
shape in isolation against the square-GEMM peak measured in the same run.

Models (MNIST scale, 28×28×1, batch 128): LeNet-5, Conv-2/4/6 (Frankle & Carbin) and ResNet-20 (BatchNorm).

Sections, each printed as it completes:
1. FLOPs: the exact GEMM/convolution FLOPs of one training step per model, counted from the operations of the
   model's forward program (2·outputs·fan-in per convolution or dense layer; the weight gradient costs as much
   again, the input gradient too except where the input is the data), and of one evaluation forward.
2. Shapes: every distinct convolution of the models at batch 128, forward + backward, timed one model alone,
   S models vmapped (XLA makes them one grouped convolution) and S models mapped, for each lowering
   (`layers.CONV_LOWERINGS`: "xla", "patches" = im2col GEMMs), as GFLOP/s and as a fraction of the square-GEMM
   peak (1024×1024 float32) measured in this run; and 2×2 max-pooling forward + backward (reduce_window vs the
   strided-slice `layers.max_pool`).
3. Training: one epoch on `--examples` MNIST training images (last partial batch dropped), interleaved rounds:
   "loop" = `train.fit` called once per seed (one model, the default path), "pop" = `train.fit` on the S seeds
   with the entry points' mesh (`sharding.default_mesh()`: every core a device); levers (`--levers`): "pop-1dev"
   (no mesh: both cores on every model) and the population under another formulation (`population.override`,
   e.g. "vmap+xla", the vmap of XLA's convolution used for every model before the rule). Medians of the rounds,
   seconds per model-epoch of the full 60k split extrapolated from the steps timed, speed-up = loop / variant,
   GFLOP/s, and the compiled epoch's XLA memory (arguments + temporaries, per device) for each variant.
4. Evaluation: `evaluate.evaluate_population` of S models on `--test-examples` test images, "vmap" against "map"
   (the rule's formulation) under the mesh.
5. Epoch (not in the default sections): the time of one full epoch per model on the whole training split of
   `--dataset`, S = `--epoch-seeds` models trained as the sweep trains them (`train.fit`, the mesh, the rule), the
   second of two epochs (the first compiles), in wall seconds and in CPU seconds of this process (user + system;
   less sensitive to other jobs on a shared machine): what a sweep's budget is planned from.

    python -m benchmarks.bench_conv                                 # lenet5, S = 1 4 8, 3 rounds
    python -m benchmarks.bench_conv --models lenet5 conv2 resnet20 --seeds 1 4 8 --repeats 3
    python -m benchmarks.bench_conv --models lenet5 --levers pop-1dev vmap+xla vmap+patches map+xla
    python -m benchmarks.bench_conv --sections flops shapes        # no training
    python -m benchmarks.bench_conv --sections epoch --dataset fashion_mnist --models lenet5_half lenet5 lenet5_double
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

# every core a JAX device, as the entry points do (experiments.sweep); before JAX creates its backends
if __name__ == "__main__":
    from fairprune_jax import sharding as _sharding

    _sharding.use_all_cores()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.extend import core as jcore  # noqa: E402

B = 128
N_TRAIN = 60000
MODELS = ("lenet5", "lenet5_half", "lenet5_double", "conv2", "conv4", "conv6", "resnet20")
SECTIONS = ("flops", "shapes", "train", "eval", "epoch")
LEVERS = ("pop-1dev", "vmap+xla", "vmap+patches", "map+xla", "map+patches")


# ----------------------------------------------------------------------------------------------- FLOPs


class Op(NamedTuple):
    """One convolution or dense layer of a forward program: its FLOPs (2·outputs·fan-in), whether its input
    depends on the parameters (then a training step also pays its input gradient), and, for convolutions, the
    shapes to time it in isolation."""

    kind: str  # "conv" | "dot"
    flops: int
    input_grad: bool
    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    strides: tuple[int, ...] = ()
    padding: tuple[tuple[int, int], ...] = ()
    groups: int = 1


def _body(eqn: Any) -> Any | None:
    """The program a call-like operation runs (pjit: `jaxpr`, custom_vjp/custom_jvp: `call_jaxpr`), or None."""
    for key in ("jaxpr", "call_jaxpr"):
        j = eqn.params.get(key)
        if isinstance(j, jcore.ClosedJaxpr):
            return j.jaxpr
        if isinstance(j, jcore.Jaxpr):
            return j
    return None


def _walk(jaxpr: Any, tainted: set, ops: list[Op]) -> None:
    """Append the conv/dot ops of `jaxpr` (sub-programs inlined in order), tracking which variables depend on
    the parameters (`tainted`)."""
    for eqn in jaxpr.eqns:
        ins = [v for v in eqn.invars if isinstance(v, jcore.Var)]
        dep = any(v in tainted for v in ins)
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            dn = eqn.params["dimension_numbers"]
            fan_in = rhs[dn.rhs_spec[1]] * int(np.prod([rhs[d] for d in dn.rhs_spec[2:]]))
            out = int(np.prod(eqn.outvars[0].aval.shape))
            ops.append(Op("conv", 2 * out * fan_in, eqn.invars[0] in tainted, tuple(lhs), tuple(rhs),
                          tuple(eqn.params["window_strides"]), tuple(map(tuple, eqn.params["padding"])),
                          int(eqn.params["feature_group_count"])))
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            fan_in = int(np.prod([lhs[d] for d in lc]))
            out = int(np.prod(eqn.outvars[0].aval.shape))
            ops.append(Op("dot", 2 * out * fan_in, eqn.invars[0] in tainted, tuple(lhs),
                          tuple(eqn.invars[1].aval.shape)))
        sub = _body(eqn)  # a call's body is walked in place (the zoo has no cond/while in its forward pass)
        if sub is not None:
            inner = {iv for iv, ov in zip(sub.invars, eqn.invars) if isinstance(ov, jcore.Var) and ov in tainted}
            _walk(sub, inner, ops)
        if dep:
            tainted.update(eqn.outvars)


def model_ops(name: str, batch: int = B, input_shape: tuple[int, ...] = (28, 28, 1)) -> list[Op]:
    """The conv and dense operations of one training-mode forward pass of model `name` at `batch` examples,
    traced with XLA's convolution (so each convolution is one operation)."""
    from fairprune_jax.models import get_model
    from fairprune_jax.models.layers import conv_lowering

    spec = get_model(name, input_shape=input_shape)
    variables = jax.eval_shape(spec.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    with conv_lowering("xla"):
        closed = jax.make_jaxpr(lambda p, rest, x: spec.apply({"params": p, **rest}, x, train=True)[0])(
            variables["params"], {k: v for k, v in variables.items() if k != "params"}, x)
    jaxpr = closed.jaxpr
    n_params = len(jax.tree.leaves(variables["params"]))
    ops: list[Op] = []
    _walk(jaxpr, set(jaxpr.invars[:n_params]), ops)
    return ops


def step_flops(ops: list[Op]) -> dict[str, int]:
    """FLOPs of one training step: forward, weight gradients (as much as the forward of every layer) and input
    gradients (as much as the forward, for layers whose input depends on the parameters), and the total."""
    fwd = sum(o.flops for o in ops)
    igrad = sum(o.flops for o in ops if o.input_grad)
    return {"forward": fwd, "wgrad": fwd, "igrad": igrad, "step": 2 * fwd + igrad}


# ----------------------------------------------------------------------------------------------- timing


def _median_time(fn: Callable, *args: Any, reps: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def square_rate(n: int = 1024) -> float:
    """FLOP/s of a square float32 GEMM (the machine's dense peak as XLA reaches it), median of 5."""
    a = jax.random.normal(jax.random.key(1), (n, n))
    return 2 * n ** 3 / _median_time(jax.jit(lambda a: a @ a), a)


def conv_variants(op: Op, s: int) -> dict[str, Callable[[], Any]]:
    """Jitted forward + backward of the convolution `op` (input gradient only when the layer needs it), as
    zero-argument calls: one model per lowering, S models vmapped and mapped per lowering."""
    from fairprune_jax.models.layers import CONV_LOWERINGS

    key = jax.random.key(0)
    out: dict[str, Callable[[], Any]] = {}
    for lname, lower in CONV_LOWERINGS.items():
        def fb(x, k, g, lower=lower):
            y, vjp = jax.vjp(lambda x, k: lower(x, k, op.strides[:2], op.padding, op.groups), x, k)
            dx, dk = vjp(g)
            return (y, dx, dk) if op.input_grad else (y, dk)

        x = jax.random.normal(key, op.lhs)
        k = jax.random.normal(jax.random.fold_in(key, 1), op.rhs) * 0.1
        y_shape = jax.eval_shape(lambda x, k, lower=lower: lower(x, k, op.strides[:2], op.padding, op.groups), x, k)
        g = jax.random.normal(jax.random.fold_in(key, 2), y_shape.shape)
        xs, ks, gs = (jnp.broadcast_to(a, (s, *a.shape)) + 0.0 for a in (x, k, g))
        one, vm = jax.jit(fb), jax.jit(jax.vmap(fb))
        mp = jax.jit(lambda xs, ks, gs, fb=fb: jax.lax.map(lambda a: fb(*a), (xs, ks, gs)))
        out[f"{lname} 1"] = lambda one=one, x=x, k=k, g=g: one(x, k, g)
        out[f"{lname} vmap"] = lambda vm=vm, xs=xs, ks=ks, gs=gs: vm(xs, ks, gs)
        out[f"{lname} map"] = lambda mp=mp, xs=xs, ks=ks, gs=gs: mp(xs, ks, gs)
    return out


def pool_variants(shape: tuple[int, ...]) -> dict[str, Callable[[], Any]]:
    """Forward + backward of a 2×2 max-pool on `shape`: `nn.max_pool` (reduce_window) and `layers.max_pool`."""
    import flax.linen as nn

    from fairprune_jax.models.layers import max_pool

    x = jax.random.normal(jax.random.key(3), shape)
    out = {}
    for name, fn in (("reduce_window", lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))), ("slices", max_pool)):
        def fb(x, fn=fn):
            y, vjp = jax.vjp(fn, x)
            return y, vjp(y)[0]

        f = jax.jit(fb)
        out[name] = lambda f=f: f(x)
    return out


def shapes_section(models: list[str], s: int, reps: int) -> None:
    peak = square_rate()
    print(f"\n== shapes: forward + backward per convolution, batch {B}, S = {s}; square-GEMM peak "
          f"{peak / 1e9:.1f} GFLOP/s (this run) ==", flush=True)
    seen: dict[tuple, Op] = {}
    for m in models:
        for op in model_ops(m):
            if op.kind == "conv":
                seen.setdefault((op.lhs, op.rhs, op.strides, op.padding, op.groups, op.input_grad), op)
    cols = [f"{lw} {v}" for lw in ("xla", "patches") for v in ("1", "vmap", "map")]
    print(f"{'input':>16} {'kernel':>14} {'st':>2} {'MFLOP':>7} | " + " ".join(f"{c:>13}" for c in cols)
          + "   (GFLOP/s; % of peak)", flush=True)
    for op in seen.values():
        fl = op.flops * (3 if op.input_grad else 2)
        variants = conv_variants(op, s)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for fn in variants.values():
            jax.block_until_ready(fn())
        for _ in range(reps):  # interleaved
            for k, fn in variants.items():
                t = time.perf_counter()
                jax.block_until_ready(fn())
                times[k].append(time.perf_counter() - t)
        cells = []
        for c in cols:
            rate = fl * (1 if c.endswith(" 1") else s) / float(np.median(times[c]))
            cells.append(f"{rate / 1e9:6.1f} {100 * rate / peak:4.0f}%")
        print(f"{str(op.lhs[1:]):>16} {str(op.rhs):>14} {op.strides[0]:>2} {fl / 1e6:>7.1f} | "
              + " ".join(f"{c:>13}" for c in cells), flush=True)
    pools = {(B, 28, 28, 6), (B, 10, 10, 16), (B, 28, 28, 64)}
    for shape in sorted(pools):
        variants = pool_variants(shape)
        med = {k: _median_time(fn, reps=reps) for k, fn in variants.items()}
        print(f"max-pool 2x2 fwd+bwd {str(shape):>18}: reduce_window {1e3 * med['reduce_window']:.2f} ms, "
              f"slices {1e3 * med['slices']:.2f} ms ({med['reduce_window'] / med['slices']:.1f}x)", flush=True)


# ----------------------------------------------------------------------------------------------- training


def _mnist(split: str, n: int) -> tuple[jax.Array, jax.Array]:
    from fairprune_jax import data

    d = data.load_split("mnist", split)
    x = (d.images[:n].astype(np.float32) / 255.0 - 0.1307) / 0.3081
    return jnp.asarray(x), jnp.asarray(d.labels[:n])


def _tcfg() -> dict:
    return dict(epochs=1, batch_size=B, optimizer=dict(name="sgd", lr=0.05, momentum=0.9))


def train_variant(name: str, spec: Any, seeds: list[int], x: jax.Array, y: jax.Array) -> Callable[[], None]:
    """A zero-argument call training the seeds one epoch the way `name` says (module doc, section 3)."""
    from fairprune_jax import population, sharding, train

    mesh = sharding.default_mesh()
    if name == "loop":
        return lambda: [jax.block_until_ready(train.fit(spec, _tcfg(), [s], x, y)[0]) for s in seeds] and None
    if name == "pop":
        return lambda: jax.block_until_ready(train.fit(spec, _tcfg(), seeds, x, y, mesh=mesh)[0]) and None
    if name == "pop-1dev":
        return lambda: jax.block_until_ready(train.fit(spec, _tcfg(), seeds, x, y)[0]) and None
    form = population.parse(name)

    def run() -> None:
        with population.override(form):
            jax.block_until_ready(train.fit(spec, _tcfg(), seeds, x, y, mesh=mesh)[0])

    return run


def epoch_memory(name: str, spec: Any, s: int, x: jax.Array, y: jax.Array) -> float:
    """Bytes XLA allocates per device for the compiled epoch of `s` models under variant `name` (arguments +
    temporaries + outputs not aliased to arguments), from the compiled program's memory analysis."""
    from fairprune_jax import population, sharding, train

    tx, _ = train.make_tx(_tcfg(), int(x.shape[0]))
    mesh = None if name in ("loop", "pop-1dev") else sharding.default_mesh()
    forced = None if name in ("loop", "pop", "pop-1dev") else population.parse(name)
    with population.override(forced):
        form = population.choose(spec, population.platform_of(mesh))
    pb = train.param_bytes(jax.eval_shape(spec.init, jax.random.key(0))["params"])
    chunk = None
    if form.vectorise == "map":  # as train.run_population does
        mesh = population.map_mesh(mesh, s)
        chunk = population.map_chunk(s, pb, mesh)
    c = train.resolve_chunk(s, chunk, pb, mesh)
    keys = train.as_keys(np.arange(c))
    v = sharding.shard_models(train.init_population(spec, keys), mesh)
    state = train._compiled_init(spec, tx, False)(v, None)
    data_keys = sharding.shard_models(jax.vmap(lambda k: train.purpose_key(k, "data"))(keys), mesh)
    xr, yr = sharding.replicate((x, y), mesh)
    fn = train._compiled_epoch(spec, tx, B, False, None, "none", 1, form, mesh if form.vectorise == "map" else None)
    ma = fn.lower(state, None, data_keys, jnp.int32(0), xr, yr, None).compile().memory_analysis()
    if ma is None:
        return float("nan")
    return float(ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes
                 - ma.alias_size_in_bytes)


def train_section(model: str, seeds_list: list[int], levers: list[str], n: int, repeats: int,
                  memory: bool) -> None:
    from fairprune_jax import population
    from fairprune_jax.models import get_model

    spec = get_model(model)
    x, y = _mnist("train", n)
    steps = n // B
    fl = step_flops(model_ops(model))["step"]
    print(f"\n== train {model}: {n} examples ({steps} steps of {B}), step {fl / 1e9:.3f} GFLOP, rule "
          f"{population.choose(spec)} ==", flush=True)
    print(f"{'S':>3} {'variant':>13} {'median s':>9} {'runs':>22} {'s/model-epoch':>13} {'GFLOP/s':>8} "
          f"{'loop/var':>8} {'MiB/dev':>8}", flush=True)
    for s in seeds_list:
        seeds = list(range(s))
        names = ["loop", "pop", *levers]
        calls = {k: train_variant(k, spec, seeds, x, y) for k in names}
        for fn in calls.values():  # compile, not timed
            fn()
        times: dict[str, list[float]] = {k: [] for k in names}
        for _ in range(repeats):
            for k, fn in calls.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        loop = float(np.median(times["loop"]))
        for k in names:
            med = float(np.median(times[k]))
            per_epoch = med / s * (N_TRAIN // B) / steps
            mem = epoch_memory(k, spec, 1 if k == "loop" else s, x, y) / 2 ** 20 if memory else float("nan")
            print(f"{s:>3} {k:>13} {med:>9.2f} {' '.join(f'{t:.1f}' for t in times[k]):>22} {per_epoch:>13.1f} "
                  f"{s * steps * fl / med / 1e9:>8.1f} {loop / med:>8.2f} {mem:>8.0f}", flush=True)
        print(f"    load average {os.getloadavg()}", flush=True)


def eval_section(model: str, s: int, n_test: int, repeats: int) -> None:
    from fairprune_jax import evaluate, population, sharding, train
    from fairprune_jax.models import get_model

    spec = get_model(model)
    x, y = _mnist("test", n_test)
    v = train.init_population(spec, train.as_keys(np.arange(s)))
    mesh = sharding.default_mesh()
    fwd = step_flops(model_ops(model, batch=1))["forward"]
    times: dict[str, list[float]] = {"vmap+patches": [], "vmap+xla": [], "map+patches": []}
    counts = {}

    def call(form: str) -> Any:
        with population.override(form):
            return evaluate.evaluate_population(spec, v, x, y, mesh=mesh, chunk=s).counts

    for k in times:
        counts[k] = call(k)
    for _ in range(repeats):
        for k in times:
            t = time.perf_counter()
            call(k)
            times[k].append(time.perf_counter() - t)
    same = all(np.array_equal(counts[k], counts["map+patches"]) for k in counts)
    print(f"\n== evaluate {model}: {s} models x {n_test} test images ({fwd * n_test * s / 1e9:.1f} GFLOP) ==")
    for k, ts in times.items():
        med = float(np.median(ts))
        print(f"{k:>13}: {med:.2f} s ({fwd * n_test * s / med / 1e9:.1f} GFLOP/s)", flush=True)
    print(f"    counts equal across formulations: {same}; load average {os.getloadavg()}", flush=True)


def epoch_section(model: str, dataset: str, s: int) -> float:
    """Seconds per model-epoch of `s` models on the whole training split of `dataset` (second of two epochs)."""
    from fairprune_jax import data, population, sharding, train
    from fairprune_jax.models import get_model

    info = data.info(dataset)
    split = data.load_split(dataset, "train")
    x = data.normalize(split.images, info.mean, info.std)
    y = jnp.asarray(split.labels)
    spec = get_model(model, input_shape=tuple(x.shape[1:]))
    cfg = dict(epochs=2, batch_size=B, optimizer=dict(name="sgd", lr=0.05, momentum=0.9))
    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    stamps = [(time.perf_counter(), cpu())]
    train.fit(spec, cfg, np.arange(s), x, y, mesh=sharding.default_mesh(),
              progress=lambda _: stamps.append((time.perf_counter(), cpu())))
    first, second = stamps[1][0] - stamps[0][0], stamps[2][0] - stamps[1][0]
    cpu_s = stamps[2][1] - stamps[1][1]
    fl = step_flops(model_ops(model))["step"] * (int(x.shape[0]) // B)
    print(f"{model:>14} on {dataset} ({x.shape[0]} images), S = {s}, {population.choose(spec)}: "
          f"{second / s:.1f} s per model-epoch, {cpu_s / s:.1f} CPU-s per model-epoch ({fl / 1e12:.3f} TFLOP, "
          f"{s * fl / second / 1e9:.1f} GFLOP/s); first epoch (compiling) {first:.1f} s; load average "
          f"{os.getloadavg()}", flush=True)
    return second / s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet5"], choices=MODELS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8], help="population sizes S")
    ap.add_argument("--examples", type=int, default=1280, help="training images per timed epoch")
    ap.add_argument("--test-examples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--levers", nargs="*", default=[], help=f"extra training variants: {', '.join(LEVERS)}")
    ap.add_argument("--sections", nargs="+", default=["flops", "shapes", "train", "eval"], choices=SECTIONS)
    ap.add_argument("--no-memory", action="store_true", help="skip compiling each variant for its memory")
    ap.add_argument("--dataset", default="mnist", help="the epoch section's dataset")
    ap.add_argument("--epoch-seeds", type=int, default=2, help="models trained at once in the epoch section")
    args = ap.parse_args()
    bad = [lv for lv in args.levers if lv not in LEVERS]
    if bad:
        print(f"error: --levers: unknown {bad[0]!r}; known: {', '.join(LEVERS)}", file=sys.stderr)
        raise SystemExit(2)
    if args.examples < B or min(args.seeds) < 1:
        print(f"error: --examples must be >= {B} and --seeds positive", file=sys.stderr)
        raise SystemExit(2)
    print(f"devices {jax.devices()}; load average {os.getloadavg()}", flush=True)
    if "flops" in args.sections:
        print("\n== FLOPs per training step (batch 128) and per evaluated example ==")
        for m in args.models:
            f = step_flops(model_ops(m))
            ev = step_flops(model_ops(m, batch=1))["forward"]
            print(f"{m:>9}: step {f['step'] / 1e9:.4f} GFLOP (forward {f['forward'] / 1e9:.4f}, weight grad "
                  f"{f['wgrad'] / 1e9:.4f}, input grad {f['igrad'] / 1e9:.4f}); eval {ev / 1e6:.3f} MFLOP/example; "
                  f"full 60k epoch {f['step'] * (N_TRAIN // B) / 1e12:.3f} TFLOP", flush=True)
    if "shapes" in args.sections:
        shapes_section(args.models, max(args.seeds), args.repeats)
    if "train" in args.sections:
        for m in args.models:
            train_section(m, args.seeds, args.levers, args.examples, args.repeats, not args.no_memory)
    if "eval" in args.sections:
        for m in args.models:
            eval_section(m, max(args.seeds), args.test_examples, args.repeats)
    if "epoch" in args.sections:
        print(f"\n== one full epoch per model ({args.dataset}) ==")
        for m in args.models:
            epoch_section(m, args.dataset, args.epoch_seeds)
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB; load average "
          f"{os.getloadavg()}")


if __name__ == "__main__":
    main()
