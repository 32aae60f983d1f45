"""Image preprocessing and prompt building for Qwen3-VL checkpoints."""

from dreamr_jax.processing.image import (
    ImageProcessorConfig,
    num_image_tokens,
    preprocess_images,
    smart_resize,
)
from dreamr_jax.processing.prompt import build_prompt, load_tokenizer, pad_batch

__all__ = [
    "ImageProcessorConfig",
    "build_prompt",
    "load_tokenizer",
    "num_image_tokens",
    "pad_batch",
    "preprocess_images",
    "smart_resize",
]
