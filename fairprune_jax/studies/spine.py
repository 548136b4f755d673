"""The spine both studies run on: a locked workdir, config checks, progress bars, divergence guard, data errors.

Each study module (`fairprune_jax.studies.recall`, `fairprune_jax.studies.bias`) keeps only what is specific to its
science; what a long statistical run needs regardless of the study lives here:

* :func:`claim` — validate first, then hold an exclusive ``fcntl.flock`` on ``<workdir>/.lock`` for the whole run
  (a second run exits at once naming the holder's pid), then open the workdir (``--fresh`` moves it aside only
  when its config differs, and never while another run holds it).
* :func:`check_training` / :func:`check_batch_sizes` — one validator style for the training sections, errors
  naming the field as ``config.<path>``.
* :func:`diverged_models` / :func:`first_bad_epoch` / :func:`check_dense` — the divergence guard: non-finite
  losses or parameters are recorded, flagged and excluded; a diverged dense population stops the run.
* :class:`Progress`, :func:`default_workdir`, :func:`population_like`, :func:`load_guard`.
"""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import pathlib
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from fairprune_jax import results

PyTree = Any


class WorkdirBusyError(ValueError):
    """Another live run holds the workdir's lock."""


class DivergenceError(RuntimeError):
    """The dense population diverged (non-finite loss or parameters): nothing downstream is meaningful."""


# ------------------------------------------------------------------------------------------------ workdir

def default_workdir(config: Any) -> pathlib.Path:
    """``config.workdir``, else ``workdirs/<dataset>[-<variant>]``."""
    if config.get("workdir", ""):
        return pathlib.Path(str(config.workdir)).expanduser()
    variant = config.get("variant", "")
    return pathlib.Path("workdirs") / (str(config.dataset) + (f"-{variant}" if variant else ""))


