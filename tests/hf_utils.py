"""Helpers for the Hugging Face parity tests (import as `from hf_utils import ...`).

transformers' PyTorch Qwen3-VL is the oracle: we build it from one of our configs, give it
weights whose every tensor matters (norm scales and biases away from 1 and 0, linear weights
of unit-gain scale so that attention logits are O(1) even without QK-norm), save it, and
compare our model's logits with its logits on random multimodal prompts.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from dreamr_jax.models import config as config_lib
from dreamr_jax.models import positions, vision
from dreamr_jax.models.config import ModelConfig

Grid = tuple[int, int, int]  # (t, h, w) in patches, as image_grid_thw rows


def hf_config(cfg: ModelConfig) -> Qwen3VLConfig:
    """transformers' config for ``cfg``."""
    return Qwen3VLConfig(**config_lib.to_hf_dict(cfg))


def build_hf_model(cfg: ModelConfig, seed: int = 0) -> Qwen3VLForConditionalGeneration:
    """A transformers Qwen3-VL for ``cfg`` with random weights that expose misplacement.

    Eager attention: the plainest reference (and the one the block tests call directly).

    Norm scales are ``1 + 0.2 N(0, 1)``, biases ``0.2 N(0, 1)``, matrices ``N(0, 1/fan_in)``,
    so a swapped, transposed or dropped tensor changes the logits by far more than 1e-4.
    """
    model = Qwen3VLForConditionalGeneration._from_config(
        hf_config(cfg), attn_implementation="eager"
    ).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / float(np.prod(p.shape[1:])) ** 0.5)
    return model


def save_hf_checkpoint(model: Qwen3VLForConditionalGeneration, path: Path) -> Path:
    """``model.save_pretrained(path)`` as safetensors; returns ``path``."""
    model.save_pretrained(path, safe_serialization=True)
    return Path(path)


def merged_tokens(grid: Grid, cfg: ModelConfig) -> int:
    """Image placeholder tokens for one image: t * h * w / merge**2."""
    t, h, w = grid
    return t * h * w // cfg.vision.spatial_merge_size**2


def make_prompts(
    cfg: ModelConfig, rows: Sequence[Sequence[Grid]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random left-padded prompts, one per row, each holding the images listed for it.

    Every image is ``<vision_start> <image>*N <vision_end>`` between random text tokens
    (drawn below the special ids); rows get different lengths so that padding occurs.

    Returns:
      ``(input_ids [b, t] int64, attention_mask [b, t] int64, image_grid_thw [n, 3] or None)``.
    """
    text_vocab = min(
        cfg.image_token_id,
        cfg.video_token_id,
        cfg.vision_start_token_id,
        cfg.vision_end_token_id,
    )

    def text(n):
        return list(rng.integers(0, text_vocab, n))

    seqs, grids = [], []
    for r, images in enumerate(rows):
        ids = text(3 + 2 * r)
        for grid in images:
            ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * merged_tokens(grid, cfg)
            ids += [cfg.vision_end_token_id] + text(2)
            grids.append(grid)
        seqs.append(ids + text(4))
    length = max(len(s) for s in seqs)
    input_ids = np.zeros((len(seqs), length), np.int64)
    mask = np.zeros((len(seqs), length), np.int64)
    for r, s in enumerate(seqs):
        input_ids[r, length - len(s) :] = s
        mask[r, length - len(s) :] = 1
    return input_ids, mask, (np.asarray(grids, np.int64) if grids else None)


def make_pixels(cfg: ModelConfig, grids, rng: np.random.Generator) -> np.ndarray | None:
    """Random normalised, patchified pixels ``[sum(t*h*w), patch_dim]`` for ``grids``."""
    if grids is None:
        return None
    n = int(np.prod(np.asarray(grids), axis=1).sum())
    return rng.standard_normal((n, cfg.vision.patch_dim)).astype(np.float32)


def hf_logits(model, input_ids, mask, pixels=None, grids=None) -> np.ndarray:
    """transformers' logits ``[b, t, v]`` as float32 NumPy."""
    kw = {}
    if pixels is not None:
        kw = dict(
            pixel_values=torch.from_numpy(pixels).to(model.dtype),
            image_grid_thw=torch.from_numpy(np.asarray(grids)),
        )
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(mask),
            use_cache=False,
            **kw,
        )
    return out.logits.float().numpy()


@functools.partial(jax.jit, static_argnums=0)
def _forward_logits(graphdef, state, input_ids, positions_3bt, mask, vision_inputs):
    model = nnx.merge(graphdef, state)
    return model.forward(input_ids, positions_3bt, mask, vision=vision_inputs).logits


def our_logits(model, input_ids, mask, pixels=None, grids=None, *, jit: bool = True):
    """Our logits ``[b, t, v]`` as float32 NumPy.

    ``jit=False`` calls the eager Hugging Face-style ``model(...)``; the default prepares
    the same host-side metadata and runs the jitted array API (`Qwen3VL.forward`), which
    compiles once per shape instead of once per op and shape.
    """
    if not jit:
        out = model(input_ids, pixel_values=pixels, image_grid_thw=grids, attention_mask=mask)
        return np.asarray(out.logits, np.float32)
    cfg = model.cfg
    vin = None if pixels is None else vision.vision_inputs(pixels, grids, cfg.vision)
    pos, _ = positions.rope_index(input_ids, grids, mask, cfg)
    graphdef, state = nnx.split(model)
    logits = _forward_logits(
        graphdef, state, jnp.asarray(input_ids), jnp.asarray(pos), jnp.asarray(mask), vin
    )
    return np.asarray(logits, np.float32)


def max_abs_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Largest ``|a - b|``, over the positions where ``mask`` (``[b, t]``) is nonzero."""
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if mask is not None:
        diff = diff[np.asarray(mask).astype(bool)]
    return float(diff.max())


def dir_hashes(path: Path) -> dict[str, str]:
    """Relative file name -> sha256 of every file under ``path``."""
    path = Path(path)
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }
