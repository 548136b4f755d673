"""Suite-wide guards and fixtures: no test reaches the internet; MNIST's original idx files wherever they are."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fairprune_jax import data, idx_sources


def pytest_configure(config):
    """Tests never touch the network: unless a mirror is named (e.g. a local one on a fresh clone), idx files absent
    locally are looked for in a folder that does not exist, which fails with a clear message."""
    os.environ.setdefault("FAIRPRUNE_DATA_MIRROR", "file:///nonexistent-fairprune-test-mirror/")


#: Memory one test worker may need at its peak (the largest populations of the suite), for sizing -n auto.
WORKER_GIB = 6


def pytest_xdist_auto_num_workers(config) -> int:
    """Workers for ``-n auto`` (the default, setup.cfg): one per core this process may use, at most as many as the
    memory holds at `WORKER_GIB` each, at most 4 (the suite is about half compilation, which runs on one thread)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        gib = WORKER_GIB
    return max(1, min(cores, int(gib // WORKER_GIB), 4))


@pytest.fixture(scope="session")
def mnist_files(tmp_path_factory) -> Path:
    """A folder holding MNIST's four original idx files: the local data folder, else a copy fetched once through
    the library's download path from $FAIRPRUNE_DATA_MIRROR."""
    folder = data.source_folder("mnist")
    if data.local_idx_files("mnist", folder):
        return folder
    tmp = tmp_path_factory.mktemp("mnist_files")
    (tmp / "mnist").mkdir()
    for f, path in idx_sources.download_idx("mnist", tmp / "downloads", looked_in=folder).items():
        shutil.copy(path, tmp / "mnist" / f)
    return tmp / "mnist"
