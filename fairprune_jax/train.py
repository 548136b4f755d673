"""Training many models as one compiled program: a pure `train_step`, vmapped over models, scanned over batches.

Layout. A population of models carries a leading axis on every tree (variables `[S, ...]`, masks `[S, ...]`,
optimizer state `[S, ...]`). One jitted function trains the population for ONE epoch: it `vmap`s the per-model
epoch, which is a `lax.scan` over the batches of that model's own permutation of the (on-device, unbatched)
training set. The epoch loop is a Python loop over calls of that one compiled function (so progress and
per-epoch losses can be reported); large populations are trained in chunks of `chunk` models, every chunk the
same shape (the last one padded by repeating its final model and the padding discarded), so one compile serves
all chunks.

Keys, batches and masks: one model's step and epoch are `fairprune_jax.train_step` (pure functions; its module
doc says how keys are folded by purpose and how masks keep pruned weights and their optimizer state at zero).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.sharding import Mesh

from fairprune_jax import evaluate, memory, population, sharding
from fairprune_jax import progress as progress_lib
from fairprune_jax.data import device_images
from fairprune_jax.train_config import (AUGMENTATIONS, TrainConfig, check_keep_epochs, freeze,  # noqa: F401
                                        make_tx, read_config)
from fairprune_jax.models import ModelSpec, path_str
from fairprune_jax.validation import check_images, check_labels

PyTree = Any
Variables = dict[str, Any]

from fairprune_jax.train_step import (  # noqa: F401 - re-exported: train.<name> stays the public API
    KEY_PURPOSES, TrainState, seed_keys, as_keys, purpose_key, flip_crop, mask_tree, mask_opt_state, init_state, state_variables, train_step, epoch_permutation, train_epoch)

def shared_order_group(data_keys: jax.Array, limit: int | None = None) -> int:
    """The size R of the runs of consecutive models sharing one data key, when every run has the same size
    (the flattened [S, R] populations of `protocols`: the R pruned variants of a seed share its data order);
    1 otherwise. With `limit` (a chunk size), the largest divisor of R that is <= limit, so chunks hold whole
    groups."""
    raw = np.asarray(jax.random.key_data(data_keys)).reshape(int(data_keys.shape[0]), -1)
    n = raw.shape[0]
    starts = np.flatnonzero(np.any(raw[1:] != raw[:-1], axis=1)) + 1
    bounds = np.concatenate([[0], starts, [n]])
    runs = np.diff(bounds)
    r = int(runs[0]) if n and np.all(runs == runs[0]) else 1
    if limit is not None:
        r = max(d for d in range(1, r + 1) if r % d == 0 and d <= max(int(limit), 1))
    return r


def resolve_chunk(n: int, chunk: int | None, param_bytes: int, mesh: Mesh | None = None, group: int = 1) -> int:
    """The number of models trained at once: `chunk` rounded up to whole groups split evenly over the mesh
    (`group` * devices), at most the population; None or 0 chooses it (`sharding.auto_chunk`: on CPU a
    cache-sized chunk, on accelerators the whole population). `param_bytes`: one model's parameter bytes.
    `run_population` then holds the chunk to the memory budget (`fairprune_jax.memory.fit`): an automatic chunk
    is lowered when it does not fit, an explicit one that does not fit is refused."""
    unit = max(int(group), 1) * sharding.size(mesh)
    if not chunk:
        return sharding.auto_chunk(n, param_bytes, mesh, group=group)
    if int(chunk) < 1:
        raise ValueError(f"chunk: need a positive integer, got {chunk}")
    return -(-min(int(chunk), n) // unit) * unit


# ----------------------------------------------------------------------------------------------- populations


@functools.lru_cache(maxsize=64)
def _compiled_epoch(spec: ModelSpec, tx: optax.GradientTransformation, batch_size: int, masked: bool,
                    capture_step: int | None, augment: str = "none", group: int = 1,
                    form: population.Formulation | None = None, mesh: Mesh | None = None) -> Callable:
    """jit of `train_epoch` over the model axis, vectorised by `form` (default `population.choose`; a map over
    the models needs the `mesh` it splits them over); the dataset is shared (unbatched). Cached per setting.

    group > 1: the flat model axis [C] is viewed as [C / group, group] (models sharing a data key are
    consecutive); the outer vectorisation runs over groups, each group's epoch is `train_epoch(shared=True)`."""
    form = population.choose(spec, population.platform_of(mesh)) if form is None else form

    def one(per_model, shared):
        st, m, k, snap = per_model
        epoch, images, labels = shared
        return train_epoch(spec, tx, batch_size, st, m if masked else None, k, epoch, images, labels,
                           capture_step, snap, augment, shared=group > 1)

    over = population.over_models(one, form, mesh)

    def run(state, mask, data_keys, epoch, images, labels, snapshot):
        shared = (epoch, images, labels)
        if group == 1:
            return over((state, mask, data_keys, snapshot), shared)
        split = lambda t: jax.tree.map(lambda x: x.reshape(-1, group, *x.shape[1:]), t)  # noqa: E731
        merge = lambda t: jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), t)  # noqa: E731
        out = over((split(state), split(mask), data_keys[::group], split(snapshot)), shared)
        return merge(out)

    return jax.jit(run, donate_argnums=(0, 6))


