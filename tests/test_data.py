"""Data layer: offline TFDS route, checksums, normalisation, imbalance subsampling, canonical-route decoding."""
from __future__ import annotations

import shutil
import sys
import time

import jax
import numpy as np
import pytest

from fairprune_jax import data

MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# docs/methods.md (data): pixel mean/std on the [0, 1] scale.
PIXEL_STATS = {("mnist", "train"): (0.1307, 0.3081), ("mnist", "test"): (0.1325, 0.3105),
               ("fashion_mnist", "train"): (0.2860, 0.3530), ("fashion_mnist", "test"): (0.2868, 0.3524)}


@pytest.fixture(scope="module")
def splits():
    return {(n, s): data.load_split(n, s) for n in ("mnist", "fashion_mnist") for s in ("train", "test")}


@pytest.mark.parametrize("name,split,counts", [
    ("mnist", "train", MNIST_TRAIN), ("mnist", "test", MNIST_TEST),
    ("fashion_mnist", "train", [6000] * 10), ("fashion_mnist", "test", [1000] * 10)])
def test_shapes_dtypes_and_class_counts(splits, name, split, counts):
    s = splits[name, split]
    assert s.images.shape == (sum(counts), 28, 28, 1) and s.images.dtype == np.uint8
    assert s.labels.shape == (sum(counts),) and s.labels.dtype == np.int32
    np.testing.assert_array_equal(data.class_counts(s.labels, 10), counts)


@pytest.mark.parametrize("key", list(PIXEL_STATS))
def test_pixel_statistics(splits, key):
    x = splits[key].images.astype(np.float64) / 255.0
    mean, std = PIXEL_STATS[key]
    assert x.mean() == pytest.approx(mean, abs=5e-5) and x.std() == pytest.approx(std, abs=5e-5)


def test_offline_route_keeps_original_order(splits, mnist_files):
    """The prepared dataset is byte-identical to the idx files, in file order."""
    folder = mnist_files
    images = data.read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = data.read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(splits["mnist", "test"].images[..., 0], images)
    np.testing.assert_array_equal(splits["mnist", "test"].labels, labels)
    assert splits["mnist", "train"].labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_normalisation_on_device(splits):
    ds = data.info("mnist")
    d = data.to_device(splits["mnist", "train"], ds)
    assert isinstance(d.images, jax.Array) and d.images.dtype == np.float32 and d.labels.dtype == np.int32
    assert float(d.images.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(d.images.std()) == pytest.approx(1.0, abs=1e-3)
    raw = splits["mnist", "train"].images[:3].astype(np.float32)
    np.testing.assert_allclose(np.asarray(d.images[:3]), (raw / 255 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-6)


def test_readable_with_tfds_data_source():
    import tensorflow_datasets as tfds

    data.prepare_offline("fashion_mnist")
    src = tfds.data_source("fashion_mnist_idx", split="test", data_dir=str(data.tfds_dir()), download=False)
    assert len(src) == 10000
    ex = src[0]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8 and int(ex["label"]) == 9


def test_no_tensorflow_needed():
    assert "tensorflow" not in sys.modules


def test_datasets_have_separate_folders(tmp_path, mnist_files):
    src = tmp_path / "src"
    shutil.copytree(mnist_files, src / "mnist")
    tf_dir = tmp_path / "tfds"
    data.prepare_offline("mnist", source_dir=src, tfds_dir_=tf_dir)
    assert (tf_dir / "mnist_idx" / "3.0.1").is_dir() and (tf_dir / "downloads" / "mnist").is_dir()
    # Fashion-MNIST cannot be filled with MNIST's files: a folder holding them fails its checksums.
    shutil.copytree(src / "mnist", src / "fashion_mnist")
    with pytest.raises(ValueError, match="fashion_mnist: checksum mismatch for .*train-images-idx3-ubyte.gz"):
        data.prepare_offline("fashion_mnist", source_dir=src, tfds_dir_=tf_dir)
    assert not (tf_dir / "fashion_mnist_idx").exists()


def test_two_processes_preparing_at_once_share_one_preparation(tmp_path, mnist_files):
    """Two processes started together on an unprepared folder: one prepares (under the folder's lock), the other
    waits and reads what it wrote; both load the same test split."""
    import subprocess

    code = ("import sys, numpy as np; from fairprune_jax import data; "
            "s = data.load_split('mnist', 'test', source_dir=sys.argv[1], tfds_dir_=sys.argv[2]); "
            "print(int(s.labels.sum()), int(s.images.sum(dtype=np.int64)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(mnist_files.parent), str(tmp_path / "tfds")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    assert outs[0][0] == outs[1][0] != ""
    assert sum(e.count("preparing mnist once") for _, e in outs) == 1  # the other found it prepared
    # a process that finds the lock held says that it waits, then reads what the holder prepared
    waited = [e for _, e in outs if "waiting for another process preparing mnist" in e]
    assert all(f"(it holds {tmp_path / 'tfds' / 'mnist_idx.lock'})" in e for e in waited)
    assert (tmp_path / "tfds" / "mnist_idx.lock").is_file()


def test_a_process_finding_the_preparation_lock_held_says_it_waits(tmp_path, mnist_files):
    """The lock held (as by another process preparing): one line says so, and the call prepares once it is free."""
    import fcntl
    import threading

    lock = tmp_path / "tfds" / "mnist_idx.lock"
    lock.parent.mkdir()
    lines: list[str] = []
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        call = threading.Thread(target=lambda: data.prepare_offline("mnist", source_dir=mnist_files.parent,
                                                                    tfds_dir_=tmp_path / "tfds", log=lines.append))
        call.start()
        deadline = time.time() + 120
        while not lines and time.time() < deadline:
            time.sleep(0.05)
        assert lines == [f"waiting for another process preparing mnist (it holds {lock})"]
    call.join(timeout=600)
    assert lines[1].startswith("preparing mnist once") and (tmp_path / "tfds" / "mnist_idx" / "3.0.1").is_dir()


def test_corrupted_local_file_is_refused_not_downloaded(tmp_path, mnist_files):
    folder = tmp_path / "mnist"
    shutil.copytree(mnist_files, folder)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 0xFF
    bad.chmod(0o644)
    bad.write_bytes(bytes(raw))
    expected = data.IDX_CHECKSUMS["mnist"]["t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(ValueError, match=f"t10k-labels-idx1-ubyte.gz: expected sha256 {expected}"):
        data.load_split("mnist", "test", source_dir=tmp_path, tfds_dir_=tmp_path / "tfds")


def test_missing_file_and_missing_folder_without_a_mirror(tmp_path, mnist_files, monkeypatch):
    """Files absent locally and no reachable mirror: one line naming them, the folder, and how to provide them."""
    monkeypatch.setenv("FAIRPRUNE_DATA_MIRROR", (tmp_path / "no_mirror").as_uri())
    folder = tmp_path / "mnist"
    shutil.copytree(mnist_files, folder)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=f"mnist: train-labels-idx1-ubyte.gz not found in {folder} and not "
                                                f"downloadable from .*no_mirror/mnist/: folder .* does not exist"):
        data.load_split("mnist", "train", source_dir=tmp_path, tfds_dir_=tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match=f"mnist: the four idx files not found in {tmp_path}/nowhere/mnist"):
        data.load_split("mnist", "train", source_dir=tmp_path / "nowhere", tfds_dir_=tmp_path / "tfds2")
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "tfds2").exists()


def test_environment_variables_override_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRPRUNE_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("FAIRPRUNE_TFDS_DIR", str(tmp_path / "tfds"))
    assert data.source_folder("mnist") == tmp_path / "elsewhere" / "mnist"
    assert data.tfds_dir() == tmp_path / "tfds"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "elsewhere" / "mnist")):
        data.load_split("mnist", "test")


