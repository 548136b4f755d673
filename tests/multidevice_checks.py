"""Checks run in a subprocess with 8 forced CPU devices (XLA_FLAGS must be set before JAX starts).

Sharded (seed mesh) training, pruning protocols and evaluation equal the single-device results. Used by
tests/test_sharding.py; runnable by hand:
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_checks.py
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax import data, evaluate, models, protocols, sharding, train


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    mesh = sharding.seed_mesh()
    assert sharding.size(mesh) == 8 and mesh.axis_names == ("seed",)
    info = data.info("mnist")
    tr, te = data.load_split("mnist", "train"), data.load_split("mnist", "test")
    x = data.normalize(tr.images[:2048], info.mean, info.std)
    y = jnp.asarray(tr.labels[:2048])
    xt = data.normalize(te.images[:1000], info.mean, info.std)
    yt = jnp.asarray(te.labels[:1000])
    spec = models.get_model("mlp_100_30")
    # A stable optimiser: on a chaotic trajectory (e.g. lr .1 with momentum .9 on 2k examples) any change of the
    # compiled batch shape, sharded or not, lets float rounding differences grow to visible size.
    cfg = dict(epochs=2, batch_size=128, optimizer=dict(name="sgd", lr=0.05))
    keys = train.seed_keys(range(6))  # 6 models on 8 devices: padded to 8

    # Training: same parameters with and without the mesh, and the result really is spread over 8 devices.
    single, h1 = train.fit(spec, cfg, keys, x, y)
    sharded, h2 = train.fit(spec, cfg, keys, x, y, mesh=mesh)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
    # The automatic chunk (both runs above) gives every device the same number of models whatever the device
    # count, so the sharded run is the single-device run bit for bit: the same numbers on any number of cores.
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    chunked, _ = train.fit(spec, cfg, keys, x, y, mesh=mesh, chunk=3)  # chunk rounded up to 8
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(chunked)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    # One-shot pruning + fine-tuning: identical masks, same weights; pruned weights exactly zero.
    ft = dict(epochs=1, batch_size=128, optimizer=dict(name="sgd", lr=0.01))
    grid = [0.5, 0.9]
    v1, m1, _ = protocols.one_shot(spec, ft, single, ["mp", "up"], grid, keys, x, y)
    v2, m2, _ = protocols.one_shot(spec, ft, single, ["mp", "up"], grid, keys, x, y, mesh=mesh)
    for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for w, m in zip(jax.tree.leaves(v2["params"]), jax.tree.leaves(m2)):
        assert not np.any(np.asarray(w)[~np.asarray(m)])

    # Evaluation: identical confusion counts; outputs of a chunk live on all 8 devices.
    c1 = evaluate.confusion_counts(spec, single, xt, yt, masks=m1, chunk=5)
    c2 = evaluate.confusion_counts(spec, single, xt, yt, masks=m1, chunk=5, mesh=mesh)
    np.testing.assert_array_equal(c1, c2)
    placed = sharding.shard_models(single, mesh=sharding.seed_mesh(jax.devices()[:2]))
    assert len(jax.tree.leaves(placed)[0].sharding.device_set) == 2
    try:
        sharding.shard_models(single, mesh)  # 6 models on 8 devices: refused, names the leaf
    except ValueError as e:
        assert "not a multiple of the 8 devices" in str(e), e
    else:
        raise AssertionError("uneven placement was accepted")
    print("multidevice checks passed")


if __name__ == "__main__":
    main()
