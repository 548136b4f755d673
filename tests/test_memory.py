"""The memory budget: one rule sizes every population call's chunk and batch; defaults that fit are unchanged,
defaults that do not are lowered, explicit sizes that do not fit are refused in one line before anything runs."""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from fairprune_jax import data, evaluate, memory, models, protocols, train

N = 300


class WideConv(nn.Module):
    """Few weights, wide activations: a 1x1 conv to 64 channels, pooled; its population's memory is activations."""

    num_outputs: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(64, (3, 3), name="conv_0")(x))
        x = nn.max_pool(x, (4, 4), strides=(4, 4))
        return nn.Dense(self.num_outputs, name="head")(x.reshape((x.shape[0], -1)))


@pytest.fixture(scope="module")
def spec():
    return models.ModelSpec("wide_conv", WideConv(), input_shape=(28, 28, 1), num_outputs=10)


@pytest.fixture(scope="module")
def test_data():
    split = data.load_split("mnist", "test")
    info = data.info("mnist")
    return data.normalize(split.images[:N], info.mean, info.std), jnp.asarray(split.labels[:N], jnp.int32)


@pytest.fixture(scope="module")
def population(spec):
    return train.init_population(spec, train.as_keys(list(range(6))))


# ------------------------------------------------------------------------------------------------ the budget


def test_budget_is_a_fraction_of_total_memory_and_can_be_limited(monkeypatch):
    b = memory.budget()
    assert b.total == memory.host_memory() > 0 and b.fraction == memory.DEFAULT_FRACTION
    assert b.bytes == int(b.total * memory.DEFAULT_FRACTION) and "host memory" in b.describe()
    monkeypatch.setenv(memory.FRACTION_ENV, "0.25")
    assert memory.budget().bytes == int(b.total * 0.25)
    with memory.limit(fraction=0.1):
        assert memory.budget().fraction == 0.1
        with memory.limit(bytes=12345):
            assert memory.budget().bytes == 12345 and "12.3 kB (memory.limit)" in memory.budget().describe()
        assert memory.budget().fraction == 0.1
    assert memory.budget().fraction == 0.25
    monkeypatch.setenv(memory.FRACTION_ENV, "half")
    with pytest.raises(ValueError, match="FAIRPRUNE_MEMORY_FRACTION: need a fraction in"):
        memory.budget()
    with pytest.raises(ValueError, match="limit: give exactly one of"):
        with memory.limit():
            pass


def _line(fixed: int, per_model: int, per_example: int):
    """A need that grows like the rule's programs do: fixed + chunk * (per_model + batch * per_example)."""
    calls = []

    def need_at(c, b):
        calls.append((c, b))
        return fixed + c * (per_model + (b or 0) * per_example)

    return need_at, calls


def test_fit_keeps_defaults_that_fit_and_lowers_chunk_then_batch():
    need_at, calls = _line(1000, 100, 1)
    with memory.limit(bytes=10**6):  # everything fits: the default, measured once
        plan = memory.fit(need_at, what="t", n_models=48, chunk=None, default_chunk=48, batch=None,
                          default_batch=10000, n_examples=500)
    assert (plan.chunk, plan.batch) == (48, 500) and calls == [(48, 500)]
    with memory.limit(bytes=20000):  # 1000 + c * 600 <= 20000: c = 31, or 30 on a unit of 2 (batch kept)
        assert memory.fit(need_at, what="t", n_models=48, chunk=None, default_chunk=48, batch=None,
                          default_batch=10000, n_examples=500)[:2] == (31, 500)
        assert memory.fit(need_at, what="t", n_models=48, chunk=None, default_chunk=48, unit=2, batch=None,
                          default_batch=10000, n_examples=500)[:2] == (30, 500)
    with memory.limit(bytes=1500):  # one model: 1000 + 100 + b <= 1500, so b = 400
        assert memory.fit(need_at, what="t", n_models=48, chunk=None, default_chunk=48, batch=None,
                          default_batch=10000, n_examples=500)[:2] == (1, 400)


