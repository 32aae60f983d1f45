"""Qwen3-VL vision tower: patch embedding, interpolated learned positions, 2D-rotary blocks,
the 2x2 patch merger and the DeepStack mergers.

All images of a batch travel as one flat sequence of patches ``[p, patch_dim]`` (the
processor's layout, each 2x2 merge block contiguous). Everything that depends on the image
sizes (position-table interpolation, rotary coordinates, which image a patch belongs to) is
computed on the host by `vision_inputs` from ``image_grid_thw``, so the jitted tower only
sees arrays of a static (bucketed) length ``p``; padding patches have segment id -1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from dreamr_jax.models.config import VisionConfig
from dreamr_jax.models.layers import Dense, Embed, LayerNorm, apply_rope, attend


@struct.dataclass
class VisionInputs:
    """Device-side inputs of the vision tower for ``p`` patches (real ones first).

    Attributes:
      pixel_values: ``[p, patch_dim]`` normalised, patchified pixels.
      pos_index: ``[4, p]`` int32 rows of the learned position table (bilinear corners).
      pos_weight: ``[4, p]`` float32 bilinear weights.
      rope_pos: ``[p, 2]`` int32 (row, col) of each patch in its image's patch grid.
      segment_ids: ``[p]`` int32 index of the image (frame) a patch belongs to; -1 = padding.
    """

    pixel_values: jax.Array
    pos_index: jax.Array
    pos_weight: jax.Array
    rope_pos: jax.Array
    segment_ids: jax.Array

    @property
    def num_patches(self) -> int:
        return self.pixel_values.shape[0]


def vision_inputs(
    pixel_values, image_grid_thw, cfg: VisionConfig, *, pad_to: int | None = None
) -> VisionInputs:
    """Host-side preparation of `VisionInputs` from processor outputs.

    Args:
      pixel_values: ``[p, patch_dim]`` as produced by the Qwen3-VL image processor.
      image_grid_thw: ``[num_images, 3]`` (t, h, w) patch grid of each image.
      cfg: the vision config.
      pad_to: pad the patch axis to this static length (a multiple of merge_size**2).

    Raises:
      ValueError: if the patch count or patch size disagrees with ``image_grid_thw``.
    """
    host = host_vision_inputs(pixel_values, image_grid_thw, cfg, pad_to=pad_to)
    return jax.tree.map(jnp.asarray, host)


def host_vision_inputs(
    pixel_values, image_grid_thw, cfg: VisionConfig, *, pad_to: int | None = None
) -> VisionInputs:
    """`vision_inputs` as NumPy arrays (for data pipelines that stack rows on the host).

    The index arrays depend only on the image grid, so they are computed once per grid
    (`_grid_layout`) and shared by every image of that size.
    """
    grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    pixels = np.asarray(pixel_values)
    m = cfg.spatial_merge_size
    total = int(np.prod(grid, axis=1).sum())
    if pixels.ndim != 2 or pixels.shape[1] != cfg.patch_dim:
        raise ValueError(
            f"pixel_values has shape {pixels.shape}; expected [num_patches, {cfg.patch_dim}] "
            f"(channels*temporal_patch*patch*patch = {cfg.in_channels}*"
            f"{cfg.temporal_patch_size}*{cfg.patch_size}*{cfg.patch_size})."
        )
    if pixels.shape[0] != total:
        raise ValueError(
            f"pixel_values has {pixels.shape[0]} patches but image_grid_thw "
            f"{grid.tolist()} describes {total}."
        )
    if np.any(grid[:, 1:] % m):
        raise ValueError(
            f"image_grid_thw {grid.tolist()}: h and w must be multiples of spatial_merge_size={m}."
        )
    if pad_to is not None and (pad_to < total or pad_to % (m * m)):
        raise ValueError(f"pad_to={pad_to} must be >= {total} patches and a multiple of {m * m}.")
    idx, wts, rope, seg = _grid_layout(
        tuple(map(tuple, grid.tolist())), m, cfg.grid_side, total if pad_to is None else pad_to
    )
    if pad_to is not None:
        pixels = np.pad(pixels, ((0, pad_to - total), (0, 0)))
    return VisionInputs(
        pixel_values=pixels, pos_index=idx, pos_weight=wts, rope_pos=rope, segment_ids=seg
    )


@functools.lru_cache(maxsize=256)
def _grid_layout(grid: tuple[tuple[int, int, int], ...], m: int, side: int, length: int):
    """``(pos_index, pos_weight, rope_pos, segment_ids)`` of images ``grid`` padded to
    ``length`` patches; read-only arrays, cached per grid."""
    idx, wts, rope, seg = [], [], [], []
    frame = 0
    for t, h, w in grid:
        i4, w4 = _interpolation(h, w, side)
        coords = np.stack(
            [np.arange(h)[:, None].repeat(w, 1), np.arange(w)[None, :].repeat(h, 0)], axis=-1
        )  # [h, w, 2]
        for _ in range(t):
            idx.append(_merge_order(i4.reshape(4, h, w), m, axis0=1))
            wts.append(_merge_order(w4.reshape(4, h, w), m, axis0=1))
            rope.append(_merge_order(coords, m, axis0=0))
            seg.append(np.full(h * w, frame, np.int32))
            frame += 1
    extra = length - sum(t * h * w for t, h, w in grid)
    out = (
        np.pad(np.concatenate(idx, 1), ((0, 0), (0, extra))).astype(np.int32),
        np.pad(np.concatenate(wts, 1), ((0, 0), (0, extra))).astype(np.float32),
        np.pad(np.concatenate(rope, 0), ((0, extra), (0, 0))).astype(np.int32),
        np.pad(np.concatenate(seg, 0), (0, extra), constant_values=-1).astype(np.int32),
    )
    for a in out:
        a.flags.writeable = False
    return out


def _interpolation(h: int, w: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear corner indices and weights ``[4, h*w]`` into a ``side x side`` table
    (float32 arithmetic, as the reference)."""
    hs = np.linspace(0, side - 1, h, dtype=np.float32)
    ws = np.linspace(0, side - 1, w, dtype=np.float32)
    h0, w0 = hs.astype(np.int64), ws.astype(np.int64)
    h1, w1 = np.minimum(h0 + 1, side - 1), np.minimum(w0 + 1, side - 1)
    dh, dw = (hs - h0).astype(np.float32), (ws - w0).astype(np.float32)
    index = [
        h0[:, None] * side + w0[None],
        h0[:, None] * side + w1[None],
        h1[:, None] * side + w0[None],
        h1[:, None] * side + w1[None],
    ]
    weight = [
        (1 - dh)[:, None] * (1 - dw)[None],
        (1 - dh)[:, None] * dw[None],
        dh[:, None] * (1 - dw)[None],
        dh[:, None] * dw[None],
    ]
    return (
        np.stack([i.reshape(-1) for i in index]),
        np.stack([x.reshape(-1) for x in weight]).astype(np.float32),
    )


