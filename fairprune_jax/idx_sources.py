"""Where the MNIST-family idx files come from: their registered checksums and sizes, the mirrors, and the
checksum-verified download through TFDS's download manager.

The URLs, SHA-256 values and sizes are the ones tensorflow-datasets registers for its `mnist` and `fashion_mnist`
builders (`tensorflow_datasets/url_checksums/{mnist,fashion_mnist}.txt`; a test checks them against the installed
package). A custom mirror is a base URL holding `<dataset>/<file>.gz`, the layout of the shipped data folder, so

    cd data && python -m http.server 8000        # then FAIRPRUNE_DATA_MIRROR=http://127.0.0.1:8000/

stands in for the canonical hosts, and so does `file:///path/to/data/` (read in place through the download
manager's manual-file route, which verifies the checksums without copying).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import urllib.parse
import urllib.request
from pathlib import Path

# SHA-256 and size (bytes) of the original distribution files, as registered by tensorflow-datasets 4.9.10.
IDX_CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}
IDX_SIZES: dict[str, dict[str, int]] = {
    "mnist": {"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
              "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542},
    "fashion_mnist": {"train-images-idx3-ubyte.gz": 26421880, "train-labels-idx1-ubyte.gz": 29515,
                      "t10k-images-idx3-ubyte.gz": 4422102, "t10k-labels-idx1-ubyte.gz": 5148},
}
# The hosts TFDS downloads these files from.
CANONICAL_MIRRORS: dict[str, str] = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_SCHEMES = ("http", "https", "file")
_PROBE_TIMEOUT_S = 10.0  # TFDS retries a refused connection for minutes; one short probe fails fast instead


def _known(name: str) -> None:
    if name not in IDX_CHECKSUMS:
        raise ValueError(f"dataset: {name!r} has no idx route (only {', '.join(IDX_CHECKSUMS)})")


def mirror_base(name: str, mirror: str | None = None) -> str:
    """Base URL of `name`'s four files: `<mirror>/<name>/` for a custom mirror (argument, else
    $FAIRPRUNE_DATA_MIRROR), else the canonical host TFDS registers."""
    _known(name)
    custom = mirror or os.environ.get("FAIRPRUNE_DATA_MIRROR", "")
    if not custom:
        return CANONICAL_MIRRORS[name]
    if urllib.parse.urlparse(custom).scheme not in _SCHEMES:
        raise ValueError(f"data.mirror: {custom!r} is not an http://, https:// or file:// URL "
                         f"(from {'the argument' if mirror else '$FAIRPRUNE_DATA_MIRROR'})")
    return custom.rstrip("/") + f"/{name}/"


def idx_urls(name: str, mirror: str | None = None) -> dict[str, str]:
    """File name → URL of the four idx files of `name` on the chosen mirror."""
    base = mirror_base(name, mirror)
    return {f: base + f for f in IDX_CHECKSUMS[name]}


def _file_url_path(url: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))


def unreachable(base: str) -> str | None:
    """Why the mirror at `base` cannot serve files (None when it can): a file:// folder that does not exist, or an
    http(s) host that refuses or does not resolve within a short timeout."""
    parsed = urllib.parse.urlparse(base)
    if parsed.scheme == "file":
        folder = _file_url_path(base)
        return None if folder.is_dir() else f"folder {folder} does not exist"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"cannot connect to {parsed.hostname}:{port} ({e})"
    return None


def _unavailable(name: str, looked_in: Path, missing: list[str], base: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name}: {', '.join(missing)} not found in {looked_in} and not downloadable from {base}: {reason}. "
        f"Put the four original .gz files in {looked_in} (or point $FAIRPRUNE_DATA_DIR / --config.data.source_dir "
        f"at a folder holding {name}/), or set $FAIRPRUNE_DATA_MIRROR / --config.data.mirror to a reachable mirror")


def _remove_partial(download_dir: Path) -> None:
    """Delete the download manager's temporary folders (a refused or interrupted download leaves one)."""
    for tmp in download_dir.rglob("*.tmp.*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def download_idx(name: str, download_dir: str | os.PathLike, *, mirror: str | None = None,
                 looked_in: Path) -> dict[str, Path]:
    """Fetch the four idx files of `name` through `tfds.download.DownloadManager`, each checked against its
    registered SHA-256 and size; returns file name → local path.

    A file whose checksum differs is refused (ValueError) and its partial download deleted; an unreachable mirror or
    an absent file is a one-line FileNotFoundError saying what is missing, where it was looked for, and how to
    provide it. `looked_in` is the local folder that lacked the files (named in that message).
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    urls = idx_urls(name, mirror)
    base = mirror_base(name, mirror)
    missing = [f for f in urls if not (looked_in / f).is_file()]
    missing = ["the four idx files"] if len(missing) == len(urls) else missing
    reason = unreachable(base)
    manual = _file_url_path(base) if base.startswith("file:") else None
    if reason is None and manual is not None:
        absent = [f for f in urls if not (manual / f).is_file()]
        reason = f"{', '.join(absent)} absent from {manual}" if absent else None
    if reason is not None:
        raise _unavailable(name, looked_in, missing, base, reason)
    infos = {url: checksums.UrlInfo(size=IDX_SIZES[name][f], checksum=IDX_CHECKSUMS[name][f], filename=f)
             for f, url in urls.items()}
    download_dir = Path(download_dir)
    dm = tfds.download.DownloadManager(download_dir=download_dir, manual_dir=manual, url_infos=infos,
                                       force_checksums_validation=True)
    paths: dict[str, Path] = {}
    try:  # one file at a time, so a refused file leaves no other download in flight when we clean up
        for f, url in urls.items():
            try:
                paths[f] = Path(dm.download(url))
            except NonMatchingChecksumError as e:  # the message lists the expected, then the received checksum
                got = (re.findall(r"checksum='([0-9a-f]+)'", str(e)) or ["?"])[-1]
                raise ValueError(
                    f"{name}: checksum mismatch for {url}: expected sha256 {IDX_CHECKSUMS[name][f]} "
                    f"({IDX_SIZES[name][f]} bytes), got {got}; the download was discarded and nothing was prepared"
                ) from None
    except (tfds.download.DownloadError, OSError) as e:
        raise _unavailable(name, looked_in, missing, base, " ".join(str(e).split())) from None
    finally:
        _remove_partial(download_dir)
    return paths
