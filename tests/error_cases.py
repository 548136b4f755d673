"""The error cases of the command line, as data: what a hostile but realistic user does and what must happen.

`tests/test_error_cases.py` runs every case of `CASES` as a subprocess and checks that it exits with ``code``, that
stderr holds no "Traceback", that its last line matches ``stderr`` (``re.search``) and, for a failure, that stderr
is at most ``max_lines`` lines long, and that the workdir changed only as ``writes`` allows. Add a case by
appending a `Case`; a new kind of damage is a function in `DAMAGES` (it gets the workdir copy and a scratch folder).

Fields of a `Case`:
  name       pytest id
  fixture    the workdir the case starts from: "recall" / "bias" (a fresh copy of a small smoke workdir, built once
             per session with `RECALL_FLAGS` / `BIAS_FLAGS`) or "" (none: ``{wd}`` is a path that does not exist)
  damage     key of `DAMAGES` applied to that copy before the command ("" = none)
  command    argv after ``python -m``; ``{wd}`` is the workdir, ``{recall}`` / ``{bias}`` expand to the fixture's
             study flags (so a rerun resumes the same config)
  code       expected exit code
  stderr     regex for the last stderr line (the one-line error, or a study's last line)
  notice     regex that must also appear somewhere in stderr ("" = none), e.g. the warning that a file was moved
  writes     "nothing": the workdir is unchanged byte for byte (or still absent); "recompute": every corrupt file
             was moved aside to ``*.corrupt-*`` (never deleted) and the result tables equal the fixture's again
  max_lines  longest stderr allowed for a failure (JAX and TFDS may add a warning line before the error)
  env        extra environment variables; "{tfds}" in a value is a private copy of the prepared TFDS folder
  fsize      a file-size limit for the command (RLIMIT_FSIZE, bytes): writes beyond it fail like a full disk
"""
from __future__ import annotations

import dataclasses
import pathlib
import shutil
from typing import Callable

import numpy as np
import pandas as pd

RECALL_FLAGS = ("--config=configs/mnist.py:smoke", "--config.prune.criteria=('mp',)",
                "--config.data.max_train_examples=2000", "--config.analysis.bootstrap=200", "--config.progress=False")
BIAS_FLAGS = ("--config=configs/planted_mnist.py:smoke", "--config.data.max_train_examples=1000",
              "--config.data.max_eval_examples=600", "--config.prune.sparsities=(0.9,)", "--config.progress=False")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    fixture: str
    damage: str
    command: tuple[str, ...]
    code: int
    stderr: str
    notice: str = ""
    writes: str = "nothing"
    max_lines: int = 2
    env: tuple[tuple[str, str], ...] = ()
    fsize: int | None = None


# ------------------------------------------------------------------------------------------------ damages

def _flip(path: pathlib.Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: pathlib.Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _biggest(folder: pathlib.Path) -> pathlib.Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".sha256")


def _legacy(path: pathlib.Path) -> None:
    """As written before checksums: no sidecar."""
    _sidecar(path).unlink()


def _impossible_recall(wd: pathlib.Path) -> None:
    """An unverified recall part holding a recall of -62994.8 (a value a flipped byte once produced)."""
    part = wd / "results" / "recall" / "lenet_300_100.mp.parquet"
    df = pd.read_parquet(part)
    df.loc[0, "recall"] = -62994.8
    part.write_bytes(df.to_parquet(index=False))
    _legacy(part)


def _legacy_truncated_checkpoint(wd: pathlib.Path) -> None:
    """A dense checkpoint written before manifests, truncated, and the pruned unit gone, so the rerun must restore
    the dense population from it (a finished run never reads its checkpoints)."""
    ckpt = wd / "checkpoints" / "dense-lenet_300_100"
    (ckpt / "SHA256SUMS").unlink()
    _truncate(_biggest(ckpt), 0.3)
    shutil.rmtree(wd / "checkpoints" / "pruned-lenet_300_100-mp")
    for f in (wd / "results" / "recall").glob("lenet_300_100.mp.parquet*"):
        f.unlink()


