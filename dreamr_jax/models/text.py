"""Qwen3 text decoder with interleaved multimodal RoPE, DeepStack injection and a
functional KV cache.

Cache layout: every row of a batch shares slot indices (prompts are left-padded), so one
scalar ``index`` says where the next chunk is written; ``mask`` marks which slots hold real
tokens. Rotary positions are separate from slots (they come from the multimodal position
ids), which is what lets images and left padding coexist with one cache.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from dreamr_jax.models.config import TextConfig
from dreamr_jax.models.layers import (
    Dense,
    Embed,
    RMSNorm,
    apply_rope,
    attend,
    attend_cached,
    to_cache_layout,
)


@struct.dataclass
class KVCache:
    """Functional key/value cache for all decoder layers.

    Attributes:
      k: per layer, keys (after QK-norm and RoPE) ``[b*k, s, h]``, batch-major rows.
      v: per layer, values ``[b*k, h, s]``.
      mask: ``[b, s]`` bool, True for slots holding a real token.
      index: ``[]`` int32, the next slot to write (shared by all rows).
      next_pos: ``[b]`` int32, the rotary position of each row's next token.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array
    next_pos: jax.Array

    @property
    def length(self) -> int:
        """Static number of slots ``s``."""
        return self.mask.shape[1]

    @classmethod
    def init(cls, cfg: TextConfig, batch: int, length: int, dtype=jnp.float32) -> KVCache:
        """An empty cache, made by one compiled call (eagerly, each of its 2 x layers + 3
        arrays would be a dispatch of its own, ~0.1 ms each on a CPU)."""
        return _empty_cache(cfg, batch, length, dtype)

    def layer_kv(self, layer: int) -> tuple[jax.Array, jax.Array]:
        """Layer ``layer``'s keys and values as ``[b, s, k, h]`` (for inspection)."""
        b, s = self.mask.shape
        k = self.k[layer].reshape(b, -1, s, self.k[layer].shape[-1]).transpose(0, 2, 1, 3)
        v = self.v[layer].reshape(b, -1, self.v[layer].shape[1], s).transpose(0, 3, 1, 2)
        return k, v


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _empty_cache(cfg: TextConfig, batch: int, length: int, dtype) -> KVCache:
    rows, h = batch * cfg.num_kv_heads, cfg.head_dim
    return KVCache(
        k=tuple(jnp.zeros((rows, length, h), dtype) for _ in range(cfg.num_layers)),
        v=tuple(jnp.zeros((rows, h, length), dtype) for _ in range(cfg.num_layers)),
        mask=jnp.zeros((batch, length), bool),
        index=jnp.zeros((), jnp.int32),
        next_pos=jnp.zeros((batch,), jnp.int32),
    )


