"""Idx files fetched when absent locally: registered checksums, mirrors, download, refusals. Never touches the network:
mirrors are a `file://` folder or an http.server on 127.0.0.1 serving a tmp copy of the shipped files."""
from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from configs import mnist
from fairprune_jax import data, idx_sources
from fairprune_jax.studies import recall as recall_study

FILES = list(idx_sources.IDX_CHECKSUMS["mnist"])


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder quietly and records the requested paths on the server."""

    def log_message(self, *args):
        self.server.requests.append(self.path)


@pytest.fixture
def mirror_root(tmp_path, mnist_files):
    """A mirror laid out like the shipped data folder (`mnist/<file>.gz`), a writable tmp copy."""
    root = tmp_path / "mirror"
    (root / "mnist").mkdir(parents=True)
    for f in FILES:
        shutil.copyfile(mnist_files / f, root / "mnist" / f)
    return root


@pytest.fixture
def server(mirror_root):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(mirror_root)))
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _original_test_split(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return (data.read_idx(folder / "t10k-images-idx3-ubyte.gz"), data.read_idx(folder / "t10k-labels-idx1-ubyte.gz"))


def test_tables_are_what_tfds_registers():
    """URLs, SHA-256 values and sizes equal the installed tensorflow-datasets' url_checksums entries."""
    from tensorflow_datasets.core.download import checksums

    registered = checksums.get_all_url_infos()
    for name, files in idx_sources.IDX_CHECKSUMS.items():
        assert set(files) == set(idx_sources.IDX_SIZES[name]) and len(files) == 4
        for f, sha in files.items():
            info = registered[idx_sources.CANONICAL_MIRRORS[name] + f]
            assert (info.checksum, int(info.size)) == (sha, idx_sources.IDX_SIZES[name][f])
            assert info.filename == f


def test_shipped_files_match_the_tables(mnist_files):
    for f in FILES:
        path = mnist_files / f
        assert path.stat().st_size == idx_sources.IDX_SIZES["mnist"][f]
        assert data.sha256(path) == idx_sources.IDX_CHECKSUMS["mnist"][f]


