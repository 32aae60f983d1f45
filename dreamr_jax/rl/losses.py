"""SAPO's policy loss: GRPO's clipped ratio objective with a k3 KL penalty to a reference.

Per unmasked token of a rollout with advantage ``A`` (`group_advantages`):

    ρ    = exp(logp - old_logp)                                   (new/old policy ratio)
    k3   = exp(ref_logp - logp) - (ref_logp - logp) - 1           (KL estimate, >= 0)
    loss = -(min(ρ A, clip(ρ, 1 - ε, 1 + ε) A) - β k3)

The training loss is the token mean over the *global* batch. Every function here therefore
returns ``(sum, count)`` pairs instead of means: pairs add up exactly across devices
(`global_mean`, `reduce_metrics`) and across gradient-accumulation micro-batches
(`merge_metrics`), and one division at the end (`finalize_metrics`) gives the exact mean
under any sharding. Metrics follow the same rule: keys ending in ``_sum`` add, ``_min``
and ``_max`` take the minimum and maximum.

Masked positions may hold anything (padding, -inf, NaN): they are replaced before any
``exp``, so neither the loss nor its gradient can meet ``inf * 0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

# Rows of a batch are split over these mesh axes; `tensor` holds replicas.
BATCH_AXES = ("data", "fsdp")

# Log-ratios are clipped to ±this before exp: exp(88.7) overflows float32 and an infinite
# ratio times a zero advantage is NaN. exp(60) ~ 1e26 is far past any ratio a healthy run
# sees, so the clip only turns an overflow into a large finite value (with zero gradient).
MAX_LOG_RATIO = 60.0

_Metrics = dict[str, jax.Array]


def token_logprobs(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
    """Log-probabilities of the target tokens, ``log softmax(logits)[target]``, in float32.

    Computed as ``logit[target] - logsumexp(logits)`` after subtracting the row maximum,
    which is stable and never builds the ``[b, t, v]`` log-softmax. Out-of-range targets
    (e.g. a ``-100`` padding label) are clamped into the vocabulary so padded positions
    stay finite; mask them out.

    Args:
      logits_btv: ``[b, t, v]`` logits, any float dtype.
      targets_bt: ``[b, t]`` integer token ids.

    Returns:
      ``[b, t]`` float32 log-probabilities.
    """
    if logits_btv.ndim != 3 or targets_bt.shape != logits_btv.shape[:2]:
        raise ValueError(
            f"token_logprobs needs logits [b, t, v] and targets [b, t], got "
            f"{logits_btv.shape} and {targets_bt.shape}."
        )
    logits = logits_btv.astype(jnp.float32)
    # Subtract the row maximum before anything else: with large logits (say 1e4) both the
    # picked logit and logsumexp round to float32 steps of 1e-3, and so would their
    # difference. The shift cancels exactly in the result, so it needs no gradient.
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    idx = targets_bt.astype(jnp.int32)[..., None]
    picked = jnp.take_along_axis(shifted, idx, axis=-1, mode="clip")[..., 0]
    return picked - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))


def token_entropy(logits_btv: jax.Array) -> jax.Array:
    """Entropy ``-sum_v p log p`` of each position's next-token distribution, in float32.

    Vocabulary entries with probability 0 (e.g. logits of -inf) contribute 0, in the value
    and in the gradient.

    Args:
      logits_btv: ``[b, t, v]`` logits.

    Returns:
      ``[b, t]`` float32 entropies in nats.
    """
    logp_btv = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
    p_btv = jnp.exp(logp_btv)
    # 0 * log 0 is 0; substituting before the product keeps the gradient finite as well.
    safe_logp_btv = jnp.where(p_btv > 0, logp_btv, 0.0)
    return -jnp.sum(p_btv * safe_logp_btv, axis=-1)


def _check_inputs(logp, old_logp, ref_logp, advantages, mask, entropy, clip_eps, kl_beta):
    shapes = {
        "logp": logp.shape,
        "old_logp": old_logp.shape,
        "ref_logp": ref_logp.shape,
        "mask": mask.shape,
    }
    if entropy is not None:
        shapes["entropy"] = entropy.shape
    if logp.ndim != 2 or len(set(shapes.values())) != 1:
        raise ValueError(f"sapo_loss needs [b, t] token arrays of one shape, got {shapes}.")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"advantages must be [b] (one per rollout) = {logp.shape[:1]}, got "
            f"{advantages.shape}; flatten group_advantages' [prompts, G] with reshape(-1)."
        )
    if isinstance(clip_eps, int | float) and not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps (ε) = {clip_eps} must be in (0, 1).")
    if isinstance(kl_beta, int | float) and not kl_beta >= 0:
        raise ValueError(f"kl_beta (β) = {kl_beta} must be >= 0.")


def sapo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float,
    kl_beta: float,
    entropy: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, _Metrics]:
    """Summed SAPO loss over unmasked tokens, the token count, and summable metrics.

    The loss to minimise is ``loss_sum / token_count`` over the global batch (see
    `global_mean`, `finalize_metrics`). Only ``logp`` receives gradients: ``old_logp``,
    ``ref_logp`` and ``advantages`` are constants of the update. Log-ratios past
    ±`MAX_LOG_RATIO` are clipped before ``exp`` (finite value, zero gradient there).

    Args:
      logp: ``[b, t]`` log π_θ of the sampled tokens under the policy being trained.
      old_logp: ``[b, t]`` log π_old of the same tokens under the policy that sampled them.
      ref_logp: ``[b, t]`` log π_ref under the frozen reference.
      advantages: ``[b]`` per-rollout advantages ``A``, shared by all its tokens.
      mask: ``[b, t]`` bool (or 0/1), True on the generated tokens that count. A fully
        masked row contributes nothing, whatever the other arrays hold there.
      clip_eps: ε of the ratio clip ``[1 - ε, 1 + ε]`` (GRPO default 0.2).
      kl_beta: β, weight of the k3 KL penalty (GRPO default 0.04).
      entropy: optional ``[b, t]`` token entropies (`token_entropy`), only for metrics.

    Returns:
      ``(loss_sum, token_count, metrics)``: float32 scalar, int32 scalar, and a dict of
      scalars: ``clipped_sum`` (tokens whose clipped branch is active, so their policy
      gradient is zero), ``ratio_sum``, ``ratio_min``, ``ratio_max`` (of ρ; ±inf with no
      tokens), ``kl_sum`` (of k3) and, given ``entropy``, ``entropy_sum``.

    Raises:
      ValueError: on mismatched shapes, or ε or β out of range.
    """
    _check_inputs(logp, old_logp, ref_logp, advantages, mask, entropy, clip_eps, kl_beta)
    sg = jax.lax.stop_gradient
    m = jnp.asarray(mask).astype(bool)
    # Replace masked entries first (the double-where rule): the value there no longer
    # matters and jnp.where sends a zero cotangent, not 0 * inf, back to them.
    logp = jnp.where(m, logp.astype(jnp.float32), 0.0)
    old = jnp.where(m, sg(old_logp).astype(jnp.float32), 0.0)
    ref = jnp.where(m, sg(ref_logp).astype(jnp.float32), 0.0)
    adv = jnp.where(m, sg(advantages).astype(jnp.float32)[:, None], 0.0)

    ratio = jnp.exp(jnp.clip(logp - old, -MAX_LOG_RATIO, MAX_LOG_RATIO))
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    log_ref_ratio = jnp.clip(ref - logp, -MAX_LOG_RATIO, MAX_LOG_RATIO)
    k3 = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0
    per_token = -(jnp.minimum(unclipped, clipped) - kl_beta * k3)

    loss_sum = jnp.sum(jnp.where(m, per_token, 0.0))
    token_count = jnp.sum(m, dtype=jnp.int32)
    ratio = sg(ratio)
    metrics = {
        "clipped_sum": jnp.sum(m & sg(clipped < unclipped), dtype=jnp.float32),
        "ratio_sum": jnp.sum(jnp.where(m, ratio, 0.0)),
        "ratio_min": jnp.min(jnp.where(m, ratio, jnp.inf)),
        "ratio_max": jnp.max(jnp.where(m, ratio, -jnp.inf)),
        "kl_sum": jnp.sum(jnp.where(m, sg(k3), 0.0)),
    }
    if entropy is not None:
        ent = jnp.where(m, sg(entropy).astype(jnp.float32), 0.0)
        metrics["entropy_sum"] = jnp.sum(ent)
    return loss_sum, token_count, metrics


def _reducers(key: str):
    """(collective, elementwise) reducers for a metric, chosen by its key's suffix."""
    suffix = key.rsplit("_", 1)[-1]
    table = {
        "sum": (jax.lax.psum, jnp.add),
        "min": (jax.lax.pmin, jnp.minimum),
        "max": (jax.lax.pmax, jnp.maximum),
    }
    if suffix not in table:
        raise ValueError(f"metric {key!r} must end in _sum, _min or _max to be combinable.")
    return table[suffix]