@functools.lru_cache(maxsize=64)
def _compiled_init(spec: ModelSpec, tx: optax.GradientTransformation, masked: bool) -> Callable:
    def run(variables, mask):
        return jax.vmap(lambda v, m: init_state(tx, v, m if masked else None))(variables, mask)

    return jax.jit(run)


@functools.lru_cache(maxsize=64)
def _compiled_model_init(spec: ModelSpec) -> Callable:
    return jax.jit(lambda k: spec.init(purpose_key(k, "init")))


def init_population(spec: ModelSpec, keys: Any) -> Variables:
    """Variables [S, ...] of a population, model s initialised from `purpose_key(keys[s], "init")`.

    One compiled single-model init called per key (compiling the random initialisers is the slow part, and
    this way it happens once per model whatever S is), stacked on the host.
    """
    if isinstance(keys, jax.core.Tracer):  # traced (jit, eval_shape): the vmapped init, same values
        return jax.vmap(lambda k: spec.init(purpose_key(k, "init")))(keys)
    fn = _compiled_model_init(spec)
    parts = [jax.device_get(fn(k)) for k in as_keys(keys)]
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *parts)


def _check_population(name: str, tree: PyTree, like: PyTree, n: int) -> None:
    """ValueError unless `tree` has the structure of `like` (one model) with a leading axis of size n."""
    t_leaves, t_def = jax.tree_util.tree_flatten_with_path(tree)
    l_leaves, l_def = jax.tree_util.tree_flatten_with_path(like)
    if t_def != l_def:
        t_paths = {path_str(p) for p, _ in t_leaves}
        l_paths = {path_str(p) for p, _ in l_leaves}
        diff = sorted(t_paths ^ l_paths)
        raise ValueError(f"{name}: tree structure differs from the model's params"
                         + (f" at {diff[0]!r}" if diff else f" ({t_def} vs {l_def})"))
    for (p, x), (_, y) in zip(t_leaves, l_leaves):
        if tuple(x.shape) != (n, *y.shape):
            raise ValueError(f"{name}: leaf {path_str(p)!r} has shape {tuple(x.shape)}, expected {(n, *y.shape)}")


def param_bytes(params: PyTree, n: int = 1) -> int:
    """Bytes of one model's parameters in a population tree with `n` models on its leading axis."""
    return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)) // max(n, 1)


def _take(tree: PyTree, idx: np.ndarray) -> PyTree:
    return jax.tree.map(lambda x: x[idx], tree)