def _legacy_truncated_npz(wd: pathlib.Path) -> None:
    npz = wd / "artifacts" / "logits" / "sparsity=0.9.npz"
    _legacy(npz)
    _truncate(npz)


def _flip_sparse_checkpoint_without_logits(wd: pathlib.Path) -> None:
    """A flipped byte in the pruned population's checkpoint, and its logits gone, so the rerun must restore it."""
    _flip(_biggest(wd / "checkpoints" / "sparse-sparsity=0.9"))
    for f in (wd / "artifacts" / "logits").glob("sparsity=0.9.npz*"):
        f.unlink()


def _no_dataset_info(wd: pathlib.Path, tfds: pathlib.Path) -> None:
    for info in (tfds / "mnist_idx").rglob("dataset_info.json"):
        info.unlink()


RECALL_PART = ("results", "recall", "lenet_300_100.mp.parquet")
DAMAGES: dict[str, Callable[..., None]] = {
    "flip recall part": lambda wd, tfds: _flip(wd.joinpath(*RECALL_PART)),
    "impossible recall": lambda wd, tfds: _impossible_recall(wd),
    "truncated unverified part": lambda wd, tfds: (_legacy(wd.joinpath(*RECALL_PART)),
                                                   _truncate(wd.joinpath(*RECALL_PART))),
    "truncated dense checkpoint": lambda wd, tfds: _truncate(_biggest(wd / "checkpoints" / "dense-lenet_300_100")),
    "legacy truncated checkpoint": lambda wd, tfds: _legacy_truncated_checkpoint(wd),
    "flip bias metrics part": lambda wd, tfds: _flip(wd / "results" / "metrics" / "sparsity=0.9.parquet"),
    "flip meta.json": lambda wd, tfds: _flip(wd / "meta.json", 20),
    "truncated logits": lambda wd, tfds: _truncate(wd / "artifacts" / "logits" / "sparsity=0.9.npz"),
    "legacy truncated logits": lambda wd, tfds: _legacy_truncated_npz(wd),
    "flip sparse checkpoint, no logits": lambda wd, tfds: _flip_sparse_checkpoint_without_logits(wd),
    "no dataset_info.json": _no_dataset_info,
}

REPORT = ("experiments.report", "--workdir={wd}")
SWEEP = ("experiments.sweep", "{recall}", "--workdir={wd}")
BIAS = ("experiments.bias", "{bias}", "--workdir={wd}")
RERUN = "rerun the study command: it moves the file aside and recomputes it"

