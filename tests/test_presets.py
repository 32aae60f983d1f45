"""Published Qwen3-VL presets: our parameter count equals transformers' for the same config.

Shapes only: `nnx.eval_shape` on our side and the meta device on transformers' side, so the
32B preset costs no memory.
"""

from __future__ import annotations

import math

import jax
import pytest
import torch
from flax import nnx
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from dreamr_jax.models import config as config_lib
from dreamr_jax.models.qwen3_vl import Qwen3VL

#: Parameters of the published checkpoints: ``metadata.total_size`` of each Qwen/Qwen3-VL-*B
#: ``model.safetensors.index.json`` (all tensors bf16, a tied head stored once) divided by 2.
#: E.g. 8B: 17,534,247,392 bytes; 32B: 66,714,780,128 bytes.
PUBLISHED = {
    "qwen3-vl-2b": 2_127_532_032,
    "qwen3-vl-4b": 4_437_815_808,
    "qwen3-vl-8b": 8_767_123_696,
    "qwen3-vl-32b": 33_357_390_064,
}


def our_param_count(cfg: config_lib.ModelConfig) -> int:
    abstract = nnx.eval_shape(lambda: Qwen3VL(cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def hf_param_count(cfg: config_lib.ModelConfig) -> int:
    """Unique parameters (a tied head counts once) of transformers' model, on the meta device."""
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**config_lib.to_hf_dict(cfg)))
    return sum(p.numel() for p in model.parameters())  # parameters() skips shared tensors


@pytest.mark.parametrize("name", config_lib.PRESETS)
def test_preset_param_count_matches_transformers(name):
    cfg = config_lib.PRESETS[name]
    ours = our_param_count(cfg)
    print(f"{name}: {ours:,} parameters ({ours / 1e9:.2f}B)")
    assert ours == hf_param_count(cfg)
    assert ours == PUBLISHED[name]


def test_every_preset_has_a_published_count():
    assert set(config_lib.PRESETS) == set(PUBLISHED)
