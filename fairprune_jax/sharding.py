"""Spreading a population's model axis over devices: a mesh with one axis named `seed`.

Populations are stacked on a leading axis (seeds, or seeds × criteria × sparsities flattened). Placing that axis
with `NamedSharding(mesh, P("seed"))` and the data replicated is all the compiled programs need: they `vmap` over
the axis, so XLA's SPMD partitioner gives every device its own slice of models, with no communication between
models. The same code runs on one CPU, on the 8 GPUs of a machine, or on every chip of a TPU pod slice (after
`multihost.initialize`, `jax.devices()` lists the devices of all hosts).

Chunk sizes are rounded up to a multiple of the mesh size so every device holds the same number of models.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, MutableMapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

SEED_AXIS = "seed"
PyTree = Any


def seed_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named `seed` over `devices` (default: every device of every process)."""
    devs = list(devices) if devices is not None else jax.devices()
    if not devs:
        raise ValueError("devices: empty device list")
    return Mesh(np.asarray(devs), (SEED_AXIS,))


HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def host_devices_configurable(env: Mapping[str, str]) -> bool:
    """Whether the host device count is ours to set: XLA_FLAGS does not set it already and JAX_PLATFORMS
    names no platform other than cpu (the user's choice always wins)."""
    if re.search(re.escape(HOST_DEVICES_FLAG) + r"\b", env.get("XLA_FLAGS", "")):
        return False
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    return not platforms or platforms == ["cpu"]


def with_host_devices(env: Mapping[str, str], count: int) -> str:
    """`env`'s XLA_FLAGS with the host device count set to `count` appended."""
    return f"{env.get('XLA_FLAGS', '')} {HOST_DEVICES_FLAG}={int(count)}".strip()


def host_device_flags(env: Mapping[str, str], cores: int) -> str | None:
    """The XLA_FLAGS value that exposes `cores` CPU cores as host devices, or None to leave `env` alone: when
    the count is not ours to set (`host_devices_configurable`) or with fewer than 2 cores. Pure:
    `use_all_cores` applies it."""
    if cores < 2 or not host_devices_configurable(env):
        return None
    return with_host_devices(env, cores)


def use_all_cores(env: MutableMapping[str, str] | None = None, cores: int | None = None) -> bool:
    """At start-up, before JAX initialises its backends: expose every core of a CPU host as a host device, so
    a `seed_mesh()` spreads the model axis over them (each device's models then run on their own core).

    Sets XLA_FLAGS in `env` (default `os.environ`) unless the user set the device count or chose a non-CPU
    platform; on a GPU/TPU host the CPU devices are not the default backend, so the flag is harmless. Returns
    True when the flag was set. Called after JAX has created its devices it has no effect (first thing in main).
    """
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if cores is None else int(cores)
    flags = host_device_flags(env, cores)
    if flags is None:
        return False
    env["XLA_FLAGS"] = flags
    return True


def default_mesh(enabled: bool | None = None) -> Mesh | None:
    """The mesh the pipelines use: `seed_mesh()` over every device when there is more than one (e.g. the host
    devices of `use_all_cores`), else None. `enabled` True/False forces it on/off (config.mesh.enabled)."""
    if enabled is False:
        return None
    if enabled is None and len(jax.devices()) < 2:
        return None
    return seed_mesh()


