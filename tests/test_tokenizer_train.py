import numpy as np
import pytest
from transformers import AutoTokenizer, Qwen2TokenizerFast

from dreamr_jax.data.synthetic import SyntheticConfig, generate, reference_chain
from dreamr_jax.data.tokenizer_train import (
    MIN_VOCAB_SIZE,
    build_synthetic_tokenizer,
    synthetic_corpus,
    train_tokenizer,
)
from dreamr_jax.processing import build_prompt
from dreamr_jax.processing.tokenizer import SPECIAL_TOKENS, byte_tokenizer

N = 300


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic_tok")
    build_synthetic_tokenizer(path, n=N, vocab_size=1024)
    return path


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)


def test_deterministic(tok_dir, tmp_path):
    build_synthetic_tokenizer(tmp_path, n=N, vocab_size=1024)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()


def test_loads_as_qwen2_fast(tok):
    assert isinstance(tok, Qwen2TokenizerFast)
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.chat_template
    assert MIN_VOCAB_SIZE < len(tok) <= 1024


def test_special_token_ids(tok):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    for t in SPECIAL_TOKENS:
        assert tok(f"a{t}b")["input_ids"].count(tok.convert_tokens_to_ids(t)) == 1


@pytest.mark.parametrize(
    "text",
    [
        "How many red circles are in the image?\n\nAnswer: 7",
        "héllo wörld — ünïcödé ∑ ∫ 日本語のテキスト 한국어",
        "emoji 🤖🧠🎉👩‍👩‍👧 flags 🇯🇵 and \x00\x01\x7f\t\r\n tabs",
        "  leading and trailing spaces  ",
        "",
    ],
)
def test_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text


def test_compresses_validation_chains(tok):
    chains = [reference_chain(ex) for ex in generate(50, "validation", SyntheticConfig())]
    byte_tok = byte_tokenizer()
    ours = np.mean([len(tok(c)["input_ids"]) for c in chains])
    bytes_ = np.mean([len(byte_tok(c)["input_ids"]) for c in chains])
    assert bytes_ / ours >= 2.0, (bytes_, ours)


def test_build_prompt_with_image(tok):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "How many blue squares are in the image?"},
            ],
        }
    ]
    grid_thw = np.array([[1, 4, 6]])  # 24 patches -> 6 merged tokens
    input_ids, text = build_prompt(tok, messages, grid_thw)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert input_ids.count(image_id) == 6
    assert input_ids.count(tok.convert_tokens_to_ids("<|vision_start|>")) == 1
    assert tok.decode(input_ids) == text
    assert text.endswith("<|im_start|>assistant\n")


def test_synthetic_corpus():
    texts = list(synthetic_corpus(3, SyntheticConfig()))
    examples = list(generate(3, "train", SyntheticConfig()))
    assert texts == [s for ex in examples for s in (ex.question, reference_chain(ex))]


@pytest.mark.parametrize("bad", [0, 100, MIN_VOCAB_SIZE - 1, 300.0, True])
def test_bad_vocab_size(bad):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=bad)


def test_min_vocab_size_byte_only():
    t = train_tokenizer(["abc abc"], vocab_size=MIN_VOCAB_SIZE)
    assert len(t) == MIN_VOCAB_SIZE
    assert t.decode(t("ÿ🙂")["input_ids"]) == "ÿ🙂"


def test_extra_texts_become_few_tokens(tmp_path):
    """Fixed texts every row repeats (the verifier's question) compress when trained in."""
    question = "Is the last step correct? Answer Yes or No."
    plain = build_synthetic_tokenizer(tmp_path / "plain", n=N, vocab_size=512)
    extra = build_synthetic_tokenizer(tmp_path / "extra", n=N, vocab_size=512, extra=(question,))
    n_plain, n_extra = (len(t(question)["input_ids"]) for t in (plain, extra))
    assert n_extra <= 12 < n_plain, (n_extra, n_plain)
    assert extra.decode(extra(question)["input_ids"]) == question
    with pytest.raises(ValueError, match="extra"):
        next(synthetic_corpus(1, extra=["not a tuple"]))
