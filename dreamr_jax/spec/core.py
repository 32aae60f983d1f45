"""Device-side building blocks shared by every speculative-reasoning engine.

All state lives in one functional `KVCache` per model (batch 1 per request). The pieces:

* `write_step`: samples one reasoning step (until a step delimiter, an end-of-sequence
  token or ``max_step_tokens``) inside a ``lax.while_loop``, feeding every sampled token,
  so the cache holds the whole step and the next step's logits come back with it;
* `append_chunk`: writes someone else's step (the target's fallback into the draft cache);
* `verify_window`: one packed target pass over a window of K draft steps. The chunk is
  ``d_1 .. d_K  V_1 .. V_K`` (each step in ``W`` slots, `step_width`: the window's
  longest step rounded up to a power of two, at most ``S = max_step_tokens``; each ``V_k``
  the verification suffix), with an in-chunk mask so ``V_k`` sees the prefix and ``d_<=k``
  only. It returns every step's verdict and the logits after each ``d_k``, and leaves the
  cache holding ``P + d_1 .. d_K`` in its first ``K*W`` chunk slots;
* `rewind`: accepting ``d_<j`` is moving the write head back to the end of ``d_<j``:
  slots past the head are stale but invisible (causality is by slot), and are overwritten
  before they can be read. No cache is copied or recomputed;
* `fork_rows` / `take_row`: the Lookahead-Reasoning schedule, where the target writes its
  own step for every window position at once (K rows sharing the prefix).

Every function is jitted once per static shape (cache length, S, K, and for the packed pass
each of the few widths ``W``, `step_widths`): a long reasoning chain never recompiles.
Caches are donated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dreamr_jax.inference.generate import merge, stop_hits
from dreamr_jax.inference.sampling import SamplingConfig, sample
from dreamr_jax.models.text import KVCache
from dreamr_jax.spec.verify import VerdictTokens, VerifierConfig, decide


@dataclasses.dataclass(frozen=True)
class StepDecode:
    """Static settings of `write_step` (hashable).

    Attributes:
      max_step_tokens: ``S``, the cap on a step's tokens and the slots a step takes in a
        packed chunk.
      sampling: temperature / top-k / top-p / pad id; its ``stop_sequences`` are the
        delimiter's token spellings (`delimiter_token_sequences`).
    """

    max_step_tokens: int
    sampling: SamplingConfig


@struct.dataclass
class StepTables:
    """Per-vocabulary stop tables: ``ends_step [v]`` (tokens whose text contains the
    delimiter, e.g. a BPE merge ``".\\n\\n"``) and ``is_eos [v]``."""

    ends_step: jax.Array
    is_eos: jax.Array


def step_tables(tokenizer, vocab_size: int, delimiter: str, eos_ids) -> StepTables:
    """Builds `StepTables` by decoding every token id once (host side, at engine setup)."""
    ends = np.zeros((vocab_size,), bool)
    for i in range(min(vocab_size, len(tokenizer))):
        ends[i] = delimiter in tokenizer.decode([i])
    eos = np.zeros((vocab_size,), bool)
    eos[[e for e in eos_ids if 0 <= e < vocab_size]] = True
    ends &= ~eos
    return StepTables(ends_step=jnp.asarray(ends), is_eos=jnp.asarray(eos))


@struct.dataclass
class StepOutput:
    """A step per row: ``tokens [b, S]`` (pad after the end), ``lengths [b]``,
    ``eos [b]`` (the step ended the answer) and ``logits [b, v]`` after its last token."""

    tokens: jax.Array
    lengths: jax.Array
    eos: jax.Array
    logits: jax.Array


def _write_step(model, cache: KVCache, logits_bv, rng, active_b, tables: StepTables, dec):
    b, n = logits_bv.shape[0], dec.max_step_tokens
    sampling = dec.sampling

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, cache, logits, done, out, lengths, eos, rng = carry
        rng, sub = jax.random.split(rng)
        live = ~done
        tok = jnp.where(live, sample(logits, sub, sampling), sampling.pad_id)
        out = jax.lax.dynamic_update_index_in_dim(out, tok, i, axis=1)
        pos = jnp.broadcast_to(cache.next_pos[None, :, None], (3, b, 1))
        res = model.forward(tok[:, None], pos, live[:, None].astype(jnp.int32), cache=cache)
        logits = jnp.where(live[:, None], res.logits[:, 0].astype(logits.dtype), logits)
        lengths = jnp.where(live, i + 1, lengths)
        hit_eos = live & tables.is_eos[tok]
        ends = tables.ends_step[tok] | stop_hits(out, i, tok, sampling)
        done = done | hit_eos | (live & ends) | (i + 1 >= n)
        return i + 1, res.cache, logits, done, out, lengths, eos | hit_eos, rng

    out = jnp.full((b, n), sampling.pad_id, jnp.int32)
    zeros = jnp.zeros((b,), jnp.int32)
    carry = (jnp.int32(0), cache, logits_bv, ~active_b, out, zeros, jnp.zeros((b,), bool), rng)
    _, cache, logits, _, out, lengths, eos, _ = jax.lax.while_loop(cond, body, carry)
    return StepOutput(tokens=out, lengths=lengths, eos=eos, logits=logits), cache


@functools.partial(jax.jit, static_argnames=("graphdef", "dec"), donate_argnames=("cache",))
def write_step(graphdef, state, cache, logits_bv, rng, call, active_b, tables, *, dec: StepDecode):
    """Samples one step per active row, writing every token into ``cache`` (donated).

    Args:
      cache: the rows' caches, ending where the step starts.
      logits_bv: ``[b, v]`` next-token logits at that point.
      rng, call: the step samples with ``fold_in(rng, call)`` (unused when greedy); folded
        here, not by the caller, which would cost an eager dispatch per step.
      active_b: ``[b]`` bool; inactive rows produce an empty step and leave no real slot.
      tables: `StepTables`.

    Returns:
      ``(StepOutput, cache)``; the write head advances by the longest step.
    """
    model = merge(graphdef, state)
    rng = jax.random.fold_in(rng, call)
    return _write_step(model, cache, logits_bv, rng, active_b, tables, dec)


def _last_logits(model, hidden_btd, lengths_b):
    last = jnp.take_along_axis(hidden_btd, jnp.maximum(lengths_b - 1, 0)[:, None, None], axis=1)
    return model.logits(last[:, 0])


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def append_chunk(graphdef, state, cache: KVCache, tokens_bs, lengths_b):
    """Writes ``tokens_bs[:, :lengths_b]`` after each row's prefix (``S`` slots per row).

    Returns:
      ``(logits [b, v] after each row's last written token, cache)``.
    """
    model = merge(graphdef, state)
    b, s = tokens_bs.shape
    real = jnp.arange(s)[None, :] < lengths_b[:, None]
    pos = jnp.broadcast_to((cache.next_pos[:, None] + jnp.arange(s))[None], (3, b, s))
    out = model.forward(tokens_bs, pos, real.astype(jnp.int32), cache=cache, return_hidden=True)
    return _last_logits(model, out.logits, lengths_b), out.cache


MIN_STEP_WIDTH = 8  # the narrowest packed step (`step_width`)


def step_widths(max_step_tokens: int) -> tuple[int, ...]:
    """Every width `step_width` returns for this ``S``: powers of two from
    `MIN_STEP_WIDTH` below ``S``, then ``S`` (one compiled packed pass each)."""
    widths, w = [], MIN_STEP_WIDTH
    while w < max_step_tokens:
        widths.append(w)
        w *= 2
    return (*widths, max_step_tokens)


def step_width(longest: int, max_step_tokens: int) -> int:
    """Slots per step in a packed verification chunk: the first of `step_widths` that
    holds the window's ``longest`` step. A pass costs about linearly in its slots on a
    CPU (and in FLOPs anywhere), so padding every step to ``S`` wastes most of it when
    steps run well under the cap; powers of two keep the compiled shapes few.

    Raises:
      ValueError: ``longest`` is outside ``[0, S]``.
    """
    if not 0 <= longest <= max_step_tokens:
        raise ValueError(f"a step of {longest} tokens with max_step_tokens={max_step_tokens}.")
    return next(w for w in step_widths(max_step_tokens) if w >= longest)


def window_layout(lengths_k, num_suffix: int, max_step_tokens: int):
    """Packed layout of a verification chunk ``d_1 .. d_K  V_1 .. V_K``.

    Args:
      lengths_k: ``[K]`` int draft step lengths (0 = no step at this window position).
      num_suffix: tokens in the verification suffix ``V``.
      max_step_tokens: slots per draft step (``W`` of `step_width`, or ``S``).

    Returns:
      ``(real_t, offset_t, chunk_mask_tt)``: which of the ``T = K*(S+|V|)`` slots hold a
      token, each token's position offset from the prefix's next position, and the
      in-chunk attention mask (``d`` tokens causal over ``d``; ``V_k`` sees ``d_<=k`` and
      itself causally).
    """
    k_len, s, v = lengths_k.shape[0], max_step_tokens, num_suffix
    step_of_d = jnp.repeat(jnp.arange(k_len), s)  # [K*S]
    idx_in_d = jnp.tile(jnp.arange(s), k_len)
    real_d = idx_in_d < lengths_k[step_of_d]
    ends = jnp.cumsum(lengths_k)  # positions after d_<=k
    starts = ends - lengths_k
    off_d = starts[step_of_d] + idx_in_d
    step_of_v = jnp.repeat(jnp.arange(k_len), v)
    idx_in_v = jnp.tile(jnp.arange(v), k_len)
    real_v = lengths_k[step_of_v] > 0
    off_v = ends[step_of_v] + idx_in_v
    real = jnp.concatenate([real_d, real_v])
    offset = jnp.concatenate([off_d, off_v])
    is_d = jnp.arange(k_len * (s + v)) < k_len * s
    step = jnp.concatenate([step_of_d, step_of_v])
    order = jnp.arange(real.shape[0])
    q, c = order[:, None], order[None, :]
    d_sees = is_d[:, None] & is_d[None, :] & (c <= q)
    v_sees_d = ~is_d[:, None] & is_d[None, :] & (step[None, :] <= step[:, None])
    v_sees_v = ~is_d[:, None] & ~is_d[None, :] & (step[None, :] == step[:, None]) & (c <= q)
    mask = (d_sees | v_sees_d | v_sees_v) & real[None, :]
    return real, offset, mask


def verify_window(
    graphdef,
    state,
    cache: KVCache,
    tokens_bks,
    lengths_bk,
    *,
    verdict: VerdictTokens,
    verifier: VerifierConfig,
    width: int | None = None,
):
    """One packed target pass that verifies a window of draft steps per row.

    Args:
      cache: target cache (``b`` rows) ending at each row's accepted prefix ``P``, with
        room for the ``K*(W+|V|)`` chunk slots past its head (XLA clamps an out-of-range
        write, which would silently corrupt the result; `SpecEngine.cache_length` sizes
        for ``W = S``).
      tokens_bks: ``[b, K, S]`` draft steps (pad after each length).
      lengths_bk: ``[b, K]`` their lengths; 0 marks an unused window position.
      verdict: the tokenised verifier (suffix and verdict ids).
      verifier: threshold and rule.
      width: ``W``, slots per step in the chunk: the steps' first ``W`` tokens are used,
        so every length must be ``<= W`` (`step_width` of the longest); None is ``S``.
        Results do not depend on it (padding slots are masked), the pass's cost does.

    Returns:
      ``(p [b, K], accepted [b, K], step_logits [b, K, v], cache)`` where
      ``step_logits[:, k]`` are the next-token logits after ``P + d_<=k`` and the cache
      holds ``P + d_1..d_K`` in the chunk's first ``K*W`` slots (use `rewind` to keep a
      prefix of them). The engine verifies one request (``b = 1``); SAPO scoring verifies
      every step of a batch of rollouts at once.

    The threshold α reaches the compiled pass as a value, not as part of its static
    arguments: sweeping α (`dreamr_jax.eval`) compiles the pass once per shape.
    """
    s = tokens_bks.shape[-1]
    if width is not None and not 1 <= width <= s:
        raise ValueError(f"width={width} must be in [1, {s}] (the steps' slots).")
    return _verify_window(
        graphdef,
        state,
        cache,
        tokens_bks,
        lengths_bk,
        np.float32(verifier.alpha),
        verdict=verdict,
        rule=dataclasses.replace(verifier, alpha=0.0),
        width=s if width is None else width,
    )


@functools.partial(
    jax.jit, static_argnames=("graphdef", "verdict", "rule", "width"), donate_argnames=("cache",)
)
def _verify_window(graphdef, state, cache, tokens_bks, lengths_bk, alpha, *, verdict, rule, width):
    """`verify_window` with α traced; ``rule`` is the verifier with α zeroed."""
    model = merge(graphdef, state)
    tokens_bks = tokens_bks[:, :, :width]
    b, k_len, s = tokens_bks.shape
    n_v = len(verdict.suffix)
    real, offset, mask = jax.vmap(window_layout, in_axes=(0, None, None))(lengths_bk, n_v, s)
    suffix = jnp.tile(jnp.asarray(verdict.suffix, jnp.int32), k_len)
    ids = jnp.concatenate(
        [tokens_bks.reshape(b, -1), jnp.broadcast_to(suffix, (b, k_len * n_v))], 1
    )
    pos = jnp.broadcast_to((cache.next_pos[:, None] + offset)[None], (3, *ids.shape))
    out = model.forward(
        ids, pos, real.astype(jnp.int32), cache=cache, return_hidden=True, chunk_mask_btt=mask
    )
    d_last = jnp.arange(k_len) * s + jnp.maximum(lengths_bk - 1, 0)  # [b, K]
    v_last = jnp.broadcast_to(k_len * s + (jnp.arange(k_len) + 1) * n_v - 1, (b, k_len))
    picks = jnp.concatenate([d_last, v_last], axis=1)
    logits = model.logits(jnp.take_along_axis(out.logits, picks[..., None], axis=1))
    p, ok = decide(logits[:, k_len:], verdict, rule, alpha=alpha)
    return p, ok & (lengths_bk > 0), logits[:, :k_len], out.cache


def rewind(cache: KVCache, index, next_pos) -> KVCache:
    """Moves the write head of a cache back to slot ``index`` (next rotary position
    ``next_pos [b]``). Slots at and after ``index`` become invisible until rewritten."""
    return cache.replace(
        index=jnp.asarray(index, jnp.int32), next_pos=jnp.asarray(next_pos, jnp.int32)
    )


@jax.jit
def fork_rows(cache: KVCache, base_index, base_pos, lengths_k, width):
    """K target rows after a `verify_window`: row ``k`` ends at ``P + d_<k``.

    Args:
      cache: batch-1 cache returned by `verify_window` (not donated: kept for `rewind`).
      base_index: slot where the window's chunk started.
      base_pos: rotary position after ``P``.
      lengths_k: ``[K]`` draft step lengths.
      width: ``W``, the pass's slots per step (a value: every width runs one program).

    Returns:
      A ``K``-row cache whose write head is past the draft steps, row ``k`` masking the
      slots of ``d_>=k``.
    """
    k_len, s = lengths_k.shape[0], width
    tile = lambda x: jnp.tile(x, (k_len,) + (1,) * (x.ndim - 1))  # noqa: E731
    slots = jnp.arange(cache.length)
    hidden_from = base_index + jnp.arange(k_len) * s  # row k hides d_>=k
    keep = (slots[None, :] < hidden_from[:, None]) | (slots[None, :] >= base_index + k_len * s)
    starts = jnp.cumsum(lengths_k) - lengths_k
    return KVCache(
        k=tuple(tile(x) for x in cache.k),
        v=tuple(tile(x) for x in cache.v),
        mask=tile(cache.mask) & keep,
        index=jnp.asarray(base_index + k_len * s, jnp.int32),
        next_pos=(base_pos + starts).astype(jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("max_step_tokens",))
def move_step(cache: KVCache, src, dst, length, *, max_step_tokens: int) -> KVCache:
    """Moves the ``S`` slots at ``src`` to ``dst`` and puts the write head after the
    step's ``length`` tokens there.

    Lookahead's rows write their steps after the whole window (slot ``base + K*S``); moved
    to where the chosen step belongs (``base + a*S``), a round uses the same slots as the
    other engines, so a long chain never outgrows `engine.cache_slots`. Keys carry their
    rotary positions, so entries may live in any slots.
    """
    s = max_step_tokens

    def move(x, axis):
        block = jax.lax.dynamic_slice_in_dim(x, src, s, axis)
        return jax.lax.dynamic_update_slice_in_dim(x, block, dst, axis)

    return cache.replace(
        k=tuple(move(x, 1) for x in cache.k),
        v=tuple(move(x, 2) for x in cache.v),
        mask=move(cache.mask, 1),
        index=jnp.asarray(dst + length, jnp.int32),
    )


@jax.jit
def take_row(cache: KVCache, row) -> KVCache:
    """Row ``row`` of a multi-row cache as a batch-1 cache."""
    b = cache.mask.shape[0]
    rows = cache.k[0].shape[0] // b
    pick = lambda x: jax.lax.dynamic_slice_in_dim(x, row * rows, rows, axis=0)  # noqa: E731
    return cache.replace(
        k=tuple(pick(x) for x in cache.k),
        v=tuple(pick(x) for x in cache.v),
        mask=jax.lax.dynamic_slice_in_dim(cache.mask, row, 1, axis=0),
        next_pos=jax.lax.dynamic_slice_in_dim(cache.next_pos, row, 1, axis=0),
    )
