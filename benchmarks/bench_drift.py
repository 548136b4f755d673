"""How far a model trained alone drifts from the same model trained inside a population (docs/library.md,
Determinism).

The same seed, data order and config; only the number of models compiled together differs (1 against a chunk
holding the whole population), so any difference is float-summation order, grown by training. Data: the library guide's
(Fashion-MNIST, classes 0 and 6 cut to 300 training images). Models: LeNet-300-100, the MLP 100-30 and the guide's SmallCNN. For
steps 1 and 20 and after every epoch: the largest absolute weight difference, the relative L2 difference of all
weights (||alone - population|| / ||alone||) and the share of the 10,000 test predictions that differ; and whether
the population trained with chunk=1 equals the models alone bit for bit.

    python -m benchmarks.bench_drift                      # both models, 3 epochs, a population of 4
    python -m benchmarks.bench_drift --models lenet_300_100 --chunk 2   # chunks of 2: bit for bit on CPU
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import numpy as np

from fairprune_jax import data, evaluate, models, train


class SmallCNN(nn.Module):
    """The library guide's model: conv 8 -> conv 16 -> dense head."""

    num_outputs: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, features in enumerate((8, 16)):  # 28x28 -> 14x14x8 -> 7x7x16
            x = nn.relu(nn.Conv(features, (3, 3), strides=(2, 2), name=f"conv_{i}")(x))
        return nn.Dense(self.num_outputs, name="head")(x.reshape((x.shape[0], -1)))


def spec_of(name: str) -> models.ModelSpec:
    if name == "small_cnn":
        return models.ModelSpec("small_cnn", SmallCNN(), input_shape=(28, 28, 1), num_outputs=10)
    return models.get_model(name)


def guide_data() -> tuple[data.DeviceSplit, data.DeviceSplit]:
    """The guide's step 1: Fashion-MNIST idx files, classes 0 and 6 cut to 300 training images each."""
    folder = data.source_folder("fashion_mnist")
    idx = lambda name: data.read_idx(folder / f"{name}-ubyte.gz")  # noqa: E731
    full = data.Split(idx("train-images-idx3")[..., None], idx("train-labels-idx1").astype(np.int32))
    test = data.Split(idx("t10k-images-idx3")[..., None], idx("t10k-labels-idx1").astype(np.int32))
    cut, _ = data.subsample_classes(full, {0: 300 / 6000, 6: 300 / 6000}, key=jax.random.key(0))
    info = data.DatasetInfo("fashion_mnist_cut", (28, 28, 1), 10, mean=(float(np.mean(cut.images / 255)),),
                            std=(float(np.std(cut.images / 255)),))
    return data.to_device(cut, info), data.to_device(test, info)


def compare(spec: models.ModelSpec, alone: dict, group: dict, te: data.DeviceSplit) -> dict[str, float]:
    """Model 0 alone against model 0 of the population: weights and test predictions."""
    first = jax.tree.map(lambda x: x[:1], group)
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t["params"])]) for t in (alone, first))
    pa, pb = (evaluate.population_logits(spec, t, te.images, progress=False).argmax(-1) for t in (alone, first))
    return {"max_abs": float(np.max(np.abs(a - b))), "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
            "pred_differ": float(np.mean(pa != pb))}


def measure(name: str, epochs: int, population: int, tr: data.DeviceSplit, te: data.DeviceSplit,
            chunk: int | None = None) -> list[dict]:
    spec = spec_of(name)
    keys = train.seed_keys(range(population))
    cfg = dict(epochs=epochs, batch_size=128, optimizer=dict(name="sgd", lr=0.05, momentum=0.9))
    steps = int(tr.images.shape[0]) // 128
    kept = tuple(range(1, epochs + 1))
    rows = []
    t0 = time.perf_counter()
    one = dict(cfg, epochs=1)
    a1, ha1 = train.fit(spec, one, keys[:1], tr.images, tr.labels, capture_step=1, progress=False)
    _, hg1 = train.fit(spec, one, keys, tr.images, tr.labels, capture_step=1, chunk=chunk or population,
                       progress=False)
    _, ha = train.fit(spec, cfg, keys[:1], tr.images, tr.labels, capture_step=20, keep_epochs=kept, progress=False)
    _, hg = train.fit(spec, cfg, keys, tr.images, tr.labels, capture_step=20, keep_epochs=kept,
                      chunk=chunk or population, progress=False)
    seconds = time.perf_counter() - t0
    rows.append({"model": name, "after": "1 step", **compare(spec, ha1["snapshot"], hg1["snapshot"], te)})
    rows.append({"model": name, "after": "20 steps", **compare(spec, ha["snapshot"], hg["snapshot"], te)})
    for e in kept:
        rows.append({"model": name, "after": f"{e} epoch{'s' * (e > 1)} ({e * steps} steps)",
                     **compare(spec, ha["at_epochs"][e], hg["at_epochs"][e], te)})
    single, _ = train.fit(spec, one, keys, tr.images, tr.labels, chunk=1, progress=False)
    bitwise = all(np.array_equal(x[:1], y) for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(a1)))
    rows.append({"model": name, "after": "1 epoch, the population trained with chunk=1", "bitwise": bitwise,
                 **compare(spec, a1, single, te)})
    print(f"# {name}: alone and in a population of {population}, 1 + {epochs} epochs: {seconds:.0f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet_300_100", "mlp_100_30", "small_cnn"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--chunk", type=int, default=None, help="models per compiled chunk (default: the population)")
    args = p.parse_args(argv)
    tr, te = guide_data()
    print("| model | after | max abs weight diff | relative L2 diff | test predictions differing |")
    print("|---|---|---|---|---|")
    for name in args.models:
        for r in measure(name, args.epochs, args.population, tr, te, args.chunk):
            extra = f" (bitwise: {r['bitwise']})" if "bitwise" in r else ""
            print(f"| {r['model']} | {r['after']}{extra} | {r['max_abs']:.3g} | {r['rel_l2']:.3g} | "
                  f"{r['pred_differ']:.2%} |", flush=True)


if __name__ == "__main__":
    main()
