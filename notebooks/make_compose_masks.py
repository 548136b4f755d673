"""Writes notebooks/compose_masks.ipynb (kept as code so the notebook's source is reviewable and diffable).

    python notebooks/make_compose_masks.py
"""
from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("""# Composing pruning masks over a whole MNIST population

fairprune_jax treats a pruning mask as a pytree of booleans with
the structure of a Flax `params` tree. Masks are built, combined and applied by pure functions, so one jitted call
covers every seed, criterion and sparsity. This notebook:

1. loads a trained population of LeNet-300-100 networks on MNIST (from a sweep's workdir, or trains a small one);
2. composes masks: a *layerwise* magnitude mask ∩ an *Undecayed Pruning* mask, their union and complement, and an
   iterative schedule of nested masks;
3. evaluates every (seed, mask) pair in one call and estimates E[α_t], the intensification ratio of recall
   distortion (Good et al., NeurIPS 2022).

It runs on CPU, GPU or TPU. Locally: `pip install -e ".[notebook]"` (Jupyter, and ipywidgets for the progress
bars), then `jupyter lab notebooks/compose_masks.ipynb`; docs/library.md is the API guide. The first cell installs
the package unless it is importable already (in Colab, set `PACKAGE_SOURCE` first). The MNIST idx files come
through the library itself: found locally, or downloaded once and checksum-verified (docs/methods.md, §2)."""),
    code("""# Where to install fairprune_jax from: a path (a checkout or a wheel) or a URL pip understands, such as
# "git+https://<host>/<your copy>.git". Default: the checkout this notebook sits in (what CI runs).
import os, subprocess, sys
from importlib.util import find_spec
from pathlib import Path
PACKAGE_SOURCE = os.environ.get("FAIRPRUNE_PACKAGE_SOURCE", str(Path.cwd().parent))
if find_spec("fairprune_jax") is None:
    local = Path(PACKAGE_SOURCE)
    if "://" not in PACKAGE_SOURCE and not ((local / "setup.cfg").is_file() or local.suffix == ".whl"):
        raise ValueError(f"PACKAGE_SOURCE: {PACKAGE_SOURCE!r} is no fairprune_jax checkout, wheel or URL; set it")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", PACKAGE_SOURCE])"""),
    code("""# Parameters: a sweep workdir to load the population from, or the size of the population trained here.
WORKDIR = os.environ.get("FAIRPRUNE_NOTEBOOK_WORKDIR", "../workdirs/mnist")
SMALL = os.environ.get("FAIRPRUNE_NOTEBOOK_SMALL", "0") == "1"  # CI runs the notebook small
NUM_SEEDS = 3 if SMALL else 5
TRAIN_EXAMPLES = 6000 if SMALL else 60000
EPOCHS = 1 if SMALL else 8"""),
    code("""import jax, jax.numpy as jnp, numpy as np, pandas as pd
import matplotlib.pyplot as plt
from pathlib import Path
from fairprune_jax import checkpoints, data, evaluate, masks, models, protocols, schedules, scores, train
from fairprune_jax.analysis import intensification, stats, plots

print("devices:", jax.devices())
info = data.info("mnist")
train_split = data.load_split("mnist", "train")
test = data.to_device(data.load_split("mnist", "test"), info)
x_train = data.normalize(train_split.images[:TRAIN_EXAMPLES], info.mean, info.std)
y_train = jnp.asarray(train_split.labels[:TRAIN_EXAMPLES])
spec = models.get_model("lenet_300_100")
prunable = spec.prunable(exclude_output=False)"""),
    md("""## 1. A trained population

A sweep (`python -m experiments.sweep --config=configs/mnist.py`) saves its dense models with orbax as
`checkpoints/dense-lenet_300_100`. If that workdir exists we load it; otherwise we train a small population here,
all seeds in one vmapped program."""),
    code("""ckpt = Path(WORKDIR) / "checkpoints"
if not SMALL and checkpoints.exists(ckpt, "dense-lenet_300_100"):
    dense = checkpoints.restore(ckpt, "dense-lenet_300_100")["dense"]
    seeds = list(range(jax.tree.leaves(dense)[0].shape[0]))
    print(f"loaded {len(seeds)} dense seeds from {ckpt}")
else:
    seeds = list(range(NUM_SEEDS))
    cfg = dict(epochs=EPOCHS, batch_size=128, optimizer=dict(name="sgd", lr=0.1))
    dense, history = train.fit(spec, cfg, train.seed_keys(seeds), x_train, y_train)
    print("final training loss per seed:", np.round(history["loss"][:, -1], 4))
S = len(seeds)
jax.tree.map(jnp.shape, dense["params"])"""),
    md("""## 2. Composing masks

`protocols.prune_population(spec, criterion, variables, sparsities, keys, batch, grid=True)` scores every seed
with a criterion and thresholds it at every sparsity; underneath, `masks.threshold(scores, sparsity, scope=...)`
removes exactly `round(s · N)` eligible weights, breaks ties deterministically and never revives a weight that a
prior mask removed (the `keys` are used by the `random` criterion only: key them with
`jax.random.fold_in(train.purpose_key(seed_key, "random_scores"), t)` as the protocols do). Below we build, for
every seed and for three sparsities at once:

- `layer`: magnitude, **layerwise** (the same fraction in every layer);
- `up`: **Undecayed Pruning** scores |−w·g + λw²|, **global**, with g the mean cross-entropy gradient on the first
  128 training examples;
- `both = layer ∩ up`: a weight survives only if both keep it;
- `either = layer ∪ up`, and `complement(both)`, the weights that `both` removes."""),
    code("""grid = np.array([0.5, 0.8, 0.9])
batch = scores.fixed_batch(x_train, y_train)  # the first 128 training examples: what gp and up score on
keys = train.seed_keys(seeds)
# one call per criterion: every seed's scores, thresholded at every sparsity (one sort per seed), [S, P, ...]
layer = protocols.prune_population(spec, "mp_layer", dense, grid, keys, batch, grid=True)
up = protocols.prune_population(spec, "up", dense, grid, keys, batch, grid=True)
# the same UP masks by hand, from the scores: what prune_population does for each seed
by_hand = jax.vmap(lambda v: jax.vmap(lambda s: masks.threshold(
    scores.compute("up", v["params"], grads=scores.batch_gradient(spec, v, None, *batch)), s,
    prunable=prunable))(grid))(dense)
print("prune_population == by hand:", all(bool(jnp.array_equal(a, b))
                                         for a, b in zip(jax.tree.leaves(up), jax.tree.leaves(by_hand))))
both = masks.intersect(layer, up)
either = masks.union(layer, up)
removed_by_both = masks.complement(both, prunable)

sp = lambda m: np.asarray(jax.vmap(jax.vmap(lambda t: masks.sparsity(t, prunable)))(m))
pd.DataFrame({"target": np.asarray(grid), "layerwise MP": sp(layer).mean(0), "UP": sp(up).mean(0),
              "MP ∩ UP": sp(both).mean(0), "MP ∪ UP": sp(either).mean(0)}).round(4)"""),
    code("""# Per-layer sparsity of seed 0 at 90%: layerwise MP is uniform, UP is not, the intersection is sparser than both.
pick = lambda m: jax.tree.map(lambda x: x[0, 2], m)
pd.DataFrame({name: {k: float(v) for k, v in masks.layer_sparsity(pick(m), prunable).items()}
              for name, m in [("layerwise MP", layer), ("UP", up), ("MP ∩ UP", both)]}).round(3)"""),
    md("""### An iterative schedule: nested masks

Iterative pruning removes 20% of the *remaining* weights per level (s_L = 1 − 0.8^L). Passing the previous mask as
`prior` keeps the masks nested. Here the scores are held fixed at the dense weights, which keeps the example
short; the library's `protocols.iterative` retrains between levels."""),
    code("""levels = range(1, 6)
prior = jax.vmap(masks.ones_like)(dense["params"])
nested = []
for L in levels:
    s = schedules.iterative_sparsity(L, 0.2)
    prior = jax.vmap(lambda p, m: masks.threshold(scores.compute("mp", p), s, prunable=prunable, prior=m))(
        dense["params"], prior)
    nested.append(prior)
is_nested = all(bool(jax.tree.reduce(lambda a, b: a & b, jax.tree.map(lambda a, b: jnp.all(a <= b), m1, m0)))
                for m0, m1 in zip(nested, nested[1:]))
print("levels:", [round(float(schedules.iterative_sparsity(L, 0.2)), 4) for L in levels], "nested:", is_nested)"""),
    md("""## 3. Evaluate every (seed, mask) at once

The dense variables `[S, ...]` broadcast against the stacked masks `[S, M, P, ...]`. Confusion counts for all
S·M·P networks come from one compiled, chunked function."""),
    code("""names = ["layerwise MP", "UP", "MP ∩ UP"]
stacked = jax.tree.map(lambda *m: jnp.stack(m, axis=1), layer, up, both)  # [S, M, P, ...]
res = evaluate.evaluate_population(spec, dense, test.images, test.labels, masks=stacked, chunk=64)
dense_res = evaluate.evaluate_population(spec, dense, test.images, test.labels)
t = np.asarray(jax.vmap(jax.vmap(jax.vmap(lambda m: masks.sparsity(m, prunable))))(stacked))
rows = pd.concat([
    evaluate.recall_table(dense_res.counts, dataset="mnist", model=spec.name, criteria=["dense"], seeds=seeds,
                          requested_sparsity=0.0, actual_sparsity=0.0, levels=[0]),
    evaluate.recall_table(res.counts, dataset="mnist", model=spec.name, criteria=names, seeds=seeds,
                          requested_sparsity=np.asarray(grid), actual_sparsity=t, levels=[1, 2, 3])])
rows.groupby(["criterion", "requested_sparsity"])["accuracy"].mean().unstack().round(4)"""),
    md("""## 4. E[α_t]: does pruning intensify recall distortion?

α_t is the through-origin slope of δ_t = r_t/a_t − 1 on δ_0 across classes (docs/methods.md, §7). α_t > 1 means classes
below accuracy fell further behind. E[α_t] is the mean over seeds with a 95% t-interval; the verdict shown is the
t-test against 1 after Holm's adjustment across all the cells of the table (`verdict_holm`)."""),
    code("""long = intensification.long_table(rows)
alpha = intensification.alpha(long)
summary = stats.summarize(alpha)
fig = plots.plot_alpha(summary, title="E[α_t] of composed masks (no fine-tuning)")
# verdict_holm: the t-test against 1 after Holm's adjustment across every cell of the table (the unadjusted
# `verdict` reads one cell's 95% interval alone)
summary[summary["subset"] == "all"][["criterion", "requested_sparsity", "t_mean", "n_seeds", "mean", "ci_low",
                                     "ci_high", "p_holm", "verdict_holm"]].round(3)"""),
]
# Part 2: bring your own model and data (appended section; keep it small, CI executes it).
cells += [
    md("""## 5. Your own model and data

Everything above works for any dataset and any Flax model. Here: MNIST shrunk to 8×8 pixels (a stand-in for your
own small image dataset) and a hand-written MLP, taken end to end: train a population, compose masks, fine-tune
the masked networks with `protocols.finetune`, evaluate, E[α_t].

**Data.** A `data.Split` holds uint8 NHWC images (0–255) and int32 labels; a `data.DatasetInfo` says its shape,
number of classes and per-channel mean/std on the [0, 1] scale. `data.to_device` normalises once,
(x/255 − mean)/std; `data.check_normalized` checks that float images are in the range this implies. Training and
evaluation refuse labels outside [0, K) and warn about images that do not look normalised."""),
    code("""import flax.linen as nn
from fairprune_jax import protocols

raw_train, raw_test = data.load_split("mnist", "train"), data.load_split("mnist", "test")

def to_8x8(split, n):
    \"\"\"The first n images downsampled to 8x8 (antialiased) and kept as uint8, the Split convention.\"\"\"
    x = jax.image.resize(split.images[:n].astype(np.float32), (n, 8, 8, 1), "linear", antialias=True)
    return data.Split(np.clip(np.round(np.asarray(x)), 0, 255).astype(np.uint8), split.labels[:n].astype(np.int32))

small_train = to_8x8(raw_train, 3000 if SMALL else 20000)
small_test = to_8x8(raw_test, 2000 if SMALL else 10000)
pixels = small_train.images / 255.0
info8 = data.DatasetInfo("mnist8x8", (8, 8, 1), 10, mean=(float(pixels.mean()),), std=(float(pixels.std()),))
tr8, te8 = data.to_device(small_train, info8), data.to_device(small_test, info8)
data.check_normalized(tr8.images, info8)
info8"""),
    md("""**Model.** Any `flax.linen.Module` whose `__call__(x, train=False)` returns logits works once wrapped in a
`models.ModelSpec`. The contract, checked on first use: module fields are hashable (tuples, not lists), the input
shape survives the model, the output layer is a top-level entry named `output_layer` (default `"head"`; it is the
layer `exclude_output=True` keeps dense), the logits are `num_outputs` wide, and `has_batch_stats=True` exactly
when the model has BatchNorm. `models.register` adds a factory to the registry (see its docstring)."""),
    code("""class TinyMLP(nn.Module):
    hidden: tuple[int, ...] = (64, 32)  # a tuple, not a list: the module must be hashable
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        return nn.Dense(self.num_outputs, name="head")(x)

tiny = models.ModelSpec("tiny_mlp", TinyMLP(), input_shape=(8, 8, 1), num_outputs=10)
tiny_prunable = tiny.prunable(exclude_output=True)
seeds8 = list(range(3 if SMALL else 5))
keys8 = train.seed_keys(seeds8)
cfg8 = dict(epochs=3 if SMALL else 10, batch_size=64, optimizer=dict(name="sgd", lr=0.05, momentum=0.9))
dense8, hist8 = train.fit(tiny, cfg8, keys8, tr8.images, tr8.labels)
print("final training loss per seed:", np.round(hist8["loss"][:, -1], 3))"""),
    md("""**Compose, fine-tune, evaluate.** Masks `[S, M, P, ...]`: global magnitude, and its intersection with
layerwise magnitude, both from `protocols.prune_population` (`exclude_output=True`: the head stays dense, and
sparsity is counted over the hidden layers' weights). `protocols.finetune` fine-tunes every mask of seed s from
seed s's dense weights (dense `[S]` broadcast over the mask axes, as in `evaluate`), all in one compiled
population, in the seed's fine-tuning data order, the one `protocols.one_shot` uses. `masks.sparsity(..., lead=3)` reads the realised t of every mask."""),
    code("""grid8 = np.array([0.5, 0.8])
batch8 = scores.fixed_batch(tr8.images, tr8.labels)
glob = protocols.prune_population(tiny, "mp", dense8, grid8, keys8, batch8, grid=True, exclude_output=True)
layer8 = protocols.prune_population(tiny, "mp_layer", dense8, grid8, keys8, batch8, grid=True, exclude_output=True)
names8 = ["MP global", "MP global ∩ layerwise"]
mask8 = jax.tree.map(lambda *m: jnp.stack(m, axis=1), glob, masks.intersect(glob, layer8))  # [S, M, P, ...]
t8 = np.asarray(masks.sparsity(mask8, tiny_prunable, lead=3))
ft_cfg = protocols.finetune_config(cfg8, lr_scale=0.1, epochs=1 if SMALL else 3)
tuned8, ft_hist = protocols.finetune(tiny, ft_cfg, dense8, mask8, keys8, tr8.images, tr8.labels)
print("fine-tuned population:", jax.tree.leaves(tuned8)[0].shape[:3], "losses", ft_hist["loss"].shape)

res8 = evaluate.evaluate_population(tiny, tuned8, te8.images, te8.labels, masks=mask8)
dense_res8 = evaluate.evaluate_population(tiny, dense8, te8.images, te8.labels)
rows8 = pd.concat([
    evaluate.recall_table(dense_res8.counts, dataset=info8.name, model=tiny.name, criteria=["dense"],
                          seeds=seeds8, requested_sparsity=0.0, actual_sparsity=0.0),
    evaluate.recall_table(res8.counts, dataset=info8.name, model=tiny.name, criteria=names8, seeds=seeds8,
                          requested_sparsity=np.asarray(grid8), actual_sparsity=t8)])
summary8 = stats.summarize(intensification.alpha(intensification.long_table(rows8)))
summary8[summary8["subset"] == "all"][["criterion", "requested_sparsity", "t_mean", "n_seeds", "mean", "ci_low",
                                       "ci_high", "p_holm", "verdict_holm"]].round(3)"""),
]
for i, cell in enumerate(cells):  # stable ids: regenerating an unchanged notebook changes nothing
    cell["id"] = f"cell-{i:02d}"
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"}, "colab": {"provenance": []}})
out = Path(__file__).with_name("compose_masks.ipynb")
nbf.write(nb, out)
print(f"wrote {out}")
