"""A byte-level tokenizer with the Qwen3-VL special tokens and a Qwen-style chat template.

The built-in small models use it so that they and real Qwen3-VL checkpoints go through one
prompt-building path (`transformers.AutoTokenizer` on a model directory). Every byte is a
token, so any text round-trips exactly; no training data is needed.
"""

from __future__ import annotations

import os

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen3-VL-style ChatML, trimmed to what prompts here use (no tools, no thinking). An image
# item renders as <|vision_start|><|image_pad|><|vision_end|>, which prompt building expands
# to one <|image_pad|> per merged image patch.
CHAT_TEMPLATE = (
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


def as_qwen_tokenizer(tokenizer):
    """Wraps a `tokenizers.Tokenizer` (holding `SPECIAL_TOKENS`) as the Hugging Face class
    of real Qwen3-VL tokenizers: eos ``<|im_end|>``, pad ``<|endoftext|>``, no unk token,
    `CHAT_TEMPLATE`."""
    from transformers import Qwen2TokenizerFast

    return Qwen2TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
    )


def byte_tokenizer():
    """A `transformers.Qwen2TokenizerFast` (the class of real Qwen3-VL tokenizers) over the
    256 bytes plus the special tokens (ids 256..262), with `CHAT_TEMPLATE`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return as_qwen_tokenizer(tok)


def save_byte_tokenizer(path: str | os.PathLike):
    """Writes `byte_tokenizer` in Hugging Face format into ``path``; returns the tokenizer."""
    tok = byte_tokenizer()
    tok.save_pretrained(os.fspath(path))
    return tok
