"""Planted-attribute multi-label data from MNIST / Fashion-MNIST (docs/methods.md §10), the small stand-in for CelebA.

Targets: the ten class indicators plus correlated composites (MNIST even, ≥5, loop {0,6,8,9}; Fashion-MNIST
footwear {5,7,9}, upper body {0,2,4,6}). The protected attribute g is a synthetic trigger (a 4×4 max-intensity corner
patch, or the image at ×.5 intensity) planted in TRAINING on a fraction p1 of the positives and p0 of the negatives
of a target a* (strong (.95, .05), weak (.65, .35)), and at TEST at .5/.5 independently of the labels. G is the
planting mask, drawn (Bernoulli per image) from a key fixed across training seeds, and a stratified validation
hold-out of 5,000 training images is shared by all seeds.
"""
from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import jax
import numpy as np

from fairprune_jax.data import load_split

COMPOSITES: dict[str, dict[str, tuple[int, ...]]] = {
    "mnist": {"even": (0, 2, 4, 6, 8), "ge5": (5, 6, 7, 8, 9), "loop": (0, 6, 8, 9)},
    "fashion_mnist": {"footwear": (5, 7, 9), "upper_body": (0, 2, 4, 6)},
}
DEFAULT_TARGET = {"mnist": "even", "fashion_mnist": "upper_body"}  # [D]
STRENGTHS = {"strong": (0.95, 0.05), "weak": (0.65, 0.35)}
TRIGGERS = ("patch", "dim")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
NUM_CLASSES = 10

# Key purposes (fold_in of the fixed planting key).
_VAL, _TRAIN, _TEST, _TEST_IID = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class PlantedConfig:
    """What to plant and where. ``target=None`` picks `DEFAULT_TARGET` for the dataset."""

    dataset: str = "mnist"
    target: str | None = None
    p1: float = 0.95  # P(g = 1 | a* = 1) in training (and validation)
    p0: float = 0.05  # P(g = 1 | a* = 0) in training (and validation)
    test_p1: float = 0.5
    test_p0: float = 0.5
    test_iid: bool = False  # also build a test split planted at the training rates
    trigger: str = "patch"  # 'patch': 4×4 max-intensity corner; 'dim': whole image ×.5
    patch_size: int = 4
    corner: str = "top_left"
    val_size: int = 5000
    key_seed: int = 0  # fixed across training seeds
    data_dir: str | None = None  # root holding <dataset>/ idx folders (data.load_split source_dir)

    @classmethod
    def from_strength(cls, strength: str, **kw) -> "PlantedConfig":
        """(p1, p0) from 'strong' (.95, .05) or 'weak' (.65, .35)."""
        if strength not in STRENGTHS:
            raise ValueError(f"strength: {strength!r} not in {sorted(STRENGTHS)}")
        p1, p0 = STRENGTHS[strength]
        return cls(p1=p1, p0=p0, **kw)


class PlantedData(NamedTuple):
    images: np.ndarray  # uint8 [N, 28, 28, 1], trigger applied where protected = 1
    targets: np.ndarray  # int32 [N, A] binary attributes
    names: tuple[str, ...]  # [A] attribute names
    protected: np.ndarray  # int32 [N] G = planting mask (the true protected label)
    labels: np.ndarray  # int32 [N] original classes (for the softmax analogue)
    pf: np.ndarray  # float [A] TRAINING prevalence of each attribute where g = 1 (same on every split)
    nf: np.ndarray  # float [A] TRAINING prevalence where g = 0
    index: np.ndarray  # int64 [N] rows of the source split


class PlantedSplits(NamedTuple):
    train: PlantedData
    val: PlantedData
    test: PlantedData
    test_iid: PlantedData | None  # test planted at the training rates (config.test_iid)
    target_index: int  # column of a* in names
    config: PlantedConfig


def _check_dataset(dataset: str) -> None:
    if dataset not in COMPOSITES:
        raise ValueError(f"dataset: {dataset!r} not in {sorted(COMPOSITES)}")


def attribute_names(dataset: str) -> tuple[str, ...]:
    """class_0 … class_9, then the dataset's composites."""
    _check_dataset(dataset)
    return tuple(f"class_{c}" for c in range(NUM_CLASSES)) + tuple(COMPOSITES[dataset])


def attribute_targets(labels, dataset: str) -> np.ndarray:
    """Class labels ``[N]`` → binary attributes ``[N, A]`` int32 in `attribute_names` order."""
    _check_dataset(dataset)
    lab = np.asarray(labels)
    if lab.ndim != 1 or (lab.size and (lab.min() < 0 or lab.max() >= NUM_CLASSES)):
        raise ValueError(f"labels: expected [N] ints in [0, {NUM_CLASSES})")
    cols = [lab == c for c in range(NUM_CLASSES)] + [np.isin(lab, s) for s in COMPOSITES[dataset].values()]
    return np.stack(cols, axis=1).astype(np.int32)


