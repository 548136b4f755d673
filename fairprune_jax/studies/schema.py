"""Config schemas of both studies (defaults, variants), importing only ml_collections.

The config files under ``configs/`` build on these, so a config file given by path works wherever the package is
installed (no ``configs`` package needed). Every field can be overridden on the command line, e.g.
``--config.num_seeds=11 --config.prune.protocol=iterative``. Empty strings mean "use the default" (ml_collections
fields keep their type, so ``None`` is avoided).
"""
from __future__ import annotations

import ml_collections

CELEB_A_PROTECTED = ("Male", "Young", "Chubby", "Pale_Skin")  # paper 2's protected attributes (true labels)

# ---------------------------------------------------------------------------------------------- recall study
# docs/methods.md §6: iterative levels 0-15 (<= 50% at L1-3, >= 91% from L11), one-shot/GMP grid below.
ONE_SHOT_GRID = (0.3, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
CRITERIA = ("mp", "gp", "up", "random")


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


def recall_config(dataset: str) -> ml_collections.ConfigDict:
    """Defaults of the recall-distortion sweep on a small-image dataset (CPU scale, docs/methods.md §6)."""
    c = ml_collections.ConfigDict()
    c.study = "recall"
    c.dataset = dataset
    c.models = ("lenet_300_100",)  # several models answer RQ3 (model complexity) inside one sweep
    c.exclude_output = False  # library default [D]: the same choice for every criterion
    c.num_seeds = 5
    c.seed = 0  # seed s of the population uses jax.random.key(seed + s)

    c.data = ml_collections.ConfigDict()
    c.data.source_dir = ""  # root holding <dataset>/ idx files; "" = $FAIRPRUNE_DATA_DIR or ../shared/data
    c.data.mirror = ""  # base URL of <dataset>/ idx files to download; "" = $FAIRPRUNE_DATA_MIRROR or TFDS's hosts
    c.data.tfds_dir = ""  # prepared TFDS datasets; "" = $FAIRPRUNE_TFDS_DIR or ~/.cache/fairprune_jax/tfds
    c.data.route = "auto"  # auto | offline | tfds
    c.data.download = False  # canonical TFDS builders may download (network) when True
    c.data.image_size = (0, 0)  # resize (h, w) for the canonical route; (0, 0) keeps the stored size
    c.data.imbalance = ml_collections.ConfigDict()
    c.data.imbalance.classes = ()  # underrepresented classes of the training split, e.g. (3, 8)
    c.data.imbalance.fractions = ()  # kept fraction per listed class, e.g. (0.1, 0.1)
    c.data.imbalance.seed = 0
    c.data.max_train_examples = 0  # 0 = the whole training split (a prefix in storage order otherwise)

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 8
    c.train.batch_size = 128
    c.train.optimizer = sgd(0.1)  # reference: SGD lr .1, no momentum, no weight decay (LeNet on MNIST)
    c.train.schedule = schedule()
    c.train.chunk = 0  # models trained at once; 0 = automatic (CPU: cache-sized, accelerators: all)
    c.train.augment = "none"  # none | flip_crop (random flip + pad-4 crop, the reference CIFAR augmentation)

    c.prune = ml_collections.ConfigDict()
    c.prune.protocol = "one_shot"  # one_shot | iterative | gmp | budget (the :budget variant)
    c.prune.criteria = CRITERIA
    c.prune.sparsities = ONE_SHOT_GRID  # one_shot and gmp targets
    c.prune.levels = 15  # iterative: levels 1..L, sparsity 1 - (1 - fraction)^L
    c.prune.fraction = 0.2
    c.prune.rewind_step = 0  # iterative: rewind survivors to this step (0 = initialisation)
    c.prune.lambda_up = 5e-4
    c.prune.grad_batch = 128  # gp/up gradient: the first N training examples in storage order
    # GMP: prune at epochs range(start, end, every); end=0 means 3/4 of the run. post_training: start from the
    # dense models and use the fine-tuning optimiser (paper 2's variant), else train from initialisation.
    c.prune.gmp = ml_collections.ConfigDict(dict(initial=0.05, start=0, end=0, every=1, post_training=True))
    c.finetune = ml_collections.ConfigDict()
    c.finetune.epochs = 2
    c.finetune.batch_size = 128
    c.finetune.optimizer = sgd(0.01)  # one-shot: fine-tune at a reduced learning rate
    c.finetune.schedule = schedule()
    c.finetune.chunk = 0
    c.finetune.augment = "none"

    c.eval = ml_collections.ConfigDict(dict(chunk=64, batch_size=2500))
    c.analysis = ml_collections.ConfigDict(dict(chance_factor=1.5, bootstrap=2000, level=0.95, welch_q=0.05))
    # Scale-out (excluded from the workdir fingerprint, like the chunk sizes; results agree to float-sum order):
    # mesh.enabled spreads each chunk of models over every device on a `seed` mesh axis when there is more than
    # one (the entry points expose a CPU's cores as devices); distributed starts multi-host JAX (TPU pods: leave
    # the addresses empty, JAX discovers the slice). train/finetune.chunk 0 = automatic (train.resolve_chunk).
    c.mesh = ml_collections.ConfigDict(dict(enabled=True))
    c.distributed = distributed()
    c.save_pruned = True  # orbax checkpoints of pruned params + masks (for notebooks and later analysis)
    c.workdir = ""  # "" = workdirs/<dataset>[-<variant>]
    c.variant = ""
    c.progress = True
    return c


def distributed() -> ml_collections.ConfigDict:
    """Multi-process fields (all unset: JAX discovers them on a TPU pod; experiments.launch sets them)."""
    return ml_collections.ConfigDict(dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1))


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


