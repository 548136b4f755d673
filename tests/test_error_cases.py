"""Every case of tests/error_cases.py as a subprocess: the exit code, no traceback, the one-line message, and nothing
written where nothing should be (corrupt files moved aside, never deleted; recomputed results equal the originals).

The small smoke workdirs the cases start from are built once per session (lazily: only the kinds a selected case
needs); every case works on its own copy."""
from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from error_cases import BIAS_FLAGS, CASES, DAMAGES, RECALL_FLAGS, Case, same_tables, slow

REPO = Path(__file__).resolve().parents[1]
FLAGS = {"recall": ("experiments.sweep", RECALL_FLAGS), "bias": ("experiments.bias", BIAS_FLAGS)}


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """name -> path of the fixture workdir, built on first use."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            module, flags = FLAGS[name]
            wd = tmp_path_factory.mktemp(f"fixture_{name}") / "wd"
            proc = subprocess.run([sys.executable, "-m", module, *flags, f"--workdir={wd}"], cwd=REPO,
                                  capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
            cache[name] = wd
        return cache[name]

    return get


def _snapshot(root: Path) -> dict[str, str] | None:
    if not root.exists():
        return None
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _expand(arg: str) -> list[str]:
    if arg in ("{recall}", "{bias}"):
        return list(FLAGS[arg[1:-1]][1])
    return [arg]


def _limit(fsize: int | None):
    if fsize is None:
        return None

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return apply


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if slow(c) else [])
                                  for c in CASES])
def test_error_case(case: Case, built, tmp_path):
    wd = tmp_path / "wd"
    if case.fixture:
        shutil.copytree(built(case.fixture), wd, symlinks=True)
    tfds = tmp_path / "tfds"
    if any("{tfds}" in v for _, v in case.env):
        from fairprune_jax import data

        if not (data.tfds_dir() / "mnist_idx").is_dir():
            built("recall")  # prepares it
        shutil.copytree(data.tfds_dir() / "mnist_idx", tfds / "mnist_idx")
    if case.damage:
        DAMAGES[case.damage](wd, tfds)
    before = _snapshot(wd)
    argv = [a.replace("{wd}", str(wd)) for arg in case.command for a in _expand(arg)]
    env = dict(os.environ, **{k: v.replace("{tfds}", str(tfds)) for k, v in case.env})
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, preexec_fn=_limit(case.fsize))
    err = proc.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-4000:]
    assert proc.returncode == case.code, err[-3000:]
    if case.stderr:
        assert lines and re.search(case.stderr, lines[-1]), err[-3000:]
    if case.code != 0:
        assert len(lines) <= case.max_lines, err[-3000:]
    if case.notice:
        assert re.search(case.notice, err, re.MULTILINE), err[-3000:]
    if case.writes == "nothing":
        assert _snapshot(wd) == before  # byte for byte, or still absent
    elif case.writes == "recompute":
        aside = [p for p in wd.rglob("*.corrupt-*")]
        assert aside, "the corrupt file was not moved aside"
        if case.code == 0:
            assert same_tables(built(case.fixture), wd) == []
    if case.fsize is not None:  # nothing half-written: no staging directory, no temporary file
        assert not [p for p in wd.rglob("*") if ".staging" in p.name or p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins processes to one core (Linux)")
def test_smoke_studies_survive_an_oversubscribed_core(tmp_path):
    """Both studies at once, each with two host devices, pinned to one core beside a busy loop: every device thread
    runs late, which aborted the bias study (SIGABRT) while it still had eager cross-device collectives."""
    core = {sorted(os.sched_getaffinity(0))[0]}
    pin = lambda: os.sched_setaffinity(0, core)  # noqa: E731
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin)
    try:
        runs = [subprocess.Popen([sys.executable, "-m", module, *flags, f"--workdir={tmp_path / name}",
                                  "--config.data.max_train_examples=1000"], cwd=REPO, env=env, preexec_fn=pin,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name, (module, flags) in FLAGS.items()]
        outs = [p.communicate(timeout=900) for p in runs]
    finally:
        hog.kill()
        hog.wait()
    for p, (_, err) in zip(runs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "rendezvous" not in err.lower()
    assert "models spread over 2 cpu devices" in outs[0][1]  # the run's step lines go to stderr
