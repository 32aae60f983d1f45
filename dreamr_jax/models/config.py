"""Typed configuration of the dense Qwen3-VL model family.

The real checkpoint's ``config.json`` is always the source of truth (`from_hf_dict`); the
presets here reproduce the published 2B/4B/8B/32B architectures for shape tests, parameter
counts and defaults. Field names follow our glossary; `to_hf_dict` writes the transformers
4.57 layout (``rope_scaling``) and `from_hf_dict` also reads the 5.x layout
(``rope_parameters``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dreamr_jax.config import ConfigError  # one error type for run and model configs

_TEXT_ACTIVATIONS = ("silu",)
_VISION_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")
SUPPORTED_MODEL_TYPES = ("qwen3_vl",)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Qwen3 text decoder.

    Attributes:
      vocab_size: rows of the token embedding and the LM head (v).
      hidden_size: residual width (d).
      intermediate_size: SwiGLU hidden width.
      num_layers: decoder layers.
      num_heads: query heads (n).
      num_kv_heads: key/value heads (k); GQA when k < n, n % k == 0.
      head_dim: per-head width (h); need not equal d / n.
      rms_norm_eps: epsilon of every RMSNorm (also the QK-norms).
      rope_theta: base of the rotary frequencies.
      mrope_section: how the h/2 rotary frequencies are split between temporal, height and
        width position ids (interleaved, as Qwen3-VL does); must sum to h/2.
      max_position_embeddings: longest position the checkpoint was trained for.
      attention_bias: whether q/k/v/o projections have biases (False for Qwen3-VL).
      tie_word_embeddings: LM head shares the token embedding matrix.
      hidden_act: MLP activation; only "silu" exists in Qwen3-VL.
    """

    vocab_size: int = 151936
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    max_position_embeddings: int = 262144
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    hidden_act: str = "silu"

    def validate(self) -> None:
        _positive(
            self,
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "rope_theta",
        )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"text num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}; GQA needs n % k == 0."
            )
        if self.head_dim % 2:
            raise ConfigError(f"text head_dim={self.head_dim} must be even for rotary embeddings.")
        if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2:
            raise ConfigError(
                f"mrope_section={list(self.mrope_section)} must have 3 entries summing to "
                f"head_dim/2={self.head_dim // 2}."
            )
        if self.hidden_act not in _TEXT_ACTIVATIONS:
            raise ConfigError(
                f"text hidden_act={self.hidden_act!r} is not supported; use one of "
                f"{_TEXT_ACTIVATIONS}."
            )


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Qwen3-VL vision tower.

    Attributes:
      depth: vision transformer blocks.
      hidden_size: vision width.
      intermediate_size: vision MLP hidden width.
      num_heads: vision attention heads (head dim = hidden_size / num_heads).
      in_channels: image channels (3).
      patch_size: spatial patch side in pixels (16).
      temporal_patch_size: frames per patch (2; a still image is repeated).
      spatial_merge_size: side of the square of patches merged into one LLM token (2).
      out_hidden_size: merger output width; equals the text hidden_size.
      num_position_embeddings: learned position table size, a square (e.g. 48 * 48).
      deepstack_visual_indexes: vision blocks whose outputs feed DeepStack mergers; the
        i-th merger's output is added to the text hidden states after decoder layer i.
      hidden_act: vision MLP activation.
    """

    depth: int = 24
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 2560
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (5, 11, 17)
    hidden_act: str = "gelu_pytorch_tanh"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Flattened length of one patch: channels * temporal * patch * patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def grid_side(self) -> int:
        """Side of the learned position-embedding grid."""
        return int(round(self.num_position_embeddings**0.5))

    def validate(self) -> None:
        _positive(
            self,
            "depth",
            "hidden_size",
            "intermediate_size",
            "num_heads",
            "in_channels",
            "patch_size",
            "temporal_patch_size",
            "spatial_merge_size",
            "out_hidden_size",
            "num_position_embeddings",
        )
        if self.hidden_size % self.num_heads or self.head_dim % 4:
            raise ConfigError(
                f"vision hidden_size={self.hidden_size} / num_heads={self.num_heads} must give "
                "an integer head dim divisible by 4 (2D rotary embedding)."
            )
        if self.grid_side**2 != self.num_position_embeddings:
            raise ConfigError(
                f"vision num_position_embeddings={self.num_position_embeddings} must be a "
                "perfect square (a square grid of learned positions)."
            )
        bad = [i for i in self.deepstack_visual_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(
                f"deepstack_visual_indexes {bad} are outside the {self.depth} vision blocks."
            )
        if self.hidden_act not in _VISION_ACTIVATIONS:
            raise ConfigError(
                f"vision hidden_act={self.hidden_act!r} is not supported; use one of "
                f"{_VISION_ACTIVATIONS}."
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A whole Qwen3-VL model: text decoder, vision tower and the special token ids.

    Attributes:
      text: the text decoder.
      vision: the vision tower.
      image_token_id: placeholder token, one per merged image patch, replaced by features.
      video_token_id: placeholder for video patches (videos are not supported yet).
      vision_start_token_id: token that precedes every image's placeholders.
      vision_end_token_id: token that follows them.
    """

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        """Image/video placeholder and delimiter ids: generated text must never contain
        them (any later pass over the text would read them as an image)."""
        return (
            self.image_token_id,
            self.video_token_id,
            self.vision_start_token_id,
            self.vision_end_token_id,
        )

    def validate(self) -> ModelConfig:
        self.text.validate()
        self.vision.validate()
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ConfigError(
                f"vision out_hidden_size={self.vision.out_hidden_size} must equal text "
                f"hidden_size={self.text.hidden_size}: merged image features replace token "
                "embeddings."
            )
        if len(self.vision.deepstack_visual_indexes) > self.text.num_layers:
            raise ConfigError("more DeepStack mergers than text decoder layers.")
        for name in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            if not 0 <= getattr(self, name) < self.text.vocab_size:
                raise ConfigError(
                    f"{name}={getattr(self, name)} is outside the vocabulary "
                    f"(vocab_size={self.text.vocab_size})."
                )
        return self

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)} must be > 0.")


