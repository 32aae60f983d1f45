"""Host-side multimodal position ids (Qwen3-VL "M-RoPE").

Text tokens advance all three (t, h, w) ids together; an image's merged tokens get
``(offset, offset + row, offset + col)``, and the text after an image resumes at the image's
largest id + 1. These depend on token values and image sizes only, so they are computed once
per prompt in NumPy (like the image metadata) and passed to the jitted model as arrays.
"""

from __future__ import annotations

import numpy as np

from dreamr_jax.models.config import ModelConfig


class PromptImageMismatch(ValueError):
    """The image placeholders of a prompt do not match ``image_grid_thw``."""


def rope_index(
    input_ids, image_grid_thw, attention_mask, cfg: ModelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Multimodal position ids for a batch of (possibly padded) prompts.

    Args:
      input_ids: ``[b, t]`` token ids.
      image_grid_thw: ``[num_images, 3]`` for all images of the batch in order, or None.
      attention_mask: ``[b, t]`` (1 = real token) or None for no padding.
      cfg: the model config (special token ids, merge size).

    Returns:
      ``(positions [3, b, t] int32, next_pos [b] int32)``; padding positions hold 1 (as the
      reference does) and ``next_pos`` is each row's largest id + 1.

    Raises:
      PromptImageMismatch: a row's image placeholders disagree with ``image_grid_thw``.
    """
    ids = np.asarray(input_ids)
    b, t = ids.shape
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    grids = (
        np.zeros((0, 3), np.int64)
        if image_grid_thw is None
        else np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    )
    m = cfg.vision.spatial_merge_size
    positions = np.ones((3, b, t), np.int64)
    next_pos = np.zeros((b,), np.int64)
    image = 0
    for row in range(b):
        valid = mask[row] == 1
        tokens = ids[row][valid]
        starts = np.flatnonzero(tokens[:-1] == cfg.vision_start_token_id)
        n_images = int(np.sum(tokens[starts + 1] == cfg.image_token_id))
        chunks, st, nxt = [], 0, 0
        for _ in range(n_images):
            if image >= len(grids):
                raise PromptImageMismatch(
                    f"row {row}: the prompts hold more images than image_grid_thw's "
                    f"{len(grids)} rows."
                )
            gt, gh, gw = grids[image]
            gh, gw = gh // m, gw // m
            ed = st + int(np.flatnonzero(tokens[st:] == cfg.image_token_id)[0])
            chunks.append(np.arange(ed - st)[None].repeat(3, 0) + nxt)
            nxt += ed - st
            n_tok = gt * gh * gw
            if not np.all(tokens[ed : ed + n_tok] == cfg.image_token_id):
                raise PromptImageMismatch(
                    f"row {row}, image {image}: expected {n_tok} consecutive image tokens for "
                    f"grid {grids[image].tolist()} (t*h*w/{m * m}), found fewer; build the "
                    "prompt with the same image processor settings."
                )
            grid = np.stack(
                np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
            ).reshape(3, -1)
            chunks.append(grid + nxt)
            nxt = int(grid.max()) + nxt + 1
            st = ed + n_tok
            image += 1
        if np.sum(tokens[st:] == cfg.image_token_id):
            raise PromptImageMismatch(
                f"row {row}: {int(np.sum(tokens == cfg.image_token_id))} image tokens do not "
                "match the images announced by vision-start tokens and image_grid_thw."
            )
        chunks.append(np.arange(len(tokens) - st)[None].repeat(3, 0) + nxt)
        pos = np.concatenate(chunks, axis=1)
        positions[:, row, valid] = pos
        next_pos[row] = pos.max() + 1 if pos.size else 0
    if image != len(grids):
        raise PromptImageMismatch(
            f"image_grid_thw has {len(grids)} images but the prompts announce {image} "
            "(each image is <vision_start> followed by its image tokens)."
        )
    return positions.astype(np.int32), next_pos.astype(np.int32)
