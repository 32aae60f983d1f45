"""The jitted train step shared by every stage (sft_target, sft_draft, sapo).

An *objective* is ``objective(model, batch) -> (loss_sum, token_count, metric_sums)`` over
whatever rows it is given (`dreamr_jax.training.objectives`; the ``(sum, count)`` form of
`dreamr_jax.rl.losses`). The step minimises the global token mean ``Σ loss_sum / Σ count``:

1. The batch (every leaf's leading axis is the row axis ``b``) is split into
   ``micro_batches`` contiguous parts, run one after another under `jax.lax.scan`.
2. Each micro-batch is split again into one slice per data-parallel shard (the product
   ``S`` of the ``batch_axes`` mesh sizes) and the objective is vmapped over the slices,
   giving per-shard sums ``[S]``. The model forward runs under automatic (GSPMD) sharding:
   parameters stay in their logical-axis shardings and XLA inserts the gathers.
3. The per-shard sums are combined with explicit collectives in `jax.shard_map`
   (``psum`` of loss and count, `reduce_metrics` for the metrics); the gradient is that of
   the combined ``loss_sum``.
4. Loss sums, counts and gradients add over micro-batches; the final gradient is
   ``Σ grads / Σ count``, so ``k`` micro-batches give the same update as one batch, up to
   float rounding. A batch with no counted token gives loss 0 and gradient 0, not NaN.

Typical use::

    tx = make_optimizer(cfg.optim)
    state = init_train_state(model, tx)                       # sharded like the params
    step = make_train_step(nnx.graphdef(model), sft_objective, tx, mesh=mesh,
                           learning_rate=make_schedule(cfg.optim), micro_batches=4)
    state, metrics = step(state, prepare_batch(batch, model.cfg))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dreamr_jax.rl.losses import BATCH_AXES, finalize_metrics, merge_metrics, reduce_metrics

Objective = Callable[[nnx.Module, Any], tuple[jax.Array, jax.Array, Mapping[str, jax.Array]]]

# XLA options of the step's compile on CPU meshes: YNNPACK fuses only dots, not reductions
# and elementwise ops, whose own XLA loops run the backward faster (the demo target's SFT
# step: `bench/train.py`, BENCHMARKS.md). Decoding did not gain (the demo's eval stage, one
# run each: 93 s with XLA's defaults, 105 s with this), so only the train step sets it.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}

# Metric names the step reports itself; an objective's finalized metrics may not reuse them.
STEP_METRICS = ("loss", "token_count", "grad_norm", "learning_rate")


@struct.dataclass
class TrainState:
    """Everything one update changes.

    Attributes:
      params: `nnx.State` of the model's `nnx.Param`s (merge with the model's graphdef).
      opt_state: the optimizer state, sharded like the parameters it mirrors.
      step: ``[]`` int32, updates applied so far (the schedule's count).
    """

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """A fully replicated sharding on the same devices as ``sharding``."""
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, P())
    return sharding  # single device


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation) -> TrainState:
    """The initial state: the model's parameters and a fresh optimizer state.

    The optimizer state is created by a jitted ``tx.init`` whose output shardings mirror
    the parameters' (moments sharded like their parameter, counters replicated), so it is
    never gathered on the host or one device. The parameters are the model's own arrays,
    not copies: a step that donates the state invalidates the model's arrays (get the
    trained model back with ``nnx.merge(graphdef, state.params)``).

    Raises:
      ValueError: when the model holds variables other than `nnx.Param` (their updates
        would be lost).
    """
    params = nnx.state(model, nnx.Param)
    others = nnx.state(model, nnx.Not(nnx.Param))
    if jax.tree.leaves(others):
        names = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(others)][:5]
        raise ValueError(
            f"the model holds non-Param variables {names}; the train step only "
            "carries nnx.Param state."
        )
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    replicated = _replicated(jax.tree.leaves(param_sh)[0])
    abstract = jax.eval_shape(tx.init, params)
    opt_sh = optax.tree_utils.tree_map_params(
        tx, lambda _, sh: sh, abstract, param_sh, transform_non_params=lambda _: replicated
    )
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
    return TrainState(params=params, opt_state=opt_state, step=step)


def batch_shards(mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES) -> int:
    """``S``: how many data-parallel slices the rows of a batch are split into."""
    return math.prod(mesh.shape[a] for a in batch_axes)


def check_batch(batch, *, micro_batches: int, group_size: int, shards: int) -> int:
    """Checks that a batch splits into micro-batches, whole groups and shards.

    Args:
      batch: pytree whose leaves all have the rows ``b`` as leading axis.
      micro_batches: ``k``, micro-batches per step.
      group_size: ``G``, rollouts per prompt (adjacent rows); 1 for SFT.
      shards: ``S``, data-parallel slices of each micro-batch (`batch_shards`).

    Returns:
      ``b``.

    Raises:
      ValueError: naming the rule and sizes when rows disagree or do not divide.
    """
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ValueError("the batch has no arrays.")
    rows = {jax.tree_util.keystr(p): (jnp.shape(x)[:1] or (None,))[0] for p, x in leaves}
    if len(set(rows.values())) != 1 or None in rows.values():
        raise ValueError(
            f"every batch array needs the rows b as its leading axis; got leading sizes {rows}."
        )
    b = next(iter(rows.values()))
    if b % micro_batches:
        raise ValueError(
            f"batch of {b} rows does not split into micro_batches={micro_batches} equal parts; "
            f"use a batch size that is a multiple of {micro_batches}."
        )
    per_micro = b // micro_batches
    if per_micro % group_size:
        raise ValueError(
            f"micro-batch of {per_micro} rows (batch {b} / micro_batches {micro_batches}) is "
            f"not a multiple of group_size G={group_size}: a group of G rollouts would be split "
            f"across micro-batches. Use fewer micro-batches or a batch of whole groups per "
            f"micro-batch."
        )
    if per_micro % shards:
        raise ValueError(
            f"micro-batch of {per_micro} rows (batch {b} / micro_batches {micro_batches}) does "
            f"not split over {shards} data-parallel shards; use a batch size that is a multiple "
            f"of micro_batches * {shards} = {micro_batches * shards}."
        )
    return b


def _split_rows(tree, parts: int, sharding: NamedSharding | None = None):
    """``[b, ...] -> [parts, b / parts, ...]`` for every leaf (contiguous blocks of rows)."""

    def one(x):
        y = x.reshape(parts, x.shape[0] // parts, *x.shape[1:])
        return y if sharding is None else jax.lax.with_sharding_constraint(y, sharding)

    return jax.tree.map(one, tree)


def _shard_sums(graphdef, objective, params, batch, *, mesh, batch_axes):
    """The objective's global ``(loss_sum, token_count, metric_sums)`` for one micro-batch.

    The objective runs once per data-parallel slice (vmapped, under GSPMD); the per-slice
    sums are combined by explicit collectives, so the result is exact under any sharding.
    """
    shards = batch_shards(mesh, batch_axes)
    sliced = _split_rows(batch, shards, NamedSharding(mesh, P(batch_axes)))

    def per_slice(rows):
        return objective(nnx.merge(graphdef, params), rows)

    loss_s, count_s, metrics_s = jax.vmap(per_slice)(sliced)

    def combine(loss, count, metrics):  # local [1] slices of the [S] sums
        return (
            jax.lax.psum(loss[0].astype(jnp.float32), batch_axes),
            jax.lax.psum(count[0].astype(jnp.int32), batch_axes),
            reduce_metrics({k: v[0] for k, v in metrics.items()}, batch_axes),
        )

    spec = P(batch_axes)
    return jax.shard_map(combine, mesh=mesh, in_specs=(spec, spec, spec), out_specs=P())(
        loss_s, count_s, dict(metrics_s)
    )


def compute_gradients(
    graphdef: nnx.GraphDef,
    objective: Objective,
    params: nnx.State,
    batch,
    *,
    mesh: Mesh,
    micro_batches: int = 1,
    group_size: int = 1,
    batch_axes: Sequence[str] = BATCH_AXES,
):
    """Gradient of the global token-mean loss, accumulated over micro-batches.

    Pure and jittable (shapes are checked when traced).

    Args:
      graphdef: the model's graph definition (``nnx.graphdef(model)``).
      objective: ``objective(model, rows) -> (loss_sum, token_count, metric_sums)``.
      params: `nnx.State` of the model's parameters.
      batch: pytree of arrays with leading row axis ``b``.
      mesh: the mesh the parameters and rows live on.
      micro_batches: ``k``; ``b`` must be a multiple of ``k * S``.
      group_size: ``G``; each micro-batch must hold whole groups.
      batch_axes: mesh axes the rows are split over.

    Returns:
      ``(grads, loss_sum, token_count, metric_sums)``: ``grads`` (params' structure and
      dtypes) of ``Σ loss_sum / max(Σ token_count, 1)``, and the sums over the whole batch.
    """
    batch_axes = tuple(batch_axes)
    check_batch(
        batch,
        micro_batches=micro_batches,
        group_size=group_size,
        shards=batch_shards(mesh, batch_axes),
    )

    def micro_sums(p, rows):
        loss, count, metrics = _shard_sums(
            graphdef, objective, p, rows, mesh=mesh, batch_axes=batch_axes
        )
        return loss, (count, metrics)

    grad_fn = jax.value_and_grad(micro_sums, has_aux=True)

    def body(acc, rows):
        (loss, (count, metrics)), grads = grad_fn(params, rows)
        acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads)
        return acc, (loss, count, metrics)

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
    micro = _split_rows(batch, micro_batches)
    grad_sum, (loss_k, count_k, metrics_k) = jax.lax.scan(body, zeros, micro)
    loss_sum, count = jnp.sum(loss_k), jnp.sum(count_k)
    metrics = functools.reduce(
        merge_metrics,
        [{key: v[i] for key, v in metrics_k.items()} for i in range(micro_batches)],
    )
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g, x: (g / denom).astype(x.dtype), grad_sum, params)
    return grads, loss_sum, count, metrics


def _train_step(state: TrainState, batch, *, graphdef, objective, tx, learning_rate, **kw):
    """One optimizer update on one batch (see the module docstring)."""
    grads, loss_sum, count, metric_sums = compute_gradients(
        graphdef, objective, state.params, batch, **kw
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    lr = learning_rate(state.step) if callable(learning_rate) else learning_rate
    metrics = {
        "loss": loss_sum / jnp.maximum(count, 1).astype(jnp.float32),
        "token_count": count,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": jnp.asarray(lr, jnp.float32),
    }
    objective_metrics = finalize_metrics(metric_sums, count)
    objective_metrics.pop("tokens")  # = token_count
    clash = sorted(set(objective_metrics) & set(metrics))
    if clash:
        raise ValueError(f"objective metrics {clash} clash with the step's own {STEP_METRICS}.")
    metrics.update(objective_metrics)
    return TrainState(params=params, opt_state=opt_state, step=state.step + 1), metrics


def _global_rows(x, rows: NamedSharding):
    """A host-local ``[local_rows, ...]`` array as the global ``[rows, ...]`` array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x  # already global
    return jax.make_array_from_process_local_data(rows, np.asarray(x))


