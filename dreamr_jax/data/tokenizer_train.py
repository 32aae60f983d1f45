"""Trains a small byte-level BPE tokenizer (Qwen special tokens, Qwen chat template).

The built-in small models can use it instead of `processing.tokenizer.byte_tokenizer` to get
shorter sequences on the synthetic data while keeping the prompt-building path of real
Qwen3-VL checkpoints (`transformers.Qwen2TokenizerFast`, `AutoTokenizer` on a directory).

* The initial alphabet is all 256 byte symbols, so any text round-trips exactly.
* The special tokens of `SPECIAL_TOKENS` get ids 0..6 in that order; the byte symbols and
  merges follow.
* Training is deterministic: `tokenizers`' `BpeTrainer` counts words in parallel but merges
  the counts into maps and picks each merge by (count, pair) order, so the result does not
  depend on thread scheduling. The inputs here are deterministic (synthetic examples are a
  pure function of seed, split and index), so two builds write identical `tokenizer.json`
  bytes (checked by `tests/test_tokenizer_train.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from dreamr_jax.data.synthetic import SyntheticConfig, generate, reference_chain
from dreamr_jax.processing.tokenizer import SPECIAL_TOKENS, as_qwen_tokenizer

# 256 byte symbols plus the special tokens: the smallest vocabulary that can hold them.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
_DEFAULT_CFG = SyntheticConfig()


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 1024):
    """Trains a byte-level BPE `transformers.Qwen2TokenizerFast` on `texts`.

    Args:
        texts: Training texts (any iterable of str, consumed once).
        vocab_size: Total vocabulary size, special tokens and the 256 byte symbols included;
            at least `MIN_VOCAB_SIZE` (263). Fewer tokens result if the texts run out of
            merges.

    Returns:
        The tokenizer: special tokens at ids 0..6, eos ``<|im_end|>``, pad
        ``<|endoftext|>``, no unk token, chat template `CHAT_TEMPLATE`.

    Raises:
        ValueError: If `vocab_size` is not an int >= `MIN_VOCAB_SIZE`.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size={vocab_size!r} must be an int >= {MIN_VOCAB_SIZE}.")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} must be >= {MIN_VOCAB_SIZE} (256 byte symbols + "
            f"{len(SPECIAL_TOKENS)} special tokens)."
        )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter(texts), trainer=trainer)
    return as_qwen_tokenizer(tokenizer)


def synthetic_corpus(
    n: int, cfg: SyntheticConfig = _DEFAULT_CFG, extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """Texts of the first `n` synthetic train examples: each question, then its chain, then
    every `extra` text (fixed texts the models read as often as the examples, such as the
    verifier's question: seen that often they become a few tokens, not one per byte)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an int >= 1.")
    if not isinstance(extra, tuple) or not all(isinstance(t, str) for t in extra):
        raise ValueError(f"extra={extra!r} must be a tuple of str.")
    cfg.validate()
    for example in generate(n, "train", cfg):
        yield example.question
        yield reference_chain(example)
        yield from extra


def build_synthetic_tokenizer(
    path: str | os.PathLike,
    *,
    n: int = 2000,
    vocab_size: int = 1024,
    cfg: SyntheticConfig = _DEFAULT_CFG,
    extra: tuple[str, ...] = (),
):
    """Trains `train_tokenizer` on `synthetic_corpus(n, cfg, extra)` and saves it into `path`.

    The directory (created with its parents) is in Hugging Face format: loadable with
    `transformers.AutoTokenizer.from_pretrained(path)` or `processing.load_tokenizer`.
    Deterministic: the same arguments write identical ``tokenizer.json`` bytes.

    Returns:
        The trained tokenizer.
    """
    tokenizer = train_tokenizer(synthetic_corpus(n, cfg, extra), vocab_size=vocab_size)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(os.fspath(path))
    return tokenizer