def global_mean(
    value_sum: jax.Array, count: jax.Array, axis_names: str | Sequence[str] = BATCH_AXES
) -> jax.Array:
    """``psum(value_sum) / psum(count)`` over mesh axes, for use inside `jax.shard_map`.

    Exact for any split of the batch (unlike a mean of per-shard means), and 0 when no
    shard has any tokens. Gradients are right under the default ``check_vma=True``: each
    shard's gradient of its own ``value_sum`` is divided by the global count.

    Args:
      value_sum: this shard's scalar sum.
      count: this shard's scalar count.
      axis_names: the mesh axes the batch is split over.

    Returns:
      The scalar float32 global mean, the same on every shard.
    """
    axes = (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)
    total = jax.lax.psum(value_sum.astype(jnp.float32), axes)
    n = jax.lax.psum(count, axes)
    return total / jnp.maximum(n, 1).astype(jnp.float32)


def reduce_metrics(
    metrics: Mapping[str, jax.Array], axis_names: str | Sequence[str] = BATCH_AXES
) -> _Metrics:
    """Combines per-shard metrics across mesh axes inside `jax.shard_map` (psum/pmin/pmax)."""
    axes = (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)
    return {k: _reducers(k)[0](v, axes) for k, v in metrics.items()}


def merge_metrics(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> _Metrics:
    """Combines the metrics of two micro-batches (gradient accumulation), exactly."""
    if a.keys() != b.keys():
        raise ValueError(f"cannot merge metrics with keys {sorted(a)} and {sorted(b)}.")
    return {k: _reducers(k)[1](a[k], b[k]) for k in a}


def finalize_metrics(metrics: Mapping[str, jax.Array], token_count: jax.Array) -> _Metrics:
    """Turns combined ``(sum, count)`` metrics into means for logging.

    Args:
      metrics: combined metrics from `sapo_loss` (after `reduce_metrics`/`merge_metrics`).
      token_count: the matching combined token count.

    Returns:
      ``clip_frac``, ``ratio_mean``, ``ratio_min``, ``ratio_max``, ``kl`` (mean k3),
      ``entropy`` (if present) and ``tokens``. With no tokens every value is 0.
    """
    n = jnp.asarray(token_count)
    has = n > 0
    denom = jnp.maximum(n, 1).astype(jnp.float32)
    names = {
        "clipped_sum": "clip_frac",
        "ratio_sum": "ratio_mean",
        "kl_sum": "kl",
        "entropy_sum": "entropy",
    }
    out = {}
    for key, value in metrics.items():
        if key.endswith("_sum"):
            out[names.get(key, key[: -len("_sum")])] = value / denom
        else:
            out[key] = jnp.where(has, value, 0.0)
    out["tokens"] = n
    return out


def sharded_sapo_loss(
    mesh: Mesh,
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float,
    kl_beta: float,
    entropy: jax.Array | None = None,
    batch_axes: Sequence[str] = BATCH_AXES,
) -> tuple[jax.Array, _Metrics]:
    """The global-batch SAPO loss with rows split over ``batch_axes`` of ``mesh``.

    Runs `sapo_loss` per shard under `jax.shard_map` and combines the ``(sum, count)``
    pairs with explicit collectives, so the result equals the unsharded token mean.
    Other mesh axes (``tensor``) hold replicas. Differentiable w.r.t. ``logp``.

    Args:
      mesh: a ``(data, fsdp, tensor)`` mesh (`dreamr_jax.models.sharding.make_mesh`).
      logp, old_logp, ref_logp, advantages, mask, clip_eps, kl_beta, entropy: as for
        `sapo_loss`; ``b`` must divide evenly over the batch axes.
      batch_axes: mesh axes the rows are split over.

    Returns:
      ``(loss, metrics)``: the scalar mean loss and `finalize_metrics` of the whole batch.

    Raises:
      ValueError: when ``b`` is not divisible by the product of the batch axes' sizes, or
        on anything `sapo_loss` rejects.
    """
    batch_axes = tuple(batch_axes)
    shards = math.prod(mesh.shape[a] for a in batch_axes)
    if logp.ndim < 1 or logp.shape[0] % shards:
        raise ValueError(
            f"batch of {logp.shape[:1]} rows does not split evenly over mesh axes "
            f"{batch_axes} ({shards} shards); use a batch that is a multiple of {shards}."
        )
    _check_inputs(logp, old_logp, ref_logp, advantages, mask, entropy, clip_eps, kl_beta)
    tok, row = P(batch_axes, None), P(batch_axes)
    args = [logp, old_logp, ref_logp, advantages, mask]
    specs = [tok, tok, tok, row, tok]
    if entropy is not None:
        args.append(entropy)
        specs.append(tok)

    def local(*xs):
        loss_sum, count, metrics = sapo_loss(
            *xs[:5], clip_eps=clip_eps, kl_beta=kl_beta, entropy=xs[5] if len(xs) > 5 else None
        )
        loss = global_mean(loss_sum, count, batch_axes)
        total = jax.lax.psum(count, batch_axes)
        return loss, finalize_metrics(reduce_metrics(metrics, batch_axes), total)

    return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs), out_specs=P())(*args)
