"""Datasets through tensorflow-datasets, with an offline route for the MNIST family.

Names follow TFDS: `mnist`, `fashion_mnist`, `cifar10`, `cifar100`, `celeb_a`.

Idx route (`mnist`, `fashion_mnist`): the four original idx `.gz` files are taken from a local folder when it holds
them all (`--config.data.source_dir`, else $FAIRPRUNE_DATA_DIR, else `../shared/data`; never re-downloaded), else
downloaded once through TFDS's download manager from the mirror TFDS registers (or `--config.data.mirror` /
$FAIRPRUNE_DATA_MIRROR, see `idx_sources`). Either way they are checksum-verified and prepared once into a TFDS
ArrayRecord dataset by the builders below (no TensorFlow). They are registered as
`mnist_idx` and `fashion_mnist_idx` so they can never be confused with the canonical TFDS datasets (whose image
feature is a PNG needing TensorFlow to encode). After preparation they are ordinary TFDS datasets:

    tfds.data_source("mnist_idx", split="train", data_dir=tfds_dir(), download=False)

Each dataset has its own manual, download and extract folders, so one cannot be filled with another's files.
Examples keep the original file order (shuffling is disabled), so "the first 128 training examples" means what it
means in the reference code.

Canonical route (every name): `tfds.data_source(name, ...)`, which downloads and prepares with network access;
preparing the image datasets needs TensorFlow (`pip install -e ".[tfds_full]"`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax.idx_sources import IDX_CHECKSUMS, download_idx
from fairprune_jax.pixels import Pixels, device_images, normalize, pixels  # noqa: F401 - re-exported

if TYPE_CHECKING:
    import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent

_IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_SPLIT_SIZES = {"train": 60000, "test": 10000}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the library needs to know about a dataset."""

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int  # classes (softmax) or attributes (multi-label)
    mean: tuple[float, ...]  # per-channel, on the [0, 1] scale (train split)
    std: tuple[float, ...]
    multilabel: bool = False
    offline: bool = False  # has the idx offline route


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), offline=True),
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,), offline=True),
    # The reference code normalises CIFAR with ImageNet statistics (a quirk kept on purpose, docs/methods.md).
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar100": DatasetInfo("cifar100", (32, 32, 3), 100, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "celeb_a": DatasetInfo("celeb_a", (218, 178, 3), 40, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), multilabel=True),
}

CELEB_A_PROTECTED = {"Male": 20, "Young": 39, "Chubby": 13, "Pale_Skin": 26}


class Split(NamedTuple):
    """One split on the host: uint8 NHWC images and int32 labels ([N] classes or [N, A] attributes)."""

    images: np.ndarray
    labels: np.ndarray


class DeviceSplit(NamedTuple):
    """One split on the device: normalised float32 NHWC images (or `Pixels` that read as them) and int32 labels."""

    images: jax.Array
    labels: jax.Array


def info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of a dataset name; unknown names are a ValueError naming the known ones."""
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


# ----------------------------------------------------------------------------------------------------------- folders

def default_source_root() -> Path:
    """Root holding `<name>/` idx folders: $FAIRPRUNE_DATA_DIR, else `../shared/data` beside the repository."""
    env = os.environ.get("FAIRPRUNE_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def tfds_dir(path: str | os.PathLike | None = None) -> Path:
    """Where prepared TFDS datasets live: argument, else $FAIRPRUNE_TFDS_DIR, else ~/.cache/fairprune_jax/tfds."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("FAIRPRUNE_TFDS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fairprune_jax" / "tfds"


def source_folder(name: str, source_dir: str | os.PathLike | None = None) -> Path:
    """The idx folder of `name`: `<source_dir or default root>/<name>`."""
    root = Path(source_dir).expanduser() if source_dir else default_source_root()
    return root / name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def local_idx_files(name: str, folder: Path) -> dict[str, Path] | None:
    """The four idx files of `name` in `folder`, checksum-verified, or None when any is absent (then they are
    downloaded); a present but corrupted file is refused, never replaced by a download."""
    paths = {f: folder / f for f in IDX_CHECKSUMS[name]}
    if not all(p.is_file() for p in paths.values()):
        return None
    verify_idx_folder(name, folder)
    return paths


