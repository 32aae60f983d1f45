"""Step segmentation of reasoning chains, shared by inference (FPSR) and training (SAPO).

A reasoning chain is a sequence of *steps* separated by a delimiter (default a blank line,
``"\\n\\n"``), each capped at ``max_step_tokens`` tokens (DESIGN.md §2). Two views:

* **Text** (`split_steps`, `join_steps`): for datasets, rewards and logs. A step never
  contains the delimiter; whitespace-only pieces are not steps.
* **Tokens** (`step_boundaries`, `truncate_step`): for generation, where a step ends right
  after the token that completes the delimiter in the *decoded* text, after
  ``max_step_tokens`` tokens, or at an end-of-sequence token. Decoding (not token-id
  matching) is the authority because byte-level BPE may fold the delimiter into
  neighbouring tokens; `delimiter_token_sequences` gives the id sequences a jitted decode
  loop can stop on as a fast, not exhaustive, approximation.

The tokenizer is any object with ``encode(str, add_special_tokens=False) -> list[int]`` and
``decode(list[int]) -> str`` (e.g. a ``transformers`` tokenizer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, Protocol

EndReason = Literal["delimiter", "max_tokens", "eos", "none"]

# Left/right contexts for probing how the delimiter tokenises inside text: BPE pre-tokenisers
# split whitespace differently before letters, punctuation, digits and spaces.
_PROBE_CONTEXTS = ("a", "x.", "1", " ", "Step")


class Tokenizer(Protocol):
    """What step segmentation needs from a tokenizer (a ``transformers`` one fits)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """How a reasoning chain is cut into steps (hashable: usable as a jit static argument).

    Attributes:
      delimiter: the text that ends a step (default a blank line). Not part of any step's
        text; in token space the step's ids include the tokens that spell it.
      max_step_tokens: a step is cut after this many tokens even without a delimiter.
    """

    delimiter: str = "\n\n"
    max_step_tokens: int = 256

    def validate(self) -> StepConfig:
        """Returns self; raises ValueError naming the bad field."""
        if not isinstance(self.delimiter, str) or not self.delimiter:
            raise ValueError(f"delimiter={self.delimiter!r} must be a non-empty string.")
        if not isinstance(self.max_step_tokens, int) or self.max_step_tokens < 1:
            raise ValueError(f"max_step_tokens={self.max_step_tokens!r} must be an int >= 1.")
        return self


# ---------------------------------------------------------------------------------------
# Text level.


def split_steps(text: str, cfg: StepConfig = StepConfig()) -> list[str]:
    """Cuts text at every delimiter; drops empty and whitespace-only pieces.

    Pieces are not stripped: ``"a\\n\\n\\nb"`` gives ``["a", "\\nb"]`` (the delimiter is
    found left to right, as `str.split` does).

    >>> split_steps("Look.\\n\\nCount: 3.\\n\\n\\n\\nSo 3.\\n\\n")
    ['Look.', 'Count: 3.', 'So 3.']
    >>> split_steps("a\\nStep b\\nStep c", StepConfig(delimiter="\\nStep"))
    ['a', ' b', ' c']
    """
    cfg.validate()
    return [piece for piece in text.split(cfg.delimiter) if piece.strip()]


def join_steps(steps: Sequence[str], cfg: StepConfig = StepConfig()) -> str:
    """Joins steps with the delimiter (none before the first or after the last step).

    ``split_steps(join_steps(steps)) == steps`` holds when every step has non-whitespace
    text and the joined text holds the delimiter only at the joins: no step contains it
    and none straddles a join (for ``"\\n\\n"``: steps neither start nor end with
    ``"\\n"``; ``["a\\n", "b"]`` joins to ``"a\\n\\n\\nb"``, which splits as
    ``["a", "\\nb"]``). See `is_canonical` for the other direction.

    >>> join_steps(["Look.", "Count: 3."])
    'Look.\\n\\nCount: 3.'
    """
    cfg.validate()
    return cfg.delimiter.join(steps)


def is_canonical(text: str, cfg: StepConfig = StepConfig()) -> bool:
    """Whether ``join_steps(split_steps(text)) == text``.

    Canonical means: every piece of ``text.split(delimiter)`` has non-whitespace text, or
    ``text == ""``. So no leading or trailing delimiter, no two delimiters with only
    whitespace between them, and no whitespace-only text.

    >>> is_canonical("a\\n\\nb"), is_canonical("a\\n\\nb\\n\\n"), is_canonical("a\\n\\n \\n\\nb")
    (True, False, False)
    """
    return join_steps(split_steps(text, cfg), cfg) == text


# ---------------------------------------------------------------------------------------
# Token level.


def _encode(tokenizer: Tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text, add_special_tokens=False))