CASES: list[Case] = [
    # a report never reads a corrupt part and never moves anything: it names the file and what to do
    Case("report: flipped byte in a recall part", "recall", "flip recall part", REPORT, 2,
         r"^error: \S+lenet_300_100\.mp\.parquet is corrupt: its SHA-256 does not match .*; " + RERUN + "$"),
    Case("report: impossible recall in a part without checksum", "recall", "impossible recall", REPORT, 2,
         r"^error: \S+lenet_300_100\.mp\.parquet is corrupt: row 0: recall = -62994\.8 is not \[0, 1\] or NaN"),
    Case("report: truncated part without checksum (snappy/thrift error)", "recall", "truncated unverified part",
         REPORT, 2, r"^error: \S+lenet_300_100\.mp\.parquet is corrupt: not a readable parquet file \("),
    Case("bias report: flipped byte in the metrics part", "bias", "flip bias metrics part", REPORT, 2,
         r"^error: \S+sparsity=0\.9\.parquet is corrupt: its SHA-256 does not match"),
    Case("bias report: flipped byte in meta.json", "bias", "flip meta.json", REPORT, 2,
         r"^error: \S+meta\.json is corrupt: its SHA-256 does not match"),
    # rerunning the study moves the corrupt file aside, recomputes it, and ends with the same tables
    Case("sweep rerun: flipped part is recomputed", "recall", "flip recall part", SWEEP, 0, r"",
         notice=r"warning: \S+lenet_300_100\.mp\.parquet is corrupt \(.*\); moved it to "
                r"lenet_300_100\.mp\.parquet\.corrupt-\S+, it will be recomputed", writes="recompute"),
    Case("sweep rerun: truncated dense checkpoint is retrained", "recall", "truncated dense checkpoint", SWEEP, 0,
         r"", notice=r"warning: checkpoint \S+dense-lenet_300_100 is corrupt \(\S+ does not match its SHA-256",
         writes="recompute"),
    Case("sweep rerun: truncated checkpoint written before manifests", "recall", "legacy truncated checkpoint",
         SWEEP, 2, r"^error: \S+dense-lenet_300_100 is corrupt: orbax cannot read it \(.*\); moved it to "
                   r"dense-lenet_300_100\.corrupt-\S+; rerun the same command to recompute it$",
         writes="recompute", max_lines=3),  # the run's data line and the unverified-checkpoint note come first
    Case("bias rerun: truncated logits are predicted again", "bias", "truncated logits", BIAS, 0, r"",
         notice=r"warning: \S+sparsity=0\.9\.npz is corrupt \(its SHA-256 does not match", writes="recompute"),
    Case("bias rerun: truncated logits written before checksums (BadZipFile)", "bias", "legacy truncated logits",
         BIAS, 0, r"", notice=r"warning: \S+sparsity=0\.9\.npz is corrupt \(not a readable \.npz file",
         writes="recompute"),
    Case("bias rerun: flipped byte in a sparse checkpoint", "bias", "flip sparse checkpoint, no logits", BIAS, 0, r"",
         notice=r"warning: checkpoint \S+sparse-sparsity=0\.9 is corrupt", writes="recompute"),
    # data and disk
    Case("sweep: prepared TFDS data without dataset_info.json", "", "no dataset_info.json", SWEEP, 2,
         r"^error: prepared TFDS data of mnist in \S+mnist_idx is unreadable \(KeyError: .*\); delete \S+mnist_idx "
         r"so it is prepared again from the idx files$", env=(("FAIRPRUNE_TFDS_DIR", "{tfds}"),)),
    Case("sweep: the disk fills up while the dense checkpoint is saved", "", "", SWEEP, 2,
         r"^error: disk full while writing \S+dense-lenet_300_100 \((?i:file too large|no space left on device)\); "
         r"free some space and rerun the same command to resume$", writes="any", fsize=1_000_000),
]


def slow(case: Case) -> bool:
    """Cases that run a study or need a study's workdir (minutes in all) are marked slow."""
    return bool(case.fixture) or case.command[0] in ("experiments.sweep", "experiments.bias", "experiments.launch")


def same_tables(a: pathlib.Path, b: pathlib.Path) -> list[str]:
    """Names of the result parts that differ between workdirs ``a`` and ``b`` (wall-clock columns left out)."""
    diffs = []
    parts_a = sorted(p.relative_to(a) for p in (a / "results").rglob("*.parquet"))
    parts_b = sorted(p.relative_to(b) for p in (b / "results").rglob("*.parquet"))
    if parts_a != parts_b:
        return [f"parts {sorted(set(map(str, parts_a)) ^ set(map(str, parts_b)))}"]
    for rel in parts_a:
        x, y = pd.read_parquet(a / rel), pd.read_parquet(b / rel)
        x, y = (f.drop(columns=[c for c in ("seconds",) if c in f]) for f in (x, y))
        if not (x.columns.equals(y.columns) and len(x) == len(y)
                and all(np.array_equal(x[c].to_numpy(), y[c].to_numpy(), equal_nan=x[c].dtype.kind == "f")
                        for c in x.columns)):
            diffs.append(str(rel))
    return diffs
