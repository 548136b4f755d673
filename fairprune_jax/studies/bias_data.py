"""Data of the bias study: planted multi-label MNIST / Fashion-MNIST (`fairprune_jax.planted`) or CelebA through
TFDS (40 attributes, protected attributes given by name, official train / validation / test partition), as one
`StudyData` of normalised device inputs and host-side labels."""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax import data as data_lib
from fairprune_jax import planted as planted_lib
from fairprune_jax.analysis import bias as B

PLANTED_SOURCE = {"planted_mnist": "mnist", "planted_fashion_mnist": "fashion_mnist"}
TRIGGER = "trigger"  # the protected attribute of the planted data

# TFDS celeb_a attribute names in the order `data.examples_to_split` stacks them (sorted keys).
CELEB_A_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
assert list(CELEB_A_ATTRIBUTES) == sorted(CELEB_A_ATTRIBUTES)
assert all(CELEB_A_ATTRIBUTES[i] == n for n, i in data_lib.CELEB_A_PROTECTED.items())



class StudyData(NamedTuple):
    """Normalised training inputs and host-side evaluation labels of one study (P protected attributes)."""

    x_train: jax.Array  # float32 [N, H, W, C]
    y_train: jax.Array  # int32 [N, A]
    x_val: jax.Array
    y_val: np.ndarray  # int32 [Nv, A]
    x_test: jax.Array
    y_test: np.ndarray  # int32 [Nt, A]
    names: tuple[str, ...]  # [A]
    protected: tuple[str, ...]  # [P]
    g_val: np.ndarray  # int32 [P, Nv] TRUE protected labels
    g_test: np.ndarray  # int32 [P, Nt]
    pf: np.ndarray  # float [P, A] train prevalence of each attribute where g = 1
    nf: np.ndarray  # float [P, A] where g = 0
    prevalence: np.ndarray  # float [A] train prevalence
    triggered: np.ndarray | None  # int32 [Nt] planted trigger on the test set (BBA), None for CelebA
    ba_excluded: np.ndarray  # bool [P, A]: BA undefined by construction (the protected attribute itself)
    meta: dict  # sizes etc. for the report

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _prefix(n: int, limit: int) -> slice:
    return slice(0, n if limit <= 0 else min(n, limit))


def planted_study_data(splits: planted_lib.PlantedSplits, dataset: str, *, max_train: int = 0,
                       max_eval: int = 0) -> StudyData:
    """`StudyData` from planted splits: attributes = class indicators + composites, protected = the trigger."""
    ds = data_lib.info(dataset)
    tr, va, te = splits.train, splits.val, splits.test
    st, sv, se = _prefix(len(tr.targets), max_train), _prefix(len(va.targets), max_eval), \
        _prefix(len(te.targets), max_eval)
    names = tuple(tr.names)
    norm = lambda x: data_lib.normalize(x, ds.mean, ds.std)  # noqa: E731
    y_train = np.asarray(tr.targets[st], np.int32)
    meta = {"source": dataset, "target": names[splits.target_index], "p1": splits.config.p1,
            "p0": splits.config.p0, "test_p1": splits.config.test_p1, "test_p0": splits.config.test_p0,
            "trigger": splits.config.trigger,
            "n_train": int(y_train.shape[0]), "n_val": int(va.targets[sv].shape[0]),
            "n_test": int(te.targets[se].shape[0])}
    return StudyData(
        norm(tr.images[st]), jnp.asarray(y_train), norm(va.images[sv]), np.asarray(va.targets[sv], np.int32),
        norm(te.images[se]), np.asarray(te.targets[se], np.int32), names, (TRIGGER,),
        np.asarray(va.protected[sv], np.int32)[None], np.asarray(te.protected[se], np.int32)[None],
        np.asarray(tr.pf, float)[None], np.asarray(tr.nf, float)[None], y_train.mean(axis=0).astype(float),
        np.asarray(te.protected[se], np.int32), np.zeros((1, len(names)), bool), meta)


def celeba_study_data(train_split: data_lib.Split, val_split: data_lib.Split, test_split: data_lib.Split,
                      protected: Sequence[str], *, max_train: int = 0, max_eval: int = 0) -> StudyData:
    """`StudyData` from CelebA splits (labels int32 [N, 40] in `CELEB_A_ATTRIBUTES` order)."""
    ds = data_lib.info("celeb_a")
    names = CELEB_A_ATTRIBUTES
    parts = []
    for split, lim, what in ((train_split, max_train, "train"), (val_split, max_eval, "validation"),
                             (test_split, max_eval, "test")):
        y = np.asarray(split.labels)
        if y.ndim != 2 or y.shape[1] != len(names):
            raise ValueError(f"celeb_a {what}: labels of shape {y.shape}, expected [N, {len(names)}]")
        s = _prefix(len(y), lim)
        parts.append((split.images[s], y[s].astype(np.int32)))
    (xt, yt), (xv, yv), (xe, ye) = parts
    idx = [names.index(p) for p in protected]
    pf, nf = zip(*(B.train_prevalence(yt, yt[:, i]) for i in idx))
    excluded = np.zeros((len(idx), len(names)), bool)
    excluded[np.arange(len(idx)), idx] = True
    norm = lambda x: data_lib.normalize(x, ds.mean, ds.std)  # noqa: E731
    meta = {"source": "celeb_a", "image_size": list(xt.shape[1:3]), "n_train": int(len(yt)),
            "n_val": int(len(yv)), "n_test": int(len(ye))}
    return StudyData(norm(xt), jnp.asarray(yt), norm(xv), yv, norm(xe), ye, tuple(names), tuple(protected),
                     yv[:, idx].T.copy(), ye[:, idx].T.copy(), np.stack(pf).astype(float),
                     np.stack(nf).astype(float), yt.mean(axis=0).astype(float), None, excluded, meta)


def load_study_data(cfg: Any) -> StudyData:
    """Load the configured dataset (no network unless ``config.data.download``)."""
    ds = cfg.dataset
    max_train, max_eval = int(cfg.data.max_train_examples), int(cfg.data.max_eval_examples)
    if ds in PLANTED_SOURCE:
        src = PLANTED_SOURCE[ds]
        p = cfg.data.planted
        pcfg = planted_lib.PlantedConfig(dataset=src, target=p.target or None, p1=p.p1, p0=p.p0,
                                         test_p1=p.test_p1, test_p0=p.test_p0, trigger=p.trigger,
                                         patch_size=p.patch_size, corner=p.corner, val_size=p.val_size,
                                         key_seed=p.key_seed)
        kw = dict(source_dir=cfg.data.source_dir or None, tfds_dir_=cfg.data.tfds_dir or None,
                  mirror=cfg.data.get("mirror", "") or None)  # idx files absent locally are downloaded
        tr, te = data_lib.load_split(src, "train", **kw), data_lib.load_split(src, "test", **kw)
        splits = planted_lib.build_planted(pcfg, tr.images, tr.labels, te.images, te.labels)
        return planted_study_data(splits, src, max_train=max_train, max_eval=max_eval)
    size = tuple(int(v) for v in cfg.data.image_size)
    kw = dict(route="tfds", tfds_dir_=cfg.data.tfds_dir or None, download=bool(cfg.data.download),
              image_size=size)
    splits = [data_lib.load_split("celeb_a", s, **kw) for s in ("train", "validation", "test")]
    return celeba_study_data(*splits, tuple(cfg.data.protected), max_train=max_train, max_eval=max_eval)
