"""Verification examples: teach a target to judge reasoning steps (the CPN verifier's task).

DREAM-R's target is an instruction-tuned VLM that can answer "is this step correct?". A
target trained from scratch on reasoning chains (the demo's) never saw that question, so its
verdict probabilities would be noise. A verification example is the exact token sequence the
engine builds at verification time, ending in the verdict word:

    prompt  +  step_1 .. step_{k-1}  +  candidate step k  +  suffix  +  "Yes" | "No"

where ``suffix`` is `spec.verify.verification_suffix` (end of the assistant turn, the
question as a user turn, the assistant header) and the candidate is either the reference
step (positive) or a corrupted copy (negative: one number changed, an option letter or a
colour swapped). Steps are tokenised as generation writes them: each ends with the
delimiter, the final one with the end-of-turn token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?![\w.]\d)")
_OPTION = re.compile(r"\b(option|is|Answer:) ([A-H])\b")
_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")


def corrupt_step(step: str, rng: np.random.Generator) -> str | None:
    """A plausible but wrong version of ``step``, or None when nothing can be changed.

    In order of preference: change one number by 1-3 (never to the same value), change an
    option letter, or swap a colour word for another.
    """
    numbers = list(_NUMBER.finditer(step))
    if numbers:
        m = numbers[rng.integers(len(numbers))]
        value = int(m.group())
        delta = int(rng.integers(1, 4)) * (1 if rng.random() < 0.5 or value < 3 else -1)
        return step[: m.start()] + str(value + delta) + step[m.end() :]
    options = list(_OPTION.finditer(step))
    if options:
        m = options[rng.integers(len(options))]
        letters = [c for c in "ABCD" if c != m.group(2)]
        new = letters[rng.integers(len(letters))]
        return step[: m.start(2)] + new + step[m.end(2) :]
    colors = [c for c in _COLORS if re.search(rf"\b{c}\b", step)]
    if colors:
        old = colors[rng.integers(len(colors))]
        others = [c for c in _COLORS if c != old]
        return re.sub(rf"\b{old}\b", others[rng.integers(len(others))], step, count=1)
    return None


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
