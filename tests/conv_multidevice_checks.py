"""Conv populations on a 2-device seed mesh, run in a subprocess (XLA_FLAGS must be set before JAX starts).

Under the CPU rule (a map over the models, `jax.shard_map` over the mesh) every model of a LeNet-5 population
spread over 2 devices is bit-for-bit the model trained alone on one device, and mesh evaluation gives the
single-device counts. Used by tests/test_conv_population.py; runnable by hand:
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/conv_multidevice_checks.py
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax import data, evaluate, models, population, sharding, train


def main() -> None:
    assert jax.device_count() == 2, jax.devices()
    mesh = sharding.seed_mesh()
    info = data.info("mnist")
    tr, te = data.load_split("mnist", "train"), data.load_split("mnist", "test")
    x = data.normalize(tr.images[:96], info.mean, info.std)
    y = jnp.asarray(tr.labels[:96])
    spec = models.get_model("lenet5")
    assert population.choose(spec, population.platform_of(mesh)) == population.Formulation("map", "patches")
    cfg = dict(epochs=1, batch_size=32, optimizer=dict(name="sgd", lr=0.05, momentum=0.9))
    keys = train.seed_keys(range(3))  # 3 models on 2 devices: padded to 4
    sharded, hs = train.fit(spec, cfg, keys, x, y, mesh=mesh)
    for s in range(3):
        alone, ha = train.fit(spec, cfg, keys[s:s + 1], x, y)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(sharded)):
            np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[s])
        np.testing.assert_array_equal(ha["loss"][0], hs["loss"][s])
    # fewer models than devices: the map uses as many devices as models (one model: no mesh at all)
    assert population.map_mesh(mesh, 1) is None and population.map_mesh(mesh, 2) is mesh
    one_model, _ = train.fit(spec, cfg, keys[2:], x, y, mesh=mesh)
    for a, b in zip(jax.tree.leaves(one_model), jax.tree.leaves(sharded)):
        np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[2])
    xt = data.normalize(te.images[:300], info.mean, info.std)
    yt = jnp.asarray(te.labels[:300])
    one = evaluate.evaluate_population(spec, sharded, xt, yt, chunk=2, batch_size=128)
    two = evaluate.evaluate_population(spec, sharded, xt, yt, chunk=2, batch_size=128, mesh=mesh)
    np.testing.assert_array_equal(one.counts, two.counts)
    np.testing.assert_allclose(one.mean_confidence, two.mean_confidence, rtol=1e-6)
    assert int(one.counts.sum()) == 3 * 300
    print("conv multidevice checks passed")


if __name__ == "__main__":
    main()
