"""The spine both studies run on: a locked workdir, the divergence guard, progress in named units, data errors.

The runner (`fairprune_jax.studies.runner`) drives a study through these; each study module keeps only what is
specific to its science:

* :func:`claim` — hold an exclusive ``fcntl.flock`` on ``<workdir>/.lock`` for the whole run (a second run exits
  at once naming the holder's pid), then open the workdir (``--fresh`` moves it aside only when its config
  differs, and never while another run holds it). A ``config.json`` written by an earlier version is read in
  today's names first (`schema.upgrade`), so such a workdir resumes.
* :func:`divergence` / :func:`guard` / :func:`check_dense` — the one divergence guard: non-finite losses or
  parameters, or a last-epoch loss above ``divergence.max_loss_ratio`` × an untrained network's loss, flag a
  network (recorded, excluded, counted); a diverged dense population stops the run.
* :class:`Progress` (bars counted in model-epochs), :func:`default_workdir`, :func:`population_like`,
  :func:`load_guard`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pathlib
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fairprune_jax import deprecation, multihost, results, sharding
from fairprune_jax.studies import checks, schema

PyTree = Any
fail = checks.fail  # the validation error style, where the studies used to find it


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
        upgrade_stored_config(path, ignore, log)
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


def upgrade_stored_config(path: pathlib.Path, ignore: tuple[str, ...], log: Callable[[str], None]) -> bool:
    """Rewrite ``<path>/config.json`` in today's names when an earlier version wrote it (`schema.upgrade`), so the
    fingerprint guard compares like with like; returns whether it was rewritten. Call it holding the lock."""
    f = path / results.CONFIG_FILE
    if not f.is_file():
        return False
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
        config = doc["config"]
    except (ValueError, KeyError, TypeError):
        return False  # Workdir.open names the unreadable file
    new = schema.upgrade(config, warn=False)
    if new is config:
        return False
    doc = {**doc, "config": results.canonical_config(new), "fingerprint": results.fingerprint(new, ignore),
           "ignore": sorted(ignore)}
    results.atomic_write(f, (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=True)
                             + "\n").encode("utf-8"))
    log(f"{path}: config.json of an earlier version read in today's names (models, prune.criteria)")
    return True


# ------------------------------------------------------------------------------------------------ divergence

def reference_loss(spec: Any) -> float:
    """The training loss of an untrained (uniform) network of ``spec``: ln K for a softmax head of K classes, ln 2
    for a sigmoid head (its loss is the mean BCE over the outputs). The divergence guard's yardstick: unlike the
    first epoch's mean loss, it cannot be inflated by a network that explodes within that epoch."""
    return math.log(2.0) if spec.multilabel else math.log(int(spec.num_outputs))