def test_fit_refuses_what_cannot_fit_naming_the_arguments():
    need_at, _ = _line(1000, 100, 1)
    with memory.limit(bytes=5000):  # an explicit chunk keeps its size; the free batch is lowered, to 1 in vain
        with pytest.raises(ValueError, match=r"^evaluate: 48 models x 1 example at once need about 5.85 kB, "
                                             r"more than the memory budget of 5 kB \(memory.limit\); pass a "
                                             r"smaller chunk \(chunk=None chooses one that fits\), or raise"):
            memory.fit(need_at, what="evaluate", n_models=48, chunk=48, default_chunk=48, batch=None,
                       default_batch=10000, n_examples=500)
    with memory.limit(bytes=20000):
        assert memory.fit(need_at, what="t", n_models=48, chunk=48, default_chunk=48, batch=None,
                          default_batch=10000, n_examples=500)[:2] == (48, 295)
        with pytest.raises(ValueError, match="pass a smaller chunk or batch_size"):
            memory.fit(need_at, what="evaluate", n_models=48, chunk=48, default_chunk=48, batch=500,
                       default_batch=10000, n_examples=500)
    with memory.limit(bytes=900):  # the fixed part alone exceeds it
        with pytest.raises(ValueError, match="even the smallest chunk and batch do not fit"):
            memory.fit(need_at, what="evaluate", n_models=48, chunk=None, default_chunk=48, batch=None,
                       default_batch=10000, n_examples=500)
        with pytest.raises(ValueError, match=r"1 model x 128 examples at once .* pass a smaller tcfg.batch_size"):
            memory.fit(need_at, what="training", n_models=48, chunk=None, default_chunk=48, batch=128,
                       names=("chunk", "tcfg.batch_size"))


# ------------------------------------------------------------------------------------------------ real programs


def test_all_at_once_would_need_more_than_the_machine_has(spec, population):
    """480 small conv nets on the 10,000 test images at once: XLA's own analysis of that program exceeds this
    machine's memory (compiled, not run); evaluate_population's defaults choose sizes that fit and run."""
    many = jax.tree.map(lambda x: jax.ShapeDtypeStruct((480,) + x.shape[1:], x.dtype), population)
    x = jax.ShapeDtypeStruct((10000, 28, 28, 1), jnp.float32)
    need = memory.program_need(evaluate._logits_chunk.lower(many, x, spec=spec))
    assert need > memory.host_memory()
    with pytest.raises(ValueError, match=r"population_logits: 480 models x 10000 examples at once need about .* "
                                         r"more than the memory budget"):
        evaluate.population_logits(spec, jax.tree.map(lambda v: jnp.broadcast_to(v[:1], (480,) + v.shape[1:]),
                                                      population), np.zeros((10000, 28, 28, 1), np.float32),
                                   chunk=480, batch_size=10000)


def test_defaults_that_do_not_fit_are_lowered_and_give_the_same_numbers(spec, population, test_data):
    x, y = test_data
    small = 24 << 20  # a "machine" of 24 MB: 6 models x 600 examples at once need more
    whole = evaluate.population_logits(spec, population, x, progress=False)
    full = evaluate.evaluate_population(spec, population, x, y, progress=False)
    seen = []
    with memory.limit(bytes=small):
        assert memory.program_need(evaluate._logits_chunk.lower(population, x, spec=spec)) > small
        logits = evaluate.population_logits(spec, population, x, progress=seen.append)
        counts = evaluate.evaluate_population(spec, population, x, y, progress=False)
    assert len(seen) > 1 and seen[-1]["models"][1] == 6 and seen[0]["models"][0] == 1
    np.testing.assert_allclose(logits, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(counts.counts, full.counts)


def test_training_and_scoring_chunks_fit_the_budget(test_data):
    """An 8 MB "machine": 6 LeNet-300-100 train in chunks of 2, not the cache-sized automatic 3 (one model needs
    about 3.5 MB: weights, gradients, activations), and score gradients one at a time (about 5.7 MB
    each), with the numbers explicit chunks of those sizes give; 6 at once is refused."""
    x, y = test_data
    spec = models.get_model("lenet_300_100")
    cfg = dict(epochs=1, batch_size=100, optimizer=dict(name="sgd", lr=0.05))
    keys = train.as_keys(list(range(6)))
    batch, grid = (x[:128], y[:128]), np.array([0.5, 0.9])
    seen = []
    assert train.resolve_chunk(6, None, train.param_bytes(train.init_population(spec, keys[:1])["params"])) == 3
    with memory.limit(bytes=8 << 20):
        with pytest.raises(ValueError, match=r"^training 6 models: 6 models x 100 examples at once need about .* "
                                             r"pass a smaller chunk or tcfg.batch_size \(chunk=None chooses"):
            train.fit(spec, cfg, keys, x, y, chunk=6, progress=False)
        low, _ = train.fit(spec, cfg, keys, x, y, progress=seen.append)
        masks_low = protocols.prune_population(spec, "gp", low, grid, keys, batch, grid=True, progress=False)
    chunk = seen[0]["models"][1]
    assert chunk == 2 and seen[-1]["models"][1] == 6
    same, _ = train.fit(spec, cfg, keys, x, y, chunk=chunk, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(low), jax.tree.leaves(same)))
    masks_all = protocols.prune_population(spec, "gp", low, grid, keys, batch, grid=True, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(masks_low), jax.tree.leaves(masks_all)))


