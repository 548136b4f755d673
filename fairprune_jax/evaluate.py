"""Per-class evaluation of whole model populations: confusion counts for [seed, criterion, sparsity, ...] at once.

Why: recall distortion (docs/methods.md §7) needs per-class recall of every pruned network and of its dense
counterpart, on the full test split, in eval mode. A sweep has hundreds of networks; evaluating them one by one
is dominated by Python dispatch on accelerators, so the population is evaluated by one compiled function.

Shapes and broadcasting
-----------------------
- ``variables``: the model's variables with any number of leading axes ``V`` on every leaf, e.g. ``[S]``.
- ``masks`` (optional): a tree with the structure of ``variables["params"]``, bool leaves, leading axes
  ``L`` with ``V`` a prefix of ``L`` (equal, or more axes: dense ``[S]`` variables with ``[S, M, P]`` masks are
  broadcast over ``M, P`` without being copied). Pruned weights are zeroed, ``jnp.where(mask, w, 0)``.
- Leading axes are flattened to one model axis; ``chunk`` models are evaluated at a time by one compiled
  function (the last chunk is padded by repeating a model, so nothing recompiles), and the test examples are
  scanned in batches of ``batch_size``, so memory is O(chunk * (params + batch_size * width)).
- ``chunk`` and ``batch_size`` None (or 0) are chosen by the memory budget (`fairprune_jax.memory`): the defaults
  below (`DEFAULT_CHUNK`, `DEFAULT_BATCH`; all models and `LOGITS_BATCH` for `population_logits`) when they fit,
  smaller ones when they do not; explicit values that do not fit are refused before anything runs.

Counts are exact integers (one-hot matmuls in float32 are exact per batch, < 2**24, then accumulated in int32).
The softmax summaries (mean max-softmax and the fraction with max-softmax < ``uncertain_below``, docs/methods.md §10)
come from the same forward pass.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jax.sharding import Mesh

from fairprune_jax import memory, population, sharding
from fairprune_jax import progress as progress_lib
from fairprune_jax.models import ModelSpec
from fairprune_jax.models.layers import conv_lowering
from fairprune_jax.validation import check_bool_leaves, check_images, check_labels, leading_shape

PyTree = Any

DEFAULT_CHUNK = 64  # models per compiled call of evaluate_population, when the memory budget allows
DEFAULT_BATCH = 2000  # examples per scan step of evaluate_population
LOGITS_BATCH = 10000  # examples per call of population_logits

TABLE_COLUMNS = ("dataset", "model", "criterion", "seed", "level", "sparsity_index", "requested_sparsity",
                 "actual_sparsity", "class", "n", "correct", "recall", "accuracy")


class EvalResult(NamedTuple):
    """Population evaluation: counts [..., K, K] (rows true, cols predicted) and softmax summaries [...]."""

    counts: np.ndarray  # int64 [..., K, K]
    mean_confidence: np.ndarray  # float64 [...]: mean over examples of max softmax
    frac_uncertain: np.ndarray  # float64 [...]: fraction of examples with max softmax < uncertain_below


# ------------------------------------------------------------------------------------------- validation


def _apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """Zero pruned weights (the masks.apply convention), mask leaves first so the structures must agree."""
    return jax.tree.map(lambda m, p: jnp.where(m, p, jnp.zeros((), p.dtype)), mask, params)


def _population(spec: ModelSpec, variables: PyTree, masks: PyTree | None
                ) -> tuple[PyTree, PyTree | None, tuple[int, ...], tuple[int, ...]]:
    """The variables' collections the model uses, the masks in the params' containers, and both leading axes
    (V, L; L = V without masks), checked: V must be a prefix of L."""
    base = jax.eval_shape(spec.init, jax.random.key(0))
    missing = sorted(set(base) - set(variables))
    if missing:
        raise ValueError(f"variables: missing collection(s) {missing} of model {spec.name!r}")
    variables = {col: variables[col] for col in base}  # extra collections are not used by apply
    var_lead = leading_shape(variables, base, "variables")
    if masks is None:
        return variables, None, var_lead, var_lead
    check_bool_leaves(masks, "masks")
    mask_lead = leading_shape(masks, base["params"], "masks")
    # same key paths; adopt the params' container types (dict vs FrozenDict) so tree maps line up
    masks = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(variables["params"]), jax.tree.leaves(masks))
    if mask_lead[:len(var_lead)] != var_lead:
        raise ValueError(f"masks: leading axes {mask_lead} do not start with the variables' {var_lead}")
    return variables, masks, var_lead, mask_lead


def _check_sizes(chunk: int | None, batch_size: int | None) -> None:
    for name, v in (("chunk", chunk), ("batch_size", batch_size)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 0):
            raise ValueError(f"{name}: need a positive integer, or None/0 to fit the memory budget, got {v!r}")


# ----------------------------------------------------------------------------------------- compiled core


@functools.partial(jax.jit, static_argnames=("spec", "num_classes", "ratio", "uncertain_below", "var_lead",
                                             "mask_lead", "mesh", "form"))
def _eval_chunk(variables: PyTree, masks: PyTree | None, idx: jax.Array, xb: jax.Array, yb: jax.Array,
                valid: jax.Array, *, spec: ModelSpec, num_classes: int, ratio: int, uncertain_below: float,
                var_lead: tuple[int, ...], mask_lead: tuple[int, ...], mesh: Mesh | None = None,
                form: population.Formulation = population.Formulation("vmap", "xla")):
    """Counts [C, K, K], confidence sums [C] and uncertain counts [C] for the models `idx` of the population.

    `variables` and `masks` are the whole population (leading axes `var_lead` / `mask_lead`); the chunk is
    gathered inside the compiled function so nothing population-sized is copied per call. `form`
    (`population.choose`): "vmap" evaluates the chunk's models together on every batch, "map" evaluates one
    model after the other over all batches.
    """
    def gather(leaf: jax.Array, lead: tuple[int, ...], rows: jax.Array) -> jax.Array:
        flat = leaf.reshape((math.prod(lead),) + leaf.shape[len(lead):])
        return flat[rows]

    var_rows = idx // ratio
    chunk_vars = jax.tree.map(lambda v: gather(v, var_lead, var_rows), variables)
    if masks is not None:
        chunk_masks = jax.tree.map(lambda m: gather(m, mask_lead, idx), masks)
        chunk_vars = dict(chunk_vars)
        chunk_vars["params"] = _apply_mask(chunk_vars["params"], chunk_masks)
    if mesh is not None:  # the chunk's models spread over the mesh's seed axis; everything after follows
        chunk_vars = jax.lax.with_sharding_constraint(chunk_vars, sharding.model_sharding(mesh))
    k = num_classes

    def forward(v: PyTree, x: jax.Array) -> jax.Array:
        logits, _ = spec.apply(v, x, train=False)
        return logits

    def summaries(logits_of, c: int, batches):
        """Scan over the batches; `logits_of(x)` gives the logits [c, B, K'] of the c models evaluated."""
        def step(carry, batch):
            counts, conf_sum, n_unc = carry
            x, y, w = batch
            logits = logits_of(x).astype(jnp.float32)  # [C, B, K]
            pred = jnp.argmax(logits, axis=-1)
            conf = jnp.exp(jnp.max(logits, axis=-1) - jax.nn.logsumexp(logits, axis=-1))  # max softmax [C, B]
            wf = w.astype(jnp.float32)
            y_oh = jax.nn.one_hot(y, k, dtype=jnp.float32) * wf[:, None]  # [B, K]
            p_oh = jax.nn.one_hot(pred, k, dtype=jnp.float32)  # [C, B, K]
            cm = jnp.einsum("bk,cbj->ckj", y_oh, p_oh, precision=jax.lax.Precision.HIGHEST)
            counts = counts + jnp.round(cm).astype(jnp.int32)
            conf_sum = conf_sum + jnp.sum(conf * wf, axis=-1)
            n_unc = n_unc + jnp.sum((conf < uncertain_below) & w, axis=-1).astype(jnp.int32)
            return (counts, conf_sum, n_unc), None

        init = (jnp.zeros((c, k, k), jnp.int32), jnp.zeros((c,), jnp.float32), jnp.zeros((c,), jnp.int32))
        return jax.lax.scan(step, init, batches)[0]

    if form.vectorise == "vmap":
        with conv_lowering(form.conv):
            return summaries(lambda x: jax.vmap(forward, in_axes=(0, None))(chunk_vars, x), idx.shape[0],
                             (xb, yb, valid))

    def one(v: PyTree, batches) -> tuple[jax.Array, jax.Array, jax.Array]:
        return jax.tree.map(lambda a: a[0], summaries(lambda x: forward(v, x)[None], 1, batches))

    # each model's forward pass runs on micro-batches whose largest intermediate fits population.EVAL_BYTES
    micro = population.eval_microbatch(spec, form, xb.shape[1])
    rebatch = lambda a: a.reshape((-1, micro) + a.shape[2:])  # noqa: E731
    return population.over_models(one, form, mesh)(chunk_vars, (rebatch(xb), rebatch(yb), rebatch(valid)))


@functools.partial(jax.jit, static_argnames=("pad", "nb"))
def _batch_examples(images: jax.Array, labels: jax.Array, pad: int, nb: int):
    """Pad the split to nb * B examples and reshape to [nb, B, ...] with a validity flag."""
    n = images.shape[0]
    valid = jnp.arange(n + pad) < n
    images = jnp.pad(images, [(0, pad)] + [(0, 0)] * (images.ndim - 1))
    labels = jnp.pad(labels, (0, pad))
    rs = lambda a: a.reshape((nb, -1) + a.shape[1:])
    return rs(images), rs(labels), rs(valid)


# ------------------------------------------------------------------------------------------------ public


def _checked_images(spec: ModelSpec, variables: Any, images: Any) -> jax.Array:
    """The checks every population entry shares: a variables dict with 'params', images [N, *input_shape]."""
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError("variables: expected a dict with a 'params' collection")
    check_images(images, spec.input_shape, name="images")
    return jnp.asarray(images)


def evaluate_population(spec: ModelSpec, variables: PyTree, images: Any, labels: Any, *, masks: PyTree | None = None,
                        num_classes: int | None = None, chunk: int | None = None, batch_size: int | None = None,
                        uncertain_below: float = 0.9, mesh: Mesh | None = None,
                        progress: progress_lib.ProgressArg = True) -> EvalResult:
    """Confusion counts and softmax summaries for every model of a population, in one call.

    Args:
      spec: the model (softmax head); `spec.apply(variables, x, train=False)` gives logits.
      variables: `{"params": ..., ...}` with leading axes V on every leaf (V may be empty: one model).
      images: float32 [N, ...] (already normalised); labels: int [N] in [0, num_classes).
      masks: bool tree like `variables["params"]` with leading axes L, V a prefix of L; None = dense.
      num_classes: K (default `spec.num_outputs`; must be >= it).
      chunk: models per compiled call; batch_size: examples per scan step. None (or 0) = chosen by the memory
        budget (`fairprune_jax.memory`): `DEFAULT_CHUNK` and `DEFAULT_BATCH` when they fit, smaller when not;
        explicit values that do not fit are refused (ValueError) before anything runs.
      mesh: a `sharding.seed_mesh()`: each chunk's models are spread over its devices (chunk rounded up to a
        multiple of the device count), the test split and population replicated; results are unchanged.
      progress: True = a bar per chunk ("models 65-128/960") once the call takes a few seconds, False = quiet, or
        a callable given {"chunk", "chunks", "models", "n_models"} (1-based) after every chunk.
    Returns:
      EvalResult with counts [*L, K, K] (L = V without masks).
    """
    if spec.multilabel:
        raise ValueError(f"spec: model {spec.name!r} has a multi-label head; confusion counts need a softmax head")
    k = int(spec.num_outputs if num_classes is None else num_classes)
    if k < spec.num_outputs:
        raise ValueError(f"num_classes: {k} is smaller than the model's {spec.num_outputs} outputs")
    _check_sizes(chunk, batch_size)
    progress_lib.check(progress)
    images = _checked_images(spec, variables, images)
    check_labels(labels, k, n=images.shape[0], name="labels")
    labels_np = np.asarray(labels)
    n = images.shape[0]
    if n == 0:
        raise ValueError("images: the test split is empty")
    variables, masks, var_lead, mask_lead = _population(spec, variables, masks)
    n_models = math.prod(mask_lead)
    if n_models == 0:
        return EvalResult(np.zeros(mask_lead + (k, k), np.int64), np.zeros(mask_lead), np.zeros(mask_lead))
    ratio = n_models // math.prod(var_lead)
    form = population.choose(spec, population.platform_of(mesh))
    if form.vectorise == "map":  # a population smaller than the mesh uses as many devices as it has models
        mesh = population.map_mesh(mesh, n_models)
    if mesh is not None:
        variables, masks = sharding.replicate((variables, masks), mesh)
    resident = 0 if mesh is not None else memory.tree_bytes((variables, masks))
    rep_sharding = None if mesh is None else sharding.replicated(mesh)
    statics = dict(spec=spec, num_classes=k, ratio=ratio, uncertain_below=float(uncertain_below), var_lead=var_lead,
                   mask_lead=mask_lead, mesh=mesh, form=form)

    def need_at(c_: int, b_: int | None) -> int | None:
        nb_ = -(-n // b_)
        ex = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rep_sharding)  # noqa: E731
        args = (variables, masks, jax.ShapeDtypeStruct((c_,), jnp.int32),
                ex((nb_, b_) + images.shape[1:], images.dtype), ex((nb_, b_), jnp.int32), ex((nb_, b_), jnp.bool_))
        return memory.remembered(
            ("eval", tuple(sorted(statics.items(), key=lambda kv: kv[0])), memory.signature(*args), resident),
            lambda: memory.program_need(_eval_chunk.lower(*args, **statics), resident=resident, mesh=mesh))

    fit = memory.fit(need_at, what="evaluate_population", n_models=n_models, chunk=chunk,
                     default_chunk=sharding.round_up(min(DEFAULT_CHUNK, n_models), mesh), unit=sharding.size(mesh),
                     batch=batch_size, default_batch=DEFAULT_BATCH, n_examples=n, mesh=mesh)
    c, bs = fit.chunk, fit.batch

    nb = -(-n // bs)
    xb, yb, valid = _batch_examples(images, jnp.asarray(labels_np, jnp.int32), pad=nb * bs - n, nb=nb)
    if mesh is not None:
        xb, yb, valid = sharding.replicate((xb, yb, valid), mesh)
    counts, conf, unc = [], [], []
    n_chunks = -(-n_models // c)
    with progress_lib.Reporter(progress, total=n_models, desc=f"evaluate {n_models} models", unit="model") as rep:
        for i, start in enumerate(range(0, n_models, c)):
            rep.note(models=progress_lib.span(start + 1, min(start + c, n_models), n_models))
            idx = np.minimum(np.arange(start, start + c), n_models - 1).astype(np.int32)
            out = _eval_chunk(variables, masks, jnp.asarray(idx), xb, yb, valid, **statics)
            keep = min(c, n_models - start)
            counts.append(sharding.to_host(out[0])[:keep])
            conf.append(sharding.to_host(out[1])[:keep])
            unc.append(sharding.to_host(out[2])[:keep])
            rep.step(keep, {"chunk": i + 1, "chunks": n_chunks, "models": (start + 1, start + keep),
                            "n_models": n_models}, models=progress_lib.span(start + 1, start + keep, n_models))
    counts_a = np.concatenate(counts).astype(np.int64).reshape(mask_lead + (k, k))
    mean_conf = (np.concatenate(conf).astype(np.float64) / n).reshape(mask_lead)
    frac_unc = (np.concatenate(unc).astype(np.float64) / n).reshape(mask_lead)
    return EvalResult(counts_a, mean_conf, frac_unc)


def confusion_counts(spec: ModelSpec, variables: PyTree, images: Any, labels: Any, *, masks: PyTree | None = None,
                     num_classes: int | None = None, chunk: int | None = None, batch_size: int | None = None,
                     mesh: Mesh | None = None, progress: progress_lib.ProgressArg = True) -> np.ndarray:
    """Confusion counts [..., K, K] (rows true class, cols predicted) for every model; see `evaluate_population`."""
    return evaluate_population(spec, variables, images, labels, masks=masks, num_classes=num_classes, chunk=chunk,
                               batch_size=batch_size, mesh=mesh, progress=progress).counts


def class_counts(counts: np.ndarray) -> np.ndarray:
    """n_c [..., K]: test examples per true class."""
    return np.asarray(counts).sum(axis=-1)


def recall(counts: np.ndarray) -> np.ndarray:
    """r_c = correct_c / n_c [..., K]; NaN for a class absent from the split (n_c = 0)."""
    counts = np.asarray(counts)
    n = counts.sum(axis=-1)
    correct = np.diagonal(counts, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, correct / np.where(n > 0, n, 1), np.nan)


def accuracy(counts: np.ndarray) -> np.ndarray:
    """a = Σ_c correct_c / N [...]."""
    counts = np.asarray(counts)
    total = counts.sum(axis=(-2, -1))
    correct = np.trace(counts, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.where(total > 0, total, 1), np.nan)


def balanced_accuracy(counts: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in the split [...]."""
    r = recall(counts)
    with np.errstate(invalid="ignore"):
        present = np.isfinite(r)
        return np.where(present.any(-1), np.nansum(r, -1) / np.maximum(present.sum(-1), 1), np.nan)


def _broadcast(name: str, value: Any, shape: tuple[int, ...], to: tuple[int, ...]) -> np.ndarray:
    """`value` broadcast trailing-aligned to the population's `shape` ([P] -> [S, M, P]; a scalar everywhere),
    then reshaped to the table's `to` = (S, M, P)."""
    a = np.asarray(value)
    try:
        return np.broadcast_to(a, shape).reshape(to)
    except ValueError:
        raise ValueError(f"{name}: shape {a.shape} does not broadcast to the population's {shape}") from None


def recall_table(counts: np.ndarray, *, dataset: str, model: str, criteria: Sequence[str], seeds: Sequence[int],
                 requested_sparsity: Any, actual_sparsity: Any, levels: Sequence[int] | None = None,
                 mean_confidence: np.ndarray | None = None, frac_uncertain: np.ndarray | None = None
                 ) -> pd.DataFrame:
    """Tidy table, one row per model x class, from counts [*lead, K, K] of any population layout.

    lead = [S, M, P] (seeds, criteria/mask kinds, sparsities) as `evaluate_population` returns for masks
    [S, M, P]; fewer axes mean 1 criterion / 1 sparsity ([S] dense, [S, M] one iterative level, [] one model);
    more than three are flattened, row-major, into the sparsity index. With ONE criterion the criteria axis may
    be left out: counts [S, P, K, K] with `criteria=[name]` are read as [S, 1, P, K, K].
    Columns: dataset, model, criterion, seed, level, sparsity_index, requested_sparsity, actual_sparsity
    (realised t, read from the mask), class, n, correct, recall (NaN when n = 0), accuracy (and
    mean_confidence / frac_uncertain when given). `requested_sparsity`, `actual_sparsity`, `mean_confidence`,
    `frac_uncertain` broadcast to lead (trailing-aligned, e.g. [P] or lead itself); `levels` [P] defaults to
    the sparsity index.
    """
    counts = np.asarray(counts)
    if counts.ndim < 2 or counts.shape[-1] != counts.shape[-2]:
        raise ValueError(f"counts: expected [..., K, K], got {counts.shape}")
    full = counts.shape[:-2]
    k = counts.shape[-1]
    layout = full[:1] + (1,) + full[1:] if len(criteria) == 1 and len(full) >= 2 and full[1] != 1 else full
    s, m, p = (tuple(layout) + (1, 1, 1))[:2] + (int(np.prod(layout[2:], dtype=np.int64)),)
    counts = counts.reshape(s, m, p, k, k)
    if len(seeds) != s:
        raise ValueError(f"seeds: {len(seeds)} given for {s} seeds in counts")
    if len(criteria) != m:
        raise ValueError(f"criteria: {len(criteria)} given for {m} criteria in counts")
    lead = (s, m, p)
    req = _broadcast("requested_sparsity", requested_sparsity, full, lead).astype(float)
    act = _broadcast("actual_sparsity", actual_sparsity, full, lead).astype(float)
    lv = np.arange(p) if levels is None else np.asarray(levels)
    if lv.shape != (p,):
        raise ValueError(f"levels: expected {p} values, got shape {lv.shape}")

    n = counts.sum(-1)  # [S, M, P, K]
    correct = np.diagonal(counts, axis1=-2, axis2=-1)
    si, mi, pi, ci = np.meshgrid(np.arange(s), np.arange(m), np.arange(p), np.arange(k), indexing="ij")
    cols: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "criterion": np.asarray(list(criteria), dtype=object)[mi.ravel()],
        "seed": np.asarray(list(seeds))[si.ravel()],
        "level": lv[pi.ravel()],
        "sparsity_index": pi.ravel(),
        "requested_sparsity": req[si, mi, pi].ravel(),
        "actual_sparsity": act[si, mi, pi].ravel(),
        "class": ci.ravel(),
        "n": n.ravel().astype(np.int64),
        "correct": correct.ravel().astype(np.int64),
        "recall": recall(counts).ravel(),
        "accuracy": np.repeat(accuracy(counts).ravel(), k),
    }
    if mean_confidence is not None:
        conf = _broadcast("mean_confidence", mean_confidence, full, lead)
        cols["mean_confidence"] = np.repeat(conf.ravel(), k)
    if frac_uncertain is not None:
        unc = _broadcast("frac_uncertain", frac_uncertain, full, lead)
        cols["frac_uncertain"] = np.repeat(unc.ravel(), k)
    return pd.DataFrame(cols)


# ------------------------------------------------------------------------------------------- logits (multi-label)


@functools.partial(jax.jit, static_argnames=("spec", "mesh"))
def _logits_chunk(variables: PyTree, x: jax.Array, *, spec: ModelSpec, mesh: Mesh | None = None) -> jax.Array:
    """Eval-mode logits [C, B, K'] of a chunk of models on one batch (models spread over the mesh when given)."""
    if mesh is not None:
        variables = jax.lax.with_sharding_constraint(variables, sharding.model_sharding(mesh))
    with conv_lowering(population.choose(spec, population.platform_of(mesh)).conv):  # im2col GEMMs on CPU
        return jax.vmap(lambda v: spec.apply(v, x, train=False)[0])(variables).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("spec", "mesh"))
def _masked_logits_chunk(variables: PyTree, masks: PyTree, x: jax.Array, *, spec: ModelSpec,
                         mesh: Mesh | None = None) -> jax.Array:
    """`_logits_chunk` of the chunk's variables with its masks applied (pruned weights zeroed)."""
    variables = dict(variables)
    variables["params"] = jax.vmap(_apply_mask)(variables["params"], masks)
    return _logits_chunk(variables, x, spec=spec, mesh=mesh)


def population_logits(spec: ModelSpec, variables: PyTree, images: Any, *, masks: PyTree | None = None,
                      chunk: int | None = None, batch_size: int | None = None, mesh: Mesh | None = None,
                      progress: progress_lib.ProgressArg = True) -> np.ndarray:
    """Eval-mode logits float32 [*L, N, K'] of every model of a population, on the host: for heads whose outputs
    are used whole (the bias study's sigmoid attributes, the softmax bias metrics, your own analysis).

    `variables` [*V, ...] and `masks` [*L, ...] (optional) broadcast like `evaluate_population`'s (dense [S]
    with masks [S, M, P]; L = V without masks). `chunk` models per compiled call and `batch_size` examples per
    call; None (or 0) = chosen by the memory budget (`fairprune_jax.memory`): all models and `LOGITS_BATCH`
    examples when that fits, smaller when not; explicit values that do not fit are refused before anything
    runs. With a `sharding.seed_mesh()` each chunk's models are spread over its devices (chunk rounded up to the
    device count) and the result is unchanged. `progress` as in `evaluate_population`."""
    _check_sizes(chunk, batch_size)
    progress_lib.check(progress)
    images = _checked_images(spec, variables, images)
    variables, masks, var_lead, mask_lead = _population(spec, variables, masks)
    n, s = int(images.shape[0]), math.prod(mask_lead)
    k = int(spec.num_outputs)
    if s == 0 or n == 0:
        return np.zeros(mask_lead + (n, k), np.float32)
    ratio = s // math.prod(var_lead)
    flat = lambda tree, lead: jax.tree.map(lambda v: v.reshape((-1,) + v.shape[len(lead):]), tree)  # noqa: E731
    variables = flat(variables, var_lead)
    masks = None if masks is None else flat(masks, mask_lead)
    if mesh is not None:
        variables, masks, images = sharding.replicate((variables, masks, images), mesh)
    rep_sharding = None if mesh is None else sharding.replicated(mesh)

    def need_at(c_: int, b_: int | None) -> int | None:
        chunk_of = lambda tree: jax.tree.map(  # noqa: E731
            lambda v: jax.ShapeDtypeStruct((c_,) + v.shape[1:], v.dtype, sharding=rep_sharding), tree)
        x = jax.ShapeDtypeStruct((b_,) + images.shape[1:], images.dtype, sharding=rep_sharding)
        fn, args = ((_logits_chunk, (chunk_of(variables), x)) if masks is None
                    else (_masked_logits_chunk, (chunk_of(variables), chunk_of(masks), x)))
        return memory.remembered(("logits", spec, mesh, memory.signature(*args)),
                                 lambda: memory.program_need(fn.lower(*args, spec=spec, mesh=mesh), mesh=mesh))

    fit = memory.fit(need_at, what="population_logits", n_models=s, chunk=chunk,
                     default_chunk=sharding.round_up(s, mesh), unit=sharding.size(mesh), batch=batch_size,
                     default_batch=LOGITS_BATCH, n_examples=n, mesh=mesh)
    c, bs = fit.chunk, fit.batch
    rows = []
    n_chunks = -(-s // c)
    with progress_lib.Reporter(progress, total=s, desc=f"logits of {s} models", unit="model") as rep:
        for i, start in enumerate(range(0, s, c)):
            rep.note(models=progress_lib.span(start + 1, min(start + c, s), s))
            idx = np.minimum(np.arange(start, start + c), s - 1)
            part = jax.tree.map(lambda v: v[jnp.asarray(idx // ratio)], variables)
            if masks is None:
                call = lambda x: _logits_chunk(part, x, spec=spec, mesh=mesh)  # noqa: E731
            else:
                part_masks = jax.tree.map(lambda m: m[jnp.asarray(idx)], masks)
                call = lambda x: _masked_logits_chunk(part, part_masks, x, spec=spec, mesh=mesh)  # noqa: E731
            out = [sharding.to_host(call(images[j:j + bs])) for j in range(0, n, bs)]
            keep = min(c, s - start)
            rows.append(np.concatenate(out, axis=1)[:keep])
            rep.step(keep, {"chunk": i + 1, "chunks": n_chunks, "models": (start + 1, start + keep),
                            "n_models": s}, models=progress_lib.span(start + 1, start + keep, s))
    return np.concatenate(rows, axis=0).reshape(mask_lead + (n, -1))