def test_bad_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnits'"):
        data.info("mnits")
    with pytest.raises(ValueError, match="split: unknown split 'dev'"):
        data.load_split("mnist", "dev")
    with pytest.raises(ValueError, match="route: unknown route"):
        data.load_split("mnist", "test", route="ftp")


def test_subsample_exact_counts_and_determinism(splits):
    s = splits["mnist", "train"]
    key = jax.random.key(3)
    sub, table = data.subsample_classes(s, {3: 0.1, 7: 0.25}, key=key, num_classes=10)
    expected = list(MNIST_TRAIN)
    expected[3], expected[7] = round(0.1 * 6131), round(0.25 * 6265)
    np.testing.assert_array_equal(data.class_counts(sub.labels, 10), expected)
    np.testing.assert_array_equal(table["n_after"], expected)
    np.testing.assert_array_equal(table["n_before"], MNIST_TRAIN)
    assert len(sub.images) == len(sub.labels) == sum(expected)
    again, _ = data.subsample_classes(s, {3: 0.1, 7: 0.25}, key=key, num_classes=10)
    np.testing.assert_array_equal(again.images, sub.images)
    other, _ = data.subsample_classes(s, {3: 0.1, 7: 0.25}, key=jax.random.key(4), num_classes=10)
    assert not np.array_equal(other.labels, sub.labels) or not np.array_equal(other.images, sub.images)
    # Untouched classes keep every example, in the original order.
    np.testing.assert_array_equal(sub.images[sub.labels == 0], s.images[s.labels == 0])


def test_subsample_rejects_bad_values(splits):
    s = splits["mnist", "test"]
    with pytest.raises(ValueError, match="class 12 outside"):
        data.subsample_classes(s, {12: 0.5}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="fraction 0.0 for class 2"):
        data.subsample_classes(s, {2: 0.0}, key=jax.random.key(0))


def test_canonical_route_decodes_mock_celeb_a():
    """The canonical path (network in real use) on TFDS mock data with CelebA's structure."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        split = data.load_split("celeb_a", "test", route="tfds", image_size=(32, 32))
    assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.shape == (12, 40) and set(np.unique(split.labels)) <= {0, 1}


def test_canonical_route_decodes_mock_cifar10():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=7):
        split = data.load_split("cifar10", "train", route="tfds")
    assert split.images.shape == (7, 32, 32, 3) and split.labels.shape == (7,)
    assert split.labels.dtype == np.int32 and split.labels.max() < 10


def test_pixels_read_as_their_normalised_floats_at_a_quarter_of_the_memory():
    from fairprune_jax import data

    info = data.info("mnist")
    images = data.load_split("mnist", "test").images[:500]
    px = data.pixels(images, info.mean, info.std)
    floats = np.asarray(data.normalize(images, info.mean, info.std))
    assert px.shape == floats.shape and px.dtype == np.float32 and len(px) == 500 and px.ndim == 4
    idx = np.array([[3, 1, 499], [0, 7, 7]])
    np.testing.assert_array_equal(np.asarray(px[idx]), floats[idx])
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda p, i: p[i])(px, idx)), floats[idx])  # a pytree
    np.testing.assert_array_equal(np.asarray(jax.numpy.asarray(px)), floats)
    assert px.pixels.nbytes * 4 == floats.nbytes
    split = data.to_device(data.Split(images, np.zeros(500, np.int32)), info, lazy=True)
    assert isinstance(split.images, data.Pixels)
    with pytest.raises(ValueError, match="images: dtype float32; pixels expects uint8"):
        data.pixels(floats, info.mean, info.std)
