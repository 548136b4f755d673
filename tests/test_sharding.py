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


def test_host_device_flags_only_on_cpu_and_only_when_unset():
    assert sharding.host_device_flags({}, 16) == "--xla_force_host_platform_device_count=16"
    assert sharding.host_device_flags({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}, 2) == (
        "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2")
    assert sharding.host_device_flags({"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}, 8) is None
    assert sharding.host_device_flags({"JAX_PLATFORMS": "cuda"}, 8) is None
    assert sharding.host_device_flags({"JAX_PLATFORMS": "cpu"}, 8) is not None
    assert sharding.host_device_flags({}, 1) is None
    assert sharding.host_devices_configurable({}) and sharding.host_devices_configurable({"JAX_PLATFORMS": "cpu"})
    assert not sharding.host_devices_configurable({"JAX_PLATFORMS": "tpu,cpu"})
    assert not sharding.host_devices_configurable({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})
    assert sharding.host_devices_configurable({"XLA_FLAGS": "--xla_force_host_platform_device_count_x=3"})
    assert sharding.with_host_devices({}, 1) == "--xla_force_host_platform_device_count=1"
    assert sharding.with_host_devices({"XLA_FLAGS": "--a"}, 2) == "--a --xla_force_host_platform_device_count=2"
    env: dict[str, str] = {}
    assert sharding.use_all_cores(env, cores=4) and env["XLA_FLAGS"].endswith("device_count=4")
    assert not sharding.use_all_cores(env, cores=4)  # already set: left alone
    assert sharding.default_mesh(False) is None
    assert (sharding.default_mesh() is None) == (jax.device_count() == 1)


def test_use_all_cores_before_jax_starts_gives_a_mesh_over_the_cores():
    code = ("from fairprune_jax import sharding; assert sharding.use_all_cores(cores=3); import jax; "
            "print(jax.device_count(), sharding.size(sharding.default_mesh()))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["3", "3"]


_POPULATION_CALLS = """
import jax, jax.numpy as jnp, numpy as np
from fairprune_jax import evaluate, models, protocols, sharding, train
assert jax.device_count() == 2
mesh = sharding.seed_mesh()
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((256, 28, 28, 1)), jnp.float32)
y = jnp.asarray(rng.integers(0, 10, 256), jnp.int32)
spec = models.get_model("mlp_100_30")
cfg = dict(epochs=1, batch_size=64, optimizer=dict(name="sgd", lr=0.05))
keys = train.seed_keys(range(3))  # 3 models on 2 devices: padded, so the padding is sliced off after training
dense, _ = train.fit(spec, cfg, keys, x, y, mesh=mesh)
protocols.one_shot(spec, cfg, dense, ["mp", "gp"], [0.5, 0.9], keys, x, y, mesh=mesh)
protocols.gmp(spec, cfg | dict(epochs=2), keys, x, y, ["mp"], [0.9], start=0, end=1, init_variables=dense, mesh=mesh)
for level in protocols.iterative(spec, cfg, keys, x, y, ["mp"], 1, dense=(dense, dense), mesh=mesh):
    pass
evaluate.evaluate_population(spec, dense, x, y, num_classes=10, chunk=2, batch_size=100, mesh=mesh)
evaluate.population_logits(spec, dense, x, chunk=2, batch_size=100, mesh=mesh)
print("population calls done")
"""


@pytest.mark.slow
def test_population_calls_on_a_cpu_mesh_compile_no_collective(tmp_path):
    """XLA's CPU collectives abort the process when a device thread is 40 s late at their rendezvous (an
    oversubscribed machine): training, the protocols and evaluation on a 2-device CPU mesh, padding included, must
    compile no program with one (eager ops on spread arrays would: sharding.local)."""
    dump = tmp_path / "hlo"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count=2 --xla_dump_to={dump} --xla_dump_hlo_as_text")
    proc = subprocess.run([sys.executable, "-c", _POPULATION_CALLS], cwd=HERE.parent, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0 and "population calls done" in proc.stdout, proc.stderr[-3000:]
    modules = sorted(dump.glob("*after_optimizations.txt"))
    assert len(modules) > 20  # the dump did happen
    ops = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
    with_collectives = [m.name for m in modules if any(op in m.read_text() for op in ops)]
    assert with_collectives == []
