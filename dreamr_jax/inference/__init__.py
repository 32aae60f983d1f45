"""Inference primitives: KV-cached prefill/decode and sampling."""

from dreamr_jax.inference.generate import (
    CacheTooShort,
    GenerateOutput,
    PromptBatch,
    bucket,
    decode,
    generate,
    make_batch,
    prefill,
    truncate_at_stop,
)
from dreamr_jax.inference.sampling import SamplingConfig, sample

__all__ = [
    "CacheTooShort",
    "GenerateOutput",
    "PromptBatch",
    "SamplingConfig",
    "bucket",
    "decode",
    "generate",
    "make_batch",
    "prefill",
    "sample",
    "truncate_at_stop",
]