def verify_idx_folder(name: str, folder: Path) -> None:
    """Check every idx file of `name` in `folder` against its known SHA-256; raise naming the first bad file."""
    if name not in IDX_CHECKSUMS:
        raise ValueError(f"dataset: {name!r} has no offline idx route (only {', '.join(IDX_CHECKSUMS)})")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data folder for {name!r} does not exist: {folder} (set config data.source_dir or "
            f"$FAIRPRUNE_DATA_DIR to a folder holding {name}/ with the original idx .gz files)")
    for filename, expected in IDX_CHECKSUMS[name].items():
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"{name}: missing file {path} (expected sha256 {expected})")
        got = sha256(path)
        if got != expected:
            raise ValueError(f"{name}: checksum mismatch for {path}: expected sha256 {expected}, got {got}")


def read_idx(path: Path) -> np.ndarray:
    """Decode one gzip'd idx file (big-endian header, uint8 payload)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


# ------------------------------------------------------------------------------------------------ TFDS idx builders

def _make_builders():
    """Define the offline TFDS builders lazily, so importing this module stays cheap."""
    import tensorflow_datasets as tfds

    class _IdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """MNIST-family dataset prepared from checksum-verified idx files; images stored as raw bytes.

        `files` (file name → path) are the verified files to prepare from; without them (a builder opened only to
        read a prepared dataset) the manual folder is used."""

        VERSION = tfds.core.Version("3.0.1")
        MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the four original idx .gz files in the manual folder."
        SOURCE = ""
        CLASS_NAMES: Sequence[str] | None = None

        def __init__(self, *, files: Mapping[str, Path] | None = None, **kwargs):
            self._files = dict(files or {})
            super().__init__(**kwargs)

        def _info(self):
            label = (tfds.features.ClassLabel(names=list(self.CLASS_NAMES)) if self.CLASS_NAMES
                     else tfds.features.ClassLabel(num_classes=10))
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"{self.SOURCE} prepared offline from the original idx files (fairprune_jax).",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8,
                                                  encoding=tfds.features.Encoding.BYTES),
                    "label": label,
                }),
                supervised_keys=("image", "label"),
                disable_shuffling=True,  # keep the original order: "first 128 examples" is well defined
            )

        def _split_generators(self, dl_manager):
            files = self._files
            if not files:
                verify_idx_folder(self.SOURCE, Path(dl_manager.manual_dir))
                files = {f: Path(dl_manager.manual_dir) / f for f in IDX_CHECKSUMS[self.SOURCE]}
            return {split: self._generate_examples(files[imgs], files[lbls], _SPLIT_SIZES[split])
                    for split, (imgs, lbls) in _IDX_FILES.items()}

        def _generate_examples(self, images_path, labels_path, expected):
            images, labels = read_idx(images_path), read_idx(labels_path)
            if len(images) != expected or len(labels) != expected:
                raise ValueError(f"{images_path}: expected {expected} examples, got {len(images)}/{len(labels)}")
            for i in range(expected):
                yield i, {"image": images[i][..., None], "label": int(labels[i])}

    class MnistIdx(_IdxBuilder):
        SOURCE = "mnist"

    class FashionMnistIdx(_IdxBuilder):
        SOURCE = "fashion_mnist"
        CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                       "Ankle boot")

    # Register under explicit names (`mnist_idx`, `fashion_mnist_idx`) so `tfds.data_source` finds them.
    from tensorflow_datasets.core import registered
    for cls, reg_name in ((MnistIdx, "mnist_idx"), (FashionMnistIdx, "fashion_mnist_idx")):
        cls.name = reg_name
        if reg_name not in registered._DATASET_REGISTRY:
            registered._DATASET_REGISTRY[reg_name] = cls
    return {"mnist": MnistIdx, "fashion_mnist": FashionMnistIdx}


_BUILDERS: dict[str, Any] = {}


def idx_builder(name: str, *, tfds_dir_: str | os.PathLike | None = None,
                files: Mapping[str, Path] | None = None):
    """The (unprepared or prepared) idx TFDS builder of `name`; `files` are the verified idx files to prepare from."""
    if not _BUILDERS:
        _BUILDERS.update(_make_builders())
    if name not in _BUILDERS:
        raise ValueError(f"dataset: {name!r} has no offline idx route (only {', '.join(IDX_CHECKSUMS)})")
    return _BUILDERS[name](data_dir=str(tfds_dir(tfds_dir_)), file_format="array_record", files=files)


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """TFDS's own chatter off while it prepares a dataset we announce ourselves: its progress bars ("Generating",
    "Shuffling"), its log warnings ("Variant folder ... has no dataset_info.json") and its prints ("Downloading and
    preparing dataset Unknown size ...")."""
    from tensorflow_datasets.core.utils import tqdm_utils  # deferred on purpose: TFDS is imported only to prepare

    loggers = [logging.getLogger(n) for n in ("absl", "tensorflow_datasets")]
    levels = [lg.level for lg in loggers]
    active = getattr(tqdm_utils, "_active", True)
    tqdm_utils.disable_progress_bar()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        tqdm_utils.display_progress_bar(active)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare_offline(name: str, *, source_dir: str | os.PathLike | None = None,
                    tfds_dir_: str | os.PathLike | None = None, mirror: str | None = None,
                    log: Callable[[str], None] = _stderr):
    """Prepare the ArrayRecord dataset once from verified idx files (local folder, else downloaded from `mirror`,
    see `idx_sources.mirror_base`); returns the prepared builder. Preparing says so in one line (``log``)."""
    builder = _prepared(name, tfds_dir_)
    if builder is not None:
        return builder
    folder = source_folder(name, source_dir)
    work = tfds_dir(tfds_dir_) / "downloads" / name  # per-dataset download/extract folders
    # Fail before TFDS creates anything: a corrupted local file or a refused download stops here.
    files = local_idx_files(name, folder) or download_idx(name, work, mirror=mirror, looked_in=folder)
    with _preparing(name, tfds_dir_, log):  # one process prepares; the others wait, then read what it wrote
        return _prepared(name, tfds_dir_) or _prepare(name, folder, work, files, tfds_dir_, log)


def _prepared(name: str, tfds_dir_: str | os.PathLike | None):
    """The idx builder of `name` when its dataset is prepared already, else None."""
    with quiet_tfds():
        builder = idx_builder(name, tfds_dir_=tfds_dir_)
        return builder if builder.is_prepared() else None


@contextlib.contextmanager
def _preparing(name: str, tfds_dir_: str | os.PathLike | None, log: Callable[[str], None]) -> Iterator[None]:
    """A blocking ``flock`` on ``<tfds_dir>/<name>_idx.lock``, held while a dataset is prepared: two processes
    started together on a fresh machine (two sweeps, the processes of one launch) never write one folder at once.
    A process that has to wait says so in one line (``log``). The kernel drops the lock when the holder dies."""
    root = tfds_dir(tfds_dir_)
    root.mkdir(parents=True, exist_ok=True)
    lock = root / f"{name}_idx.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process preparing {name} (it holds {lock})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _prepare(name: str, folder: Path, work: Path, files: Mapping[str, Any], tfds_dir_: str | os.PathLike | None,
             log: Callable[[str], None]):
    """Write the prepared dataset from verified idx `files` (`prepare_offline` holds the lock)."""
    import tensorflow_datasets as tfds

    log(f"preparing {name} once: {sum(_SPLIT_SIZES.values())} checksum-verified images from "
        f"{Path(next(iter(files.values()))).parent} into {tfds_dir(tfds_dir_) / (name + '_idx')} (seconds; later "
        "runs reuse it)")
    with quiet_tfds():
        builder = idx_builder(name, tfds_dir_=tfds_dir_, files=files)
        builder.download_and_prepare(
            download_dir=str(work),
            download_config=tfds.download.DownloadConfig(manual_dir=str(folder),
                                                         extract_dir=str(work / "extracted")),
        )
    return builder


