"""Jitted prefill, decode and `generate` over the functional KV cache.

Shapes are bucketed (prompt length, cache length, image patches) so that repeated calls
with similar inputs reuse one compiled program; the token loop is a `lax.while_loop`, with
no Python per token. The model enters jitted code as ``(graphdef, state)``: split once on
the host, merged inside the trace.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from dreamr_jax.inference.sampling import SamplingConfig, sample
from dreamr_jax.models.config import ModelConfig
from dreamr_jax.models.positions import rope_index
from dreamr_jax.models.qwen3_vl import Qwen3VL, check_image_inputs
from dreamr_jax.models.text import KVCache
from dreamr_jax.models.vision import VisionInputs, vision_inputs


class StaticGraph:
    """An ``nnx.GraphDef`` whose hash is computed once.

    Jitted entry points take the graphdef as a static argument, and JAX hashes static
    arguments on every call; a whole VLM's graphdef takes about a millisecond to hash
    (measured: 1.0 ms for a 26M-parameter target), paid per call in a serving loop. Wrap it
    once per model (`spec.engine.Role` does) and pass the wrapper instead.
    """

    __slots__ = ("graphdef", "_hash")

    def __init__(self, graphdef):
        self.graphdef = graphdef.graphdef if isinstance(graphdef, StaticGraph) else graphdef
        self._hash = hash(self.graphdef)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        return (
            isinstance(other, StaticGraph)
            and self._hash == other._hash
            and self.graphdef == other.graphdef
        )


def merge(graphdef, state):
    """``nnx.merge`` that also takes a `StaticGraph`."""
    if isinstance(graphdef, StaticGraph):
        graphdef = graphdef.graphdef
    return nnx.merge(graphdef, state)


class CacheTooShort(ValueError):
    """A prompt plus the tokens to generate do not fit the KV cache."""


@struct.dataclass
class PromptBatch:
    """Left-padded prompts ready for `prefill`.

    Attributes:
      input_ids: ``[b, t]`` int32, real tokens right-aligned.
      attention_mask: ``[b, t]`` int32, 1 for real tokens.
      positions: ``[3, b, t]`` int32 multimodal position ids.
      vision: image inputs for the prompts' image tokens, or None.
    """

    input_ids: jax.Array
    attention_mask: jax.Array
    positions: jax.Array
    vision: VisionInputs | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)


@struct.dataclass
class GenerateOutput:
    """``tokens [b, n]`` (``pad_id`` after a row stopped) and ``lengths [b]`` (tokens up to
    and including the stop token)."""

    tokens: jax.Array
    lengths: jax.Array


def bucket(n: int, minimum: int = 16, step: int = 512) -> int:
    """Static length for ``n``: powers of two from ``minimum`` up to ``step``, then
    multiples of ``step``."""
    if n <= step:
        return max(minimum, 1 << max(0, int(n - 1).bit_length()))
    return -(-n // step) * step


def make_batch(
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    pixel_values=None,
    image_grid_thw=None,
    pad_id: int = 0,
    length: int | None = None,
    num_patches: int | None = None,
) -> PromptBatch:
    """Left-pads token lists into a `PromptBatch` with position ids and image inputs.

    Args:
      cfg: the model config.
      prompts: token ids per row (image placeholders already expanded).
      pixel_values, image_grid_thw: all images of the batch, in prompt order.
      pad_id: padding token.
      length: static prompt length; default `bucket` of the longest prompt.
      num_patches: static patch count; default `bucket` of the real count.

    Raises:
      CacheTooShort: a prompt is longer than ``length``.
      PromptImageMismatch: image tokens disagree with ``image_grid_thw``.
    """
    longest = max(len(p) for p in prompts)
    if length is None:
        length = bucket(longest)
    if longest > length:
        raise CacheTooShort(
            f"a prompt has {longest} tokens but the prompt length is {length}; "
            "raise the length or shorten the prompt."
        )
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, p in enumerate(prompts):
        if len(p):
            ids[row, length - len(p) :] = p
            mask[row, length - len(p) :] = 1
    check_image_inputs(ids, mask, pixel_values, image_grid_thw, cfg)
    vision = None
    if pixel_values is not None:
        n = np.asarray(pixel_values).shape[0]
        unit = cfg.vision.spatial_merge_size**2
        pad = num_patches or max(unit, bucket(n, minimum=unit))
        vision = vision_inputs(pixel_values, image_grid_thw, cfg.vision, pad_to=pad)
    positions, _ = rope_index(ids, image_grid_thw, mask, cfg)
    return PromptBatch(
        input_ids=jnp.asarray(ids),
        attention_mask=jnp.asarray(mask),
        positions=jnp.asarray(positions),
        vision=vision,
    )


# ------------------------------------------------------------------ pure traced pieces


def _prefill(model: Qwen3VL, batch: PromptBatch, cache: KVCache):
    out = model.forward(
        batch.input_ids,
        batch.positions,
        batch.attention_mask,
        vision=batch.vision,
        cache=cache,
        return_hidden=True,
    )
    # Left padding: every row's last prompt token sits in the last column.
    return model.logits(out.logits[:, -1]), out.cache


def stop_hits(out_bn, step, tok_b, sampling: SamplingConfig):
    """``[b]`` bool: token ``tok_b`` (written at column ``step`` of ``out_bn``) is a stop
    token or completes a stop sequence."""
    done = jnp.zeros(tok_b.shape, bool)
    for t in sampling.stop_token_ids:
        done |= tok_b == t
    for seq in sampling.stop_sequences:
        n = len(seq)
        if n > out_bn.shape[1]:
            continue  # cannot complete within max_new_tokens
        start = jnp.maximum(step - n + 1, 0)
        window = jax.lax.dynamic_slice_in_dim(out_bn, start, n, axis=1)
        done |= (step + 1 >= n) & jnp.all(window == jnp.asarray(seq, jnp.int32), axis=1)
    return done


def _decode(model: Qwen3VL, cache: KVCache, logits_bv, rng, sampling: SamplingConfig):
    b, n = logits_bv.shape[0], sampling.max_new_tokens
    rng, sub = jax.random.split(rng)
    first = sample(logits_bv, sub, sampling)
    out = jnp.full((b, n), sampling.pad_id, jnp.int32).at[:, 0].set(first)
    done = stop_hits(out, 0, first, sampling)
    lengths = jnp.ones((b,), jnp.int32)

    def cond(carry):
        step, _, _, done, _, _ = carry
        return (step < n) & ~jnp.all(done)

    def body(carry):
        step, cache, out, done, lengths, rng = carry
        prev = jax.lax.dynamic_index_in_dim(out, step - 1, axis=1, keepdims=True)
        pos = jnp.broadcast_to(cache.next_pos[None, :, None], (3, b, 1))
        res = model.forward(prev, pos, jnp.ones((b, 1), jnp.int32), cache=cache)
        rng, sub = jax.random.split(rng)
        tok = jnp.where(done, sampling.pad_id, sample(res.logits[:, 0], sub, sampling))
        out = jax.lax.dynamic_update_index_in_dim(out, tok, step, axis=1)
        lengths = jnp.where(done, lengths, step + 1)
        done = done | stop_hits(out, step, tok, sampling)
        return step + 1, res.cache, out, done, lengths, rng

    carry = (jnp.int32(1), cache, out, done, lengths, rng)
    _, cache, out, _, lengths, _ = jax.lax.while_loop(cond, body, carry)
    return GenerateOutput(tokens=out, lengths=lengths), cache


# ---------------------------------------------------------------------- jitted entries


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def prefill(graphdef, state, batch: PromptBatch, cache: KVCache):
    """Writes the prompts into ``cache`` (donated) and returns the next-token logits.

    Returns:
      ``(logits [b, v] float, cache)``.
    """
    return _prefill(merge(graphdef, state), batch, cache)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames=("cache",))
def decode(graphdef, state, cache: KVCache, logits_bv, rng, sampling: SamplingConfig):
    """Samples up to ``sampling.max_new_tokens`` tokens after a prefill.

    Returns:
      ``(GenerateOutput, cache)``.
    """
    return _decode(merge(graphdef, state), cache, logits_bv, rng, sampling)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "cache_length"))
def _generate(
    graphdef, state, batch: PromptBatch, rng, *, sampling: SamplingConfig, cache_length: int
):
    model = merge(graphdef, state)
    b = batch.input_ids.shape[0]
    cache = KVCache.init(model.cfg.text, b, cache_length, model.dtype)
    logits, cache = _prefill(model, batch, cache)
    return _decode(model, cache, logits, rng, sampling)[0]


def generate(
    model: Qwen3VL | tuple[nnx.GraphDef, nnx.State],
    batch: PromptBatch,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    rng: jax.Array | None = None,
    cache_length: int | None = None,
) -> GenerateOutput:
    """Generates continuations of a `PromptBatch` in one compiled program.

    Args:
      model: the model, or its ``nnx.split(model)`` (a serving loop splits once: splitting
        costs milliseconds per call).
      batch: left-padded prompts from `make_batch`.
      sampling: sampling and stopping settings.
      rng: PRNG key for sampling (default key 0).
      cache_length: static KV-cache length; default `bucket(prompt + max_new_tokens)`.

    Raises:
      CacheTooShort: the prompt plus ``max_new_tokens`` exceeds ``cache_length``.
    """
    sampling = sampling.validate()
    t = batch.input_ids.shape[1]
    need = t + sampling.max_new_tokens
    if cache_length is None:
        cache_length = bucket(need)
    if need > cache_length:
        raise CacheTooShort(
            f"prompt length {t} + max_new_tokens {sampling.max_new_tokens} = {need} exceeds the "
            f"KV cache length {cache_length}; raise cache_length or lower max_new_tokens."
        )
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    rng = jax.random.key(0) if rng is None else rng
    return _generate(graphdef, state, batch, rng, sampling=sampling, cache_length=cache_length)


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """Cuts decoded text at the first occurrence of any stop string (kept out)."""
    cut = min((i for s in stop_strings if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
