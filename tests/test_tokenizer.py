"""The built-in byte-level tokenizer: exact round trips, Qwen special ids, prompt building."""

import numpy as np
from transformers import AutoTokenizer, Qwen2TokenizerFast

from dreamr_jax.processing import build_prompt, load_tokenizer
from dreamr_jax.processing.tokenizer import SPECIAL_TOKENS, save_byte_tokenizer


def test_saved_tokenizer_reloads_as_qwen_class(tmp_path):
    save_byte_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(tok, Qwen2TokenizerFast)
    assert len(tok) == 256 + len(SPECIAL_TOKENS)
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(256, 263))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_any_text_round_trips_one_token_per_byte(tmp_path):
    save_byte_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    rng = np.random.default_rng(0)
    texts = [
        "Step 1: 3 + 4 = 7.\n\nAnswer: 7",
        "é ü 日本 🙂 \t tabs",
        "".join(chr(c) for c in rng.integers(32, 0x2FFF, 200)),
    ]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == len(text.encode("utf-8"))
        assert max(ids) < 256
        assert tok.decode(ids) == text


def test_prompt_with_image_expands_placeholders(tmp_path):
    save_byte_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    ids, text = build_prompt(tok, messages, np.array([[1, 4, 6]]), merge_size=2)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert ids.count(image_id) == 6
    assert text.startswith("<|im_start|>user\n<|vision_start|>")
    assert text.endswith("Hi<|im_end|>\n<|im_start|>assistant\n")
    start = ids.index(tok.convert_tokens_to_ids("<|vision_start|>"))
    assert ids[start + 1 : start + 7] == [image_id] * 6
