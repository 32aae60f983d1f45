"""The full Qwen3-VL model: vision tower, text decoder and LM head.

Two ways in:

* ``model(input_ids, pixel_values=..., image_grid_thw=..., attention_mask=...)`` mirrors
  the Hugging Face forward (host arrays in, ``.logits [b, t, v]`` out). It prepares the
  host-side metadata itself, so it is the convenient, eager entry point.
* `Qwen3VL.forward` takes only arrays (position ids, `VisionInputs`, an optional
  `KVCache`) and is what jitted code (prefill, decode, training) calls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from dreamr_jax.models.config import ModelConfig
from dreamr_jax.models.layers import Dense
from dreamr_jax.models.positions import PromptImageMismatch, rope_index
from dreamr_jax.models.text import KVCache, TextModel
from dreamr_jax.models.vision import VisionInputs, VisionModel, num_merged_tokens, vision_inputs


@struct.dataclass
class ModelOutput:
    """``logits``: ``[b, t, v]``; ``cache``: the updated KV cache, if one was given."""

    logits: jax.Array
    cache: KVCache | None = None


class Qwen3VL(nnx.Module):
    """Dense Qwen3-VL (``Qwen3VLForConditionalGeneration`` in transformers)."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.dtype = dtype
        self.visual = VisionModel(cfg.vision, dtype=dtype, rngs=rngs)
        self.language_model = TextModel(cfg.text, dtype=dtype, rngs=rngs)
        d, v = cfg.text.hidden_size, cfg.text.vocab_size
        self.lm_head = (
            None
            if cfg.text.tie_word_embeddings
            else Dense((d,), (v,), ("embed",), ("vocab",), use_bias=False, dtype=dtype, rngs=rngs)
        )

    # ---------------------------------------------------------------- array API (jittable)

    def embed(self, input_ids_bt, attention_mask_bt, vision: VisionInputs | None = None):
        """Token embeddings with image features scattered into the image placeholders.

        Image token ``j`` (counting real tokens row-major over the batch) receives merged
        feature ``j``; image ids in padding slots are ignored.

        Returns:
          ``(x_btd, deepstack)`` with ``deepstack = (visual_mask_bt, [x_btd per layer])``
          or None without images.
        """
        x = self.language_model.embed_tokens(input_ids_bt)
        if vision is None:
            return x, None
        feats, deep = self.visual(vision)
        is_img = (input_ids_bt == self.cfg.image_token_id) & attention_mask_bt
        flat = jnp.cumsum(is_img.reshape(-1)) - 1
        idx = jnp.clip(flat, 0, feats.shape[0] - 1).reshape(is_img.shape)
        x = jnp.where(is_img[..., None], jnp.take(feats, idx, axis=0).astype(x.dtype), x)
        deep_btd = [jnp.take(f, idx, axis=0).astype(x.dtype) for f in deep]
        return x, (is_img, deep_btd)

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        """LM head (tied or not), ``[..., d] -> [..., v]``."""
        if self.lm_head is None:
            return self.language_model.embed_tokens.attend(hidden_btd)
        return self.lm_head(hidden_btd)

    def forward(
        self,
        input_ids_bt,
        positions_3bt,
        attention_mask_bt,
        *,
        vision: VisionInputs | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        chunk_mask_btt=None,
    ):
        """Forward pass on arrays.

        Args:
          input_ids_bt: ``[b, t]`` token ids.
          positions_3bt: ``[3, b, t]`` multimodal position ids (`rope_index`).
          attention_mask_bt: ``[b, t]``, nonzero for real tokens.
          vision: image inputs for the image tokens of ``input_ids_bt``, or None.
          cache: optional KV cache; the chunk is written at ``cache.index``.
          return_hidden: return final hidden states ``[b, t, d]`` instead of logits (lets
            callers apply the LM head to a few positions only).
          chunk_mask_btt: optional ``[b, t, t]`` attention mask within the chunk (default
            causal); see `TextModel`.

        Returns:
          `ModelOutput` with logits (or hidden states) and the updated cache.
        """
        mask = attention_mask_bt.astype(bool)
        x, deepstack = self.embed(input_ids_bt, mask, vision)
        hidden, cache = self.language_model(
            x, positions_3bt, mask, cache=cache, deepstack=deepstack, chunk_mask_btt=chunk_mask_btt
        )
        return ModelOutput(logits=hidden if return_hidden else self.logits(hidden), cache=cache)

    # ------------------------------------------------------------- Hugging Face-style API

    def __call__(
        self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None
    ) -> ModelOutput:
        """Same meaning as ``Qwen3VLForConditionalGeneration.forward`` (no cache).

        Host arrays in; compiled once per input shape. Inside jitted code call `forward`.

        Args:
          input_ids: ``[b, t]`` token ids with image placeholders already expanded (as the
            processor returns them).
          pixel_values: ``[num_patches, patch_dim]`` from the image processor, or None.
          image_grid_thw: ``[num_images, 3]``, required with ``pixel_values``.
          attention_mask: ``[b, t]``, 1 for real tokens, 0 for padding; None = all ones.

        Returns:
          `ModelOutput` whose ``logits`` are ``[b, t, vocab]`` float.
        """
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq]; got shape {ids.shape}.")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}.")
        check_image_inputs(ids, mask, pixel_values, image_grid_thw, self.cfg)
        vision = None
        if pixel_values is not None:
            vision = vision_inputs(pixel_values, image_grid_thw, self.cfg.vision)
        positions, _ = rope_index(ids, image_grid_thw, mask, self.cfg)
        graphdef, state = nnx.split(self)
        logits = _forward_logits(graphdef, state, ids, positions, mask, vision)
        return ModelOutput(logits=logits)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward_logits(graphdef, state, ids, positions, mask, vision):
    """`Qwen3VL.forward` compiled once per input shape (op-by-op eager dispatch of a whole
    VLM takes seconds per call on CPU)."""
    return nnx.merge(graphdef, state).forward(ids, positions, mask, vision=vision).logits


def check_image_inputs(
    input_ids, attention_mask, pixel_values, image_grid_thw, cfg: ModelConfig
) -> None:
    """Host-side check that the image arguments agree with each other and the prompt.

    Raises:
      PromptImageMismatch: pixels without a grid (or the reverse), image tokens without
        pixels, or an image-token count different from the merged patch count that
        ``image_grid_thw`` implies.
    """
    if (pixel_values is None) != (image_grid_thw is None):
        given, absent = (
            ("pixel_values", "image_grid_thw")
            if image_grid_thw is None
            else ("image_grid_thw", "pixel_values")
        )
        raise PromptImageMismatch(f"{given} given without {absent}; pass both or neither.")
    ids = np.asarray(input_ids)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    n_tokens = int(np.sum((ids == cfg.image_token_id) & (mask == 1)))
    if pixel_values is None:
        if n_tokens:
            raise PromptImageMismatch(
                f"the prompt has {n_tokens} image tokens but no pixel_values were given."
            )
        return
    n_feats = int(num_merged_tokens(image_grid_thw, cfg.vision).sum())
    if n_tokens != n_feats:
        raise PromptImageMismatch(
            f"the prompt has {n_tokens} image tokens but image_grid_thw "
            f"{np.asarray(image_grid_thw).tolist()} gives {n_feats} image features "
            f"(t*h*w/{cfg.vision.spatial_merge_size**2} per image); expand each image "
            "placeholder with the processor that produced pixel_values."
        )
