"""Step segmentation: text round trips, token spans on real tokenizers, caps, bad configs."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import make_tiny_tokenizer

from dreamr_jax.data.steps import (
    StepConfig,
    delimiter_token_sequences,
    is_canonical,
    join_steps,
    split_steps,
    step_boundaries,
    truncate_step,
)
from dreamr_jax.processing.tokenizer import byte_tokenizer

BLANK = StepConfig()
STEP = StepConfig(delimiter="\nStep")
# Characters for random texts: the delimiters' characters, whitespace, and a 2-byte one.
ALPHABET = ["a", "b", ".", " ", "\n", "\n", "S", "t", "e", "p", "é"]
WORDS = ["Step 1: look.", "Count the circles", "The answer is 42.", "colour", "x", "2"]


@pytest.fixture(scope="module")
def bytes_tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_tokenizer(tmp_path_factory.mktemp("bpe")))


def _encode(tok, text):
    return tok.encode(text, add_special_tokens=False)


def _random_text(rng, max_len=30):
    return "".join(rng.choice(ALPHABET, size=rng.integers(0, max_len + 1)))


def _random_words(rng, max_words=4):
    n = rng.integers(1, max_words + 1)
    return " ".join(rng.choice(WORDS, size=n))


def _occurrences(text, sub):
    """Start indices of every (also overlapping) occurrence of sub in text."""
    return [i for i in range(len(text)) if text.startswith(sub, i)]


def _joins_cleanly(steps, delim):
    """The join_steps precondition: text in every step, delimiters only at the joins."""
    joined = delim.join(steps)
    joins, pos = [], 0
    for step in steps[:-1]:
        pos += len(step)
        joins.append(pos)
        pos += len(delim)
    return all(s.strip() for s in steps) and _occurrences(joined, delim) == joins


# ---------------------------------------------------------------------------------------
# Config.


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"delimiter": ""}, "delimiter"),
        ({"max_step_tokens": 0}, "max_step_tokens"),
        ({"max_step_tokens": -3}, "max_step_tokens"),
    ],
)
def test_invalid_config_names_field(kwargs, field, bytes_tok):
    cfg = StepConfig(**kwargs)
    with pytest.raises(ValueError, match=field):
        cfg.validate()
    for call in (
        lambda: split_steps("a", cfg),
        lambda: join_steps(["a"], cfg),
        lambda: delimiter_token_sequences(bytes_tok, cfg),
        lambda: truncate_step([1, 2], bytes_tok, cfg),
        lambda: step_boundaries([1, 2], bytes_tok, cfg),
    ):
        with pytest.raises(ValueError, match=field):
            call()


def test_default_config_is_valid_and_hashable():
    assert BLANK.validate() is BLANK
    assert (BLANK.delimiter, BLANK.max_step_tokens) == ("\n\n", 256)
    assert hash(BLANK) == hash(StepConfig())


# ---------------------------------------------------------------------------------------
# Text level.


def test_split_drops_empty_and_whitespace_pieces():
    text = "\n\n  \n\nLook.\n\n\n\nCount: 3.\n\n \t \n\nSo 3.\n\n"
    assert split_steps(text) == ["Look.", "Count: 3.", "So 3."]
    assert split_steps("") == []
    assert split_steps(" \n\n\n") == []
    # Not stripped: the delimiter is found left to right, the spare newline stays.
    assert split_steps("a\n\n\nb") == ["a", "\nb"]


def test_custom_delimiter():
    text = "Plan.\nStep 1: look.\nStep 2: count.\nStep"
    assert split_steps(text, STEP) == ["Plan.", " 1: look.", " 2: count."]
    assert join_steps(["Plan.", " 1: look."], STEP) == "Plan.\nStep 1: look."
    # A blank line is not a step break under the custom delimiter.
    assert split_steps("a\n\nb", STEP) == ["a\n\nb"]


@pytest.mark.parametrize("cfg", [BLANK, STEP, StepConfig(delimiter="aa")])
def test_split_join_properties_on_random_texts(cfg):
    rng = np.random.default_rng(0)
    for _ in range(500):
        text = _random_text(rng)
        steps = split_steps(text, cfg)
        assert all(cfg.delimiter not in s and s.strip() for s in steps)
        canonical = join_steps(steps, cfg)
        assert is_canonical(canonical, cfg)
        assert split_steps(canonical, cfg) == steps  # splitting is idempotent
        # The documented meaning of canonical, checked independently.
        pieces = text.split(cfg.delimiter)
        assert is_canonical(text, cfg) == (text == "" or all(p.strip() for p in pieces))
        if is_canonical(text, cfg):
            assert join_steps(split_steps(text, cfg), cfg) == text


@pytest.mark.parametrize("cfg", [BLANK, STEP, StepConfig(delimiter="aa")])
def test_join_then_split_round_trips(cfg):
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(2000):
        steps = [_random_text(rng, 8) for _ in range(rng.integers(0, 6))]
        if not _joins_cleanly(steps, cfg.delimiter):
            continue
        assert split_steps(join_steps(steps, cfg), cfg) == steps
        checked += 1
    assert checked >= 200  # the generator must not make the property vacuous


def test_join_precondition_counterexample():
    # A step ending in "\n" makes a delimiter straddle the join: documented, not a bug.
    assert not _joins_cleanly(["a\n", "b"], "\n\n")
    assert split_steps(join_steps(["a\n", "b"])) == ["a", "\nb"]


# ---------------------------------------------------------------------------------------
# Token level.


def test_delimiter_token_sequences(bytes_tok, bpe_tok):
    newline = _encode(bytes_tok, "\n")[0]
    assert delimiter_token_sequences(bytes_tok) == ((newline, newline),)
    seqs = delimiter_token_sequences(bpe_tok)
    assert tuple(_encode(bpe_tok, "\n\n")) == seqs[0]  # the direct encoding comes first
    assert len(seqs) == len(set(seqs)) >= 2  # the tiny BPE also splits "\n\n" before words
    assert all(bpe_tok.decode(list(s)) == "\n\n" for s in seqs)
    ids = _encode(bpe_tok, "a.\n\nStep 2")
    assert any(_contains(ids, s) for s in seqs)
    step_seqs = delimiter_token_sequences(bpe_tok, STEP)
    assert all(bpe_tok.decode(list(s)) == "\nStep" for s in step_seqs)


def _contains(ids, seq):
    return any(tuple(ids[i : i + len(seq)]) == seq for i in range(len(ids)))


def _check_spans(tok, ids, cfg):
    spans = step_boundaries(ids, tok, cfg)
    assert [e for _, e in spans[:-1]] == [s for s, _ in spans[1:]]  # contiguous
    assert (spans[0][0], spans[-1][1]) == (0, len(ids)) if ids else spans == []
    for s, e in spans:
        assert 1 <= e - s <= cfg.max_step_tokens
        if e < len(ids) and e - s < cfg.max_step_tokens:  # ended by the delimiter
            assert cfg.delimiter in tok.decode(ids[s:e])
            assert cfg.delimiter not in tok.decode(ids[s : e - 1])
    return spans


def _steps_from_spans(tok, ids, spans, cfg):
    return [p for s, e in spans for p in split_steps(tok.decode(ids[s:e]), cfg)]


@pytest.mark.parametrize("cfg", [BLANK, STEP])
def test_byte_spans_reproduce_split_on_random_texts(bytes_tok, cfg):
    rng = np.random.default_rng(2)
    for _ in range(200):
        text = _random_text(rng, 60)
        ids = _encode(bytes_tok, text)
        spans = _check_spans(bytes_tok, ids, cfg)
        assert _steps_from_spans(bytes_tok, ids, spans, cfg) == split_steps(text, cfg)


@pytest.mark.parametrize("cfg", [BLANK, STEP])
def test_bpe_spans_reproduce_split_on_chains(bpe_tok, cfg):
    rng = np.random.default_rng(3)
    for _ in range(100):
        steps = [_random_words(rng) for _ in range(rng.integers(1, 6))]
        text = join_steps(steps, cfg) + rng.choice(["", cfg.delimiter])
        ids = _encode(bpe_tok, text)
        spans = _check_spans(bpe_tok, ids, cfg)
        assert len(spans) == len(steps)
        assert _steps_from_spans(bpe_tok, ids, spans, cfg) == split_steps(text, cfg)


def test_bpe_folded_delimiter_token(bpe_tok):
    ids = _encode(bpe_tok, "x\n\n\ny")
    assert bpe_tok.decode(ids[1:2]) == "\n\n"  # one merged token
    spans = step_boundaries(ids, bpe_tok)
    assert spans == [(0, 2), (2, len(ids))]
    assert _steps_from_spans(bpe_tok, ids, spans, BLANK) == ["x", "\ny"]


class _GreedyTokenizer:
    """Longest-match tokenizer whose vocabulary folds the delimiter into punctuation."""

    vocab = (*(chr(c) for c in range(32, 127)), "\n", ".\n\n")

    def encode(self, text, add_special_tokens=False):
        ids = []
        while text:
            i = max((i for i, v in enumerate(self.vocab) if text.startswith(v)), key=self._len)
            ids.append(i)
            text = text[len(self.vocab[i]) :]
        return ids

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)

    def _len(self, i):
        return len(self.vocab[i])


def test_delimiter_inside_merged_token_found_by_text_check():
    tok = _GreedyTokenizer()
    ids = tok.encode("a.\n\nb")
    merged, newline = len(tok.vocab) - 1, len(tok.vocab) - 2
    assert ids == [*tok.encode("a"), merged, *tok.encode("b")]
    seqs = delimiter_token_sequences(tok)
    assert seqs == ((newline, newline),)  # the documented limit: merged spelling missed
    assert not any(_contains(ids, s) for s in seqs)
    assert truncate_step(ids, tok) == (ids[:2], "delimiter")


def test_truncate_step_end_reasons(bytes_tok):
    eos = bytes_tok.eos_token_id
    ids = _encode(bytes_tok, "Look.\n\nCount.")
    assert truncate_step(ids, bytes_tok) == (ids[:7], "delimiter")
    assert truncate_step(ids[:5], bytes_tok) == (ids[:5], "none")
    assert truncate_step([], bytes_tok) == ([], "none")
    with_eos = ids[:3] + [eos] + ids[3:]
    assert truncate_step(with_eos, bytes_tok, eos_token_ids=[eos]) == (with_eos[:4], "eos")
    capped = StepConfig(max_step_tokens=4)
    assert truncate_step(ids, bytes_tok, capped) == (ids[:4], "max_tokens")
    # A delimiter completed by exactly the cap-th token counts as a delimiter end.
    assert truncate_step(_encode(bytes_tok, "ab\n\ncd"), bytes_tok, capped)[1] == "delimiter"


def test_max_step_tokens_cap(bytes_tok, bpe_tok):
    cfg = StepConfig(max_step_tokens=4)
    ids = _encode(bytes_tok, "abcdefg\n\nhi\n\nj")
    spans = _check_spans(bytes_tok, ids, cfg)
    # "abcd" | "efg\n" | "\nhi\n" | "\nj": every cut is the cap; both delimiters straddle one.
    assert spans == [(0, 4), (4, 8), (8, 12), (12, 14)]
    assert all(e - s <= 4 for s, e in spans)
    rng = np.random.default_rng(4)
    for tok in (bytes_tok, bpe_tok):
        for cap in (1, 2, 7):
            text = join_steps([_random_words(rng) for _ in range(4)])
            spans = _check_spans(tok, _encode(tok, text), StepConfig(max_step_tokens=cap))
            assert all(e - s <= cap for s, e in spans)