def with_variant(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """Apply a variant name (a key of RECALL_VARIANTS: "" default, "smoke", "paper", "wd", "iterative", "budget") to
    a recall config; unknown names are refused."""
    c.variant = variant
    if variant not in RECALL_VARIANTS:
        raise ValueError(f"config variant: unknown {variant!r}; use one of {', '.join(map(repr, RECALL_VARIANTS))}")
    return RECALL_VARIANTS[variant](c)


def weight_decay(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """UP's premise (docs/methods.md §4): coupled weight decay 5e-4 in dense training AND fine-tuning, with
    λ_UP equal to that decay, 10 seeds; everything else as the default sweep."""
    c.num_seeds = 10
    c.train.optimizer.weight_decay = 5e-4
    c.finetune.optimizer.weight_decay = 5e-4
    c.prune.lambda_up = 5e-4
    return c


def iterative_short(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Paper 1's iterative protocol (levels 1–15, 20% per level, rewinding to init) at a stated shorter budget:
    10 epochs per level instead of 40, 5 seeds, MP and UP (18 minutes measured on 2 CPU cores)."""
    c = paper(c)
    c.num_seeds = 5
    c.train.epochs = 10
    c.prune.criteria = ("mp", "up")
    return c


def budget(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Recovery budget as a moderator (an extension; docs/methods.md §6): the default sweep's dense models and
    one-shot masks (MP, UP at 50–98%), fine-tuned for 0, 1, 2 and 5 epochs at lr .01 and .1, with and without
    momentum .9. Every setting starts from the same masks; epochs 1 and 2 are read off the 5-epoch run (the
    same data order and a constant learning rate make them the 1- and 2-epoch runs)."""
    c.prune.protocol = "budget"
    # fine-tuning settings crossed at fixed masks; epochs are read off one run of max(epochs) per (lr, momentum)
    c.prune.budget = ml_collections.ConfigDict(dict(epochs=(0, 1, 2, 5), lrs=(0.01, 0.1), momenta=(0.0, 0.9)))
    c.prune.criteria = ("mp", "up")
    c.prune.sparsities = (0.5, 0.8, 0.9, 0.95, 0.98)
    c.finetune.epochs = 5
    return c


def paper(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Paper 1's protocol (docs/methods.md §6): iterative pruning with rewinding to init, levels 1–15 (20% per level),
    full retraining (40 epochs, SGD lr .1) at every level, 11 seeds, MP/GP/UP/random. Hours on a CPU."""
    c.num_seeds = 11
    c.train.epochs = 40
    c.prune.protocol = "iterative"
    c.prune.levels = 15
    c.prune.fraction = 0.2
    c.prune.rewind_step = 0
    c.train.chunk = 0
    return c


RECALL_VARIANTS = {"": lambda c: c, "smoke": smoke, "paper": paper, "wd": weight_decay,
                   "iterative": iterative_short, "budget": budget}


def cifar_variant(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """Reference CIFAR protocol (docs/methods.md §6): SGD momentum .9, lr .1 ×.1 at epochs 80 and 120, 160 epochs,
    batch 128, coupled weight decay 1e-4, flip + pad-4 crop augmentation, ResNet-20/56 and VGG-16 with BatchNorm."""
    c.variant = variant
    c.data.route = "tfds"
    c.data.download = True
    c.models = ("resnet20",)
    c.train.epochs = 160
    c.train.optimizer = sgd(0.1, momentum=0.9, weight_decay=1e-4)
    c.train.schedule.name = "step"
    c.train.schedule.boundaries = (80, 120)
    c.train.chunk = 4
    c.train.augment = c.finetune.augment = "flip_crop"
    c.finetune.epochs = 10
    c.finetune.optimizer = sgd(0.01, momentum=0.9, weight_decay=1e-4)
    c.finetune.chunk = 8
    c.eval.chunk = 8
    c.eval.batch_size = 1000
    if variant == "smoke":
        c = smoke(c)
        c.data.max_train_examples = 512
        c.train.chunk = 0
        c.finetune.chunk = 0
        return c
    if variant == "paper":
        c = paper(c)
        c.models = ("resnet20", "resnet56", "vgg16")
        c.train.epochs = 160
        c.train.chunk = 4
        return c
    if variant:
        raise ValueError(f"config variant: unknown {variant!r}; use '', 'smoke' or 'paper'")
    return c


# ---------------------------------------------------------------------------------------------- bias study

def bias_config(dataset: str) -> ml_collections.ConfigDict:
    """Defaults of the bias study (CPU scale on the planted data). Fields are documented inline; every one can be
    overridden on the command line (``--config.prune.sparsities='(0.9, 0.99)'``)."""
    c = ml_collections.ConfigDict()
    c.study = "bias"
    c.dataset = dataset  # planted_mnist | planted_fashion_mnist | celeb_a
    c.model = "lenet_300_100"  # any registered model (sigmoid head)
    c.num_seeds = 5  # odd: CIEs use modal predictions
    c.seed = 0  # seed s uses jax.random.key(seed + s)
    c.exclude_output = False  # paper 2 prunes the output layer

    c.data = ml_collections.ConfigDict()
    c.data.source_dir = ""  # planted: root holding <mnist|fashion_mnist>/ idx files; "" = library default
    c.data.mirror = ""  # planted: base URL of the idx files to download; "" = $FAIRPRUNE_DATA_MIRROR or TFDS's hosts
    c.data.tfds_dir = ""  # TFDS data dir ("" = $FAIRPRUNE_TFDS_DIR or ~/.cache/fairprune_jax/tfds)
    c.data.download = False  # celeb_a: allow TFDS to download (network)
    c.data.image_size = (64, 64)  # celeb_a: resize (bilinear) to (h, w)
    c.data.protected = CELEB_A_PROTECTED  # celeb_a: protected attributes (true labels)
    c.data.max_train_examples = 0  # 0 = all (a prefix in storage order otherwise)
    c.data.max_eval_examples = 0  # 0 = all validation / test examples (prefix otherwise)
    c.data.planted = ml_collections.ConfigDict(dict(
        target="",  # "" = the dataset's default target a* (MNIST 'even', Fashion-MNIST 'upper_body')
        p1=0.95, p0=0.05,  # training P(g=1 | a*=1), P(g=1 | a*=0): strong link
        test_p1=0.5, test_p0=0.5,  # test planting, independent of the labels
        trigger="patch", patch_size=4, corner="top_left", val_size=5000, key_seed=0))

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 5
    c.train.batch_size = 128
    c.train.optimizer = optimizer("sgd", 0.05, momentum=0.9)
    c.train.schedule = schedule()
    c.train.chunk = 0  # models trained at once; 0 = automatic (CPU: cache-sized, accelerators: all)

    c.prune = ml_collections.ConfigDict()
    c.prune.protocol = "gmp"  # gmp (post-training, paper 2) | one_shot (+ fine-tuning)
    c.prune.criterion = "mp"  # any of scores.CRITERIA
    c.prune.sparsities = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
    c.prune.lambda_up = 5e-4  # up: λ (gp/up gradients use the first 128 training examples)
    # GMP: prune at the start of fine-tuning epochs range(start, end, every), cubic from `initial` to the target;
    # end = 0 means finetune.epochs - 1 (the last epoch trains at the final sparsity).
    c.prune.gmp = ml_collections.ConfigDict(dict(initial=0.05, start=0, end=0, every=1))

    c.finetune = ml_collections.ConfigDict()
    c.finetune.epochs = 4
    c.finetune.batch_size = 128
    c.finetune.optimizer = optimizer("adam", 1e-4)  # paper 2's post-training GMP fine-tunes with Adam 1e-4
    c.finetune.schedule = schedule()
    c.finetune.chunk = 0  # one_shot only (GMP: per sparsity); 0 = automatic

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 10000  # prediction batch
    c.eval.chunk = 0  # models per prediction call; 0 = all seeds
    c.eval.band = 0.4  # dense criterion U = 1[|p̄ − .5| < band]
    c.eval.bands = (0.3, 0.45)  # variants also scored
    c.eval.r2_constant = "authors"  # interdependence R² of a constant column: authors (1 if fitted exactly) | nan

    # Scale-out (excluded from the workdir fingerprint, like the chunk sizes): spread each chunk of models over
    # every device on a `seed` mesh axis when there is more than one; distributed runs it as several JAX
    # processes (experiments.launch, pods).
    c.mesh = ml_collections.ConfigDict(dict(enabled=True))
    c.distributed = distributed()
    c.workdir = ""  # "" = workdirs/<dataset>[-<variant>]
    c.variant = ""
    c.progress = True
    return c


def planted_variant(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """Apply a planted-data variant: "" (default, strong link), "smoke" (tests), "weak" (link .65/.35)."""
    if variant == "smoke":
        return bias_smoke(c)
    if variant == "weak":
        c.data.planted.p1, c.data.planted.p0 = 0.65, 0.35
    elif variant:
        raise ValueError(f"variant: unknown variant {variant!r}; use '', 'smoke' or 'weak'")
    c.variant = variant
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
    c.variant = "smoke"
    return c