def test_the_check_compiles_the_program_the_call_runs(test_data, monkeypatch):
    """The budget check compiles at the chosen size; the call then reuses that executable: the same number of XLA
    compilations as the same call with the check off (after a warm-up, each run has fresh shapes)."""
    x, y = test_data
    spec = models.get_model("mlp_100_30")
    keys = train.as_keys([3, 4, 5])
    init = train.init_population(spec, keys)
    compiles = collections.Counter()
    monitoring.register_event_duration_secs_listener(
        lambda name, *_, **__: compiles.update([name]) if name.endswith("backend_compile_duration") else None)

    def count(batch_size: int, n: int) -> tuple[int, int]:
        cfg = dict(epochs=1, batch_size=batch_size, optimizer=dict(name="sgd", lr=0.05))
        before = sum(compiles.values())
        train.fit(spec, cfg, keys, x, y, init_variables=init, progress=False)
        middle = sum(compiles.values())
        evaluate.population_logits(spec, init, x[:n], progress=False)
        return middle - before, sum(compiles.values()) - middle

    count(40, 280)  # warm-up: what does not depend on the shapes is compiled once here
    checked = count(50, 270)
    monkeypatch.setattr(memory, "fit", lambda need_at, **kw: memory.Plan(
        kw["chunk"] or kw["default_chunk"],
        min(kw.get("batch") or kw.get("default_batch") or 0, kw.get("n_examples") or 10**9) or None, 0,
        memory.budget()))
    plain = count(60, 260)
    assert checked == plain and checked[0] > 0


def test_bench_memory_needs_grow_with_models_and_examples():
    """benchmarks/bench_memory.py's figures come from the rule's own measurement, growing with chunk and batch."""
    from benchmarks import bench_memory

    spec = models.ModelSpec("pooled_cnn", bench_memory.PooledCNN(), input_shape=(28, 28, 1), num_outputs=10)
    needs = [bench_memory.logits_need(spec, c, b) for c, b in ((1, 100), (1, 200), (4, 200))]
    assert 0 < needs[0] < needs[1] < needs[2]


def test_conv_workspace_is_the_largest_convolutions_patch_matrix_and_output():
    """XLA's CPU convolutions build their im2col patches outside the buffer assignment; the rule adds the largest
    convolution's patch matrix and output: here 200 x (28 x 28 positions) x (3 x 3 window x 1 feature), and the
    [200, 28, 28, 8] output, in float32."""
    conv = nn.Conv(8, (3, 3))
    params = jax.eval_shape(conv.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    x = jax.ShapeDtypeStruct((200, 28, 28, 1), jnp.float32)
    text = jax.jit(conv.apply).lower(params, x).compile().as_text()
    assert memory.conv_workspace(text) == 4 * (200 * 784 * 9 + 200 * 784 * 8)
    assert memory.conv_workspace("ROOT %d = f32[8,10]{1,0} dot(%a, %b)") == 0


@pytest.mark.slow
def test_a_conv_population_stays_within_its_measured_need():
    """In a fresh process, the resident memory population_logits adds for 8 max-pooled CNNs on 2000 images stays
    within the need the rule measured for it (XLA's analysis plus the convolution workspace) and 15%."""
    script = textwrap.dedent("""
        import resource, jax, jax.numpy as jnp, numpy as np
        from fairprune_jax import evaluate, memory, models
        from benchmarks.bench_memory import PooledCNN, logits_need
        spec = models.ModelSpec("pooled_cnn", PooledCNN(), input_shape=(28, 28, 1), num_outputs=10)
        v = jax.block_until_ready(jax.vmap(spec.init)(jax.random.split(jax.random.key(0), 8)))
        x = jax.block_until_ready(jnp.ones((2000, 28, 28, 1), jnp.float32))
        need = logits_need(spec, 8, 2000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        evaluate.population_logits(spec, v, x, chunk=8, batch_size=2000, progress=False)
        print(need, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    """)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, env=env,
                         check=True).stdout.split()
    need, grown = int(out[-2]), int(out[-1])
    assert grown <= 1.15 * need, (memory.fmt_bytes(grown), memory.fmt_bytes(need))