def delimiter_token_sequences(
    tokenizer: Tokenizer, cfg: StepConfig = StepConfig()
) -> tuple[tuple[int, ...], ...]:
    """Token-id sequences that spell the delimiter, for stop checks on device.

    Returns, deduplicated and in this order: the direct encoding of the delimiter; the
    concatenated encodings of its characters one by one; and the middle part of
    ``encode(ctx + delimiter + ctx)`` for a few probe contexts, where that encoding starts
    and ends with ``encode(ctx)``.

    Limits: this is not exhaustive. A BPE merge can fold the delimiter (or part of it) into
    a neighbouring token (``".\\n\\n"``, ``"\\n\\n\\n"``, ``" \\n"``), and such spellings
    are missed. Use it as a fast stop condition (``SamplingConfig.stop_sequences``) and
    decide step ends with the text-level check in `truncate_step` / `step_boundaries`.

    >>> delimiter_token_sequences(byte_tokenizer())  # doctest: +SKIP
    ((198, 198),)
    """
    cfg.validate()
    delim = cfg.delimiter
    candidates = [_encode(tokenizer, delim)]
    candidates.append(tuple(i for ch in delim for i in _encode(tokenizer, ch)))
    for ctx in _PROBE_CONTEXTS:
        ctx_ids = _encode(tokenizer, ctx)
        ids = _encode(tokenizer, ctx + delim + ctx)
        n = len(ctx_ids)
        if len(ids) > 2 * n and ids[:n] == ctx_ids and ids[-n:] == ctx_ids:
            middle = ids[n:-n]
            if tokenizer.decode(list(middle)) == delim:
                candidates.append(middle)
    return tuple(dict.fromkeys(c for c in candidates if c))


def _first_step_end(
    token_ids: Sequence[int],
    tokenizer: Tokenizer,
    cfg: StepConfig,
    eos_token_ids: Sequence[int] = (),
) -> tuple[int, EndReason]:
    """``(end, reason)``: the first step is ``token_ids[:end]``."""
    ids = list(token_ids)
    eos = frozenset(eos_token_ids)
    for i, tok in enumerate(ids[: cfg.max_step_tokens]):
        if tok in eos:
            return i + 1, "eos"
        # Decoding the whole prefix (not token by token) keeps multi-byte characters and
        # delimiters spread over several tokens intact. At most max_step_tokens decodes.
        if cfg.delimiter in tokenizer.decode(ids[: i + 1]):
            return i + 1, "delimiter"
    if len(ids) >= cfg.max_step_tokens:
        return cfg.max_step_tokens, "max_tokens"
    return len(ids), "none"


def truncate_step(
    token_ids: Sequence[int],
    tokenizer: Tokenizer,
    cfg: StepConfig = StepConfig(),
    eos_token_ids: Sequence[int] = (),
) -> tuple[list[int], EndReason]:
    """Cuts the first step off a generated continuation.

    The step ends right after the first token at which (in order of precedence per token)
    an ``eos_token_ids`` token was emitted (``"eos"``), or the decoded step text first
    contains the delimiter (``"delimiter"``); else after ``max_step_tokens`` tokens
    (``"max_tokens"``); else the continuation ran out first (``"none"``: the step is
    incomplete). The ending token (delimiter tokens, EOS) is kept in ``step_ids``, as
    `generate` counts lengths up to and including the stop token. A token that completes
    the delimiter may carry text after it (a BPE merge such as ``"\\n\\n\\n"``); that text
    stays in this step.

    Args:
      token_ids: ``[t]`` generated ids, starting at the step's first token.
      tokenizer: has ``decode(list[int]) -> str``.
      cfg: delimiter and cap.
      eos_token_ids: ids that end the whole answer (e.g. ``<|im_end|>``); none by default.

    Returns:
      ``(step_ids, ended_by)``.

    >>> tok = byte_tokenizer()  # doctest: +SKIP
    >>> truncate_step(tok.encode("Look.\\n\\nCount."), tok)  # doctest: +SKIP
    ([43, 78, 78, 74, 13, 198, 198], 'delimiter')
    """
    cfg.validate()
    end, reason = _first_step_end(token_ids, tokenizer, cfg, eos_token_ids)
    return list(token_ids[:end]), reason


def step_boundaries(
    token_ids: Sequence[int], tokenizer: Tokenizer, cfg: StepConfig = StepConfig()
) -> list[tuple[int, int]]:
    """Half-open spans ``[(start, end), ...]`` of the steps in a token sequence.

    Applies `truncate_step` (without EOS) repeatedly: the spans tile ``token_ids`` with no
    gaps, each at most ``max_step_tokens`` long; the last one may end without a delimiter.

    Relation to text: when no step is cut by the cap, no token carries text across a
    delimiter end and the decoding of each span concatenates to the full decoding (true
    for the byte tokenizer), ``[p for s, e in spans for p in split_steps(decode(ids[s:e]))]
    == split_steps(decode(ids))``. A cap cut can hide a delimiter that straddles it.

    >>> tok = byte_tokenizer()  # doctest: +SKIP
    >>> step_boundaries(tok.encode("ab\\n\\ncd"), tok)  # doctest: +SKIP
    [(0, 4), (4, 6)]
    """
    cfg.validate()
    spans: list[tuple[int, int]] = []
    start = 0
    while start < len(token_ids):
        length, _ = _first_step_end(token_ids[start:], tokenizer, cfg)
        spans.append((start, start + length))
        start += length
    return spans
