"""Token sampling: greedy, temperature, top-k and top-p, as one pure function."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How `generate` picks tokens and when it stops (hashable: a jit static argument).

    Attributes:
      max_new_tokens: tokens generated at most per row.
      temperature: 0 for greedy decoding, else the softmax temperature.
      top_k: keep the k most likely tokens (0 = no limit).
      top_p: keep the smallest set of tokens whose probability reaches p (1.0 = all).
      stop_token_ids: a row stops after emitting any of these (e.g. ``<|im_end|>``).
      stop_sequences: a row stops after emitting any of these token-id sequences (stop
        strings, tokenised); `truncate_at_stop` also cuts the decoded text.
      pad_id: written after a row has stopped.
      suppress_token_ids: never sampled (e.g. image placeholders, which would be read as
        an image in any later pass over the text).
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    pad_id: int = 0
    suppress_token_ids: tuple[int, ...] = ()

    def validate(self) -> SamplingConfig:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy).")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off).")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError("stop_sequences must not contain an empty sequence.")
        return self


def sample(logits_bv: jax.Array, rng: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Picks one token per row.

    Args:
      logits_bv: ``[b, v]`` next-token logits.
      rng: a PRNG key (unused when greedy).
      cfg: sampling settings (static).

    Returns:
      ``[b]`` int32 token ids.
    """
    neg = jnp.finfo(jnp.float32).min
    if cfg.suppress_token_ids:
        ids = jnp.asarray(cfg.suppress_token_ids, jnp.int32)
        logits_bv = logits_bv.astype(jnp.float32).at[:, ids].set(neg)
    if cfg.temperature == 0.0:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logits = logits_bv.astype(jnp.float32) / cfg.temperature
    if cfg.top_k > 0 and cfg.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if cfg.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token if the mass strictly before it is below p (the top token always stays).
        before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = before < cfg.top_p
        keep = (
            jnp.zeros_like(keep_sorted)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(keep_sorted)
        )
        logits = jnp.where(keep, logits, neg)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