@contextlib.contextmanager
def workdir_lock(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Hold an exclusive, non-blocking ``flock`` on ``<path>/.lock`` (created with its folder) while in the block.

    The kernel drops the lock when the process dies, so a killed run never leaves a stale lock. Raises
    :class:`WorkdirBusyError` naming the holder's pid when another process holds it.
    """
    path = pathlib.Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"workdir {str(path)!r} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    lock = path / results.LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise WorkdirBusyError(f"workdir {str(path)!r} is in use by another run (pid {holder}); wait for it "
                                   "to finish or choose another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def claim(path: str | os.PathLike, config: Any, *, fresh: bool, ignore: tuple[str, ...],
          log: Callable[[str], None], prepare: Callable[[], Any] = lambda: None,
          ) -> Iterator[tuple[results.Workdir, Any]]:
    """:func:`claim_local` in one process. In a multi-process run process 0 claims the workdir and every other
    process runs ``prepare()`` and then reads it through a :class:`multihost.HostWorkdir` (process 0 writes)."""
    from fairprune_jax import multihost

    if not multihost.active():
        with claim_local(path, config, fresh=fresh, ignore=ignore, log=log, prepare=prepare) as out:
            yield out
        return
    if not multihost.is_primary():
        prepared = prepare()
        if not multihost.agree(False):
            raise ValueError("process 0 could not claim the workdir (its error line says why)")
        fp = results.fingerprint(results.canonical_config(config), ignore)
        yield multihost.HostWorkdir(pathlib.Path(path).expanduser().absolute(), fp), prepared
        return
    with contextlib.ExitStack() as stack:
        try:
            wd, prepared = stack.enter_context(claim_local(path, config, fresh=fresh, ignore=ignore, log=log,
                                                           prepare=prepare))
        except BaseException:
            multihost.agree(False)
            raise
        multihost.agree(True)
        yield multihost.shared(wd), prepared


@contextlib.contextmanager
def claim_local(path: str | os.PathLike, config: Any, *, fresh: bool, ignore: tuple[str, ...],
                log: Callable[[str], None], prepare: Callable[[], Any] = lambda: None,
                ) -> Iterator[tuple[results.Workdir, Any]]:
    """Lock ``path``, run ``prepare()`` (e.g. load the data and check what depends on it), then open ``path`` as
    the workdir of ``config``; yields ``(workdir, prepared)``. Validate ``config`` before calling this.

    Nothing but the lock file is written before ``prepare`` succeeds, so a refused config never claims the
    workdir (a folder this call created is removed again). ``fresh``: a workdir with a different config is moved
    aside to ``<path>.old-<timestamp>`` while its lock is held (so a live run's workdir is never moved); with the
    same config the run says so and resumes.
    """
    path = pathlib.Path(path).expanduser().absolute()
    created = not path.exists()
    with workdir_lock(path):
        try:
            prepared = prepare()
        except BaseException:
            if created and [p.name for p in path.iterdir()] == [results.LOCK_FILE]:
                (path / results.LOCK_FILE).unlink()
                path.rmdir()
            raise
        stored = results.Workdir.stored_fingerprint(path, ignore)
        same = stored is not None and stored == results.fingerprint(results.canonical_config(config), ignore)
        occupied = any(p.name != results.LOCK_FILE for p in path.iterdir())
        if not (fresh and occupied and not same):
            if fresh and occupied:
                log(f"--fresh: {path} already holds this config; resuming it (nothing moved)")
            wd = results.Workdir.open(path, config, ignore=ignore)
            wd.close_stale_attempts()
            yield wd, prepared
            return
        moved = results.Workdir.move_aside(path)
    with workdir_lock(path):
        log(f"--fresh: the previous workdir (another config) was moved to {moved}")
        yield results.Workdir.open(path, config, ignore=ignore), prepared


# ------------------------------------------------------------------------------------------------ validation

def fail(field: str, message: str) -> None:
    """Raise the one validation error style: ``config.<field>: <message>``."""
    raise ValueError(f"config.{field}: {message}")


def check_training(config: Any, section: str, *, min_epochs: int) -> None:
    """Epochs, batch size and a finite positive learning rate of ``config.<section>`` (train / finetune)."""
    tcfg = config[section]
    for field, lo in (("epochs", min_epochs), ("batch_size", 1), ("chunk", 0)):
        v = tcfg.get(field, lo)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            fail(f"{section}.{field}", f"{v!r} is not an integer >= {lo}")
    lr = tcfg.optimizer.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        fail(f"{section}.optimizer.lr", f"{lr!r}; need a finite positive learning rate")
    for field in ("momentum", "weight_decay"):
        v = tcfg.optimizer.get(field, 0.0)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            fail(f"{section}.optimizer.{field}", f"{v!r}; need a finite number >= 0")


def check_sparsities(values: Any, field: str = "prune.sparsities") -> None:
    """A non-empty grid of distinct sparsities in (0, 1): 0 is the dense model itself (its rows are the dense
    population's), so it is refused rather than computed and silently dropped from the statistics."""
    if not values:
        fail(field, "empty; give at least one target sparsity")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0:
            fail(field, f"{s!r} outside [0, 1)")
        if float(s) == 0.0:
            fail(field, "0 is the dense model (already in every table as the dense population); give targets "
                        "in (0, 1)")
    if len({float(s) for s in values}) != len(values):
        fail(field, f"repeated values in {tuple(values)}")


def check_batch_sizes(config: Any, n_train: int, sections: tuple[str, ...]) -> None:
    """Each section's batch size fits the (subsampled) training split: a larger one would train on nothing."""
    for section in sections:
        bs = int(config[section].batch_size)
        if bs > n_train:
            fail(f"{section}.batch_size", f"{bs} is larger than the training split ({n_train} examples after "
                                          "subsampling); lower it or use more data")


# ------------------------------------------------------------------------------------------------ divergence

def diverged_models(tree: PyTree, lead: int) -> np.ndarray:
    """bool [lead dims]: whether any leaf of each model (leading ``lead`` axes) holds a non-finite value."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    shape = leaves[0].shape[:lead] if leaves else ()
    bad = np.zeros(shape, bool)
    for x in leaves:
        bad |= np.asarray(~jnp.isfinite(x).reshape(*x.shape[:lead], -1).all(axis=-1))
    return bad


def first_bad_epoch(loss: np.ndarray) -> np.ndarray:
    """int [lead dims] from losses [..., E]: first epoch (0-based) with a non-finite loss, -1 where none."""
    loss = np.asarray(loss, np.float64)
    if loss.shape[-1] == 0:
        return np.full(loss.shape[:-1], -1)
    bad = ~np.isfinite(loss)
    return np.where(bad.any(axis=-1), bad.argmax(axis=-1), -1)


def check_dense(variables: PyTree, loss: np.ndarray, seeds: list[int], what: str) -> None:
    """Stop with :class:`DivergenceError` when any dense model ([S, ...] with losses [S, E]) diverged."""
    bad = diverged_models(variables, 1) | (first_bad_epoch(loss) >= 0)
    if bad.any():
        epochs = first_bad_epoch(loss)
        where = ", ".join(f"seed {seeds[i]}" + (f" (epoch {epochs[i]})" if epochs[i] >= 0 else "")
                          for i in np.flatnonzero(bad))
        raise DivergenceError(f"dense training of {what} diverged (non-finite loss or parameters) for {where}; "
                              "lower config.train.optimizer.lr and rerun with --fresh")


# ------------------------------------------------------------------------------------------------ misc

def population_like(spec: Any, n: int) -> PyTree:
    """Abstract variables of a population of ``n`` models of ``spec`` (for restoring checkpoints)."""
    one = jax.eval_shape(spec.init, jax.random.key(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype), one)


def mesh_of(config: Any):
    """The `seed` mesh over every device when ``config.mesh.enabled`` and there is more than one, else None."""
    from fairprune_jax import sharding

    mesh = config.get("mesh", None)
    return sharding.default_mesh(None) if mesh is not None and bool(mesh.enabled) else None


def devices_line(config: Any) -> str:
    """Where the models train, for the log: e.g. "models spread over 2 cpu devices" or "one cpu device"."""
    from fairprune_jax import sharding

    mesh = mesh_of(config)
    platform = jax.devices()[0].platform
    if mesh is None:
        return f"one {platform} device" + (" (mesh.enabled=False)" if jax.device_count() > 1 else "")
    return f"models spread over {sharding.size(mesh)} {platform} devices"


def chunks(spec: Any, n: int, chunk: int | None, config: Any) -> int:
    """Number of chunks `train` splits a population of ``n`` models of ``spec`` into (``chunk`` 0 or None =
    automatic, `train.resolve_chunk`, on the mesh of ``config``): the progress bars' totals."""
    from fairprune_jax import train

    params = population_like(spec, 1)["params"]
    return -(-n // train.resolve_chunk(n, chunk, train.param_bytes(params), mesh_of(config)))


class Progress:
    """A tqdm bar per stage (disabled with ``config.progress=False``)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, total: int, desc: str, unit: str = "it"):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not self.enabled, dynamic_ncols=True, leave=True)

    def epochs(self, bar):
        """A `train.fit` progress callback advancing ``bar`` by one epoch of one chunk, showing the mean loss."""

        def callback(info: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(np.mean(info['loss'])):.4f}", chunk=f"{info['chunk']}/{info['chunks']}")

        return callback


def incomplete_warning(expected: list[str], committed: list[str]) -> list[str]:
    """Report lines (to go at the top) naming the units a killed or running study has not committed yet."""
    missing = [k for k in expected if k not in set(committed)]
    if not missing:
        return []
    return [f"> **Incomplete run: {len(missing)} of {len(expected)} units missing** ({', '.join(missing)}); "
            "rerun the same command to finish it, then rebuild this report.", ""]


def load_guard(load: Callable[[], Any], tfds_dir: str | os.PathLike, dataset: str) -> Any:
    """Run a data loader, turning an unreadable prepared-TFDS file (a bare Riegeli/ArrayRecord error that names
    neither file nor dataset) into a ``ValueError`` naming the folder to delete so it is prepared again
    (``<tfds_dir>/<dataset>_idx`` for the offline route, ``<tfds_dir>/<dataset>`` for the canonical one)."""
    try:
        return load()
    except (ValueError, FileNotFoundError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - array_record / riegeli raise RuntimeError or their own types
        text = str(e)
        if any(w in text.lower() for w in ("riegeli", "array_record", "arrayrecord", "corrupt", "checksum",
                                           "data loss", "failed to read")):
            root = pathlib.Path(tfds_dir)
            folders = [str(f) for f in (root / f"{dataset}_idx", root / dataset) if f.is_dir()] or [str(root)]
            raise ValueError(f"prepared TFDS data of {dataset} is unreadable ({type(e).__name__}: "
                             f"{text.splitlines()[0][:160] if text else 'no message'}); delete "
                             f"{' and '.join(folders)} so it is prepared again") from e
        raise
