"""Run a study as N cooperating JAX processes on one machine (``experiments.launch`` is its thin ``main``).

    python -m experiments.launch --num_processes=2 -- --config=configs/mnist.py:smoke [--workdir=...]
    python -m experiments.launch --num_processes=2 --study=bias -- --config=configs/planted_mnist.py:smoke

Starts the processes with the study's own entry point and the config's ``distributed`` fields set (coordinator on
127.0.0.1 at a free port, ``num_processes``, ``process_id``) and ``mesh.enabled``, so each chunk's models are spread
over the devices of all processes (one CPU device per process unless XLA_FLAGS sets the count); forwards their
output line by line with a ``[pN]`` prefix. When one process fails, the others are stopped (SIGTERM, then SIGKILL
after a grace period) and the launcher exits with the worst exit code. What the survivors print about the lost peer
(JAX's C++ coordination errors and crash dumps, an "interrupted" line) is dropped: their stderr lines wait a moment
(:data:`HOLD_S`) before they are forwarded, and after the first failure only their ``error:`` lines pass, so a dead
process ends the run with the launcher's one line. Rerunning the same command resumes from the workdir, like a
single-process run.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence, TextIO

from fairprune_jax import sharding

STUDIES = {"recall": ("fairprune_jax", "sweep"), "bias": ("fairprune_jax", "bias")}  # python -m ... (a wheel too)
GRACE_S = 15.0  # after SIGTERM, how long a process may take to stop before SIGKILL
HOLD_S = 1.0  # how long a stderr line waits before it is forwarded (longer than a failure takes to be noticed)
_OWNED = ("--config.distributed.", "--config.mesh.enabled")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to start: one command line per process."""

    commands: tuple[tuple[str, ...], ...]
    address: str


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def plan(num_processes: int, study_args: Sequence[str], *, study: str = "recall", port: int | None = None,
         python: str = sys.executable) -> Plan:
    """Command lines of the ``num_processes`` processes of one run; bad arguments are a ValueError naming them."""
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"--num_processes: {num_processes!r} is not an integer >= 1")
    if study not in STUDIES:
        raise ValueError(f"--study: {study!r} is not one of {sorted(STUDIES)}")
    if not any(a.startswith("--config=") for a in study_args):
        raise ValueError("no --config=... after '--' (e.g. -- --config=configs/mnist.py:smoke)")
    owned = [a for a in study_args if a.startswith(_OWNED)]
    if owned:
        raise ValueError(f"{owned[0].split('=')[0]}: set by the launcher; drop it")
    address = f"127.0.0.1:{port if port is not None else free_port()}"
    commands = tuple(
        (python, "-m", *STUDIES[study], *study_args, "--config.mesh.enabled=True",
         "--config.distributed.enabled=True", f"--config.distributed.coordinator_address={address}",
         f"--config.distributed.num_processes={num_processes}", f"--config.distributed.process_id={i}")
        for i in range(num_processes))
    return Plan(commands, address)


class _Relay:
    """The processes' output, line by line with a ``[pN]`` prefix: stdout at once, stderr after ``hold`` seconds,
    so that once a process has failed (:meth:`failed`) the lines its peers printed about it since ``window`` seconds
    before the failure was noticed can be dropped (all but their ``error:`` lines)."""

    def __init__(self, out: TextIO, err: TextIO, hold: float, window: float):
        self.out, self.err, self.hold, self.window = out, err, hold, window
        self.lock = threading.Lock()
        self.pending: collections.deque = collections.deque()  # (time, process, line) of stderr
        self.first: int | None = None
        self.noticed = 0.0

    def line(self, i: int, text: str, to_err: bool) -> None:
        with self.lock:
            if to_err:
                self.pending.append((time.monotonic(), i, text))
            else:
                self.out.write(f"[p{i}] {text}\n")
                self.out.flush()

    def failed(self, i: int, at: float | None = None) -> None:
        with self.lock:
            if self.first is None:
                self.first, self.noticed = i, time.monotonic() if at is None else at

    def flush(self, final: bool = False) -> None:
        """Forward the stderr lines older than ``hold`` (every one when ``final``), dropping the survivors' noise."""
        with self.lock:
            cutoff = time.monotonic() - self.hold
            while self.pending and (final or self.pending[0][0] <= cutoff):
                t, i, text = self.pending.popleft()
                after = self.first is not None and i != self.first and t >= self.noticed - self.window
                if not after or text.startswith("error:"):
                    self.err.write(f"[p{i}] {text}\n")
            self.err.flush()

    def message(self, text: str) -> None:
        with self.lock:
            self.err.write(text + "\n")
            self.err.flush()