def _fitting_chunk(n: int, chunk: int | None, default: int, group: int, variables: Variables, data_keys: jax.Array,
                   images: Any, labels: jax.Array, init_fn: Callable, epoch_fn: Callable, *, masked: bool,
                   snapshot: bool, batch_size: int, mesh: Mesh | None) -> int:
    """`run_population`'s chunk under the memory budget (`memory.fit`): the need of a chunk of c models is its
    compiled epoch program's (the one the loop then runs) plus the copy of its variables the loop keeps."""
    resident = 0 if mesh is not None else memory.tree_bytes((images, labels))  # the caller's training set
    model_sharding = None if mesh is None else sharding.model_sharding(mesh)
    one_model = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], x.dtype), variables)
    one_mask = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.bool_), one_model["params"]) \
        if masked else None

    def need_at(c_: int) -> int | None:
        lead = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: jax.ShapeDtypeStruct((c_,) + tuple(x.shape), x.dtype, sharding=model_sharding), tree)
        v_c, m_c = lead(one_model), lead(one_mask)
        # the state as the loop's init_fn places it (XLA replicates some leaves), so the program is the one it runs
        state = jax.eval_shape(init_fn, v_c, m_c) if mesh is None else jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
            init_fn.lower(v_c, m_c).compile().out_info)
        snap = state_variables(state) if snapshot else None
        keys_c = jax.ShapeDtypeStruct((c_,), data_keys.dtype, sharding=model_sharding)
        args = (state, m_c, keys_c, jax.ShapeDtypeStruct((), jnp.int32), images, labels, snap)
        program = memory.program_need(epoch_fn.lower(*args), resident=resident, mesh=mesh)
        return None if program is None else program + memory.tree_bytes(v_c)

    key = lambda c_: (epoch_fn, init_fn, c_, memory.signature(one_model, images, labels), mesh, resident)  # noqa
    return memory.fit(lambda c_, _: memory.remembered(key(c_), lambda: need_at(c_)), what=f"training {n} models",
                      n_models=n, chunk=chunk, default_chunk=default, unit=group * sharding.size(mesh),
                      batch=batch_size, mesh=mesh, names=("chunk", "tcfg.batch_size")).chunk


