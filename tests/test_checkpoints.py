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


# ---- verified checkpoints ----------------------------------------------------------------------------------------


def _flip(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def _files(path):
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != checkpoints.MANIFEST)


def test_a_checkpoint_carries_a_manifest_of_every_file(tmp_path):
    import subprocess

    variables, _ = _population()
    path = checkpoints.save(tmp_path, "dense", variables)
    listed = (path / checkpoints.MANIFEST).read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in listed) == [p.relative_to(path).as_posix() for p in _files(path)]
    assert subprocess.run(["sha256sum", "-c", "--quiet", checkpoints.MANIFEST], cwd=path).returncode == 0
    assert checkpoints.verify(tmp_path, "dense") is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]  # no staging directory left


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "extra", "manifest"])
def test_a_damaged_checkpoint_is_named_moved_aside_and_reported_missing(tmp_path, damage, capsys):
    variables, _ = _population()
    path = checkpoints.save(tmp_path, "dense", variables)
    biggest = max(_files(path), key=lambda p: p.stat().st_size)
    if damage == "flip":
        _flip(biggest, 1000)
    elif damage == "truncate":
        biggest.write_bytes(biggest.read_bytes()[:100])
    elif damage == "delete":
        biggest.unlink()
    elif damage == "extra":
        (path / "stray.bin").write_bytes(b"x")
    else:
        _flip(path / checkpoints.MANIFEST, 10)
    with pytest.raises(checkpoints.CorruptFileError, match=f"{path} is corrupt: "):
        checkpoints.exists(tmp_path, "dense", repair=False)
    with pytest.raises(checkpoints.CorruptFileError, match=f"{path} is corrupt: .*moved it to dense.corrupt-.*; "
                                                           "rerun the same command to recompute it"):
        checkpoints.restore(tmp_path, "dense", like=variables)
    assert not path.exists() and checkpoints.names(tmp_path) == []
    assert not checkpoints.exists(tmp_path, "dense")
    assert capsys.readouterr().err == ""  # the error raised says it all
    checkpoints.save(tmp_path, "dense", variables)  # recomputed: commits as usual
    _equal(checkpoints.restore(tmp_path, "dense", like=variables), variables)


def test_a_corrupt_checkpoint_is_moved_aside_by_exists(tmp_path, capsys):
    variables, _ = _population()
    path = checkpoints.save(tmp_path, "dense", variables)
    _flip(max(_files(path), key=lambda p: p.stat().st_size), 7)
    assert not checkpoints.exists(tmp_path, "dense")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: checkpoint {path} is corrupt (") and "recomputed" in err[0]
    assert [p.name.split(".corrupt-")[0] for p in tmp_path.iterdir()] == ["dense"]


def test_checkpoints_without_a_manifest_restore_unverified_and_a_truncated_one_is_one_error(tmp_path, capsys):
    variables, _ = _population()
    path = checkpoints.save(tmp_path, "old", variables)
    (path / checkpoints.MANIFEST).unlink()  # as written before manifests
    assert checkpoints.exists(tmp_path, "old") and checkpoints.verify(tmp_path, "old") is False
    _equal(checkpoints.restore(tmp_path, "old", like=variables), variables)
    assert "restored unverified" in capsys.readouterr().err
    biggest = max(_files(path), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:50])
    with pytest.raises(checkpoints.CorruptFileError, match="old is corrupt: orbax cannot read it"):
        checkpoints.restore(tmp_path, "old", like=variables, repair=False)
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "ERROR" not in out.err  # orbax's thread errors are not printed


def test_a_save_that_fills_the_disk_is_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes TensorStore's writes fail like a full disk; the save raises one DiskFullError."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import resource, signal, sys, jax, numpy as np; from fairprune_jax import checkpoints, files\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "tree = {'w': np.random.default_rng(0).standard_normal((400, 1000)).astype(np.float32)}\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
            "try:\n    checkpoints.save(sys.argv[1], 'big', tree)\n"
            "except files.DiskFullError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.stdout.startswith(f"disk full while writing {tmp_path / 'big'} ("), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no partial checkpoint, no staging directory