def make_train_step(
    graphdef: nnx.GraphDef,
    objective: Objective,
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh,
    learning_rate: optax.ScalarOrSchedule,
    micro_batches: int = 1,
    group_size: int = 1,
    batch_axes: Sequence[str] = BATCH_AXES,
    donate: bool = True,
    compiler_options: Mapping[str, Any] | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted ``step(state, batch) -> (state, metrics)``.

    The state keeps its shardings (they are the jit's in and out shardings, read from the
    state given); the batch (NumPy or device arrays) is placed with its rows over
    ``batch_axes``; metrics are replicated scalars: ``loss`` (global token mean),
    ``token_count``, ``grad_norm`` (of the averaged gradient, before clipping),
    ``learning_rate`` (of this update) and the objective's `finalize_metrics` (e.g.
    ``clip_frac``, ``kl``, ``accuracy``).

    Args:
      graphdef: the model's graph definition (``nnx.graphdef(model)``).
      objective: ``objective(model, rows) -> (loss_sum, token_count, metric_sums)``; bind
        its hyperparameters with `functools.partial`. Metric keys end in _sum/_min/_max.
      tx: the optimizer (`make_optimizer`).
      mesh: the ``(data, fsdp, tensor)`` mesh of the parameters.
      learning_rate: the schedule (or constant) ``tx`` uses, reported as a metric.
      micro_batches: ``k`` gradient-accumulation micro-batches per step.
      group_size: ``G`` rollouts per prompt; every micro-batch must hold whole groups.
      batch_axes: mesh axes the rows are split over.
      donate: donate the input state's buffers to the output (the input becomes invalid).
      compiler_options: XLA options of the step's compile; None: `CPU_COMPILER_OPTIONS`
        when the mesh is on CPU devices, none elsewhere. ``{}`` compiles with XLA's defaults.

    In a multi-process run each process passes its own rows (host-local data); the step
    assembles them into the global batch (process 0's rows first).

    Returns:
      ``step(state, batch)``; it raises ValueError, before compiling, on a batch whose rows
      do not split into ``k`` micro-batches of whole groups divisible over the shards.

    Raises:
      ValueError: when ``micro_batches`` or ``group_size`` is not a positive int.
    """
    for name, value in (("micro_batches", micro_batches), ("group_size", group_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1.")
    batch_axes = tuple(batch_axes)
    core = functools.partial(
        _train_step,
        graphdef=graphdef,
        objective=objective,
        tx=tx,
        learning_rate=learning_rate,
        mesh=mesh,
        micro_batches=micro_batches,
        group_size=group_size,
        batch_axes=batch_axes,
    )
    rows = NamedSharding(mesh, P(batch_axes))
    shards = batch_shards(mesh, batch_axes)
    compiled: dict[Any, Callable] = {}  # one jit per layout of the state
    if compiler_options is None and all(d.platform == "cpu" for d in mesh.devices.flat):
        compiler_options = CPU_COMPILER_OPTIONS

    def step(state: TrainState, batch):
        if jax.process_count() > 1:
            # Each host holds its own rows (the pipelines read per-host shards): assemble
            # the global batch, process 0's rows first, without moving data between hosts.
            batch = jax.tree.map(lambda x: _global_rows(x, rows), batch)
        check_batch(batch, micro_batches=micro_batches, group_size=group_size, shards=shards)
        state_sh = jax.tree.map(lambda x: x.sharding, state)
        key = (jax.tree.structure(state_sh), tuple(jax.tree.leaves(state_sh)))
        if key not in compiled:
            compiled[key] = jax.jit(
                core,
                in_shardings=(state_sh, rows),
                out_shardings=(state_sh, NamedSharding(mesh, P())),
                donate_argnums=(0,) if donate else (),
                compiler_options=dict(compiler_options or {}),
            )
        # Numpy rows are sent straight into their shards; device arrays laid out otherwise
        # (e.g. log-probs from another jitted function) are resharded, not rejected by jit.
        return compiled[key](state, jax.device_put(batch, rows))

    return step
