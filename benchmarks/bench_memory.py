"""What population calls need, by the memory rule (fairprune_jax.memory): XLA's analysis of the program a call would
run, for a few chunk and batch sizes, compiled and never run, and the sizes the rule picks under this machine's
budget. Models: a small max-pooled CNN (conv 8, pool, conv 16, pool, head: 48 of them evaluated on 10,000 images at
once fill a 24 GB machine), and the library guide's strided CNN.

    python -m benchmarks.bench_memory
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.bench_drift import SmallCNN
from fairprune_jax import evaluate, memory, models


class PooledCNN(nn.Module):
    """conv 8 -> max-pool -> conv 16 -> max-pool -> dense head (the same 9,064 kernel weights as SmallCNN)."""

    num_outputs: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, features in enumerate((8, 16)):
            x = nn.max_pool(nn.relu(nn.Conv(features, (3, 3), name=f"conv_{i}")(x)), (2, 2), strides=(2, 2))
        return nn.Dense(self.num_outputs, name="head")(x.reshape((x.shape[0], -1)))


def logits_need(spec: models.ModelSpec, chunk: int, batch: int) -> int | None:
    """The need of `evaluate.population_logits`' program for `chunk` models and `batch` examples."""
    one = jax.eval_shape(spec.init, jax.random.key(0))
    part = jax.tree.map(lambda x: jax.ShapeDtypeStruct((chunk,) + x.shape, x.dtype), one)
    x = jax.ShapeDtypeStruct((batch,) + spec.input_shape, jnp.float32)
    return memory.program_need(evaluate._logits_chunk.lower(part, x, spec=spec))


def main() -> None:
    b = memory.budget()
    print(f"budget: {b.describe()}")
    print("| model | models at once | examples at once | need |")
    print("|---|---|---|---|")
    for name, module in (("pooled_cnn", PooledCNN()), ("small_cnn (guide)", SmallCNN())):
        spec = models.ModelSpec(name.split()[0], module, input_shape=(28, 28, 1), num_outputs=10)
        for chunk in (1, 8, 48):
            for batch in (2000, 10000):
                print(f"| {name} | {chunk} | {batch} | {memory.fmt_bytes(logits_need(spec, chunk, batch) or 0)} |",
                      flush=True)
        plan = memory.fit(lambda c, bs, spec=spec: logits_need(spec, c, bs), what="population_logits", n_models=48,
                          chunk=None, default_chunk=48, batch=None, default_batch=10000, n_examples=10000)
        print(f"| {name}: the rule's choice for 48 models x 10000 examples | {plan.chunk} | {plan.batch} | "
              f"{memory.fmt_bytes(plan.need)} |", flush=True)


if __name__ == "__main__":
    main()
