"""How a population's per-model program is vectorised over its model axis: one rule, per model and platform.

A population trains (and evaluates) C models with one compiled program; `over_models` turns the program of ONE
model into the program of C models in one of two ways (`VECTORISERS`):

- "vmap": `jax.vmap` over the model axis. Every operation becomes one batched operation (dense layers a batched
  GEMM; convolutions one grouped convolution). With a `sharding.seed_mesh()`, XLA's SPMD partitioner gives every
  device its slice of models.
- "map": `jax.lax.map` over the model axis: the one-model program, compiled once, runs model after model, so each
  model's weights and activations stay in cache and each operation keeps the shape it has for one model. With a
  mesh, `jax.shard_map` gives every device its own slice of models and its own map (one model per core at a time).
  A model's numbers are those of the same model trained alone on the same platform, bit for bit
  (tests/test_conv_population.py).

A `Formulation` is (vectorise, conv), `conv` naming the lowering of convolutions (`layers.CONV_LOWERINGS`:
"patches" = im2col GEMMs, "xla" = XLA's convolution). The rule (`choose`), from benchmarks/bench_conv.py on a
2-core AMD EPYC (docs/performance.md, "Conv populations"):

- models without convolution kernels (MLPs): "vmap" (a population of dense layers is a batched GEMM, which XLA
  runs at its GEMM rate; these numbers are unchanged from before this module existed);
- convolutional models on CPU: "map" with "patches": XLA's CPU convolution (and still more its gradient) of
  small-channel layers runs far below the GEMM rate, and vmapped it becomes a grouped convolution that is slower
  again, while the im2col GEMMs of one model at a time stay in cache;
- convolutional models on accelerators: "vmap" with "xla" (cuDNN/TPU convolutions; not yet measured here).

`override(form)` replaces the rule within a block (benchmarks, tests). The choice changes a model's numbers only
by the order of float sums.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from fairprune_jax import sharding
from fairprune_jax.models import ModelSpec, check_spec
from fairprune_jax.models.layers import CONV_LOWERINGS, conv_lowering

PyTree = Any


class Formulation(NamedTuple):
    """How a population program is built: `vectorise` in `VECTORISERS`, `conv` in `layers.CONV_LOWERINGS`."""

    vectorise: str
    conv: str

    def __str__(self) -> str:
        return f"{self.vectorise}+{self.conv}"


def _vmap(fn: Callable, mesh: Mesh | None) -> Callable:
    del mesh  # the SPMD partitioner splits the vmapped program over the mesh from its inputs' shardings
    return jax.vmap(fn, in_axes=(0, None))


def _map(fn: Callable, mesh: Mesh | None) -> Callable:
    def local(per_model: PyTree, shared: PyTree) -> PyTree:
        return jax.lax.map(lambda m: fn(m, shared), per_model)

    if mesh is None or sharding.size(mesh) == 1:
        return local
    # every device maps over its own slice of models; nothing is exchanged between devices
    return jax.shard_map(local, mesh=mesh, in_specs=(P(sharding.SEED_AXIS), P()), out_specs=P(sharding.SEED_AXIS),
                         check_vma=False)


VECTORISERS: dict[str, Callable[[Callable, Mesh | None], Callable]] = {"vmap": _vmap, "map": _map}

_OVERRIDE: contextvars.ContextVar[Formulation | None] = contextvars.ContextVar("formulation", default=None)


def parse(form: Formulation | str) -> Formulation:
    """A Formulation from itself or from "vectorise+conv" (e.g. "map+patches"); ValueError naming the bad part."""
    if isinstance(form, str):
        parts = form.split("+")
        if len(parts) != 2:
            raise ValueError(f"formulation: expected 'vectorise+conv' (e.g. 'map+patches'), got {form!r}")
        form = Formulation(*parts)
    if form.vectorise not in VECTORISERS:
        raise ValueError(f"formulation.vectorise: unknown {form.vectorise!r}; known: {', '.join(VECTORISERS)}")
    if form.conv not in CONV_LOWERINGS:
        raise ValueError(f"formulation.conv: unknown {form.conv!r}; known: {', '.join(CONV_LOWERINGS)}")
    return Formulation(form.vectorise, form.conv)


def has_conv(spec: ModelSpec) -> bool:
    """Whether the model has a convolution kernel (a params leaf named `kernel` with 4 dimensions)."""
    leaves = jax.tree_util.tree_flatten_with_path(check_spec(spec)["params"])[0]
    return any(getattr(p[-1], "key", None) == "kernel" and len(x.shape) == 4 for p, x in leaves)


def platform_of(mesh: Mesh | None) -> str:
    """The platform the population runs on: the mesh's devices', else the default device's."""
    return (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform


def choose(spec: ModelSpec, platform: str | None = None) -> Formulation:
    """The formulation for `spec` on `platform` (default: the default device's): the module doc's rule, or the
    innermost `override`."""
    forced = _OVERRIDE.get()
    if forced is not None:
        return forced
    platform = jax.devices()[0].platform if platform is None else platform
    if not has_conv(spec):
        return Formulation("vmap", "xla")
    return Formulation("map", "patches") if platform == "cpu" else Formulation("vmap", "xla")


@contextlib.contextmanager
def override(form: Formulation | str | None) -> Iterator[None]:
    """Within the block, `choose` returns `form` for every model (None: the rule). For benchmarks and tests."""
    token = _OVERRIDE.set(None if form is None else parse(form))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def map_mesh(mesh: Mesh | None, n: int) -> Mesh | None:
    """The mesh a map over `n` models uses: `mesh`, or on one process its first `n` devices when it has more (None
    for one model, which then has every core to itself): under a map a model's numbers do not depend on its
    device or neighbours, so idle padding models would only cost time."""
    if mesh is None or sharding.size(mesh) <= n or jax.process_count() > 1:
        return mesh
    return None if n <= 1 else sharding.seed_mesh(list(mesh.devices.flat)[:n])


def map_chunk(n: int, param_bytes: int, mesh: Mesh | None, group: int = 1,
              budget: int = sharding.CPU_CHUNK_BYTES) -> int:
    """Models per chunk under a map when the caller does not say: at most `budget // (4 * param_bytes)` per device
    (weights, gradients, optimizer state and mask resident, as `sharding.auto_chunk`), a multiple of `group`, and
    as few chunks as that allows with the least padding (unlike `auto_chunk`, which keeps the models per device
    fixed because a vmapped model's numbers depend on them)."""
    k, g = sharding.size(mesh), max(int(group), 1)
    cap = max(g, (max(1, int(budget) // max(4 * int(param_bytes), 1)) // g) * g)
    chunks = -(-max(int(n), 1) // (cap * k))
    per = -(-max(int(n), 1) // (chunks * k))
    return -(-per // g) * g * k


def over_models(fn: Callable[[PyTree, PyTree], PyTree], form: Formulation,
                mesh: Mesh | None = None) -> Callable[[PyTree, PyTree], PyTree]:
    """`fn(one_model, shared) -> out` made into `f(models, shared) -> outs`: every leaf of `models` and of the
    outputs carries the model axis first, `shared` (data, epoch) is the same for every model. Convolutions are
    traced with `form.conv`. With `mesh` the model axis is split over its `seed` axis (its length a multiple of the
    device count)."""
    vectorised = VECTORISERS[form.vectorise](fn, mesh)

    def run(models: PyTree, shared: PyTree) -> PyTree:
        with conv_lowering(form.conv):
            return vectorised(models, shared)

    return run


# Largest intermediate a mapped evaluation step may hold per device: the im2col patches of a conv layer are kh·kw
# times its input (Conv-2's second layer: 1.8 MB per example), so a 2,500-example test batch would need GBs.
EVAL_BYTES = 256 << 20


def _largest_outvar(jaxpr: Any) -> int:
    best = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            aval = getattr(v, "aval", None)
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                best = max(best, math.prod(aval.shape) * jnp.dtype(aval.dtype).itemsize)
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    best = max(best, _largest_outvar(inner))
    return best


@functools.lru_cache(maxsize=64)
def intermediate_bytes(spec: ModelSpec, conv: str) -> int:
    """Bytes of the largest intermediate of one eval-mode forward pass per example under lowering `conv` (traced at
    batch 8, divided by 8; nothing is computed)."""
    variables = check_spec(spec)
    x = jax.ShapeDtypeStruct((8, *spec.input_shape), jnp.float32)
    with conv_lowering(conv):
        closed = jax.make_jaxpr(lambda v, x: spec.apply(v, x, train=False)[0])(variables, x)
    return -(-_largest_outvar(closed.jaxpr) // 8)


def eval_microbatch(spec: ModelSpec, form: Formulation, batch: int, budget: int | None = None) -> int:
    """Examples per forward pass in a mapped evaluation: the largest divisor of `batch` whose largest intermediate
    fits `budget` (default `EVAL_BYTES`; at least 1 example); `batch` itself under "vmap" (the caller's batch_size
    bounds it)."""
    if form.vectorise != "map":
        return batch
    budget = EVAL_BYTES if budget is None else int(budget)
    cap = max(1, budget // max(intermediate_bytes(spec, form.conv), 1))
    return max(d for d in range(1, batch + 1) if batch % d == 0 and d <= cap)
