"""Training objectives in the ``(loss_sum, token_count, metric_sums)`` form of `rl.losses`.

Both objectives take ``(model, batch)``, where ``batch`` is the jit-ready dict of
`prepare_batch`: every array has the rows ``b`` as its leading axis, so the train step can
split it into micro-batches and data-parallel slices by rows alone:

* ``input_ids``, ``attention_mask``: ``[b, t]`` (rollout tokens for SAPO);
* ``positions``: ``[b, 3, t]`` M-RoPE ids (the collated ``[3, b, t]`` moved row-first);
* ``vision``: `VisionInputs` with a leading row axis, ``[b, p_row, ...]``: each row's
  own image patches padded to a static ``p_row`` (absent for text-only batches);
* SFT: ``loss_mask`` ``[b, t]``; SAPO: ``old_logp``, ``ref_logp``, ``mask`` ``[b, t]`` and
  ``advantages`` ``[b]``.

Token-aligned arrays (``loss_mask``, ``old_logp``, ``ref_logp``, ``mask``) refer to the
token in the same column: column ``i`` is about ``input_ids[:, i]`` as predicted from the
tokens before it. Column 0 has no prediction and is never counted.

The model runs row by row (``jax.vmap`` over rows): a row's image patches are only its
own, so vision attention is ``[p_row, p_row]`` per row rather than over the whole batch,
and rows can be regrouped freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamr_jax.models.config import ModelConfig
from dreamr_jax.models.vision import VisionInputs, host_vision_inputs
from dreamr_jax.rl.losses import sapo_loss, token_entropy, token_logprobs

# Keys of a collated batch (`data.pipeline.collate`) that `prepare_batch` consumes or drops;
# every other key is passed through and must be row-aligned.
_HOST_KEYS = ("id", "pixel_values", "patch_mask", "image_grid_thw", "num_valid_patches")


def _row_vision(pixels, grid_b3, cfg: ModelConfig, patches_per_row: int) -> VisionInputs:
    """Per-row `VisionInputs` stacked to ``[b, patches_per_row, ...]`` (host NumPy)."""
    counts = np.prod(grid_b3, axis=1)
    b, n = len(grid_b3), int(counts[0]) if len(counts) else 0
    if b and (grid_b3 == grid_b3[0]).all() and n <= patches_per_row and len(pixels) >= b * n:
        # Rows of one image size (a training batch): one row's layout, and the pixels
        # reshaped into rows, not padded and stacked one by one; the same arrays as below.
        one = host_vision_inputs(pixels[:n], grid_b3[:1], cfg.vision, pad_to=patches_per_row)
        pixels_bpd = pixels[: b * n].reshape(b, n, -1)  # a view when rows need no padding
        if n < patches_per_row:
            pixels_bpd = np.zeros((b, *one.pixel_values.shape), pixels.dtype)
            pixels_bpd[:, :n] = pixels[: b * n].reshape(b, n, -1)
        return VisionInputs(
            pixel_values=pixels_bpd,
            pos_index=np.stack([one.pos_index] * b),
            pos_weight=np.stack([one.pos_weight] * b),
            rope_pos=np.stack([one.rope_pos] * b),
            segment_ids=np.stack([one.segment_ids] * b),
        )
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = []
    for r, (start, n) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
        if n > patches_per_row:
            raise ValueError(
                f"row {r} has an image of {n} patches (grid {grid_b3[r].tolist()}), more than "
                f"patches_per_row={patches_per_row}; pass a larger patches_per_row."
            )
        rows.append(
            host_vision_inputs(
                pixels[start : start + n], grid_b3[r : r + 1], cfg.vision, pad_to=patches_per_row
            )
        )
    return jax.tree.map(lambda *xs: np.stack(xs), *rows)


def prepare_batch(
    batch: Mapping[str, Any], model_cfg: ModelConfig, *, patches_per_row: int | None = None
) -> dict[str, Any]:
    """Turns a collated NumPy batch into the jit-ready, row-major dict the objectives take.

    The collated ``pixel_values`` (all images concatenated, one image per row, padded to
    ``num_patches``) are split back into rows, and each row's patches become `VisionInputs`
    via `host_vision_inputs(..., pad_to=patches_per_row)`. ``positions`` ``[3, b, t]`` becomes
    ``[b, 3, t]``. Host-only keys (``id``, ``patch_mask``, ...) are dropped; any other key
    (e.g. SAPO's ``old_logp``) is passed through as a NumPy array.

    Args:
      batch: from `dreamr_jax.data.pipeline.collate`, optionally with extra row-aligned
        keys; without ``pixel_values`` the batch is text-only.
      model_cfg: the model config (vision patch layout, merge size).
      patches_per_row: static patch budget of one row, a multiple of merge_size**2;
        default ``num_patches // b`` rounded down to that multiple.

    Returns:
      A dict of NumPy arrays (and a `VisionInputs` under ``vision``), leading axis ``b``.

    Raises:
      ValueError: on missing keys, shapes that disagree, or an image larger than
        ``patches_per_row``.
    """
    missing = [k for k in ("input_ids", "attention_mask", "positions") if k not in batch]
    if missing:
        raise ValueError(f"the batch lacks {missing}; build it with data.pipeline.collate.")
    ids = np.asarray(batch["input_ids"])
    positions = np.asarray(batch["positions"])
    if ids.ndim != 2 or positions.shape != (3, *ids.shape):
        raise ValueError(
            f"input_ids must be [b, t] and positions [3, b, t]; got {ids.shape} and "
            f"{positions.shape}."
        )
    out = {k: np.asarray(v) for k, v in batch.items() if k not in (*_HOST_KEYS, "positions")}
    out["positions"] = np.ascontiguousarray(positions.transpose(1, 0, 2))
    if "pixel_values" not in batch:
        return out
    grid = np.asarray(batch["image_grid_thw"], np.int64)
    if grid.shape != (ids.shape[0], 3):
        raise ValueError(
            f"image_grid_thw must be [b, 3] (one image per row, as collate makes it); got "
            f"{grid.shape} for {ids.shape[0]} rows."
        )
    unit = model_cfg.vision.spatial_merge_size**2
    pixels = np.asarray(batch["pixel_values"])
    if patches_per_row is None:
        patches_per_row = pixels.shape[0] // ids.shape[0] // unit * unit
    out["vision"] = _row_vision(pixels, grid, model_cfg, patches_per_row)
    return out


def forward_logits(model, batch: Mapping[str, Any]) -> jax.Array:
    """``[b, t, v]`` logits of `Qwen3VL.forward`, row by row, for a `prepare_batch` dict."""
    vision = batch.get("vision")
    if vision is None:
        positions = jnp.swapaxes(batch["positions"], 0, 1)
        return model.forward(batch["input_ids"], positions, batch["attention_mask"]).logits

    def row(ids_t, pos_3t, mask_t, vis):
        out = model.forward(ids_t[None], pos_3t[:, None], mask_t[None], vision=vis)
        return out.logits[0]

    return jax.vmap(row)(batch["input_ids"], batch["positions"], batch["attention_mask"], vision)


def _next_token_logprobs(model, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(logits [b, t-1, v], targets [b, t-1], logp [b, t-1])`` of tokens 1..t-1."""
    logits = forward_logits(model, batch)[:, :-1]
    targets = batch["input_ids"][:, 1:]
    return logits, targets, token_logprobs(logits, targets)


def sft_objective(model, batch: Mapping[str, Any]):
    """Next-token cross-entropy over the ``loss_mask`` tokens, each weighted by its value.

    Args:
      model: a `Qwen3VL`.
      batch: `prepare_batch` dict with ``loss_mask`` ``[b, t]``: each token's integer loss
        weight (1 on answer tokens, more on a verification example's verdict, 0 elsewhere).

    Returns:
      ``(loss_sum, token_count, {"accuracy_sum": ...})``: float32 ``Σ w · -log p``, int32
      ``Σ w`` (the weighted token count), and the weighted count of argmax-correct tokens.
    """
    logits, targets, logp = _next_token_logprobs(model, batch)
    weight = jnp.where(batch["attention_mask"][:, 1:] != 0, batch["loss_mask"][:, 1:], 0)
    loss_sum = -jnp.sum(jnp.where(weight > 0, weight * logp, 0.0))
    correct = jnp.argmax(logits, axis=-1) == targets
    metrics = {"accuracy_sum": jnp.sum(jnp.where(correct, weight, 0), dtype=jnp.float32)}
    return loss_sum, jnp.sum(weight, dtype=jnp.int32), metrics


def sapo_objective(
    model, batch: Mapping[str, Any], *, clip_eps: float, kl_beta: float, entropy: bool = False
):
    """SAPO's clipped-ratio + k3-KL loss (`rl.losses.sapo_loss`) on a batch of rollouts.

    Bind the hyperparameters with ``functools.partial(sapo_objective, clip_eps=0.2,
    kl_beta=0.04)`` before handing it to `make_train_step`.

    Args:
      model: the policy (draft) `Qwen3VL`.
      batch: `prepare_batch` dict of rollouts: ``input_ids`` ``[b, t]`` (prompt and
        completion), ``old_logp`` and ``ref_logp`` ``[b, t]`` (log-probs of each token
        under the sampling and the reference policy), ``mask`` ``[b, t]`` (1 on completion
        tokens) and ``advantages`` ``[b]`` (`group_advantages`, flattened).
      clip_eps: ε of the ratio clip.
      kl_beta: β of the KL penalty.
      entropy: also report the mean token entropy (costs one softmax over ``[b, t, v]``).

    Returns:
      `sapo_loss`'s ``(loss_sum, token_count, metric_sums)``.
    """
    logits, _, logp = _next_token_logprobs(model, batch)
    mask = (batch["mask"][:, 1:] != 0) & (batch["attention_mask"][:, 1:] != 0)
    return sapo_loss(
        logp,
        batch["old_logp"][:, 1:],
        batch["ref_logp"][:, 1:],
        batch["advantages"],
        mask,
        clip_eps=clip_eps,
        kl_beta=kl_beta,
        entropy=token_entropy(logits) if entropy else None,
    )
