"""Building blocks shared by the vision tower and the text decoder.

Every parameter is an `nnx.Param` carrying ``logical_axes`` metadata (one name per
dimension); `dreamr_jax.models.sharding` maps those names onto a mesh. Normalisations,
softmax and rotary embeddings run in float32 whatever the parameter dtype, as the
reference implementation does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def param(
    rngs: nnx.Rngs,
    shape: Sequence[int],
    axes: Axes,
    dtype,
    *,
    fan_in: int | None = None,
    init: str = "normal",
) -> nnx.Param:
    """A parameter with logical axis names.

    ``init`` is "normal" (truncated-free normal with std 1/sqrt(fan_in), or 0.02 when
    ``fan_in`` is None), "zeros" or "ones".
    """
    assert len(shape) == len(axes), (shape, axes)
    if init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        std = 0.02 if fan_in is None else 1.0 / math.sqrt(fan_in)
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


class Dense(nnx.Module):
    """``y = einsum(x, kernel) + bias`` over the trailing ``len(in_shape)`` dimensions.

    Attributes:
      kernel: ``[*in_shape, *out_shape]``.
      bias: ``[*out_shape]`` or None.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Axes,
        out_axes: Axes,
        *,
        use_bias: bool,
        dtype,
        rngs: nnx.Rngs,
    ):
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        self.n_in = len(in_shape)
        self.kernel = param(
            rngs,
            in_shape + out_shape,
            tuple(in_axes) + tuple(out_axes),
            dtype,
            fan_in=math.prod(in_shape),
        )
        self.bias = param(rngs, out_shape, out_axes, dtype, init="zeros") if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        y = jnp.tensordot(x.astype(kernel.dtype), kernel, axes=self.n_in)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class Embed(nnx.Module):
    """Token or position embedding table ``[rows, width]``."""

    def __init__(self, rows: int, width: int, *, axes: Axes, dtype, rngs: nnx.Rngs):
        self.embedding = param(rngs, (rows, width), axes, dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied LM head: ``x @ embedding.T``."""
        table = self.embedding[...]
        return jnp.einsum("...d,vd->...v", x.astype(table.dtype), table)


class RMSNorm(nnx.Module):
    """Qwen3 RMSNorm: normalise in float32, cast back, then scale (HF order)."""

    def __init__(self, width: int, *, eps: float, dtype, rngs: nnx.Rngs, axis_name="norm"):
        self.eps = eps
        self.scale = param(rngs, (width,), (axis_name,), dtype, init="ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...] * y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias (vision tower), statistics in float32."""

    def __init__(self, width: int, *, eps: float, dtype, rngs: nnx.Rngs, axis_name="norm"):
        self.eps = eps
        self.scale = param(rngs, (width,), (axis_name,), dtype, init="ones")
        self.bias = param(rngs, (width,), (axis_name,), dtype, init="zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding in the rotate-half layout.

    Args:
      x: ``[..., t, n, h]`` queries or keys.
      cos, sin: ``[..., t, h]`` float32, broadcast over the head axis.
    """
    x32 = x.astype(jnp.float32)
    cos, sin = cos[..., None, :], sin[..., None, :]
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def attend(
    q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask_bts: jax.Array
) -> jax.Array:
    """Grouped-query attention with a boolean mask, softmax in float32.

    Args:
      q_btnh: queries ``[b, t, n, h]``.
      k_bskh, v_bskh: keys and values ``[b, s, k, h]`` with ``n % k == 0``.
      mask_bts: ``[b, t, s]``, True where query t may attend to key s. A query row with no
        True entry yields a finite (meaningless) output, never NaN.

    Returns:
      ``[b, t, n, h]`` in the dtype of ``v``.
    """
    b, t, n, h = q_btnh.shape
    s, k = k_bskh.shape[1], k_bskh.shape[2]
    g = n // k
    # Heads-major operands, so that both products (and their gradients) are plain batched
    # matmuls over (b, k) with the g query heads of a KV head stacked as rows: with the
    # [b, t, k, g, h] layout XLA:CPU transposed the [b, k, g, t, s] probabilities in the
    # backward pass of every layer (the demo target's SFT step: 1.06x faster this way).
    # `attend_cached` after `to_cache_layout` computes the same, but its values layout
    # ([h, s], for decoding) made that step as slow as the old layout (276 vs 260 ms).
    q = q_btnh.reshape(b, t, k, g, h).transpose(0, 2, 3, 1, 4).reshape(b, k, g * t, h)
    keys = k_bskh.transpose(0, 2, 1, 3)  # [b, k, s, h]
    values = v_bskh.transpose(0, 2, 1, 3)
    logits = jnp.einsum("bkqh,bksh->bkqs", q, keys, preferred_element_type=jnp.float32)
    logits = (logits * h**-0.5).reshape(b, k, g, t, s)
    logits = jnp.where(mask_bts[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_bskh.dtype).reshape(b, k, g * t, s)
    out = jnp.einsum("bkqs,bksh->bkqh", probs, values)
    return out.reshape(b, k, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def to_cache_layout(k_btkh: jax.Array, v_btkh: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys ``[b, t, k, h] -> [b*k, t, h]`` and values ``[b, t, k, h] -> [b*k, h, t]``.

    The KV cache keeps this layout because it is what the decode-step matmuls consume:
    with it XLA never copies a whole layer's cache into another layout per step (measured
    on CPU: 103 -> 57 ms per step at batch 8, 2048 slots; see BENCHMARKS.md).
    """
    b, t, k, h = k_btkh.shape
    keys = k_btkh.transpose(0, 2, 1, 3).reshape(b * k, t, h)
    values = v_btkh.transpose(0, 2, 3, 1).reshape(b * k, h, t)
    return keys, values


def attend_cached(
    q_btnh: jax.Array, k_xsh: jax.Array, v_xhs: jax.Array, mask_bts: jax.Array
) -> jax.Array:
    """`attend` over keys and values in the cache layout of `to_cache_layout`.

    Args:
      q_btnh: queries ``[b, t, n, h]``.
      k_xsh: keys ``[b*k, s, h]`` (batch-major rows).
      v_xhs: values ``[b*k, h, s]``.
      mask_bts: ``[b, t, s]``, True where query t may attend to slot s.

    Returns:
      ``[b, t, n, h]`` in the dtype of ``v``.
    """
    b, t, n, h = q_btnh.shape
    x, s, _ = k_xsh.shape
    k = x // b
    g = n // k
    q = q_btnh.reshape(b, t, k, g, h).transpose(0, 2, 1, 3, 4).reshape(x, t * g, h)
    logits = jnp.einsum("xqh,xsh->xqs", q, k_xsh, preferred_element_type=jnp.float32)
    mask = jnp.broadcast_to(mask_bts[:, None, :, None, :], (b, k, t, g, s)).reshape(x, t * g, s)
    logits = jnp.where(mask, logits * (h**-0.5), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_xhs.dtype)
    out = jnp.einsum("xqs,xhs->xqh", probs, v_xhs)
    return out.reshape(b, k, t, g, h).transpose(0, 2, 1, 3, 4).reshape(b, t, n, h)