# --------------------------------------------------------------------------------------
# Hugging Face config.json <-> ModelConfig.

# HF key -> our field, for each section. Keys listed in _HF_IGNORED are accepted and
# dropped (training-only or bookkeeping); anything else unknown is an error.
_TEXT_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "rms_norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
    "max_position_embeddings": "max_position_embeddings",
    "attention_bias": "attention_bias",
    "tie_word_embeddings": "tie_word_embeddings",
    "hidden_act": "hidden_act",
}
_TEXT_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
_VISION_KEYS = {
    "depth": "depth",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_heads": "num_heads",
    "in_channels": "in_channels",
    "patch_size": "patch_size",
    "temporal_patch_size": "temporal_patch_size",
    "spatial_merge_size": "spatial_merge_size",
    "out_hidden_size": "out_hidden_size",
    "num_position_embeddings": "num_position_embeddings",
    "deepstack_visual_indexes": "deepstack_visual_indexes",
    "hidden_act": "hidden_act",
}
_VISION_REQUIRED = ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size")
_TOP_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_HF_IGNORED = {
    "model_type",
    "architectures",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "initializer_range",
    "attention_dropout",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "text_config",
    "vision_config",
    "_name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_return_dict",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "tf_legacy_loss",
    "pruned_heads",
    "id2label",
    "label2id",
    "problem_type",
    "tokenizer_class",
    "prefix",
    "sep_token_id",
    "decoder_start_token_id",
    "task_specific_params",
    "cross_attention_hidden_size",
    "add_cross_attention",
    "is_decoder",
    "torchscript",
    "use_bfloat16",
    "finetuning_task",
    "num_labels",
    "quantization_config",
    "video_token_id",
    "image_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "layer_types",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "rope_type",
    "keys_to_ignore_at_inference",
}


def from_hf_dict(raw: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """Builds a validated `ModelConfig` from a Hugging Face Qwen3-VL ``config.json`` dict.

    Reads both the transformers 4.57 layout (``rope_scaling`` with ``mrope_section``, top-level
    ``rope_theta``) and the 5.x layout (``rope_parameters``).

    Raises:
      ConfigError: naming the file and key when ``model_type`` is unsupported, a required
        key is missing, a key is unknown, or the values are inconsistent.
    """
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{source}: model_type={model_type!r} is not supported; dreamr-jax loads "
            f"{SUPPORTED_MODEL_TYPES} (dense Qwen3-VL). MoE Qwen3-VL is not supported yet."
        )
    for section in ("text_config", "vision_config"):
        if not isinstance(raw.get(section), dict):
            raise ConfigError(f"{source}: missing the '{section}' section.")
    text = _section(raw["text_config"], _TEXT_KEYS, _TEXT_REQUIRED, f"{source} text_config")
    vision = _section(
        raw["vision_config"], _VISION_KEYS, _VISION_REQUIRED, f"{source} vision_config"
    )
    rope = raw["text_config"].get("rope_parameters") or raw["text_config"].get("rope_scaling")
    rope = rope or raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{source}: rope_type={rope_type!r} is not supported (only 'default').")
    if "mrope_section" in rope:
        text["mrope_section"] = tuple(int(x) for x in rope["mrope_section"])
    if "rope_theta" in rope:
        text["rope_theta"] = float(rope["rope_theta"])
    if "rope_theta" not in text:
        raise ConfigError(f"{source}: no rope_theta in text_config or its rope parameters.")
    # transformers 4.57 ties the head according to text_config; older exports only set the
    # top-level flag.
    if "tie_word_embeddings" not in text:
        text["tie_word_embeddings"] = bool(raw.get("tie_word_embeddings", False))
    if "deepstack_visual_indexes" in vision:
        vision["deepstack_visual_indexes"] = tuple(vision["deepstack_visual_indexes"])
    top = {k: int(raw[k]) for k in _TOP_KEYS if k in raw}
    cfg = ModelConfig(text=TextConfig(**text), vision=VisionConfig(**vision), **top)
    try:
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _section(
    raw: dict[str, Any], keys: dict[str, str], required: tuple[str, ...], where: str
) -> dict[str, Any]:
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing required keys {missing}.")
    unknown = sorted(k for k in raw if k not in keys and k not in _HF_IGNORED)
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {unknown}; this is not a dense Qwen3-VL config "
            f"(known keys: {sorted(keys)})."
        )
    return {keys[k]: raw[k] for k in raw if k in keys}


