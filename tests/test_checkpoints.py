"""Orbax checkpoints round-trip dense/pruned variables, bool masks and structured states, atomically."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairprune_jax import checkpoints, masks, protocols, train
from fairprune_jax.models import get_model

SPEC = get_model("mlp_100_30")


def _population():
    keys = train.as_keys([0, 1])
    variables = train.init_population(SPEC, keys)
    rng = np.random.default_rng(0)
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.7), variables["params"])
    return variables, mask


def _equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_variables_and_masks(tmp_path):
    variables, mask = _population()
    pruned = {"params": jax.vmap(masks.apply)(variables["params"], mask)}
    tree = {"dense": variables, "pruned": pruned, "masks": mask, "level": np.int32(3)}
    path = checkpoints.save(tmp_path / "ckpt", "level_3", tree)
    assert path.is_dir() and checkpoints.exists(tmp_path / "ckpt", "level_3")
    _equal(checkpoints.restore(tmp_path / "ckpt", "level_3", like=tree), jax.tree.map(jnp.asarray, tree))
    plain = checkpoints.restore(tmp_path / "ckpt", "level_3")  # without `like`: nested dicts of arrays
    assert plain["masks"]["hidden_0"]["kernel"].dtype == np.bool_
    np.testing.assert_array_equal(plain["dense"]["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
    assert checkpoints.names(tmp_path / "ckpt") == ["level_3"]
    assert checkpoints.names(tmp_path / "nowhere") == []


def test_structured_states_restore_with_like(tmp_path):
    """NamedTuples (TrainState with an optax state, IterativeState) come back as themselves given `like`."""
    variables, mask = _population()
    tx, _ = train.make_tx(dict(epochs=1, optimizer=dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)), 256)
    state = jax.vmap(lambda v, m: train.init_state(tx, v, m))(variables, mask)
    state = state._replace(step=state.step + 7)
    checkpoints.save(tmp_path, "state", state)
    like = jax.eval_shape(lambda: state)  # abstract structure is enough
    back = checkpoints.restore(tmp_path, "state", like=like)
    assert isinstance(back, train.TrainState)
    _equal(back, state)
    it = protocols.IterativeState(2, variables, mask, variables)
    checkpoints.save(tmp_path, "iterative", it._replace(level=np.int32(it.level)))
    back = checkpoints.restore(tmp_path, "iterative", like=it._replace(level=np.int32(0)))
    assert isinstance(back, protocols.IterativeState) and int(back.level) == 2
    _equal(back.masks, mask)


def test_overwrite_errors_and_atomicity(tmp_path):
    variables, mask = _population()
    checkpoints.save(tmp_path, "m", mask)
    with pytest.raises(ValueError, match="checkpoint exists"):
        checkpoints.save(tmp_path, "m", mask, overwrite=False)
    flipped = jax.tree.map(jnp.logical_not, mask)
    checkpoints.save(tmp_path, "m", flipped)  # overwrite replaces
    _equal(checkpoints.restore(tmp_path, "m", like=mask), flipped)
    with pytest.raises(ValueError, match="no such checkpoint"):
        checkpoints.restore(tmp_path, "missing")
    with pytest.raises(ValueError, match="name"):
        checkpoints.save(tmp_path, "../escape", mask)
    with pytest.raises(ValueError, match="typed PRNG key"):
        checkpoints.save(tmp_path, "keys", {"k": train.as_keys([1, 2])})
    wrong = jax.tree.map(lambda m: jnp.zeros((3, *m.shape[1:]), m.dtype), mask)
    with pytest.raises(ValueError, match="does not match"):
        checkpoints.restore(tmp_path, "m", like=wrong)
    # only complete checkpoints are listed; orbax leaves no temporary directories behind
    assert checkpoints.names(tmp_path) == ["m"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_arrays_spread_over_a_seed_mesh_restore_on_one_device(tmp_path):
    """A sweep on every core saves models spread over the `seed` mesh; a later process with another device count
    (a report, a notebook) restores them, with or without `like`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import jax, jax.numpy as jnp; from fairprune_jax import checkpoints, sharding; "
            "mesh = sharding.seed_mesh(); assert jax.device_count() == 2; "
            "x = sharding.shard_models({'w': jnp.arange(8.0).reshape(4, 2)}, mesh); "
            f"checkpoints.save({str(tmp_path)!r}, 'spread', x)")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = np.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(np.asarray(checkpoints.restore(tmp_path, "spread")["w"]), want)
    like = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32)}
    np.testing.assert_array_equal(np.asarray(checkpoints.restore(tmp_path, "spread", like=like)["w"]), want)