def run_population(spec: ModelSpec, tcfg: Any, keys: jax.Array, images: jax.Array, labels: jax.Array, *,
                   variables: Variables, masks: PyTree | None = None, chunk: int | None = None,
                   capture_step: int | None = None,
                   between_epochs: Callable[[int, TrainState, PyTree, np.ndarray], tuple[TrainState, PyTree]]
                   | None = None,
                   progress: progress_lib.ProgressArg = True, mesh: Mesh | None = None, fuse: bool = False,
                   keep_epochs: tuple[int, ...] = (),
                   ) -> tuple[Variables, np.ndarray, PyTree | None, Variables | None, dict[int, Variables]]:
    """Train a population (all trees with leading axis S) and return (variables, losses [S, E], masks, snapshot).

    `between_epochs(epoch, state, mask, idx) -> (state, mask)` runs (on one chunk, from Python) before every
    epoch; GMP uses it to prune. `state` and `mask` are the chunk's (leading axis = chunk size), `idx` [chunk]
    the population index of each of its models (padding repeats the last index). When the mask changes, apply
    it to the state with `remask` (weights and optimizer state).
    `mesh` (`sharding.seed_mesh()`): each chunk's models are spread over the mesh's `seed` axis (the chunk is
    rounded up to a multiple of the device count), the training set is replicated; results are unchanged.
    `fuse`: runs of R consecutive models sharing one data key (`shared_order_group`) are trained with
    `train_epoch(shared=True)`, their batch gathered once and their first layer one wide GEMM; chunks then hold
    whole groups (a chunk smaller than R uses a divisor of R). Results equal the unfused ones up to the order of
    float sums. Off by default: on CPU, XLA lays the wide weight gradient out as [in, R*out] and copies it back
    to [R, in, out] every step, which ate the GEMM gain in the measurements of benchmarks/bench_sweep.py.
    `keep_epochs`: epoch counts e (1 <= e <= epochs) after which the variables are also returned, as the fifth
    output {e: variables [S, ...]} (host copies); one run of E epochs then gives the e-epoch runs too (the data
    order of epoch e does not depend on the number of epochs; the learning rate does unless it is constant).
    `chunk` None chooses it (`resolve_chunk` under the memory budget); `progress` as in `fit`.
    """
    cfg = read_config(tcfg)
    tx, _ = make_tx(tcfg, int(images.shape[0]))
    keep_at = check_keep_epochs(keep_epochs, cfg.epochs)
    n = int(keys.shape[0])
    if chunk is not None and (isinstance(chunk, bool) or int(chunk) < 1):
        raise ValueError(f"chunk: need a positive integer or None (automatic), got {chunk}")
    progress_lib.check(progress)
    data_keys = jax.vmap(lambda k: purpose_key(k, "data"))(keys)
    group = shared_order_group(data_keys, limit=chunk or n) if fuse else 1
    form = population.choose(spec, population.platform_of(mesh))
    map_default = None
    if form.vectorise == "map":  # no model depends on its neighbours: no padding beyond the devices' share
        mesh = population.map_mesh(mesh, n)
        map_default = population.map_chunk(n, param_bytes(variables["params"], n), mesh, group)
    masked = masks is not None or between_epochs is not None
    init_fn = _compiled_init(spec, tx, masked)
    epoch_fn = _compiled_epoch(spec, tx, cfg.batch_size, masked, capture_step, cfg.augment, group, form,
                               mesh if form.vectorise == "map" else None)
    images, labels = sharding.replicate((images, labels), mesh)
    default = resolve_chunk(n, map_default, param_bytes(variables["params"], n), mesh, group)
    chunk = _fitting_chunk(n, chunk, default, group, variables, data_keys, images, labels, init_fn, epoch_fn,
                           masked=masked, snapshot=capture_step is not None, batch_size=cfg.batch_size, mesh=mesh)
    n_chunks = -(-n // chunk)
    whole = n_chunks == 1 and chunk == n  # one chunk, no padding: use the trees as they are

    outs, losses, out_masks, snaps = [], [], [], []
    at_epochs: dict[int, list[Variables]] = {e: [] for e in keep_at}
    with progress_lib.Reporter(progress, total=n_chunks * cfg.epochs, desc=f"fit {n} models", unit="epoch") as rep:
        for c in range(n_chunks):
            idx = np.minimum(np.arange(c * chunk, (c + 1) * chunk), n - 1)  # pad by repeating the last model
            v_c = variables if whole else _take(variables, idx)
            m_c = (masks if whole else _take(masks, idx)) if masks is not None else (
                jax.tree.map(lambda p: jnp.ones(p.shape, jnp.bool_), v_c["params"]) if masked else None)
            k_c = data_keys[idx]
            v_c, m_c, k_c = sharding.shard_models((v_c, m_c, k_c), mesh)
            state = init_fn(v_c, m_c)
            snap = state_variables(state) if capture_step is not None else None
            if snap is not None:
                snap = jax.tree.map(jnp.copy, snap)
            chunk_losses = []
            keep = slice(0, min(chunk, n - c * chunk))  # the chunk's real models (padding dropped)
            first, last = c * chunk + 1, c * chunk + keep.stop  # 1-based population indices, for progress
            rep.note(models=progress_lib.span(first, last, n), epoch=f"1/{cfg.epochs}")
            for e in range(cfg.epochs):
                if between_epochs is not None:
                    state, m_c = between_epochs(e, state, m_c, idx)
                state, loss, snap = epoch_fn(state, m_c, k_c, jnp.int32(e), images, labels, snap)
                chunk_losses.append(loss)
                if e + 1 in at_epochs:  # a host copy: the next epoch donates these buffers
                    kept = sharding.gather(state_variables(state))
                    at_epochs[e + 1].append(jax.tree.map(lambda x: np.array(x[keep]), kept))
                if rep.active:
                    loss_c = sharding.to_host(loss)[keep]
                    rep.step(1, {"chunk": c + 1, "chunks": n_chunks, "epoch": e + 1, "epochs": cfg.epochs,
                                 "models": (first, last), "n_models": n, "loss": loss_c},
                             models=progress_lib.span(first, last, n), epoch=f"{e + 1}/{cfg.epochs}",
                             loss=f"{float(np.mean(loss_c)):.4f}")
            state, m_c, snap = sharding.gather((state, m_c, snap))  # multi-host: whole results on every host
            outs.append(jax.tree.map(lambda x: x[keep], state_variables(state)))
            losses.append(np.stack([sharding.to_host(x) for x in chunk_losses], axis=-1)[keep] if chunk_losses
                          else np.zeros((keep.stop, 0), np.float32))
            if masked:
                out_masks.append(jax.tree.map(lambda x: x[keep], m_c))
            if snap is not None:
                snaps.append(jax.tree.map(lambda x: x[keep], snap))

    cat = lambda parts: jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)  # noqa: E731
    out_vars = outs[0] if n_chunks == 1 else cat(outs)
    out_mask = None if not masked else (out_masks[0] if n_chunks == 1 else cat(out_masks))
    snapshot = None if not snaps else (snaps[0] if n_chunks == 1 else cat(snaps))
    kept = {e: jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts) for e, parts in at_epochs.items()}
    return out_vars, np.concatenate(losses, axis=0), out_mask, snapshot, kept


