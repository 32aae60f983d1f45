r"""Answer extraction and grading for reasoning chains (pure Python, no JAX).

SAPO's outcome reward ``R_outcome`` and every accuracy number go through `grade`, so the
rules are deliberately explicit and conservative: a prediction that names two answers, or
a number with leftover symbols we cannot interpret (``2\sqrt{3}``, ``x+1``), is wrong
rather than guessed at.

Answer format, in priority order (`extract_answer`):

1. the content of the **last** ``\boxed{...}`` (or ``\fbox{...}``) whose braces
   balance; nested braces are allowed (``\boxed{\frac{1}{2}}``);
2. else the text after the last ``answer is`` / ``Answer:`` / ``final answer:`` (any
   case, markdown bold allowed around the cue) up to the end of that line or the first
   sentence break. The project's own step format ends a chain with a line ``Answer: X``;
3. else nothing (`grade` then falls back to the whole text if it is short).

Three answer types: ``"number"`` (`match_number`: units, percent, LaTeX fractions,
thousands separators), ``"choice"`` (`match_choice`: a letter, or the option text) and
``"text"`` (`normalize_text` equality).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

ANSWER_TYPES = ("choice", "number", "text")

# A chain with no answer cue is graded as a whole only when it is this short: a long chain
# without a cue mentions many numbers and letters, and picking one would be a guess.
_SHORT_ANSWER_CHARS = 64

_CHAR_MAP = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u2012": "-",  # figure dash
        "\u2013": "-",  # en dash
        "\ufe63": "-",  # small hyphen-minus
        "\uff0d": "-",  # fullwidth hyphen-minus
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u00a0": " ",  # no-break space
    }
)

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_RE = re.compile(
    r"\b(?:final\s+)?answer[ \t]*(?:\*\*)?[ \t]*(?::|\bis\b:?)[ \t*]*(?:\n[ \t*]*)?(?P<ans>[^\n]+)",
    re.IGNORECASE,
)
# A sentence break after the answer: "Answer: 12 cm. Because ..." keeps "12 cm".
_SENTENCE_BREAK_RE = re.compile(r"\.\s+(?=\S)")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|rm)\s*\{([^{}]*)\}")
_ARTICLE_RE = re.compile(r"\b(?:a|an|the)\b")
_EDGE_CHARS = " \t\n.,;:!?\"'`*$"
_BRACKET_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _unify_chars(s: str) -> str:
    return s.translate(_CHAR_MAP)


def _boxed_contents(text: str) -> list[str]:
    r"""Contents of every ``\boxed{...}`` with balanced braces, in order of their start."""
    found = []
    for match in _BOXED_RE.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append(text[start:i])
                break
    return found


def _clean_answer(s: str) -> str | None:
    """Strips markdown bold, math delimiters and trailing periods around an answer."""
    s = s.strip()
    prev = None
    while s != prev:
        prev = s
        s = s.strip().strip("*").strip()
        s = s.removeprefix("\\(").removesuffix("\\)").strip("$").strip()
        s = s.rstrip(".").rstrip()
    return s or None


def extract_answer(text: str) -> str | None:
    r"""The final answer of a reasoning chain, or None when it states none.

    See the module docstring for the format. Boxed content is returned raw (LaTeX kept)
    so that `parse_number` can read fractions; cue answers are cut at the line end.

    Examples:
        >>> extract_answer(r"so $x = \boxed{\frac{1}{2}}$.")
        '\\frac{1}{2}'
        >>> extract_answer("First \\boxed{3}, corrected: \\boxed{4}")
        '4'
        >>> extract_answer("Step 1 ...\n\nAnswer: 12 cm.")
        '12 cm'
        >>> extract_answer("The **final answer** is: **B**.")
        'B'
        >>> extract_answer("no cue here") is None
        True
    """
    for content in reversed(_boxed_contents(text)):
        if cleaned := _clean_answer(content):
            return cleaned
    for match in reversed(list(_ANSWER_RE.finditer(text))):
        ans = _SENTENCE_BREAK_RE.split(match.group("ans"), maxsplit=1)[0]
        if cleaned := _clean_answer(ans):
            return cleaned
    return None


def _unwrap_brackets(s: str) -> str:
    while len(s) >= 2 and _BRACKET_PAIRS.get(s[0]) == s[-1]:
        s = s[1:-1].strip()
    return s


def normalize_text(s: str) -> str:
    r"""Canonical form of a free-text answer for equality tests.

    Unifies unicode minus signs and curly quotes, unwraps ``\text{...}``, lowercases,
    collapses whitespace, strips surrounding punctuation, quotes and brackets, and drops
    the articles a / an / the (unless nothing else is left: the answer "A" stays "a").

    Examples:
        >>> normalize_text("  The  Red\tTriangle. ")
        'red triangle'
        >>> normalize_text('"The red triangle."')
        'red triangle'
        >>> normalize_text("\\text{Blue}")
        'blue'
        >>> normalize_text("\u22123")
        '-3'
    """
    s = " ".join(_TEXT_CMD_RE.sub(r"\1", _unify_chars(s)).lower().split())
    without_articles = _strip_edges(_ARTICLE_RE.sub(" ", s))
    return without_articles or _strip_edges(s)


def _strip_edges(s: str) -> str:
    s = " ".join(s.split())
    prev = None
    while s != prev:
        prev = s
        s = _unwrap_brackets(s.strip(_EDGE_CHARS))
    return s


# --- numbers -----------------------------------------------------------------------------

_FRAC_RE = re.compile(r"\\[dt]?frac\s*(?:\{([^{}]*)\}|(\d))\s*(?:\{([^{}]*)\}|(\d))")
_SCI_RE = re.compile(r"(\d)\s*(?:\\times|\\cdot|×|\*)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°|℃")
_PERCENT_RE = re.compile(r"\s*(?:%|\bpercent\b|\bpct\b)", re.IGNORECASE)
_LATEX_SPACE_RE = re.compile(r"\\[,;:! ]|\\q?quad|~|\\left|\\right")
_LEADING_WORDS_RE = re.compile(r"^(?:approximately|approx\.?|about|around|roughly)\s+", re.I)
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_UNSIGNED = r"(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER_RE = re.compile(
    rf"(?P<num>[+-]?\s*{_UNSIGNED}(?:e[+-]?\d+)?)(?:\s*/\s*(?P<den>{_UNSIGNED}))?(?P<rest>.*)",
    re.IGNORECASE | re.DOTALL,
)
# A unit is words of 3+ letters ("units", "degrees", "dollars") or a known short symbol;
# single letters outside the list ("2x", "3n") are variables, not units.
_SHORT_UNITS = "cm|mm|km|dm|nm|um|µm|μm|m|kg|mg|g|ml|l|s|ms|h|hr|ft|in|yd|mi|lb|oz|sq|kw|w|v|j|hz"
_UNIT_WORD = rf"(?:[a-zµμ]{{3,}}|{_SHORT_UNITS})(?:\s*\^\s*\{{?[23]\}}?|[²³])?"
_UNIT_RE = re.compile(rf"{_UNIT_WORD}(?:\s*(?:/|\s|\\cdot)\s*{_UNIT_WORD})*\.?", re.IGNORECASE)


def _simplify_latex(s: str) -> str:
    """Rewrites the LaTeX a numeric answer may carry into plain text."""
    s = (
        s.replace("\\$", "")
        .replace("$", "")
        .replace("\\(", "")
        .replace("\\)", "")
        .replace("\\%", "%")
    )
    s = _TEXT_CMD_RE.sub(r" \1", s)
    s = _DEGREE_RE.sub("", s)
    s = _FRAC_RE.sub(lambda m: f"({m[1] or m[2]})/({m[3] or m[4]})", s)
    s = _SCI_RE.sub(r"\1e\2", s)
    s = _LATEX_SPACE_RE.sub("", s).replace("{,}", ",")
    return s.replace("{", "").replace("}", "")


def _parse_scaled(s: str) -> tuple[float, bool] | None:
    """(value as written, whether it was a percentage), or None if `s` is not a number."""
    s = _simplify_latex(_unify_chars(s))
    # "x = 5", "AB \approx 3.2": the answer is the right-hand side.
    s = re.split(r"=|\\approx|≈", s)[-1].strip()
    s, n_percent = _PERCENT_RE.subn("", s)
    if n_percent > 1 or "\\" in s:  # \sqrt, \pi, ...: not a plain number
        return None
    s = _LEADING_WORDS_RE.sub("", s.strip().lstrip("$€£¥").strip())
    s = _THOUSANDS_RE.sub("", s.replace("(", "").replace(")", ""))
    match = _NUMBER_RE.fullmatch(s.strip().rstrip(".").strip())
    if match is None:
        return None
    rest = match["rest"].strip()
    if rest and not _UNIT_RE.fullmatch(rest):
        return None
    value = float(re.sub(r"\s+", "", match["num"]))  # "- 5", "-\f5": any whitespace
    if match["den"] is not None:
        den = float(match["den"])
        if den == 0:
            return None
        value /= den
    return (value, n_percent == 1) if math.isfinite(value) else None


def parse_number(s: str) -> float | None:
    r"""The numeric value of an answer string, or None when it is not a plain number.

    Understands signs (including the unicode minus), thousands separators, decimals,
    scientific notation (``1e3``, ``1.2 \times 10^{3}``), fractions (``3/4``,
    ``\frac{3}{4}``, ``\dfrac{1}{2}``), percentages (``50%`` is 0.5), currency symbols,
    degrees (``30^\circ``, ``30°``), trailing units (``12 cm``, ``\text{cm}^2``,
    ``5 square units``) and a leading ``x =``. Anything else symbolic (``2\sqrt{3}``,
    ``\pi``, ``2x``, ``3 and 4``) gives None rather than a guess.

    Examples:
        >>> parse_number("1,234.5")
        1234.5
        >>> parse_number("\u22123")
        -3.0
        >>> parse_number(r"\dfrac{3}{4}")
        0.75
        >>> parse_number("50%")
        0.5
        >>> parse_number(r"12 \text{ cm}^2")
        12.0
        >>> parse_number(r"2\sqrt{3}") is None
        True
    """
    parsed = _parse_scaled(s)
    if parsed is None:
        return None
    value, is_percent = parsed
    return value / 100 if is_percent else value


def _candidates(s: str) -> tuple[float, ...]:
    """Values `s` may stand for: a percentage matches both its fraction and its number."""
    parsed = _parse_scaled(s)
    if parsed is None:
        return ()
    value, is_percent = parsed
    return (value / 100, value) if is_percent else (value,)


def match_number(pred: str, gold: str, *, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    """Whether `pred` and `gold` are the same number (`math.isclose`, units ignored).

    A percentage on either side also matches its bare number: "50%" matches "0.5" and
    "50", but "5%" does not match "0.5".

    Raises:
        ValueError: if `gold` is not a number (a dataset bug, not a wrong prediction).

    Examples:
        >>> match_number("$1,200", "1200")
        True
        >>> match_number("50%", "0.5"), match_number("50%", "50"), match_number("5%", "0.5")
        (True, True, False)
        >>> match_number("12", "1.2")
        False
    """
    gold_values = _candidates(gold)
    if not gold_values:
        raise ValueError(f"gold answer {gold!r} is not a number parse_number understands")
    return any(_close(p, g, rel_tol, abs_tol) for p in _candidates(pred) for g in gold_values)


def _close(a: float, b: float, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


# --- multiple choice ---------------------------------------------------------------------

_LEAD_IN_RE = re.compile(
    r"^(?:(?:the|my)\s+)?(?:(?:correct|final|best|right)\s+)*(?:answer|option|choice)"
    r"(?:\s+(?:is|would\s+be|should\s+be))?\s*[:\-]?\s*",
    re.IGNORECASE,
)
_GOLD_LETTER_RE = re.compile(r"[\(\[]?([A-Za-z])[\)\]]?[.:]?")
_BARE_LETTER_RE = re.compile(r"[\(\[]?([A-Za-z])[\)\]]?[.:)]?")
# A letter followed by option text: "(B) 12 cm", "B. 12 cm", "b) 12 cm".
_HEAD_LETTER_RE = re.compile(r"(?:[\(\[]([A-Za-z])[\)\]]|([A-Za-z])[.:)])\s+\S.*", re.DOTALL)
_PAREN_LETTER_RE = re.compile(r"[\(\[]([A-Z])[\)\]]")
_CONJUNCTION_RE = re.compile(
    r"(?<![A-Za-z])([A-Z])[\)\]]?\s*(?:,|&|/|\band\b|\bor\b)\s*[\(\[]?([A-Z])(?![A-Za-z])"
)


def _gold_index(gold_letter: str, choices: Sequence[str] | None) -> int:
    match = _GOLD_LETTER_RE.fullmatch(gold_letter.strip())
    if match is None:
        raise ValueError(f"gold_letter must be one letter A-Z, got {gold_letter!r}")
    index = ord(match[1].upper()) - ord("A")
    if choices is not None and index >= len(choices):
        raise ValueError(f"gold_letter {gold_letter!r} is past the {len(choices)} choices")
    return index


def _strip_lead_in(text: str) -> str:
    prev = None
    while text != prev:
        prev = text
        text = _LEAD_IN_RE.sub("", text, count=1).strip()
    return text


def _named_letters(text: str) -> set[int]:
    """Indices of every option letter `text` names (a head letter, "(C)", "A and B")."""
    head = _BARE_LETTER_RE.fullmatch(text) or _HEAD_LETTER_RE.fullmatch(text)
    letters = {head[1] or head[2]} if head else set()
    letters.update(_PAREN_LETTER_RE.findall(text))
    for pair in _CONJUNCTION_RE.findall(text):
        letters.update(pair)
    return {ord(letter.upper()) - ord("A") for letter in letters if letter}


def _matching_choices(text: str, choices: Sequence[str]) -> set[int]:
    """Indices of the options `text` can be read as: same text, or the same number."""
    norm, pred_values = normalize_text(text), _candidates(text)
    return {
        i
        for i, choice in enumerate(choices)
        if normalize_text(choice) == norm
        or any(_close(p, g) for p in pred_values for g in _candidates(choice))
    }


def match_choice(pred: str, gold_letter: str, choices: Sequence[str] | None = None) -> bool:
    """Whether a multiple-choice prediction picks option `gold_letter`.

    Accepted: a letter ("B", "(B)", "B.", "B)", "b"), with lead-ins ("Option B",
    "the answer is B", "Answer: (B) 12 cm"; a letter followed by text counts as the
    letter), or, when `choices` is given, the text of exactly one option (normalized or
    numeric equality: "12" picks "12 cm", but nothing from ["12", "12.0"]). A prediction
    naming two different letters ("A and B", "(A) or (C)") is wrong even if one is the gold.
    Empty `choices` mean the option texts are unknown, as None (`Question.choices` is ()
    when the options are only in the question's text).

    Raises:
        ValueError: if `gold_letter` is not one letter, or is past the end of `choices`.

    Examples:
        >>> match_choice("The answer is (B).", "B"), match_choice("Option b", "B")
        (True, True)
        >>> match_choice("12 cm", "B", ["10 cm", "12 cm"])
        True
        >>> match_choice("A and B", "B"), match_choice("BC", "B")
        (False, False)
    """
    choices = choices or None
    gold = _gold_index(gold_letter, choices)
    text = _strip_lead_in(_TEXT_CMD_RE.sub(r"\1", _clean_answer(_unify_chars(pred)) or ""))
    letters = _named_letters(text)
    if letters:
        return letters == {gold}
    return choices is not None and _matching_choices(text, choices) == {gold}


# --- grading -----------------------------------------------------------------------------


def final_answer(pred_text: str) -> str | None:
    """The answer `grade` judges: `extract_answer(pred_text)`, else the whole text when it
    is a bare answer of at most 64 characters, else None (the chain states no answer)."""
    answer = extract_answer(pred_text)
    if answer is None:
        answer = pred_text.strip()
        if not answer or len(answer) > _SHORT_ANSWER_CHARS:
            return None
    return answer


def match_answer(
    answer: str | None, gold: str, *, answer_type: str, choices: Sequence[str] | None = None
) -> bool:
    """Whether a `final_answer` matches `gold` (None, no answer, never does); the rules
    and arguments are `grade`'s."""
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")
    if answer is None:
        return False
    if answer_type == "number":
        return match_number(answer, gold)
    if answer_type == "choice":
        return match_choice(answer, gold, choices)
    return normalize_text(answer) == normalize_text(gold)


def grade(
    pred_text: str, gold: str, *, answer_type: str, choices: Sequence[str] | None = None
) -> bool:
    r"""Whether a reasoning chain's final answer matches `gold`.

    The answer is `final_answer(pred_text)`: `extract_answer(pred_text)`, or for a chain
    with no answer cue the whole text if it is at most 64 characters (a bare "12" or "B");
    with neither it is wrong.

    Args:
      pred_text: the model's output, a whole chain or a bare answer.
      gold: the reference: a number, an option letter, or free text.
      answer_type: "number" (`match_number`), "choice" (`match_choice`; `gold` is the
        letter) or "text" (`normalize_text` equality).
      choices: option texts for "choice", in letter order; lets an answer quote the option.

    Raises:
      ValueError: for an unknown `answer_type`, or a `gold` the matcher cannot read.

    Examples:
        >>> grade("Step 1: 3 + 4 = 7.\n\nAnswer: 7", "7", answer_type="number")
        True
        >>> grade("so the answer is \\boxed{C}", "B", answer_type="choice")
        False
    """
    return match_answer(final_answer(pred_text), gold, answer_type=answer_type, choices=choices)


def check_gold(question) -> None:
    """Raises if the grader cannot read a question's gold answer, naming the record.

    Grading happens after model work (a chain is written, then graded), so callers check
    every question first: an unreadable gold must not fail a run hours in.

    Args:
      question: anything with ``id``, ``gold``, ``answer_type`` and ``choices``
        (`questions.Question`).

    Raises:
      ValueError: `grade` refuses the gold (an unknown answer type, a number or option
        letter it cannot read).
    """
    q = question
    try:
        grade(f"Answer: {q.gold}", q.gold, answer_type=q.answer_type, choices=q.choices)
    except ValueError as e:
        raise ValueError(f"record {q.id!r}: gold answer {q.gold!r}: {e}") from e