def size(mesh: Mesh | None) -> int:
    """Number of devices on the seed axis (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[SEED_AXIS])


# Per-device working set the automatic CPU chunk aims for: parameters, gradients, optimizer state and masks of
# the models a device trains at once stay within a share of the last-level cache (benchmarks/bench_sweep.py).
CPU_CHUNK_BYTES = 16 << 20


def auto_chunk(n: int, param_bytes: int, mesh: Mesh | None, *, group: int = 1, platform: str | None = None,
               budget: int = CPU_CHUNK_BYTES) -> int:
    """How many of `n` models to train at once when the caller does not say (chunk None/0): c models per device
    times the device count, c a multiple of `group` (models that must share a chunk, `train.shared_order_group`).

    Accelerators: all of them (wide batched GEMMs keep the chip busy). CPU: a step of a vmapped population touches
    every model's weights, so beyond the cache each step streams them from memory; on LeNet-300-100 a few models
    per core train ~1.3x faster per model than 35 at once (benchmarks/bench_sweep.py). So at most
    cap = `budget // (4 * param_bytes)` models per device (weights, gradients, optimizer state, mask): all n when
    n <= cap, else the c in [cap/2, cap] that pads n least (the largest on ties). c depends on n, the model and the
    budget only, never on the device count: a model's numbers depend on how many models its device trains at once,
    so its training gives the same numbers on any number of cores (tests/multidevice_checks.py)."""
    k, g = size(mesh), max(int(group), 1)
    if platform is None:
        platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    if platform != "cpu":
        return -(-max(int(n), 1) // (g * k)) * g * k
    cap = max(1, int(budget) // max(4 * int(param_bytes), 1))
    if n <= cap:
        return -(-max(int(n), 1) // g) * g * k
    candidates = [c for c in range(g, max(cap, g) + 1, g) if 2 * c >= cap] or [g]
    return min(candidates, key=lambda c: (-(-n // c) * c - n, -c)) * k


def round_up(n: int, mesh: Mesh | None) -> int:
    """The smallest multiple of the mesh size that is >= n (chunk sizes must split evenly over devices)."""
    k = size(mesh)
    return -(-int(n) // k) * k


def model_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (model) axis split over `seed`, everything else whole."""
    return NamedSharding(mesh, P(SEED_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_models(tree: PyTree, mesh: Mesh | None) -> PyTree:
    """Place every leaf's leading axis over the mesh; the axis length must be a multiple of the mesh size."""
    if mesh is None:
        return tree
    k = size(mesh)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        n = np.shape(leaf)[0] if np.ndim(leaf) else None
        if n is None or n % k:
            raise ValueError(f"{jax.tree_util.keystr(path)}: leading axis {n} is not a multiple of the {k} devices "
                             f"of the '{SEED_AXIS}' mesh axis (round chunk sizes with sharding.round_up)")
    return place(tree, model_sharding(mesh))


def replicate(tree: PyTree, mesh: Mesh | None) -> PyTree:
    """Put a full copy on every device of the mesh (data shared by all models)."""
    return tree if mesh is None else place(tree, replicated(mesh))


def place(tree: PyTree, target: NamedSharding) -> PyTree:
    """`jax.device_put` that also works when `target` spans devices of several processes (multi-host).

    Host values (numpy, or arrays on this process's devices) must then hold the same value on every process:
    each process builds its own shards of the global array from them (`jax.make_array_from_callback`); arrays
    that are already global are resharded."""
    if target.is_fully_addressable:
        return jax.device_put(tree, target)
    return jax.tree.map(lambda x: _place_leaf(x, target), tree)


def _place_leaf(x: Any, target: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, target)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _place_leaf(jax.random.key_data(x), target)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def gather(tree: PyTree) -> PyTree:
    """Every leaf whole where the next (eager) step can use it without a cross-device collective: arrays spread
    over the devices of several processes become fully replicated, so each host can read them (`np.asarray`) and
    reuse them; in one process, arrays spread over several CPU devices are copied to the host shard by shard and
    put back on the default device (`local`). Other arrays are returned as they are."""

    def one(x: Any) -> Any:
        if not isinstance(x, jax.Array) or x.is_fully_replicated:
            return x
        if x.is_fully_addressable:
            return local(x)
        return jax.device_put(x, NamedSharding(x.sharding.mesh, P()))

    return jax.tree.map(one, tree)


def local(x: Any) -> Any:
    """``x`` on one device when it is a CPU array spread over several devices of this process, else ``x``.

    Eager operations on such an array (slicing off a chunk's padding, reshaping a population's axes, stacking)
    compile to programs with a cross-device collective. XLA's CPU collectives wait for every device's thread at a
    rendezvous that aborts the process (SIGABRT) when one arrives more than 40 s late, which happens on an
    oversubscribed machine. Copying the shards to the host (`np.asarray`: one transfer per shard, no collective) and
    back to the default device keeps every collective out of the CPU path; the compiled population programs have
    none (each device trains its own models). Accelerators keep their arrays: their collectives have no such
    timeout."""
    if (isinstance(x, jax.Array) and x.is_fully_addressable and len(x.sharding.device_set) > 1
            and next(iter(x.sharding.device_set)).platform == "cpu"):
        return jax.device_put(np.asarray(x), jax.devices("cpu")[0])
    return x


def to_host(x: Any) -> np.ndarray:
    """`np.asarray(x)`, also for an array spread over the devices of several processes (gathered first)."""
    if isinstance(x, jax.Array) and x.is_fully_addressable:
        return np.asarray(x)  # one host copy per shard, no collective
    return np.asarray(gather(x))


def distributed_kwargs(cfg: Any) -> dict[str, Any]:
    """The arguments given to `jax.distributed.initialize`: unset fields ("", 0 processes, a negative process id,
    no local devices) are left out so JAX can discover them."""
    kwargs: dict[str, Any] = {}
    address = _get(cfg, "coordinator_address", "")
    if address:
        kwargs["coordinator_address"] = str(address)
    num = int(_get(cfg, "num_processes", 0) or 0)
    if num > 0:
        kwargs["num_processes"] = num
    pid = int(_get(cfg, "process_id", -1) if _get(cfg, "process_id", -1) is not None else -1)
    if pid >= 0:
        kwargs["process_id"] = pid
    local = _get(cfg, "local_device_ids", None)
    if local:
        kwargs["local_device_ids"] = list(local)
    return kwargs


def _get(cfg: Any, name: str, default: Any) -> Any:
    if hasattr(cfg, "get"):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def __getattr__(name: str) -> Any:
    """``initialize_distributed`` is `fairprune_jax.multihost.initialize` (the one multi-host start-up path: checks,
    gloo on CPU, bounded timeouts); the old name warns once."""
    if name == "initialize_distributed":
        from fairprune_jax import deprecation, multihost  # deferred on purpose: multihost imports this module

        return deprecation.moved(multihost.initialize, "fairprune_jax.sharding.initialize_distributed",
                                 "fairprune_jax.multihost.initialize")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
