"""Small on-disk fixtures shared by tests (import as `from fixtures import ...`)."""

from __future__ import annotations

import os
from pathlib import Path

#: Qwen special tokens, in id order 0..6 of the tiny tokenizer.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: A Qwen3-VL-style chat template, trimmed to what prompts here use (no tools, no thinking).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}"
    "{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    hf_tokenizer = Qwen2TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save_pretrained(path)
    return path
