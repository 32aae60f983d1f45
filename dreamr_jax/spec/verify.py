"""The CPN verifier: does the target accept a draft step?

The target reads the context, the candidate step and a short verification question, and
its next-token distribution is read at the verdict words (DESIGN.md §2):

    p = s+ / (s+ + s-),   accept iff p > α

where ``s+`` (``s-``) is the summed probability of the positive (negative) verdict tokens.
Computed in log space, ``p = sigmoid(logsumexp(logits[pos]) - logsumexp(logits[neg]))``,
so extreme logits give 0 or 1, never NaN. SpecReason's rule (the target scores the step
0-9 and the step is accepted when the score reaches a threshold) is kept as an option for
comparison; the paper found it unstable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from dreamr_jax.config import require

RULES = ("cpn", "score")


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    """How the target judges a draft step.

    Attributes:
      alpha: threshold α of the CPN rule; a step is accepted iff ``p > α``. 0 accepts
        every step, 1 rejects every step. The paper uses 0.7.
      question: the user turn appended after the candidate step.
      positive_words: verdict words whose first tokens make up ``s+``.
      negative_words: verdict words whose first tokens make up ``s-``.
      rule: "cpn" (the paper's) or "score" (SpecReason: the target answers a digit 0-9
        and the step is accepted iff the most likely digit is >= ``score_threshold``).
      score_question: the question for the "score" rule.
      score_threshold: minimum accepted score for the "score" rule.
    """

    alpha: float = 0.7
    question: str = "Is the last step correct? Answer Yes or No."
    positive_words: tuple[str, ...] = ("Yes",)
    negative_words: tuple[str, ...] = ("No",)
    rule: str = "cpn"
    score_question: str = "Rate the last step from 0 (wrong) to 9 (certainly correct)."
    score_threshold: int = 7

    def validate(self) -> VerifierConfig:
        require(0.0 <= self.alpha <= 1.0, "alpha", self.alpha, "must be in [0, 1]")
        require(self.rule in RULES, "rule", self.rule, f"must be one of {RULES}")
        require(bool(self.positive_words), "positive_words", self.positive_words, "is empty")
        require(bool(self.negative_words), "negative_words", self.negative_words, "is empty")
        require(
            0 <= self.score_threshold <= 9,
            "score_threshold",
            self.score_threshold,
            "must be in 0..9",
        )
        return self


def cpn_probability(logits_bv: jax.Array, positive_ids, negative_ids) -> jax.Array:
    """``p = s+ / (s+ + s-)`` from next-token logits, stably.

    Args:
      logits_bv: ``[..., v]`` next-token logits after the verification prompt.
      positive_ids, negative_ids: verdict token ids (sequences or int arrays).

    Returns:
      ``[...]`` float32 in [0, 1]. The softmax normaliser cancels, so only the verdict
      logits matter; ``-inf`` logits on one side give exactly 0 or 1.
    """
    logits = logits_bv.astype(jnp.float32)
    pos = jax.nn.logsumexp(jnp.take(logits, jnp.asarray(positive_ids), axis=-1), axis=-1)
    neg = jax.nn.logsumexp(jnp.take(logits, jnp.asarray(negative_ids), axis=-1), axis=-1)
    # sigmoid(pos - neg), with inf - inf (both sides impossible) read as "no evidence": 0.5.
    diff = jnp.where(jnp.isneginf(pos) & jnp.isneginf(neg), 0.0, pos - neg)
    return jax.nn.sigmoid(diff)


def score_digits(logits_bv: jax.Array, digit_ids) -> jax.Array:
    """SpecReason's score: the most likely of the ten digit tokens, ``[...]`` int32."""
    return jnp.argmax(jnp.take(logits_bv, jnp.asarray(digit_ids), axis=-1), axis=-1).astype(
        jnp.int32
    )


def accept(p: jax.Array, alpha: float) -> jax.Array:
    """The CPN decision ``p > α``."""
    return p > alpha


@dataclasses.dataclass(frozen=True)
class VerdictTokens:
    """Token-level form of a `VerifierConfig` for one tokenizer (hashable).

    Attributes:
      suffix: ids appended after a candidate step: the end of the assistant turn, the
        verification question as a user turn, and the start of the assistant's answer.
      positive, negative: verdict token ids (CPN rule) or, for the score rule, positive
        holds the ten digit ids and negative is empty.
    """

    suffix: tuple[int, ...]
    positive: tuple[int, ...]
    negative: tuple[int, ...]


def _first_tokens(tokenizer, words: Sequence[str], field: str) -> tuple[int, ...]:
    ids = []
    for word in words:
        enc = tokenizer.encode(word, add_special_tokens=False)
        if not enc:
            raise ValueError(f"verifier {field} word {word!r} encodes to no tokens.")
        ids.append(enc[0])
    return tuple(dict.fromkeys(ids))


def verification_suffix(tokenizer, question: str) -> tuple[int, ...]:
    """Ids that follow a candidate step: closes the assistant turn, asks ``question`` as the
    user, opens the assistant's reply, rendered with the tokenizer's own chat template."""
    marker = "\x00STEP\x00"
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": marker},
        {"role": "user", "content": question},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if marker not in text:
        raise ValueError(
            "the chat template drops earlier assistant turns, so a verification prompt "
            "cannot follow a reasoning step; use a template that keeps them."
        )
    return tuple(tokenizer.encode(text.split(marker, 1)[1], add_special_tokens=False))


def verdict_tokens(tokenizer, cfg: VerifierConfig) -> VerdictTokens:
    """Tokenises a verifier config with ``tokenizer`` (a Hugging Face tokenizer).

    Raises:
      ValueError: a positive and a negative word share their first token.
    """
    cfg.validate()
    if cfg.rule == "score":
        digits = _first_tokens(tokenizer, [str(i) for i in range(10)], "score")
        if len(digits) != 10:
            raise ValueError("the tokenizer does not give the ten digits distinct tokens.")
        return VerdictTokens(verification_suffix(tokenizer, cfg.score_question), digits, ())
    pos = _first_tokens(tokenizer, cfg.positive_words, "positive")
    neg = _first_tokens(tokenizer, cfg.negative_words, "negative")
    if set(pos) & set(neg):
        raise ValueError(
            f"positive words {cfg.positive_words} and negative words {cfg.negative_words} "
            "share a first token; choose words that tokenise differently."
        )
    return VerdictTokens(verification_suffix(tokenizer, cfg.question), pos, neg)


def decide(logits_bv: jax.Array, tokens: VerdictTokens, cfg: VerifierConfig, *, alpha=None):
    """``(p, accepted)`` for verification logits; for the score rule ``p`` is score / 9.

    ``alpha`` (a float or a traced scalar) replaces ``cfg.alpha`` when given, so a compiled
    caller can take the threshold as an argument instead of a compile-time constant.
    """
    if cfg.rule == "score":
        score = score_digits(logits_bv, tokens.positive)
        return score.astype(jnp.float32) / 9.0, score >= cfg.score_threshold
    p = cpn_probability(logits_bv, tokens.positive, tokens.negative)
    return p, accept(p, cfg.alpha if alpha is None else alpha)
