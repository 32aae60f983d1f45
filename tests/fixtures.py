"""Small on-disk fixtures shared by tests (import as `from fixtures import ...`)."""

from __future__ import annotations

import os
from pathlib import Path

from dreamr_jax.data.tokenizer_train import train_tokenizer

_CORPUS = (
    "You are a helpful assistant.\n",
    "Describe the picture. What colour is the square? Count the circles in both images.\n\n",
    "system user assistant The answer is 42. Step 1: look. Step 2: reason.",
)


def make_tiny_tokenizer(path: str | os.PathLike, vocab_size: int = 400) -> Path:
    """Writes a tiny byte-level BPE `Qwen2TokenizerFast` with Qwen special tokens to `path`.

    Loadable with `transformers.AutoTokenizer.from_pretrained(path)`; any text round-trips
    (byte-level), the special tokens are single ids, and the chat template emits
    `<|vision_start|><|image_pad|><|vision_end|>` for image items. Deterministic.

    Args:
        path: Directory to create (parents too).
        vocab_size: BPE vocabulary size, special tokens and the 256 byte symbols included.

    Returns:
        `path` as a `Path`.
    """
    hf_tokenizer = train_tokenizer(_CORPUS, vocab_size=vocab_size)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save_pretrained(path)
    return path