def _forward(stream: TextIO, emit) -> None:
    """Hand ``stream`` to ``emit`` line by line (tqdm's carriage returns end a line too)."""
    buf = ""
    for chunk in iter(lambda: stream.read(1), ""):
        if chunk in "\r\n":
            if buf:
                emit(buf)
            buf = ""
        else:
            buf += chunk
    if buf:
        emit(buf)


def _stop(procs: Sequence[subprocess.Popen], grace: float) -> None:
    """SIGTERM every live process, then SIGKILL those still alive after ``grace`` seconds."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def worst(codes: Sequence[int]) -> int:
    """The launcher's exit code: 0 when all succeeded, else the first failure's code (a signal -N as 128+N)."""
    bad = [c for c in codes if c != 0]
    if not bad:
        return 0
    return 128 - bad[0] if bad[0] < 0 else bad[0]


def run(p: Plan, *, out: TextIO | None = None, err: TextIO | None = None, grace: float = GRACE_S,
        poll: float = 0.2, env: dict | None = None, hold: float = HOLD_S) -> int:
    """Start every process of ``p``, forward output (default: this process's stdout / stderr; stderr lines after
    ``hold`` seconds), stop the others at the first failure; returns the exit code. A first failure prints one line
    naming the process and its status; what the others print about it afterwards is dropped (module doc)."""
    relay = _Relay(out or sys.stdout, err or sys.stderr, hold, window=2 * poll + 0.5)
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    if sharding.host_devices_configurable(env):  # one CPU device per process: the processes share the cores
        env["XLA_FLAGS"] = sharding.with_host_devices(env, 1)
    procs, threads = [], []
    for i, cmd in enumerate(p.commands):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        for stream, to_err in ((proc.stdout, False), (proc.stderr, True)):
            emit = lambda text, i=i, to_err=to_err: relay.line(i, text, to_err)  # noqa: E731
            t = threading.Thread(target=_forward, args=(stream, emit), daemon=True)
            t.start()
            threads.append(t)
    first: tuple[int, int] | None = None
    try:
        while None in [q.poll() for q in procs]:  # a list: poll every process each round
            failed = [(i, q.returncode) for i, q in enumerate(procs) if q.returncode not in (None, 0)]
            if failed:
                first = failed[0]
                relay.failed(first[0])
                break
            relay.flush()
            time.sleep(poll)
    except KeyboardInterrupt:
        first = first or (-1, 130)
    finally:
        ended = time.monotonic()
        _stop(procs, grace)
        for t in threads:
            t.join(timeout=5)
    codes = [q.returncode for q in procs]
    if first is None:
        failed = [(i, c) for i, c in enumerate(codes) if c != 0]
        first = failed[0] if failed else None
        if first is not None:
            relay.failed(first[0], at=ended)
    relay.flush(final=True)
    if first is not None and first[0] >= 0:
        i, code = first
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        relay.message(f"error: process {i} {how}; stopped the other processes (rerun the same command to resume)")
        return worst([code])
    return worst(codes)


def main(argv: Sequence[str], *, die: Callable[[str], None]) -> int:
    """Parse ``[--num_processes=N] [--study=recall|bias] -- <study flags>`` and run; returns the exit code."""
    argv = list(argv)
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    num, study = 2, "recall"
    for a in own:
        name, _, value = a.partition("=")
        if name == "--num_processes":
            try:
                num = int(value)
            except ValueError:
                die(f"--num_processes: {value!r} is not an integer >= 1")
        elif name == "--study":
            study = value
        else:
            die(f"unknown launcher flag {a!r}; use --num_processes=N [--study=recall|bias] -- <study flags>")
    try:
        return run(plan(num, rest, study=study))
    except ValueError as e:
        die(str(e))
    return 2
