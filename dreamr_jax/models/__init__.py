"""Qwen3-VL model family in Flax NNX (draft, target and reference share this code)."""

from dreamr_jax.models.config import PRESETS, ConfigError, ModelConfig, TextConfig, VisionConfig
from dreamr_jax.models.positions import PromptImageMismatch, rope_index
from dreamr_jax.models.qwen3_vl import ModelOutput, Qwen3VL
from dreamr_jax.models.text import KVCache
from dreamr_jax.models.vision import VisionInputs, vision_inputs

__all__ = [
    "PRESETS",
    "ConfigError",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "PromptImageMismatch",
    "Qwen3VL",
    "TextConfig",
    "VisionConfig",
    "VisionInputs",
    "rope_index",
    "vision_inputs",
]