def plant_mask(target, p1: float, p0: float, key) -> np.ndarray:
    """G_n ~ Bernoulli(p1 if target_n = 1 else p0), independently per image, from ``key``. int32 ``[N]``."""
    for name, p in (("p1", p1), ("p0", p0)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: {p} is not a probability")
    t = np.asarray(target)
    u = np.asarray(jax.random.uniform(key, (t.shape[0],)), dtype=np.float64)
    return (u < np.where(t == 1, p1, p0)).astype(np.int32)


def apply_trigger(images, mask, *, kind: str = "patch", patch_size: int = 4, corner: str = "top_left") -> np.ndarray:
    """Copy of ``images`` (uint8 NHWC) with the trigger on rows where ``mask`` = 1.

    'patch': a ``patch_size``² square of 255 in ``corner`` (all channels); 'dim': intensity ×.5 (integer halving).
    """
    x = np.array(images, dtype=np.uint8, copy=True)
    m = np.asarray(mask).astype(bool)
    if x.ndim != 4 or m.shape != (x.shape[0],):
        raise ValueError(f"images/mask: expected [N, H, W, C] and [N], got {x.shape} and {m.shape}")
    if kind == "patch":
        if corner not in CORNERS:
            raise ValueError(f"corner: {corner!r} not in {CORNERS}")
        h, w = x.shape[1:3]
        if not 0 < patch_size <= min(h, w):
            raise ValueError(f"patch_size: {patch_size} does not fit a {h}×{w} image")
        r = slice(0, patch_size) if corner.startswith("top") else slice(h - patch_size, h)
        c = slice(0, patch_size) if corner.endswith("left") else slice(w - patch_size, w)
        sub = x[m]
        sub[:, r, c, :] = 255
        x[m] = sub
    elif kind == "dim":
        x[m] = x[m] // 2
    else:
        raise ValueError(f"trigger: {kind!r} not in {TRIGGERS}")
    return x


def stratified_holdout(labels, size: int, key) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), sorted: ``size`` rows drawn per class in proportion to class counts (largest
    remainders get the leftover rows, ties to the smaller class), uniformly within each class (smallest uniforms drawn
    from ``key``)."""
    lab = np.asarray(labels)
    if not 0 <= size <= lab.shape[0]:
        raise ValueError(f"val_size: {size} not in [0, {lab.shape[0]}]")
    classes, counts = np.unique(lab, return_counts=True)
    exact = size * counts / lab.shape[0]
    quota = np.floor(exact).astype(int)
    order = np.lexsort((classes, -(exact - quota)))
    quota[order[: size - quota.sum()]] += 1
    u = np.asarray(jax.random.uniform(key, (lab.shape[0],)))  # one draw (one compile) for every class
    val = []
    for c, q in zip(classes, quota):
        idx = np.flatnonzero(lab == c)
        val.append(idx[np.argsort(u[idx], kind="stable")[:q]])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(lab.shape[0]), val_idx)
    return train_idx, val_idx


def plant(images, labels, *, dataset: str, target: str, p1: float, p0: float, key, trigger: str = "patch",
          patch_size: int = 4, corner: str = "top_left") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets, planting mask and triggered images for one split: (images, targets [N, A], protected [N])."""
    names = attribute_names(dataset)
    if target not in names:
        raise ValueError(f"target: {target!r} not in {names}")
    y = attribute_targets(labels, dataset)
    g = plant_mask(y[:, names.index(target)], p1, p0, key)
    return apply_trigger(images, g, kind=trigger, patch_size=patch_size, corner=corner), y, g


def _subset(images, y, g, labels, idx, names, pf, nf) -> PlantedData:
    return PlantedData(images[idx], y[idx], names, g[idx], np.asarray(labels, np.int32)[idx], pf, nf,
                       np.asarray(idx, np.int64))


def build_planted(cfg: PlantedConfig, train_images, train_labels, test_images, test_labels) -> PlantedSplits:
    """`load_planted` on given arrays (e.g. small slices in tests). G for a training image does not depend on
    the hold-out: the mask is drawn over the whole training split, then the validation rows are taken out."""
    _check_dataset(cfg.dataset)
    target = cfg.target or DEFAULT_TARGET[cfg.dataset]
    names = attribute_names(cfg.dataset)
    key = jax.random.key(cfg.key_seed)
    common = dict(dataset=cfg.dataset, target=target, trigger=cfg.trigger, patch_size=cfg.patch_size,
                  corner=cfg.corner)
    tr_x, tr_y, tr_g = plant(train_images, train_labels, p1=cfg.p1, p0=cfg.p0,
                             key=jax.random.fold_in(key, _TRAIN), **common)
    train_idx, val_idx = stratified_holdout(train_labels, cfg.val_size, jax.random.fold_in(key, _VAL))
    g_tr = tr_g[train_idx].astype(bool)
    pf = tr_y[train_idx][g_tr].mean(axis=0) if g_tr.any() else np.full(len(names), np.nan)
    nf = tr_y[train_idx][~g_tr].mean(axis=0) if (~g_tr).any() else np.full(len(names), np.nan)
    train = _subset(tr_x, tr_y, tr_g, train_labels, train_idx, names, pf, nf)
    val = _subset(tr_x, tr_y, tr_g, train_labels, val_idx, names, pf, nf)
    all_test = np.arange(np.asarray(test_labels).shape[0])
    te = plant(test_images, test_labels, p1=cfg.test_p1, p0=cfg.test_p0, key=jax.random.fold_in(key, _TEST),
               **common)
    test = _subset(*te, test_labels, all_test, names, pf, nf)
    test_iid = None
    if cfg.test_iid:
        ti = plant(test_images, test_labels, p1=cfg.p1, p0=cfg.p0, key=jax.random.fold_in(key, _TEST_IID), **common)
        test_iid = _subset(*ti, test_labels, all_test, names, pf, nf)
    return PlantedSplits(train, val, test, test_iid, names.index(target), cfg)


def load_planted(cfg: PlantedConfig = PlantedConfig()) -> PlantedSplits:
    """Planted train / validation (5,000 stratified) / test splits of ``cfg.dataset`` via `data.load_split`."""
    _check_dataset(cfg.dataset)
    kw = {} if cfg.data_dir is None else {"source_dir": os.fspath(cfg.data_dir)}
    tr, te = load_split(cfg.dataset, "train", **kw), load_split(cfg.dataset, "test", **kw)
    return build_planted(cfg, tr.images, tr.labels, te.images, te.labels)