def to_hf_dict(cfg: ModelConfig, *, dtype: str = "float32") -> dict[str, Any]:
    """The transformers 4.57 ``config.json`` dict for ``cfg`` (loadable by
    ``Qwen3VLForConditionalGeneration.from_pretrained``)."""
    t, v = cfg.text, cfg.vision
    text = {hf: getattr(t, ours) for hf, ours in _TEXT_KEYS.items()}
    text.update(
        model_type="qwen3_vl_text",
        dtype=dtype,
        attention_dropout=0.0,
        use_cache=True,
        initializer_range=0.02,
        rope_scaling={
            "rope_type": "default",
            "mrope_section": list(t.mrope_section),
            "mrope_interleaved": True,
        },
    )
    vision = {hf: getattr(v, ours) for hf, ours in _VISION_KEYS.items()}
    vision.update(
        model_type="qwen3_vl",
        initializer_range=0.02,
        deepstack_visual_indexes=list(v.deepstack_visual_indexes),
    )
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "text_config": text,
        "vision_config": vision,
        "tie_word_embeddings": t.tie_word_embeddings,
        "dtype": dtype,
        **{k: getattr(cfg, k) for k in _TOP_KEYS},
    }


# --------------------------------------------------------------------------------------
# Presets: the published dense Qwen3-VL architectures (Instruct and Thinking share them).

_VISION_SMALL = VisionConfig(
    depth=24,
    hidden_size=1024,
    intermediate_size=4096,
    num_heads=16,
    deepstack_visual_indexes=(5, 11, 17),
)
_VISION_LARGE = VisionConfig(
    depth=27,
    hidden_size=1152,
    intermediate_size=4304,
    num_heads=16,
    deepstack_visual_indexes=(8, 16, 24),
)

PRESETS: dict[str, ModelConfig] = {
    "qwen3-vl-2b": ModelConfig(
        text=TextConfig(
            hidden_size=2048,
            intermediate_size=6144,
            num_layers=28,
            num_heads=16,
            num_kv_heads=8,
            tie_word_embeddings=True,
        ),
        vision=dataclasses.replace(_VISION_SMALL, out_hidden_size=2048),
    ),
    "qwen3-vl-4b": ModelConfig(
        text=TextConfig(
            hidden_size=2560,
            intermediate_size=9728,
            num_layers=36,
            num_heads=32,
            num_kv_heads=8,
            tie_word_embeddings=True,
        ),
        vision=dataclasses.replace(_VISION_SMALL, out_hidden_size=2560),
    ),
    "qwen3-vl-8b": ModelConfig(
        text=TextConfig(
            hidden_size=4096,
            intermediate_size=12288,
            num_layers=36,
            num_heads=32,
            num_kv_heads=8,
            tie_word_embeddings=False,
        ),
        vision=dataclasses.replace(_VISION_LARGE, out_hidden_size=4096),
    ),
    "qwen3-vl-32b": ModelConfig(
        text=TextConfig(
            hidden_size=5120,
            intermediate_size=25600,
            num_layers=64,
            num_heads=64,
            num_kv_heads=8,
            tie_word_embeddings=False,
        ),
        vision=dataclasses.replace(_VISION_LARGE, out_hidden_size=5120),
    ),
}


def tiny_config(
    *,
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 3,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    vision_depth: int = 3,
    vision_hidden: int = 32,
    vision_heads: int = 2,
    deepstack: tuple[int, ...] = (0, 2),
    patch_size: int = 8,
    num_position_embeddings: int = 64,
) -> ModelConfig:
    """A small random-weight Qwen3-VL for tests, demos and benchmarks.

    The special image/vision token ids are placed at the top of the vocabulary.
    """
    half = head_dim // 2
    t_sec = half - 2 * (half // 3)
    return ModelConfig(
        text=TextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rope_theta=10000.0,
            mrope_section=(t_sec, half // 3, half // 3),
            max_position_embeddings=4096,
            tie_word_embeddings=tie_word_embeddings,
        ),
        vision=VisionConfig(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=vision_heads,
            patch_size=patch_size,
            out_hidden_size=hidden_size,
            num_position_embeddings=num_position_embeddings,
            deepstack_visual_indexes=deepstack,
        ),
        image_token_id=vocab_size - 2,
        video_token_id=vocab_size - 1,
        vision_start_token_id=vocab_size - 4,
        vision_end_token_id=vocab_size - 3,
    ).validate()
