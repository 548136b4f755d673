"""Several cooperating JAX processes (multi-host): start-up, who writes the workdir, decisions taken together.

Every process loads the data and runs the same program; each chunk's models are spread over the devices of all
processes (`sharding.seed_mesh()` lists them all after :func:`initialize`). Process 0 alone writes the workdir
(results, report, ``timings.json``, the lock); the others see it through a :class:`HostWorkdir`, whose resume
decisions (:meth:`HostWorkdir.has`) are process 0's, broadcast, so every process skips the same units. Orbax
checkpoints are written by all processes together (each its own shards; orbax's multi-host protocol).

The same code path serves one machine (``experiments.launch`` starts N processes on 127.0.0.1; CPU collectives
use gloo), a multi-GPU node, or a TPU pod (leave the addresses empty: JAX discovers the slice).
"""
from __future__ import annotations

import contextlib
import errno
import signal
import socket
import threading
from typing import Any, Iterator, Mapping

import jax
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils

from fairprune_jax import results, sharding

# Bounded waits: a process that never joins, or dies mid-run, ends the others instead of hanging them.
INITIALIZATION_TIMEOUT_S = 120
HEARTBEAT_TIMEOUT_S = 20
SHUTDOWN_TIMEOUT_S = 20


def check(cfg: Any) -> None:
    """Refuse a bad ``distributed`` section before anything starts (one line naming the field)."""
    get = _field
    num = get(cfg, "num_processes", 0)
    pid = get(cfg, "process_id", -1)
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 0:
        raise ValueError(f"config.distributed.num_processes: {num!r} is not an integer >= 0 (0 = discover)")
    if isinstance(pid, bool) or not isinstance(pid, (int, np.integer)) or pid < -1:
        raise ValueError(f"config.distributed.process_id: {pid!r} is not an integer >= -1 (-1 = discover)")
    if num and pid >= num:
        raise ValueError(f"config.distributed.process_id: {pid} is out of range for {num} processes "
                         f"(0..{num - 1})")
    address = str(get(cfg, "coordinator_address", "") or "")
    if address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"config.distributed.coordinator_address: {address!r} is not 'host:port'")


def port_free(host: str, port: int) -> bool:
    """Whether a TCP server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's server: a closing socket is no owner
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def initialize(cfg: Any) -> None:
    """Join the processes of ``cfg`` (the config's ``distributed`` section) when ``enabled``; before any other JAX
    call. Checks the section, that process 0's coordinator port is free, picks gloo for CPU collectives, and
    sets bounded initialization / heartbeat / shutdown timeouts."""
    if cfg is None or not bool(_field(cfg, "enabled", False)):
        return
    check(cfg)
    kwargs = sharding.distributed_kwargs(cfg)
    address = kwargs.get("coordinator_address", "")
    if address and kwargs.get("process_id", -1) == 0:
        host, _, port = address.rpartition(":")
        if not port_free("" if host in ("0.0.0.0", "[::]") else host, int(port)):
            raise ValueError(f"config.distributed.coordinator_address: port {port} on {host} is in use; choose "
                             "another port (experiments.launch picks a free one)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
    handler = signal.getsignal(signal.SIGTERM)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=INITIALIZATION_TIMEOUT_S,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                                   shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    except (RuntimeError, jax.errors.JaxRuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"config.distributed: could not join {kwargs.get('num_processes', 'the')} processes at "
                         f"{address or 'the discovered coordinator'} within {INITIALIZATION_TIMEOUT_S} s (is every "
                         f"process started, with the same num_processes?): {first[:200]}") from e
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)  # JAX's preemption notifier took SIGTERM over; `kill` stops a run


def active() -> bool:
    """Whether this run has several processes."""
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes the workdir (process 0; always true in a single-process run)."""
    return jax.process_index() == 0


def agree(flag: bool) -> bool:
    """Process 0's ``flag``, on every process (a collective: every process must call it at the same point)."""
    if not active():
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag), np.int32)))


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (no-op in one process)."""
    if active():
        multihost_utils.sync_global_devices(name)


class HostWorkdir(results.Workdir):
    """A workdir shared by the processes of one run: process 0 writes, every process reads process 0's decisions.

    Writes on other processes are no-ops; committing a table part ends with a barrier, so a part process 0 has
    just written is visible to all before anyone goes on."""

    def write_bytes(self, relpath: Any, data: bytes, *, checksum: bool = True):
        return super().write_bytes(relpath, data, checksum=checksum) if is_primary() else self.file(relpath)

    def append_table(self, name: str, key: str, df: pd.DataFrame, *, overwrite: bool = False):
        path = super().append_table(name, key, df, overwrite=overwrite) if is_primary() else self.part_path(name, key)
        barrier(f"append_table:{name}:{key}")
        return path

    def mark_done(self, stage: str, info: Mapping[str, Any] | None = None):
        path = super().mark_done(stage, info) if is_primary() else self.done_marker(stage)
        barrier(f"mark_done:{stage}")
        return path

    def has(self, name: str, key: str, *, repair: bool = True) -> bool:
        return agree(super().has(name, key, repair=repair) if is_primary() else False)

    @contextlib.contextmanager
    def stage_timer(self, stage: str) -> Iterator[None]:
        if is_primary():
            with super().stage_timer(stage):
                yield
        else:
            yield


def shared(wd: results.Workdir) -> results.Workdir:
    """``wd`` as seen by this process of a multi-process run (unchanged in a single-process run)."""
    return HostWorkdir(wd.path, wd.fingerprint) if active() else wd


def _field(cfg: Any, name: str, default: Any) -> Any:
    return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