def _merge_order(x: np.ndarray, m: int, axis0: int) -> np.ndarray:
    """Reorders an ``[.., h, w, ..]`` grid (h at ``axis0``) into merge-block order: block
    rows, block cols, then the m x m patches inside each block; flattens those axes."""
    shape = x.shape
    h, w = shape[axis0], shape[axis0 + 1]
    lead, tail = shape[:axis0], shape[axis0 + 2 :]
    x = x.reshape(*lead, h // m, m, w // m, m, *tail)
    a = len(lead)
    perm = list(range(a)) + [a, a + 2, a + 1, a + 3] + list(range(a + 4, x.ndim))
    return x.transpose(perm).reshape(*lead, h * w, *tail)


class VisionBlock(nnx.Module):
    """Pre-norm transformer block with 2D rotary, block-diagonal (per image) attention."""

    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        dense = functools.partial(Dense, dtype=dtype, rngs=rngs)
        d, n, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.act_approximate = cfg.hidden_act == "gelu_pytorch_tanh"
        self.norm1 = LayerNorm(d, eps=1e-6, dtype=dtype, rngs=rngs)
        self.norm2 = LayerNorm(d, eps=1e-6, dtype=dtype, rngs=rngs)
        self.qkv = dense((d,), (3, n, hd), ("embed",), (None, "heads", "head_dim"), use_bias=True)
        self.proj = dense((n, hd), (d,), ("heads", "head_dim"), ("embed",), use_bias=True)
        self.fc1 = dense((d,), (cfg.intermediate_size,), ("embed",), ("mlp",), use_bias=True)
        self.fc2 = dense((cfg.intermediate_size,), (d,), ("mlp",), ("embed",), use_bias=True)

    def __call__(self, x_pd, cos, sin, mask_pp):
        qkv = self.qkv(self.norm1(x_pd))  # [p, 3, n, hd]
        q, k, v = (qkv[:, i][None] for i in range(3))  # [1, p, n, hd]
        q, k = apply_rope(q, cos[None], sin[None]), apply_rope(k, cos[None], sin[None])
        x_pd = x_pd + self.proj(attend(q, k, v, mask_pp[None])[0])
        hid = jax.nn.gelu(self.fc1(self.norm2(x_pd)), approximate=self.act_approximate)
        return x_pd + self.fc2(hid)


class PatchMerger(nnx.Module):
    """Merges each 2x2 block of patches into one text-width token.

    ``postshuffle`` (DeepStack mergers) normalises the concatenated block instead of each
    patch.
    """

    def __init__(self, cfg: VisionConfig, *, postshuffle: bool, dtype, rngs: nnx.Rngs):
        dense = functools.partial(Dense, dtype=dtype, rngs=rngs)
        d, m2 = cfg.hidden_size, cfg.spatial_merge_size**2
        self.width = d * m2
        self.postshuffle = postshuffle
        self.norm = LayerNorm(self.width if postshuffle else d, eps=1e-6, dtype=dtype, rngs=rngs)
        self.fc1 = dense((self.width,), (self.width,), ("embed",), ("mlp",), use_bias=True)
        self.fc2 = dense((self.width,), (cfg.out_hidden_size,), ("mlp",), ("embed",), use_bias=True)

    def __call__(self, x_pd):
        if self.postshuffle:
            x = self.norm(x_pd.reshape(-1, self.width))
        else:
            x = self.norm(x_pd).reshape(-1, self.width)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionModel(nnx.Module):
    """The vision tower. Returns merged features and one DeepStack feature per merger."""

    def __init__(self, cfg: VisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        dense = functools.partial(Dense, dtype=dtype, rngs=rngs)
        self.cfg = cfg
        self.patch_embed = dense(
            (cfg.patch_dim,), (cfg.hidden_size,), (None,), ("embed",), use_bias=True
        )
        self.pos_embed = Embed(
            cfg.num_position_embeddings,
            cfg.hidden_size,
            axes=(None, "embed"),
            dtype=dtype,
            rngs=rngs,
        )
        self.blocks = nnx.List([VisionBlock(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, postshuffle=False, dtype=dtype, rngs=rngs)
        self.deepstack_mergers = nnx.List(
            [
                PatchMerger(cfg, postshuffle=True, dtype=dtype, rngs=rngs)
                for _ in cfg.deepstack_visual_indexes
            ]
        )

    def __call__(self, inputs: VisionInputs) -> tuple[jax.Array, list[jax.Array]]:
        """Encodes all patches.

        Returns:
          ``(features [p / m^2, out_hidden], [deepstack features [p / m^2, out_hidden]])``.
        """
        cfg = self.cfg
        x = self.patch_embed(inputs.pixel_values)
        table = self.pos_embed.embedding[...]
        pos = jnp.einsum(
            "cp,cpd->pd",
            inputs.pos_weight.astype(table.dtype),
            jnp.take(table, inputs.pos_index, axis=0),
        )
        x = x + pos.astype(x.dtype)
        cos, sin = _vision_rope(inputs.rope_pos, cfg.head_dim)
        seg = inputs.segment_ids
        mask = (seg[:, None] == seg[None, :]) & (seg[:, None] >= 0)
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask)
            if i in cfg.deepstack_visual_indexes:
                j = cfg.deepstack_visual_indexes.index(i)
                deepstack.append(self.deepstack_mergers[j](x))
        return self.merger(x), deepstack


def _vision_rope(rope_pos: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """cos/sin ``[p, head_dim]``: half the rotary frequencies follow the row, half the col."""
    dim = head_dim // 2
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    freqs = rope_pos.astype(jnp.float32)[:, :, None] * inv_freq  # [p, 2, dim/2]
    freqs = freqs.reshape(rope_pos.shape[0], dim)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def num_merged_tokens(image_grid_thw, cfg: VisionConfig) -> np.ndarray:
    """Text tokens each image becomes: ``t * h * w / merge_size**2``."""
    grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    return np.prod(grid, axis=1) // cfg.spatial_merge_size**2