def mrope_cos_sin(positions_3bt: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
    """Interleaved multimodal rotary tables.

    Frequency ``i`` of the ``h/2`` follows the temporal position, except indices
    ``1, 4, 7, ...`` (first ``mrope_section[1]`` of them) which follow height and
    ``2, 5, 8, ...`` (first ``mrope_section[2]``) which follow width.

    Args:
      positions_3bt: ``[3, b, t]`` (temporal, height, width) position ids.

    Returns:
      cos, sin: ``[b, t, h]`` float32.
    """
    exponent = np.arange(0, cfg.head_dim, 2, dtype=np.float32) / np.float32(cfg.head_dim)
    inv_freq = (1.0 / np.float32(cfg.rope_theta) ** exponent).astype(np.float32)
    sel = np.zeros((cfg.head_dim // 2,), np.int32)  # which of (t, h, w) drives frequency i
    for axis in (1, 2):
        sel[axis : cfg.mrope_section[axis] * 3 : 3] = axis
    pos_bt3 = jnp.moveaxis(positions_3bt, 0, -1).astype(jnp.float32)
    freqs = jnp.take(pos_bt3, sel, axis=-1) * inv_freq  # [b, t, h/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class DecoderLayer(nnx.Module):
    """Qwen3 decoder layer: RMSNorm -> GQA with QK-norm -> RMSNorm -> SwiGLU."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        dense = functools.partial(Dense, dtype=dtype, rngs=rngs)
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.input_norm = RMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.post_attention_norm = RMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.q_proj = dense((d,), (n, h), ("embed",), ("heads", "head_dim"), use_bias=bias)
        self.k_proj = dense((d,), (k, h), ("embed",), ("kv_heads", "head_dim"), use_bias=bias)
        self.v_proj = dense((d,), (k, h), ("embed",), ("kv_heads", "head_dim"), use_bias=bias)
        self.o_proj = dense((n, h), (d,), ("heads", "head_dim"), ("embed",), use_bias=bias)
        self.q_norm = RMSNorm(h, eps=cfg.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.k_norm = RMSNorm(h, eps=cfg.rms_norm_eps, dtype=dtype, rngs=rngs)
        mlp = cfg.intermediate_size
        self.gate_proj = dense((d,), (mlp,), ("embed",), ("mlp",), use_bias=False)
        self.up_proj = dense((d,), (mlp,), ("embed",), ("mlp",), use_bias=False)
        self.down_proj = dense((mlp,), (d,), ("mlp",), ("embed",), use_bias=False)

    def __call__(self, x_btd, cos, sin, mask_bts, kv=None, index=None):
        """One layer.

        Args:
          x_btd: hidden states ``[b, t, d]``.
          cos, sin: rotary tables ``[b, t, h]``.
          mask_bts: attention mask over the keys attended to (the chunk itself when
            ``kv`` is None, else all cache slots).
          kv: optional ``(k [b*k, s, h], v [b*k, h, s])`` cache of this layer; the chunk
            is written in place at slot ``index``.

        Returns:
          ``(x_btd, updated kv or None)``.
        """
        h = self.input_norm(x_btd)
        q = apply_rope(self.q_norm(self.q_proj(h)), cos, sin)
        k = apply_rope(self.k_norm(self.k_proj(h)), cos, sin)
        v = self.v_proj(h)
        if kv is None:
            attn = attend(q, k, v, mask_bts)
        else:
            k_new, v_new = to_cache_layout(k.astype(kv[0].dtype), v.astype(kv[1].dtype))
            kv = (
                jax.lax.dynamic_update_slice(kv[0], k_new, (0, index, 0)),
                jax.lax.dynamic_update_slice(kv[1], v_new, (0, 0, index)),
            )
            attn = attend_cached(q, kv[0], kv[1], mask_bts)
        x_btd = x_btd + self.o_proj(attn)
        h = self.post_attention_norm(x_btd)
        x_btd = x_btd + self.down_proj(jax.nn.silu(self.gate_proj(h)) * self.up_proj(h))
        return x_btd, kv


class TextModel(nnx.Module):
    """Embedding, decoder layers and final norm (the LM head lives on the full model)."""

    def __init__(self, cfg: TextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embed(
            cfg.vocab_size, cfg.hidden_size, axes=("vocab", "embed"), dtype=dtype, rngs=rngs
        )
        self.layers = nnx.List(
            [DecoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x_btd,
        positions_3bt,
        attention_mask_bt,
        *,
        cache: KVCache | None = None,
        deepstack=None,
        chunk_mask_btt=None,
    ):
        """Runs the decoder on embeddings.

        Args:
          x_btd: input embeddings ``[b, t, d]``.
          positions_3bt: multimodal position ids ``[3, b, t]``.
          attention_mask_bt: ``[b, t]`` bool, False for padding tokens of this chunk.
          cache: optional KV cache; the chunk is written at ``cache.index``.
          deepstack: optional ``(visual_mask_bt, [features_btd per DeepStack layer])``,
            added at the visual positions after the first decoder layers.
          chunk_mask_btt: optional ``[b, t, t]`` bool, which tokens of this chunk each
            token may attend to (default causal). Packed sequences use it: several
            branches that share the cached prefix but not each other.

        Returns:
          ``(hidden_btd after the final norm, updated cache or None)``.
        """
        b, t, _ = x_btd.shape
        cos, sin = mrope_cos_sin(positions_3bt, self.cfg)
        if chunk_mask_btt is None:
            chunk_mask_btt = jnp.tril(jnp.ones((t, t), bool))[None]
        if cache is None:
            mask = chunk_mask_btt & attention_mask_bt[:, None, :]
            index = None
        else:
            index = cache.index
            slot_mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, attention_mask_bt, index, 1)
            # Slots before the chunk: the cached prefix; the chunk's own slots: chunk mask.
            # Slots past the chunk hold stale entries (after a rewind) and stay invisible.
            prefix = jnp.arange(cache.length) < index
            in_chunk = jax.lax.dynamic_update_slice(
                jnp.zeros((b, t, cache.length), bool),
                jnp.broadcast_to(chunk_mask_btt, (b, t, t)),
                (0, 0, index),
            )
            mask = (prefix[None, None, :] | in_chunk) & slot_mask[:, None, :]
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x_btd, kv = layer(x_btd, cos, sin, mask, kv, index)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
            if deepstack is not None and i < len(deepstack[1]):
                x_btd = x_btd + jnp.where(deepstack[0][..., None], deepstack[1][i], 0).astype(
                    x_btd.dtype
                )
        if cache is not None:
            chunk_max = jnp.max(jnp.where(attention_mask_bt[None], positions_3bt, -1), (0, 2))
            next_pos = jnp.maximum(cache.next_pos, chunk_max.astype(jnp.int32) + 1)
            cache = cache.replace(
                k=tuple(new_k), v=tuple(new_v), mask=slot_mask, index=index + t, next_pos=next_pos
            )
        return self.norm(x_btd), cache
