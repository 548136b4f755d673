"""Config schemas of both studies: the base ConfigDicts, their shared sections and helpers, importing only
ml_collections (and the deprecation helper).

The experiments themselves are files in ``fairprune_jax/configs/`` (``configs/`` in the repository), each building on
these builders and showing the values it sets, e.g. ``configs/mnist_wd.py``. Both studies share the sections
``data`` / ``train`` / ``finetune`` / ``prune`` / ``eval`` / ``divergence`` with one set of names (plural lists:
``models``, ``prune.criteria``); every field can be overridden on the command line
(``--config.num_seeds=11 --config.prune.protocol=iterative``). Empty strings mean "use the default"
(ml_collections fields keep their type, so ``None`` is avoided).

:func:`upgrade` reads configs written with the earlier names (``model``, ``prune.criterion``) and the stored
``config.json`` of workdirs made by earlier versions, so old workdirs can be reported and resumed.
"""
from __future__ import annotations

import copy
from typing import Any

import ml_collections

from fairprune_jax import deprecation

SCHEMA_VERSION = 2  # 2: plural names in both studies, the divergence section, one GMP window rule

CELEB_A_PROTECTED = ("Male", "Young", "Chubby", "Pale_Skin")  # paper 2's protected attributes (true labels)

# docs/methods.md §6: iterative levels 0-15 (<= 50% at L1-3, >= 91% from L11), one-shot/GMP grid below.
ONE_SHOT_GRID = (0.3, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
CRITERIA = ("mp", "gp", "up", "random")

#: Fields that never change a result, left out of every workdir's fingerprint: where to write and read (data
#: sources hold checksum-verified files), how chatty, how the work is split over devices and chunks (results
#: agree to the order of float sums), and ``analysis`` (it only shapes the report, which is rebuilt from tables).
IGNORED_FIELDS = ("workdir", "fresh", "progress", "variant", "schema_version", "mesh", "distributed", "train.chunk",
                  "finetune.chunk", "eval.chunk", "data.mirror", "data.source_dir", "analysis")

#: Default of ``divergence.max_loss_ratio`` (docs/methods.md §6): a network whose last training epoch's mean loss
#: exceeds this multiple of an untrained network's loss (ln K for K classes, ln 2 per sigmoid output) diverged.
MAX_LOSS_RATIO = 3.0


# ---------------------------------------------------------------------------------------------- shared sections

def optimizer(name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
              nesterov: bool = False) -> ml_collections.ConfigDict:
    """An optimiser section (`optim.make_optimizer` reads it); b1/b2/eps are Adam's."""
    return ml_collections.ConfigDict(dict(name=name, lr=lr, momentum=momentum, nesterov=nesterov,
                                          weight_decay=weight_decay, b1=0.9, b2=0.999, eps=1e-8))


def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
    """`optimizer` with name 'sgd'."""
    return optimizer("sgd", lr, momentum, weight_decay, nesterov)


def schedule(name: str = "constant", warmup_epochs: int = 0) -> ml_collections.ConfigDict:
    """A learning-rate schedule section (`optim.make_schedule` reads it)."""
    return ml_collections.ConfigDict(dict(name=name, boundaries=(), factor=0.1, warmup_epochs=warmup_epochs,
                                          end_value=0.0))


def training(epochs: int, batch_size: int, opt: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A training section (``train`` or ``finetune``): `train.fit` reads it. ``chunk`` is the number of models
    trained at once (0 = automatic: cache-sized on a CPU, all on an accelerator); ``augment`` is none | flip_crop."""
    return ml_collections.ConfigDict(dict(epochs=epochs, batch_size=batch_size, optimizer=opt, schedule=schedule(),
                                          chunk=0, augment="none"))


def distributed() -> ml_collections.ConfigDict:
    """Multi-process fields (all unset: JAX discovers them on a TPU pod; experiments.launch sets them)."""
    return ml_collections.ConfigDict(dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1))


def divergence() -> ml_collections.ConfigDict:
    """The divergence guard (docs/methods.md §6): non-finite losses or parameters, or a last-epoch loss above
    ``max_loss_ratio`` times an untrained network's loss, flag a network as diverged (excluded, counted)."""
    return ml_collections.ConfigDict(dict(max_loss_ratio=MAX_LOSS_RATIO))


def _common(study: str, dataset: str) -> ml_collections.ConfigDict:
    """Fields both studies share, with the library defaults."""
    c = ml_collections.ConfigDict()
    c.study = study
    c.schema_version = SCHEMA_VERSION
    c.dataset = dataset
    c.models = ("lenet_300_100",)  # several models answer RQ3 (model complexity) inside one sweep
    c.exclude_output = False  # library default [D]: the same choice for every criterion
    c.num_seeds = 5
    c.seed = 0  # seed s of the population uses jax.random.key(seed + s)
    c.data = ml_collections.ConfigDict()
    c.data.source_dir = ""  # root holding <dataset>/ idx files; "" = $FAIRPRUNE_DATA_DIR or ../shared/data
    c.data.mirror = ""  # base URL of <dataset>/ idx files to download; "" = $FAIRPRUNE_DATA_MIRROR or TFDS's hosts
    c.data.tfds_dir = ""  # prepared TFDS datasets; "" = $FAIRPRUNE_TFDS_DIR or ~/.cache/fairprune_jax/tfds
    c.data.download = False  # canonical TFDS builders may download (network) when True
    c.data.max_train_examples = 0  # 0 = the whole training split (a prefix in storage order otherwise)
    c.prune = ml_collections.ConfigDict()
    c.prune.lambda_up = 5e-4  # UP's λ
    c.prune.grad_batch = 128  # gp/up gradient: the first N training examples in storage order
    c.divergence = divergence()
    # Scale-out (excluded from the workdir fingerprint, like the chunk sizes; results agree to float-sum order):
    # mesh.enabled spreads each chunk of models over every device on a `seed` mesh axis when there is more than
    # one (the entry points expose a CPU's cores as devices); distributed starts multi-host JAX (TPU pods: leave
    # the addresses empty, JAX discovers the slice).
    c.mesh = ml_collections.ConfigDict(dict(enabled=True))
    c.distributed = distributed()
    c.workdir = ""  # "" = workdirs/<dataset>[-<variant>]
    c.variant = ""
    c.progress = True
    return c


# ---------------------------------------------------------------------------------------------- recall study

def recall_config(dataset: str) -> ml_collections.ConfigDict:
    """Defaults of the recall-distortion sweep on a small-image dataset (CPU scale, docs/methods.md §6)."""
    c = _common("recall", dataset)
    c.data.route = "auto"  # auto | offline | tfds
    c.data.image_size = (0, 0)  # resize (h, w) for the canonical route; (0, 0) keeps the stored size
    c.data.imbalance = ml_collections.ConfigDict()
    c.data.imbalance.classes = ()  # underrepresented classes of the training split, e.g. (3, 8)
    c.data.imbalance.fractions = ()  # kept fraction per listed class, e.g. (0.1, 0.1)
    c.data.imbalance.seed = 0

    c.train = training(8, 128, sgd(0.1))  # reference: SGD lr .1, no momentum, no weight decay (LeNet on MNIST)

    c.prune.protocol = "one_shot"  # one_shot | iterative | gmp | budget (configs/mnist_budget.py)
    c.prune.criteria = CRITERIA
    c.prune.sparsities = ONE_SHOT_GRID  # one_shot, gmp and budget targets
    c.prune.levels = 15  # iterative: levels 1..L, sparsity 1 - (1 - fraction)^L
    c.prune.fraction = 0.2
    c.prune.rewind_step = 0  # iterative: rewind survivors to this step (0 = initialisation)
    # GMP: prune at epochs range(start, end, every); end = 0 means epochs − 1 (the last epoch trains at the final
    # sparsity). post_training: start from the dense models and use the fine-tuning section (paper 2's variant),
    # else train from initialisation with the training section.
    c.prune.gmp = ml_collections.ConfigDict(dict(initial=0.05, start=0, end=0, every=1, post_training=True))
    c.finetune = training(2, 128, sgd(0.01))  # one-shot: fine-tune at a reduced learning rate

    c.eval = ml_collections.ConfigDict(dict(chunk=64, batch_size=2500))  # models per call, examples per step
    c.analysis = ml_collections.ConfigDict(dict(chance_factor=1.5, bootstrap=2000, level=0.95, welch_q=0.05))
    c.save_pruned = True  # orbax checkpoints of pruned params + masks (for notebooks and the mask_agreement table)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Seconds-long variant for tests: 3 seeds, 1 epoch on a 6000-example training subset, 2 sparsities."""
    c.num_seeds = 3
    c.train.epochs = 1
    c.data.max_train_examples = 6000
    c.finetune.epochs = 1
    c.prune.sparsities = (0.5, 0.95)
    c.prune.levels = 2
    c.eval.chunk = 32
    return c


# ---------------------------------------------------------------------------------------------- bias study

def bias_config(dataset: str) -> ml_collections.ConfigDict:
    """Defaults of the bias study (CPU scale on the planted data). Fields are documented inline; every one can be
    overridden on the command line (``--config.prune.sparsities='(0.9, 0.99)'``)."""
    c = _common("bias", dataset)  # dataset: planted_mnist | planted_fashion_mnist | celeb_a
    c.num_seeds = 5  # odd: CIEs use modal predictions
    c.data.image_size = (64, 64)  # celeb_a: resize (bilinear) to (h, w)
    c.data.protected = CELEB_A_PROTECTED  # celeb_a: protected attributes (true labels)
    c.data.max_eval_examples = 0  # 0 = all validation / test examples (prefix otherwise)
    c.data.planted = ml_collections.ConfigDict(dict(
        target="",  # "" = the dataset's default target a* (MNIST 'even', Fashion-MNIST 'upper_body')
        p1=0.95, p0=0.05,  # training P(g=1 | a*=1), P(g=1 | a*=0): strong link
        test_p1=0.5, test_p0=0.5,  # test planting, independent of the labels
        trigger="patch", patch_size=4, corner="top_left", val_size=5000, key_seed=0))

    c.train = training(5, 128, optimizer("sgd", 0.05, momentum=0.9))

    c.prune.protocol = "gmp"  # gmp (post-training, paper 2) | one_shot (+ fine-tuning)
    c.prune.criteria = ("mp",)  # one criterion per bias workdir
    c.prune.sparsities = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
    # GMP: prune at the start of fine-tuning epochs range(start, end, every), cubic from `initial` to the target;
    # end = 0 means finetune.epochs − 1 (the last epoch trains at the final sparsity).
    c.prune.gmp = ml_collections.ConfigDict(dict(initial=0.05, start=0, end=0, every=1))
    c.finetune = training(4, 128, optimizer("adam", 1e-4))  # paper 2's post-training GMP: Adam 1e-4

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 10000  # prediction batch
    c.eval.chunk = 0  # models per prediction call; 0 = all seeds
    c.eval.band = 0.4  # dense criterion U = 1[|p̄ − .5| < band]
    c.eval.bands = (0.3, 0.45)  # variants also scored
    c.eval.r2_constant = "authors"  # interdependence R² of a constant column: authors (1 if fitted exactly) | nan
    return c


def bias_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Seconds-long variant for tests: 3 seeds, 1 epoch on 3000 training examples, 2000 validation and test
    examples, 2 sparsities."""
    c.num_seeds = 3
    c.train.epochs = 1
    c.data.max_train_examples = 3000
    c.data.max_eval_examples = 2000
    c.finetune.epochs = 1
    c.prune.sparsities = (0.5, 0.95)
    return c


SMOKE = {"recall": smoke, "bias": bias_smoke}


def finish(c: ml_collections.ConfigDict, variant: str = "") -> ml_collections.ConfigDict:
    """Apply the one variant every config file accepts besides its default: "smoke" (seconds, for tests), and
    name the variant (``c.variant``, the default workdir's suffix). Other names are refused: every other
    experiment is a config file of its own."""
    if variant == "smoke":
        c = SMOKE[c.study](c)
    elif variant:
        raise ValueError(f"config variant: unknown {variant!r}; use '' or 'smoke' (every other experiment is a "
                         "config file of its own: fairprune-sweep --help lists them)")
    c.variant = "-".join(v for v in (c.variant, variant) if v)
    return c


def gmp_end(end: int, start: int, epochs: int) -> int:
    """The last GMP pruning window's end: ``end``, or for ``end = 0`` ``epochs − 1`` (at least ``start + 1``), so
    the last epoch trains at the final sparsity. One rule for both studies (docs/methods.md §6)."""
    return int(end) or max(int(epochs) - 1, int(start) + 1)


# ---------------------------------------------------------------------------------------------- earlier names

#: Singular fields of earlier versions and the plural list that replaces each.
RENAMED = (("model", "models"), ("prune.criterion", "prune.criteria"))


def _node(d: dict, dotted: str) -> tuple[dict | None, str]:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.get(p) if isinstance(d, dict) else None
    return (d if isinstance(d, dict) else None), leaf


def upgrade(config: Any, *, warn: bool = True) -> Any:
    """``config`` (a ConfigDict or the plain dict of a stored ``config.json``) in today's names; the same object
    when nothing changes, else a new one of the same kind.

    - ``model`` / ``prune.criterion`` (one name) become ``models`` / ``prune.criteria`` (a list of one), with a
      one-line deprecation warning (``warn``);
    - a config written before schema version 2 gets the fields added since with the values that reproduce what
      it ran: ``divergence.max_loss_ratio`` (the default; it only flags networks that explode), the bias study's
      ``prune.grad_batch`` 128 and ``augment`` none, and, in the recall study, the GMP ``end`` its earlier rule
      (3/4 of the run) gave to a GMP run where the common rule (:func:`gmp_end`) gives another.
    """
    is_cd = isinstance(config, ml_collections.ConfigDict)
    d = config.to_dict() if is_cd else copy.deepcopy(dict(config))
    changed = False
    for old, new in RENAMED:
        node, leaf = _node(d, old)
        if node is None or leaf not in node:
            continue
        value = node.pop(leaf)
        node[new.split(".")[-1]] = [value] if isinstance(value, str) else list(value)  # what the user wrote wins
        changed = True
        if warn:
            deprecation.warn_once(f"config.{old}", f"config.{old} is now config.{new} (a list: "
                                  f"--config.{new}=('{value}',)); the old name will be removed in a later version")
    if int(d.get("schema_version", 1) or 1) < SCHEMA_VERSION:
        changed = True
        d["schema_version"] = SCHEMA_VERSION
        d.setdefault("divergence", {"max_loss_ratio": MAX_LOSS_RATIO})
        prune = d.setdefault("prune", {})
        if d.get("study", "recall") == "bias":
            prune.setdefault("grad_batch", 128)
            for section in ("train", "finetune"):
                if isinstance(d.get(section), dict):
                    d[section].setdefault("augment", "none")
        elif (prune.get("protocol") == "gmp" and isinstance(prune.get("gmp"), dict)
              and not int(prune["gmp"].get("end", 0) or 0)):
            g = prune["gmp"]
            section = d.get("finetune" if g.get("post_training", True) else "train", {}) or {}
            epochs, start = int(section.get("epochs", 0) or 0), int(g.get("start", 0) or 0)
            earlier = max(1, (3 * epochs) // 4)
            if earlier != gmp_end(0, start, epochs):
                g["end"] = earlier
    if not changed:
        return config
    return ml_collections.ConfigDict(d) if is_cd else d


# ---------------------------------------------------------------------------------------------- moved away

_MOVED_VARIANTS = {"weight_decay": "mnist_wd", "iterative_short": "mnist_iterative", "budget": "mnist_budget",
                   "paper": "mnist_paper"}
_MOVED_APPLIERS = ("with_variant", "planted_variant", "cifar_variant")


def __getattr__(name: str) -> Any:
    """The variant builders of earlier versions are config files now; their names still work, warning once:
    ``weight_decay``, ``paper``, ``iterative_short``, ``budget`` apply that file's ``changes``;
    ``with_variant``, ``planted_variant``, ``cifar_variant`` apply a variant name to a config as before."""
    if name not in _MOVED_VARIANTS and name not in _MOVED_APPLIERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # deferred on purpose: the config files import this module

    if name in _MOVED_VARIANTS:
        target = importlib.import_module(f"fairprune_jax.configs.{_MOVED_VARIANTS[name]}")
        return deprecation.moved(target.changes, f"fairprune_jax.studies.schema.{name}",
                                 f"fairprune_jax.configs.{_MOVED_VARIANTS[name]}.changes")
    configs = importlib.import_module("fairprune_jax.configs")

    def apply(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
        base = "cifar10" if name == "cifar_variant" and c.dataset not in configs.MOVED else c.dataset
        if name == "cifar_variant":  # the CIFAR recipe itself lives in the CIFAR config files now
            c = configs.get(base, variant if variant in ("", "smoke") else "")
            variant = "" if variant == "smoke" else variant
        if variant in configs.MOVED.get(base, {}):
            return importlib.import_module(f"fairprune_jax.configs.{configs.MOVED[base][variant]}").changes(c)
        return finish(c, variant)

    return deprecation.moved(apply, f"fairprune_jax.studies.schema.{name}",
                             "the config files of fairprune_jax.configs (one per experiment)")