def test_mirror_base_and_urls(monkeypatch):
    monkeypatch.delenv("FAIRPRUNE_DATA_MIRROR", raising=False)
    assert idx_sources.mirror_base("mnist") == "https://storage.googleapis.com/cvdf-datasets/mnist/"
    assert idx_sources.idx_urls("fashion_mnist")["t10k-labels-idx1-ubyte.gz"] == (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz")
    monkeypatch.setenv("FAIRPRUNE_DATA_MIRROR", "http://127.0.0.1:8000")
    assert idx_sources.mirror_base("mnist") == "http://127.0.0.1:8000/mnist/"
    # The argument (--config.data.mirror) wins over the environment.
    assert idx_sources.mirror_base("fashion_mnist", "file:///srv/data/") == "file:///srv/data/fashion_mnist/"
    with pytest.raises(ValueError, match=r"data.mirror: 'ftp://x/' is not an http://, https:// or file:// URL "
                                         r"\(from the argument\)"):
        idx_sources.mirror_base("mnist", "ftp://x/")
    monkeypatch.setenv("FAIRPRUNE_DATA_MIRROR", "/just/a/path")
    with pytest.raises(ValueError, match=r"from \$FAIRPRUNE_DATA_MIRROR"):
        idx_sources.mirror_base("mnist")
    with pytest.raises(ValueError, match="'cifar10' has no idx route"):
        idx_sources.idx_urls("cifar10")


def test_download_over_http_then_prepared_once(server, mirror_root, tmp_path):
    """No local folder: the four files come from the http mirror, verified, and prepare a dataset identical to the
    original files; a second call finds it prepared and sends no request."""
    tf_dir = tmp_path / "tfds"
    split = data.load_split("mnist", "test", source_dir=tmp_path / "absent", tfds_dir_=tf_dir, mirror=_url(server))
    assert sorted(server.requests) == sorted(f"/mnist/{f}" for f in FILES)
    images, labels = _original_test_split(mirror_root / "mnist")
    np.testing.assert_array_equal(split.images[..., 0], images)
    np.testing.assert_array_equal(split.labels, labels)
    cached = [p for p in (tf_dir / "downloads" / "mnist").iterdir() if p.suffix == ".gz"]
    assert sorted(data.sha256(p) for p in cached) == sorted(idx_sources.IDX_CHECKSUMS["mnist"].values())
    server.requests.clear()
    data.load_split("mnist", "train", source_dir=tmp_path / "absent", tfds_dir_=tf_dir, mirror=_url(server))
    assert server.requests == []


def test_local_folder_wins_and_is_never_downloaded(server, mirror_root, tmp_path):
    data.prepare_offline("mnist", source_dir=mirror_root, tfds_dir_=tmp_path / "tfds", mirror=_url(server))
    assert server.requests == []


def test_incomplete_local_folder_falls_back_to_the_mirror(mirror_root, tmp_path, monkeypatch):
    """The environment's mirror is used when no argument names one; a `file://` mirror is read in place."""
    local = tmp_path / "local"
    (local / "mnist").mkdir(parents=True)
    shutil.copy(mirror_root / "mnist" / FILES[0], local / "mnist" / FILES[0])
    monkeypatch.setenv("FAIRPRUNE_DATA_MIRROR", mirror_root.as_uri())
    split = data.load_split("mnist", "test", source_dir=local, tfds_dir_=tmp_path / "tfds")
    np.testing.assert_array_equal(split.labels, _original_test_split(mirror_root / "mnist")[1])


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_corrupted_download_is_refused_and_nothing_is_left(server, mirror_root, tmp_path, scheme):
    bad = mirror_root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 0xFF
    bad.write_bytes(bytes(raw))
    tf_dir = tmp_path / "tfds"
    expected = idx_sources.IDX_CHECKSUMS["mnist"]["t10k-labels-idx1-ubyte.gz"]
    mirror = _url(server) if scheme == "http" else mirror_root.as_uri()
    with pytest.raises(ValueError, match=f"mnist: checksum mismatch for .*/mnist/t10k-labels-idx1-ubyte.gz: "
                                         f"expected sha256 {expected} \\(4542 bytes\\), got {data.sha256(bad)}; "
                                         f"the download was discarded"):
        data.prepare_offline("mnist", source_dir=tmp_path / "absent", tfds_dir_=tf_dir, mirror=mirror)
    assert not (tf_dir / "mnist_idx").exists()  # nothing prepared
    left = [p for p in tf_dir.rglob("*") if p.is_file() or ".tmp." in p.name]
    # Only complete, verified files may stay cached (with their .INFO notes); never the refused one or a tmp folder.
    assert all(p.suffix == ".INFO" or data.sha256(p) in idx_sources.IDX_CHECKSUMS["mnist"].values() for p in left)
    assert not any("t10k-label" in p.name for p in left)


def test_unreachable_mirror_is_one_clear_line(tmp_path):
    mirror = f"http://127.0.0.1:{_closed_port()}/"
    with pytest.raises(FileNotFoundError) as err:
        data.load_split("mnist", "test", source_dir=tmp_path / "absent", tfds_dir_=tmp_path / "tfds", mirror=mirror)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"mnist: the four idx files not found in {tmp_path / 'absent' / 'mnist'} and not "
                          f"downloadable from {mirror}mnist/: cannot connect to 127.0.0.1:")
    assert "$FAIRPRUNE_DATA_DIR / --config.data.source_dir" in msg and "--config.data.mirror" in msg
    assert not (tmp_path / "tfds").exists()


def test_file_mirror_missing_files_are_named(mirror_root, tmp_path):
    (mirror_root / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    local = tmp_path / "local" / "mnist"
    local.mkdir(parents=True)
    shutil.copy(mirror_root / "mnist" / "t10k-images-idx3-ubyte.gz", local)
    with pytest.raises(FileNotFoundError, match=(
            f"mnist: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-labels-idx1-ubyte.gz not found in "
            f"{local} and not downloadable from {mirror_root.as_uri()}/mnist/: train-labels-idx1-ubyte.gz absent "
            f"from {mirror_root / 'mnist'}")):
        data.prepare_offline("mnist", source_dir=local.parent, tfds_dir_=tmp_path / "tfds",
                             mirror=mirror_root.as_uri())
    with pytest.raises(FileNotFoundError, match=f"folder {tmp_path / 'nowhere' / 'mnist'} does not exist"):
        data.prepare_offline("mnist", source_dir=local.parent, tfds_dir_=tmp_path / "tfds",
                             mirror=(tmp_path / "nowhere").as_uri())


def test_config_mirror_reaches_the_study_data(mirror_root, tmp_path, monkeypatch):
    """`--config.data.mirror` is what the sweep downloads from when the default data folder is absent."""
    monkeypatch.setenv("FAIRPRUNE_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("FAIRPRUNE_TFDS_DIR", str(tmp_path / "tfds"))
    cfg = mnist.get_config("smoke")
    cfg.data.mirror = mirror_root.as_uri()
    study = recall_study.load_data(cfg)
    assert study.test.images.shape == (10000, 28, 28, 1) and study.train.images.shape[0] == 6000