def _decode_idx_records(records: Sequence[bytes]) -> Split:
    """Bulk-decode serialized examples of an idx dataset (raw image bytes + int64 label), far faster per example
    than the generic TFDS numpy parser."""
    from tensorflow_datasets.proto import tf_example_pb2

    parse = tf_example_pb2.Example.FromString
    images = bytearray()
    labels = np.empty(len(records), np.int32)
    for i, record in enumerate(records):
        feature = parse(record).features.feature
        images += feature["image"].bytes_list.value[0]
        labels[i] = feature["label"].int64_list.value[0]
    return Split(np.frombuffer(bytes(images), np.uint8).reshape(-1, 28, 28, 1), labels)


def _load_canonical(name: str, split: str, tfds_dir_: str | os.PathLike | None, download: bool,
                    image_size: tuple[int, int] | None) -> Split:
    """Canonical TFDS builder (network needed the first time); `image`+`label`, or `image`+`attributes` for CelebA."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split, data_dir=str(tfds_dir(tfds_dir_)), download=download,
                              download_and_prepare_kwargs={"file_format": "array_record"})
    return examples_to_split(name, source, image_size=image_size)


def examples_to_split(name: str, source: Sequence[Mapping[str, Any]], *,
                      image_size: tuple[int, int] | None = None, chunk: int = 4096) -> Split:
    """Stack decoded TFDS examples into a `Split`; CelebA attributes become an int32 [N, 40] matrix in TFDS's
    (alphabetical) attribute order; `image_size` resizes (bilinear) chunk by chunk to bound host memory."""
    n = len(source)
    images, labels = [], []
    for start in range(0, n, chunk):
        batch = [source[i] for i in range(start, min(n, start + chunk))]
        x = np.stack([np.asarray(ex["image"], np.uint8) for ex in batch])
        if image_size is not None and tuple(x.shape[1:3]) != tuple(image_size):
            x = np.asarray(jax.image.resize(jnp.asarray(x, jnp.float32), (len(x), *image_size, x.shape[-1]),
                                            "bilinear").round().clip(0, 255), np.uint8)
        images.append(x)
        if "attributes" in batch[0]:
            keys = sorted(batch[0]["attributes"])
            labels.append(np.array([[int(bool(ex["attributes"][k])) for k in keys] for ex in batch], np.int32))
        else:
            labels.append(np.array([int(ex["label"]) for ex in batch], np.int32))
    if not images:
        raise ValueError(f"{name}: the split is empty")
    return Split(np.concatenate(images), np.concatenate(labels))


def load_split(name: str, split: str, *, source_dir: str | os.PathLike | None = None,
               tfds_dir_: str | os.PathLike | None = None, route: str = "auto", download: bool = False,
               image_size: tuple[int, int] | None = None, mirror: str | None = None) -> Split:
    """One split as host arrays (uint8 NHWC images, int32 labels).

    route: "offline" (idx files → ArrayRecord, MNIST family only; files missing from `source_dir` are downloaded
    from `mirror`), "tfds" (canonical builder; with `download=True` it may fetch over the network), or "auto"
    (offline where the dataset has that route, else tfds).
    """
    ds = info(name)
    if split not in ("train", "test", "validation"):
        raise ValueError(f"split: unknown split {split!r}; use 'train', 'test' or 'validation'")
    if route not in ("auto", "offline", "tfds"):
        raise ValueError(f"route: unknown route {route!r}; use 'auto', 'offline' or 'tfds'")
    if route == "offline" or (route == "auto" and ds.offline):
        builder = prepare_offline(name, source_dir=source_dir, tfds_dir_=tfds_dir_, mirror=mirror)
        try:
            source = builder.as_data_source(split=split)
            records = source.data_source.__getitems__(list(range(len(source))))
            return _decode_idx_records(records)
        except (KeyError, OSError, ValueError, RuntimeError, IndexError) as e:  # TFDS / ArrayRecord / protobuf
            folder = Path(builder.data_dir).parent  # <tfds_dir>/<name>_idx, all versions
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "no message")
            raise ValueError(f"prepared TFDS data of {name} in {folder} is unreadable ({type(e).__name__}: "
                             f"{first[:160]}); delete {folder} so it is prepared again from the idx files") from e
    return _load_canonical(name, split, tfds_dir_, download, image_size)


# ------------------------------------------------------------------------------------------------ device arrays

def check_normalized(images: Any, ds: DatasetInfo, *, name: str = "images") -> None:
    """ValueError unless `images` [N, H, W, C] could be `normalize`d pixels of `ds`: every value of channel c
    within [(0 − mean_c)/std_c, (1 − mean_c)/std_c] (the strict, DatasetInfo-aware form of the check
    `train.fit` and `evaluate` make, which only warn)."""
    x = np.asarray(images, np.float64)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(ds.image_shape):
        raise ValueError(f"{name}: shape {x.shape} is not [N, *{tuple(ds.image_shape)}] of dataset {ds.name!r}")
    mean, std = np.asarray(ds.mean, np.float64), np.asarray(ds.std, np.float64)
    lo, hi = -mean / std - 1e-4, (1 - mean) / std + 1e-4
    got_lo, got_hi = x.min(axis=(0, 1, 2)), x.max(axis=(0, 1, 2))
    bad = (got_lo < lo) | (got_hi > hi)
    if np.any(bad):
        c = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: channel {c} has values in [{got_lo[c]:.4g}, {got_hi[c]:.4g}], outside the "
                         f"[{lo[c]:.4g}, {hi[c]:.4g}] that normalised pixels of {ds.name!r} can take; use "
                         f"data.normalize(uint8_images, info.mean, info.std)")


def to_device(split: Split, ds: DatasetInfo, *, lazy: bool = False) -> DeviceSplit:
    """Normalised float32 images and int32 labels, placed on the default device. lazy=True keeps the images as
    uint8 `Pixels`, normalised when read (a training set for `train.fit`: 4x less memory per device)."""
    images = (pixels if lazy else normalize)(split.images, ds.mean, ds.std)
    return DeviceSplit(images, jnp.asarray(split.labels, jnp.int32))


# ------------------------------------------------------------------------------------- underrepresented classes

def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels).ravel(), minlength=num_classes)


def subsample_classes(split: Split, fractions: Mapping[int, float], *, key: jax.Array,
                      num_classes: int | None = None) -> tuple[Split, "pd.DataFrame"]:
    """Keep round(fraction·n_c) examples of each listed class c (chosen with `key`), all of the others.

    Order of the kept examples is the original order, so the result is deterministic given `key`. Returns the new
    split and a per-class table (class, n_before, fraction, n_after).
    """
    import pandas as pd

    labels = np.asarray(split.labels)
    if labels.ndim != 1:
        raise ValueError("subsample_classes: labels must be class indices [N] (not multi-label)")
    k = int(num_classes or labels.max() + 1)
    keep = np.ones(len(labels), bool)
    for c, frac in fractions.items():
        if not 0 <= int(c) < k:
            raise ValueError(f"imbalance.classes: class {c} outside [0, {k})")
        if not 0.0 < float(frac) <= 1.0:
            raise ValueError(f"imbalance.fractions: fraction {frac} for class {c} outside (0, 1]")
        idx = np.flatnonzero(labels == int(c))
        n_keep = int(round(float(frac) * len(idx)))
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, int(c)), len(idx)))
        drop = np.ones(len(idx), bool)
        drop[perm[:n_keep]] = False
        keep[idx[drop]] = False
    before, after = class_counts(labels, k), class_counts(labels[keep], k)
    table = pd.DataFrame({"class": np.arange(k), "n_before": before,
                          "fraction": [float(fractions.get(c, 1.0)) for c in range(k)], "n_after": after})
    return Split(split.images[keep], labels[keep]), table