def remask(tx: optax.GradientTransformation, state: TrainState, mask: PyTree) -> TrainState:
    """Apply a new mask to the state of ONE model: zero pruned weights and their optimizer state."""
    return state._replace(params=mask_tree(state.params, mask), opt_state=mask_opt_state(tx, state.opt_state, mask))


@functools.lru_cache(maxsize=64)
def _compiled_remask(tx: optax.GradientTransformation) -> Callable:
    return jax.jit(jax.vmap(lambda st, m: remask(tx, st, m)))


def remask_population(tx: optax.GradientTransformation, state: TrainState, mask: PyTree) -> TrainState:
    """`remask` over a population (leading model axis on state and mask), jitted."""
    return _compiled_remask(tx)(state, mask)


def fit(spec: ModelSpec, tcfg: Any, seed_keys: Any, x_train: Any, y_train: Any, *, masks: PyTree | None = None,
        init_variables: Variables | None = None, chunk: int | None = None,
        progress: progress_lib.ProgressArg = True, capture_step: int | None = None,
        mesh: Mesh | None = None, fuse: bool = False, keep_epochs: tuple[int, ...] = (),
        ) -> tuple[Variables, dict[str, Any]]:
    """Train S models (one per key) as one compiled program; returns (variables [S, ...], history).

    Config fields read from `tcfg` (ml_collections ConfigDict or dict):
      tcfg.epochs (int), tcfg.batch_size (int, default 128; the last partial batch of an epoch is dropped),
      tcfg.optimizer: name ("sgd" | "adam"), lr, momentum, nesterov, weight_decay (coupled L2), b1, b2, eps,
      tcfg.schedule (optional): name ("constant" | "step" | "cosine"), boundaries (epochs), factor,
                                warmup_epochs, end_value.
      tcfg.augment (optional): "none" (default) or "flip_crop" (random flip + pad-4 crop, CIFAR).
    seed_keys: typed keys [S] (or raw uint32 [S, 2], or int seeds [S]); init from `purpose_key(k, "init")`
        unless `init_variables` [S, ...] is given, data order from `purpose_key(k, "data")`.
    x_train, y_train: the whole training set (float32 [N, ...] normalised, or `data.Pixels`: uint8 normalised
        batch by batch inside the step, bit-identical and 4x smaller; int labels [N] or {0,1} [N, A]), put on the
        device once and shared by all models.
    masks: bool trees [S, ...] shaped like params; pruned weights stay exactly zero.
    chunk: train at most this many models at a time (one compiled function for all chunks); None: automatic
        (`resolve_chunk`: on CPU a few models per device, so their weights stay in cache; elsewhere all), lowered
        when it does not fit the memory budget (`fairprune_jax.memory`); an explicit chunk that does not fit is
        refused before anything runs.
    mesh: spread each chunk's models over the devices of a `sharding.seed_mesh()` (same results).
    fuse: train consecutive keys that are equal (the variants of one seed) as one shared-batch group
        (`run_population`; off by default, see there); same results up to float-sum order.
    progress: True (default) = a bar advanced after every epoch of every chunk, e.g. "models 1-16/48, epoch 2/3,
        loss 0.41", shown once the call takes a few seconds; False = quiet; a callable is called instead after
        every epoch of every chunk with {"chunk", "chunks", "epoch", "epochs", "models", "n_models", "loss"}
        (chunk and epoch 1-based, epoch = the one just finished; `fairprune_jax.progress`).
    capture_step: also return, as history["snapshot"], the variables right after this global step (lottery
        rewinding to step k; 0 = the initial variables).
    keep_epochs: epoch counts e after which the variables are also kept (`run_population`), returned as
        history["at_epochs"] {e: variables [S, ...]}; with a constant learning rate these are the e-epoch runs.
    history: {"loss": float32 [S, epochs] per-epoch mean training loss, "snapshot": variables or None,
        "at_epochs": {e: variables} (empty without keep_epochs)}.

    Determinism: the same keys, config and models per device give the same bits (the automatic chunk keeps that
    number whatever the device count, so results do not depend on it). A model
    trained alone and the same model trained in a chunk of several run different compiled programs, so they agree
    to float tolerance at first (about 1e-7 after an epoch of the MLPs; bit for bit only where XLA happens to emit
    the same arithmetic) and drift apart over long training like any chaotic trajectory (measured sizes:
    docs/library.md, Determinism, from benchmarks/bench_drift.py). `chunk=1` trains every model exactly as it
    trains alone.
    """
    keys = as_keys(seed_keys)
    n = int(keys.shape[0])
    check_images(x_train, spec.input_shape, name="x_train")
    images = device_images(x_train)
    if images.dtype != jnp.float32:
        raise ValueError(f"x_train: dtype {images.dtype}; expected normalised float32")
    check_labels(y_train, spec.num_outputs, n=int(images.shape[0]), multilabel=spec.multilabel, name="y_train")
    labels = jnp.asarray(y_train)
    make_tx(tcfg, int(images.shape[0]))  # validates the config
    one = jax.eval_shape(spec.init, jax.random.key(0))
    if masks is not None:
        try:
            _check_population("masks", masks, one["params"], n)
        except ValueError as e:  # the common case: a mask population [S, M, ...] over dense models [S]
            raise ValueError(f"{e} (one mask per key; to fine-tune masks [S, *lead] of dense models [S] use "
                             f"protocols.finetune)") from None
        bad = [leaf.dtype for leaf in jax.tree.leaves(masks) if leaf.dtype != jnp.bool_]
        if bad:
            raise ValueError(f"masks: leaves must be bool, got {bad[0]}")
    if capture_step is not None and capture_step < 0:
        raise ValueError(f"capture_step: need a non-negative step, got {capture_step}")
    if init_variables is None:
        variables = init_population(spec, keys)
    else:
        _check_population("init_variables", init_variables, one, n)
        variables = init_variables
    out, losses, _, snapshot, kept = run_population(
        spec, tcfg, keys, images, labels, variables=variables, masks=masks, mesh=mesh, fuse=fuse, chunk=chunk,
        capture_step=capture_step, progress=progress, keep_epochs=keep_epochs)
    return out, {"loss": losses, "snapshot": snapshot, "at_epochs": kept}



def predict(spec: ModelSpec, variables: Variables, images: Any, *, batch_size: int | None = None,
            progress: progress_lib.ProgressArg = True) -> jax.Array:
    """Eval-mode logits [*V, N, K] of a population on `images`: `evaluate.population_logits` (chunk and batch
    from the memory budget; `batch_size` None = chosen there), as a jax array."""
    return jnp.asarray(evaluate.population_logits(spec, variables, images, batch_size=batch_size, progress=progress))
