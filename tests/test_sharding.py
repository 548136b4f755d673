"""The seed mesh: sharded results equal single-device results (8 forced CPU devices, in a subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from fairprune_jax import sharding

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_sharded_training_pruning_and_evaluation_equal_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(HERE / "multidevice_checks.py")], cwd=HERE.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "multidevice checks passed" in proc.stdout


def test_round_up_and_single_device_mesh():
    mesh = sharding.seed_mesh(jax.devices()[:1])
    assert sharding.size(None) == 1 and sharding.size(mesh) == 1
    assert sharding.round_up(5, None) == 5
    assert sharding.shard_models({"a": jax.numpy.zeros((3, 2))}, None)["a"].shape == (3, 2)
    with pytest.raises(ValueError, match="empty device list"):
        sharding.seed_mesh([])


def test_distributed_kwargs_leave_unset_fields_to_jax():
    assert sharding.distributed_kwargs(dict(enabled=True, coordinator_address="", num_processes=0,
                                            process_id=-1)) == {}
    assert sharding.distributed_kwargs(dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    sharding.initialize_distributed(dict(enabled=False))  # disabled: nothing happens
    sharding.initialize_distributed(None)