def diverged_models(tree: PyTree, lead: int) -> np.ndarray:
    """bool [lead dims]: whether any leaf of each model (leading ``lead`` axes) holds a non-finite value."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    shape = leaves[0].shape[:lead] if leaves else ()
    bad = np.zeros(shape, bool)
    for x in leaves:
        bad |= np.asarray(~jnp.isfinite(x).reshape(*x.shape[:lead], -1).all(axis=-1))
    return bad


def first_bad_epoch(loss: np.ndarray, bound: float = math.inf) -> np.ndarray:
    """int [lead dims] from losses [..., E]: the first epoch (0-based) whose loss is non-finite or above
    ``bound``, -1 where none."""
    loss = np.asarray(loss, np.float64)
    if loss.shape[-1] == 0:
        return np.full(loss.shape[:-1], -1)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(loss) | (loss > bound)
    return np.where(bad.any(axis=-1), bad.argmax(axis=-1), -1)


class Divergence(NamedTuple):
    """The guard's verdict per network: ``diverged`` bool [...] and ``epoch`` int [...] (the first epoch whose
    loss is non-finite or above the bound; -1 when only the parameters, or nothing, show it)."""

    diverged: np.ndarray
    epoch: np.ndarray


def divergence(variables: PyTree, loss: Any, lead: int, *, reference: float, ratio: float) -> Divergence:
    """The one divergence guard of both studies (docs/methods.md §6): a network [lead axes] diverged when a
    parameter or an epoch's mean training loss (``loss`` [*lead, E], or None) is non-finite, or when its LAST
    epoch's loss exceeds ``ratio`` × ``reference`` (`reference_loss`: an untrained network's loss)."""
    bad = diverged_models(variables, lead)
    if loss is None:
        return Divergence(bad, np.full(bad.shape, -1))
    loss = np.asarray(loss, np.float64)
    bound = float(ratio) * float(reference)
    nonfinite = first_bad_epoch(loss)
    with np.errstate(invalid="ignore"):
        exploded = (loss[..., -1] > bound) if loss.shape[-1] else np.zeros(loss.shape[:-1], bool)
    epoch = np.where(exploded, first_bad_epoch(loss, bound), nonfinite)
    bad = np.broadcast_to(bad, epoch.shape) | (nonfinite >= 0) | exploded
    return Divergence(bad, epoch)


def guard(config: Any, spec: Any, variables: PyTree, loss: Any, lead: int) -> Divergence:
    """`divergence` with the config's ``divergence.max_loss_ratio`` and ``spec``'s untrained loss."""
    ratio = float(config.get("divergence", {}).get("max_loss_ratio", schema.MAX_LOSS_RATIO))
    return divergence(variables, loss, lead, reference=reference_loss(spec), ratio=ratio)


def check_dense(verdict: Divergence, seeds: list[int], what: str) -> None:
    """Stop with :class:`DivergenceError` when any dense model (verdict over seeds [S]) diverged."""
    if verdict.diverged.any():
        where = ", ".join(f"seed {seeds[i]}" + (f" (epoch {verdict.epoch[i]})" if verdict.epoch[i] >= 0 else "")
                          for i in np.flatnonzero(verdict.diverged))
        raise DivergenceError(f"dense training of {what} diverged (non-finite or exploding loss, or non-finite "
                              f"parameters) for {where}; lower config.train.optimizer.lr and rerun with --fresh")


# ------------------------------------------------------------------------------------------------ misc

def population_like(spec: Any, n: int) -> PyTree:
    """Abstract variables of a population of ``n`` models of ``spec`` (for restoring checkpoints)."""
    one = jax.eval_shape(spec.init, jax.random.key(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype), one)


def mesh_of(config: Any):
    """The `seed` mesh over every device when ``config.mesh.enabled`` and there is more than one, else None."""
    mesh = config.get("mesh", None)
    return sharding.default_mesh(None) if mesh is not None and bool(mesh.enabled) else None


def devices_line(config: Any) -> str:
    """Where the models train, for the log: e.g. "models spread over 2 cpu devices" or "one cpu device"."""
    mesh = mesh_of(config)
    platform = jax.devices()[0].platform
    if mesh is None:
        return f"one {platform} device" + (" (mesh.enabled=False)" if jax.device_count() > 1 else "")
    return f"models spread over {sharding.size(mesh)} {platform} devices"


def chunks(spec: Any, n: int, chunk: int | None, config: Any) -> int:
    """Number of chunks `train` splits a population of ``n`` models of ``spec`` into (``chunk`` 0 or None =
    automatic, `train.resolve_chunk`, on the mesh of ``config``). Deprecated: progress bars count model-epochs."""
    from fairprune_jax import train  # deferred on purpose: a deprecated helper; the spine needs no trainer

    deprecation.warn_once("spine.chunks", "fairprune_jax.studies.spine.chunks is deprecated: progress bars count "
                          "model-epochs (Progress.training)")
    params = population_like(spec, 1)["params"]
    return -(-n // train.resolve_chunk(n, chunk, train.param_bytes(params), mesh_of(config)))


class Progress:
    """Progress bars of a run (tqdm on stderr; disabled with ``config.progress=False``)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, total: int, desc: str, unit: str = "it"):
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.enabled, dynamic_ncols=True, leave=True)

    def training(self, what: str, models: int, epochs: int):
        """A bar for training ``models`` networks ``epochs`` epochs each, counted in model-epochs, titled
        ``<what>: <models> models × <epochs> epochs``; feed it with `epochs`."""
        return self.bar(models * epochs, f"{what}: {models} models × {epochs} epochs", "model-epoch")

    def epochs(self, bar):
        """A `train.fit` progress callback: each call (one epoch of one chunk of models) advances ``bar`` by the
        chunk's number of models and shows their mean loss."""

        def callback(info: dict) -> None:
            bar.update(int(np.size(info["loss"])))
            bar.set_postfix(loss=f"{float(np.mean(info['loss'])):.4f}")

        return callback


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


# ------------------------------------------------------------------------------------------------ moved

def __getattr__(name: str) -> Any:
    """``incomplete_warning`` moved to `fairprune_jax.report.writer` (its user); the old name warns once."""
    if name == "incomplete_warning":
        from fairprune_jax.report import writer  # deferred on purpose: a deprecated alias of a module above this one

        return deprecation.moved(writer.incomplete_warning, "fairprune_jax.studies.spine.incomplete_warning",
                                 "fairprune_jax.report.writer.incomplete_warning")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


check_training = deprecation.moved(checks.check_training, "fairprune_jax.studies.spine.check_training",
                                   "fairprune_jax.studies.checks.check_training")
check_sparsities = deprecation.moved(checks.check_sparsities, "fairprune_jax.studies.spine.check_sparsities",
                                     "fairprune_jax.studies.checks.check_sparsities")
check_batch_sizes = deprecation.moved(checks.check_batch_sizes, "fairprune_jax.studies.spine.check_batch_sizes",
                                      "fairprune_jax.studies.checks.check_batch_sizes")
