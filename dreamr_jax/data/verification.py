"""Verification examples: teach a target to judge reasoning steps (the CPN verifier's task).

DREAM-R's target is an instruction-tuned VLM that can answer "is this step correct?". A
target trained from scratch on reasoning chains (the demo's) never saw that question, so its
verdict probabilities would be noise. A verification example is the exact token sequence the
engine builds at verification time, ending in the verdict word:

    prompt  +  step_1 .. step_{k-1}  +  candidate step k  +  suffix  +  "Yes" | "No"

where ``suffix`` is `spec.verify.verification_suffix` (end of the assistant turn, the
question as a user turn, the assistant header) and the candidate is either the reference
step (positive) or a corrupted copy (negative: one number changed, an option letter or a
colour or a shape kind swapped). Steps are tokenised as generation writes them: each ends with the
delimiter, the final one with the end-of-turn token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?![\w.]\d)")
_LETTERS = "ABCDEFGH"  # option letters a step may name
_OPTION = re.compile(rf"\b(option|is|Answer:) ([{_LETTERS[0]}-{_LETTERS[-1]}])\b")
_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
_KINDS = ("circle", "square", "triangle")
_COLOR = re.compile(rf"\b({'|'.join(_COLORS)})\b")
_KIND = re.compile(rf"\b({'|'.join(_KINDS)})(?=s?\b)")


def _pick(matches: list, rng: np.random.Generator):
    return matches[rng.integers(len(matches))]


def _change_number(step: str, m: re.Match, rng: np.random.Generator) -> str:
    value = int(m.group())
    delta = int(rng.integers(1, 4)) * (1 if rng.random() < 0.5 or value < 3 else -1)
    return step[: m.start()] + str(value + delta) + step[m.end() :]


def _swap(step: str, m: re.Match, group: int, words, rng: np.random.Generator) -> str:
    others = [w for w in words if w != m.group(group)]
    return step[: m.start(group)] + _pick(others, rng) + step[m.end(group) :]


def _facts(step: str) -> list:
    """``(matches, edit)`` for each kind of fact ``step`` states (see `corrupt_step`)."""
    return [
        (list(_NUMBER.finditer(step)), lambda m, rng: _change_number(step, m, rng)),
        (list(_OPTION.finditer(step)), lambda m, rng: _swap(step, m, 2, _LETTERS, rng)),
        (list(_COLOR.finditer(step)), lambda m, rng: _swap(step, m, 1, _COLORS, rng)),
        (list(_KIND.finditer(step)), lambda m, rng: _swap(step, m, 1, _KINDS, rng)),
    ]


def corrupt_step(step: str, rng: np.random.Generator) -> str | None:
    """A plausible but wrong version of ``step``, or None when nothing can be changed.

    One fact changes, of a kind drawn uniformly from those the step has: a number (by 1-3,
    never to the same value), an option letter, a colour word or a shape kind. Drawing the
    kind (rather than always preferring numbers) teaches the verifier to check what a step
    says it read, not only its arithmetic.
    """
    kinds = [(found, edit) for found, edit in _facts(step) if found]
    if not kinds:
        return None
    found, edit = _pick(kinds, rng)
    return edit(_pick(found, rng), rng)


def verification_ids(
    prompt_ids: Sequence[int],
    steps: Sequence[str],
    k: int,
    candidate: str,
    *,
    tokenizer,
    delimiter: str,
    end_id: int,
    suffix: Sequence[int],
    verdict_id: int,
) -> list[int]:
    """The token sequence that verifies ``candidate`` as step ``k`` (0-based) of ``steps``,
    ending with ``verdict_id``; the verdict is its last token."""
    last = k == len(steps) - 1
    text = "".join(s + delimiter for s in steps[:k]) + candidate + ("" if last else delimiter)
    ids = list(prompt_ids) + tokenizer.encode(text, add_special_tokens=False)
    if last:
        ids.append(end_id)
    return ids + list(suffix) + [verdict_id]


def choose(steps: Sequence[str], rng: np.random.Generator) -> tuple[int, str, bool]:
    """Picks a step and whether to corrupt it: ``(k, candidate, correct)``; half of the
    examples are negatives when the step can be corrupted."""
    k = int(rng.integers(len(steps)))
    if rng.random() < 0.5:
        wrong = corrupt_step(steps[k], rng)
        if wrong is not None and wrong != steps[k]:
            return k, wrong, False
    return k, steps[k], True


def choose_pair(steps: Sequence[str], rng: np.random.Generator) -> tuple[int, str] | None:
    """A contrast pair's step ``k`` (drawn among the steps that state a fact) and its
    corrupted copy: ``(k, wrong)``; None when no step can be corrupted."""
    ks = [k for k, step in enumerate(steps) if any(found for found, _ in _facts(step))]
    if not ks:
        return None
    k = ks[int(rng.integers(len(ks)))]
    return k, corrupt_step(steps[k], rng)
