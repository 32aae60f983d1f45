"""Logical-axis sharding: one small rules object maps parameter axis names to mesh axes.

Every parameter carries ``logical_axes`` metadata (e.g. ``("embed", "mlp")``). A
`ShardingRules` maps each logical name to a mesh axis of the ``(data, fsdp, tensor)`` mesh
(or None = replicated). `param_shardings` turns a model (or its abstract `eval_shape`) into
`NamedSharding`s and checks that every sharded dimension divides evenly, so a bad mesh fails
with the parameter's name instead of deep inside XLA.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")


class ShardingError(ValueError):
    """A mesh or rule does not fit the model."""


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis name -> mesh axis (or None to replicate).

    Attributes:
      vocab: vocabulary rows of the embedding and LM head.
      embed: residual width (both towers); sharding it is FSDP.
      mlp: MLP hidden width (tensor parallel).
      heads: query heads (tensor parallel).
      kv_heads: key/value heads; must divide the tensor axis size when sharded.
      head_dim: per-head width.
      norm: norm scales and biases.
      batch: the batch axis of activations and caches.
    """

    vocab: str | None = "tensor"
    embed: str | None = "fsdp"
    mlp: str | None = "tensor"
    heads: str | None = "tensor"
    kv_heads: str | None = "tensor"
    head_dim: str | None = None
    norm: str | None = None
    batch: tuple[str, ...] | str | None = ("data", "fsdp")

    def spec(self, logical_axes: Sequence[str | None]) -> PartitionSpec:
        """The `PartitionSpec` for a parameter with these logical axes."""
        return PartitionSpec(*(None if a is None else getattr(self, a) for a in logical_axes))


def make_mesh(
    shape: Sequence[int] = (1, 1, 1), devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh with automatic (not explicit) sharding propagation.

    Raises:
      ShardingError: when the shape does not multiply to the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ShardingError(
            f"mesh shape {shape} must be three positive sizes (data, fsdp, tensor)."
        )
    if math.prod(shape) != len(devices):
        raise ShardingError(
            f"mesh shape {shape} (data, fsdp, tensor) needs {math.prod(shape)} devices but "
            f"{len(devices)} are available; choose sizes whose product is {len(devices)}."
        )
    grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _path_str(path) -> str:
    return ".".join(str(p) for p in path)


def param_shardings(model_or_state, mesh: Mesh, rules: ShardingRules = ShardingRules()):
    """`NamedSharding` for every parameter, as an `nnx.State` of shardings.

    Works on a real model, an abstract one from `nnx.eval_shape`, or its state.

    Raises:
      ShardingError: naming the parameter when a sharded dimension is not divisible by the
        mesh axis size.
    """
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)

    def one(path, var):
        axes = var.get_metadata().get("logical_axes")
        if axes is None:
            return NamedSharding(mesh, PartitionSpec())
        spec = rules.spec(axes)
        for dim, (size, axis) in enumerate(zip(var.shape, spec, strict=True)):
            if axis is None:
                continue
            n = math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))
            if size % n:
                raise ShardingError(
                    f"parameter {_path_str(path)} dim {dim} ({axes[dim]}={size}) is not "
                    f"divisible by mesh axis '{axis}' of size {n}; use a mesh whose '{axis}' size "
                    f"divides {size}, or replicate it with ShardingRules({axes[dim]}=None)."
                )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(
        lambda p, v: one(tuple(getattr(k, "key", k) for k in p), v),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def init_sharded(
    make_model: Callable[[], nnx.Module],
    mesh: Mesh,
    rules: ShardingRules = ShardingRules(),
    *,
    zeros: bool = False,
) -> nnx.Module:
    """Builds a model with every parameter created directly in its sharding.

    ``make_model`` constructs the module (e.g. ``lambda: Qwen3VL(cfg, rngs=nnx.Rngs(0))``);
    it is traced once under `nnx.eval_shape` to read shapes and logical axes, then run
    under `jax.jit` with the parameter shardings as output shardings, so no host or single
    device ever holds the whole model.

    ``zeros=True`` skips the initialisers (for a small model, seconds of XLA compilation)
    and makes every parameter zero, with the same structure, dtypes and shardings: a
    target to restore a checkpoint into, never to train or run as it is.
    """
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
    shardings = param_shardings(abstract_state, mesh, rules)
    if zeros:
        make_state = lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract_state)  # noqa: E731
    else:
        make_state = lambda: nnx.state(make_model())  # noqa: E731
    return nnx.merge(graphdef, jax.jit(make_state, out_shardings=shardings)())


def shard_model(
    model: nnx.Module, mesh: Mesh, rules: ShardingRules = ShardingRules()
) -> nnx.Module:
    """Moves an existing model's parameters into their shardings (in place) and returns it."""
    state = nnx.state(model)
    shardings = param_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model
