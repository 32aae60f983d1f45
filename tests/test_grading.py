"""Answer extraction and grading on awkward real-world answer formats."""

import random

import pytest

from dreamr_jax.data.grading import (
    ANSWER_TYPES,
    check_gold,
    extract_answer,
    final_answer,
    grade,
    match_answer,
    match_choice,
    match_number,
    normalize_text,
    parse_number,
)
from dreamr_jax.data.questions import Question


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The area is \boxed{12}.", "12"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\dfrac{\sqrt{3}}{2}"),
        (r"first \boxed{3}, wait, redo: \boxed{4}", "4"),  # last boxed wins
        (r"\boxed{3} ... Answer: 5", "3"),  # boxed beats a later cue
        (r"$\boxed{x^{2}+1}$", "x^{2}+1"),
        (r"\boxed {7}", "7"),
        (r"\fbox{B}", "B"),
        (r"\boxed{5} and an unbalanced \boxed{6", "5"),
        (r"\boxed{} then Answer: 9", "9"),  # an empty box is no answer
        ("Step 1: read the bars.\n\nAnswer: 12 cm", "12 cm"),
        ("Answer: 12 cm.", "12 cm"),
        ("answer: (B)", "(B)"),
        ("So the answer is 42.", "42"),
        ("The ANSWER IS -3.5.", "-3.5"),
        ("The final answer is: **B**.", "B"),
        ("**Final Answer:** 7", "7"),
        ("**Answer**: $\\frac{3}{4}$", "\\frac{3}{4}"),
        ("Answer: 5\nlater: the answer is 6", "6"),  # the last cue wins
        ("Answer: (B) 12 cm. Because the bars add up.", "(B) 12 cm"),
        ("Answer:\n  8", "8"),
        ("The answer is 3.14 exactly", "3.14 exactly"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "no cue here, just 12", r"\boxed{unbalanced", "To answer this we add.", "Answer: **."],
)
def test_extract_answer_none(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Step 1: 3 + 4 = 7.\n\nAnswer: 7", "7"),  # a cue: extract_answer's answer
        ("  12 ", "12"),  # no cue, short: the bare text is the answer
        ("B", "B"),
        ("x" * 64, "x" * 64),  # the longest bare answer
        ("x" * 65, None),  # a longer text without a cue states no answer
        ("Step 1: the bars read 3 and 4.\n\nStep 2: so the total is 7 in all.", None),
        ("   ", None),
        ("", None),
    ],
)
def test_final_answer(text, expected):
    assert final_answer(text) == expected
    # grade judges exactly that answer: correct iff the answer matches
    gold = "7" if expected is None else expected.strip()
    want = expected is not None and match_answer(expected, gold, answer_type="text")
    assert grade(text, gold, answer_type="text") == want


def test_match_answer_none_and_unknown_type():
    assert not match_answer(None, "7", answer_type="number")
    with pytest.raises(ValueError, match="unknown answer_type"):
        match_answer("7", "7", answer_type="integer")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Red  Triangle ", "red triangle"),
        ("The red triangle.", "red triangle"),
        ('"an apple"', "apple"),
        ("\u201cBlue\u201d", "blue"),  # curly quotes
        ("\u2018yes\u2019!", "yes"),
        ("\u22123", "-3"),  # unicode minus is kept as a sign
        ("(Paris)", "paris"),
        ("\\text{Blue}", "blue"),
        ("**bold**", "bold"),
        ("A", "a"),  # only an article: keep it rather than return ""
        ("line\n\tbreak", "line break"),
        ("Theatre", "theatre"),  # "the" inside a word is not an article
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("42", 42.0),
        ("-3", -3.0),
        ("\u22123", -3.0),
        ("+2", 2.0),
        ("- 3", -3.0),
        ("(-3)", -3.0),
        ("1,234.5", 1234.5),
        ("1,234,567", 1234567.0),
        ("1{,}234", 1234.0),
        ("1\\,234", 1234.0),
        (".5", 0.5),
        ("3.", 3.0),
        ("3/4", 0.75),
        ("-3/4", -0.75),
        ("\\frac{3}{4}", 0.75),
        ("\\dfrac{1}{2}", 0.5),
        ("\\tfrac12", 0.5),
        ("-\\frac{3}{4}", -0.75),
        ("\\frac{-3}{4}", -0.75),
        ("$\\frac{1}{2}$", 0.5),
        ("50%", 0.5),
        ("12.5\\%", 0.125),
        ("50 percent", 0.5),
        ("$12", 12.0),
        ("\\$12.50", 12.5),
        ("\u20ac7", 7.0),
        ("12 cm", 12.0),
        ("12cm", 12.0),
        ("12 \\text{cm}", 12.0),
        ("12\\text{ cm}^2", 12.0),
        ("12 cm^2", 12.0),
        ("12 cm\u00b2", 12.0),
        ("5 square units", 5.0),
        ("60 km/h", 60.0),
        ("9.8 m/s^2", 9.8),
        ("7 dollars", 7.0),
        ("30^\\circ", 30.0),
        ("30^{\\circ}", 30.0),
        ("30\u00b0", 30.0),
        ("30 degrees", 30.0),
        ("1e3", 1000.0),
        ("1.5E-3", 0.0015),
        ("1.2 \\times 10^{3}", 1200.0),
        ("x = 5", 5.0),
        ("AB \\approx 3.2", 3.2),
        ("approximately 3.14", 3.14),
        ("12.", 12.0),
        ("- 5", -5.0),
        ("-\f5", -5.0),  # any whitespace after the sign (a sampled rollout wrote this)
        ("+\t5", 5.0),
    ],
)
def test_parse_number(raw, expected):
    assert parse_number(raw) == pytest.approx(expected)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "abc",
        "2\\sqrt{3}",
        "\\sqrt{2}",
        "3\\pi",
        "2x",
        "3n",
        "3 and 4",
        "3, 4",
        "1,2",  # not a thousands separator: refuse rather than guess 1.2 or 12
        "1.2.3",
        "1/0",
        "1e999",
        "inf",
        "nan",
        "12 m 5 cm",
        "50%%",
        "BC",
        "\\frac{\\sqrt{3}}{2}",
    ],
)
def test_parse_number_rejects(raw):
    assert parse_number(raw) is None


def test_grade_never_raises_on_model_output():
    """SAPO grades sampled rollouts: whatever the text, grading answers True or False."""
    pieces = [*"0123456789+-.,/ eE%$()[]{}\\^_*=:xXabcAB", "\t", "\n", "\f", "\v", "\r"]
    pieces += ["\u2028", "\u2212", "\xa0", "\x85", "\u3000", "\x1c", "\\boxed{", "\\frac"]
    pieces += ["Answer: ", "answer is ", "\\sqrt", "\\text{", "cm", "\u00b0", "1e999", "nan"]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))
        for answer_type, gold, choices in [
            ("number", "5", None),
            ("choice", "B", ["red", "blue", "green"]),
            ("text", "red", None),
        ]:
            assert grade(text, gold, answer_type=answer_type, choices=choices) in (True, False)


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("12", "12", True),
        ("12.0", "12", True),
        ("12 cm", "12", True),
        ("$1,200", "1200", True),
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "1/2", True),
        ("50%", "0.5", True),
        ("50%", "50", True),
        ("0.5", "50%", True),
        ("50", "50%", True),
        ("3.14159", "3.1416", True),  # within rel_tol 1e-4
        ("\u22123", "-3", True),
        ("30\u00b0", "30", True),
        ("1e3", "1000", True),
        ("12", "1.2", False),
        ("-3", "3", False),
        ("3", "-3", False),
        ("0.5", "5%", False),
        ("5%", "0.5", False),
        ("0.33", "1/3", False),
        ("2\\sqrt{3}", "3.4641", False),  # symbolic: not evaluated
        ("2x", "2", False),
        ("3 and 4", "3", False),
        ("", "3", False),
        ("twelve", "12", False),
    ],
)
def test_match_number(pred, gold, expected):
    assert match_number(pred, gold) is expected


def test_match_number_tolerances():
    assert not match_number("1.001", "1")
    assert match_number("1.001", "1", rel_tol=1e-2)
    assert match_number("0.0000001", "0")  # abs_tol covers a zero gold
    assert not match_number("0.0000001", "0", abs_tol=0.0)


def test_match_number_bad_gold():
    with pytest.raises(ValueError, match="not a number"):
        match_number("3", "three")


CHOICES = ["10 cm", "12 cm", "The red triangle", "15"]


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("B", "B", True),
        ("b", "B", True),
        ("(B)", "B", True),
        ("[B]", "B", True),
        ("B.", "B", True),
        ("B)", "B", True),
        ("B:", "B", True),
        ("Option B", "B", True),
        ("option (b)", "B", True),
        ("Choice B", "B", True),
        ("the answer is B", "B", True),
        ("The correct answer is (B).", "B", True),
        ("The answer is option B", "B", True),
        ("Answer: B", "B", True),
        ("(B) 12 cm", "B", True),
        ("B. 12 cm", "B", True),
        ("**B**", "B", True),
        ("\\text{B}", "B", True),
        ("I pick (B)", "B", True),
        ("B", "(B)", True),  # gold written with brackets
        ("B", "b", True),
        ("C", "B", False),
        ("(C)", "B", False),
        ("BC", "B", False),
        ("A and B", "B", False),
        ("B or C", "B", False),
        ("A, B", "B", False),
        ("(A) or (B)", "B", False),
        ("B/C", "B", False),
        ("both (B) and (D)", "B", False),
        ("", "B", False),
        ("Banana", "B", False),
    ],
)
def test_match_choice_letters(pred, gold, expected):
    assert match_choice(pred, gold, None) is expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("12 cm", "B", True),
        ("12 CM.", "B", True),
        ("12", "B", True),  # numeric equality with exactly one option
        ("red triangle", "C", True),
        ("the red triangle", "C", True),
        ("15", "D", True),
        ("15.0", "D", True),
        ("10 cm", "B", False),
        ("11 cm", "B", False),
        ("red", "C", False),  # partial text is not the option
        ("B. 12 cm", "B", True),
        ("A. 10 cm", "B", False),
        ("(B) 10 cm", "B", True),  # a letter followed by text: the letter decides
    ],
)
def test_match_choice_option_text(pred, gold, expected):
    assert match_choice(pred, gold, CHOICES) is expected


def test_match_choice_option_text_needs_a_unique_option():
    assert not match_choice("12", "A", ["12", "12.0", "13"])
    assert not match_choice("12", "A", None)  # no options: a bare number names no letter


@pytest.mark.parametrize("gold", ["AB", "", "1", "option B"])
def test_match_choice_bad_gold(gold):
    with pytest.raises(ValueError, match="one letter"):
        match_choice("A", gold, None)


def test_match_choice_gold_past_choices():
    with pytest.raises(ValueError, match="past the 2 choices"):
        match_choice("C", "C", ["x", "y"])


@pytest.mark.parametrize(
    "pred_text, gold, answer_type, expected",
    [
        ("Step 1: 3 + 4 = 7.\n\nStep 2: double it.\n\nAnswer: 14", "14", "number", True),
        ("Step 1: 3 + 4 = 7.\n\nAnswer: 7", "14", "number", False),
        ("The total is 12 + 3 = \\boxed{15}.", "15", "number", True),
        ("We get \\boxed{\\frac{3}{4}}", "0.75", "number", True),
        ("\\boxed{3} was wrong; \\boxed{4}", "4", "number", True),
        ("\\boxed{3} was wrong; \\boxed{4}", "3", "number", False),
        ("12", "12", "number", True),  # a bare short answer is graded whole
        ("So the answer is 50%.", "0.5", "number", True),
        ("The answer is \u22122.", "-2", "number", True),
        ("The answer is 2.", "-2", "number", False),
        ("Looking at the chart, the answer is (B).", "B", "choice", True),
        ("Looking at the chart, the answer is (C).", "B", "choice", False),
        ("\\boxed{B}", "B", "choice", True),
        ("Answer: A and B", "B", "choice", False),
        ("B", "B", "choice", True),
        ("Answer: The Red Triangle.", "red triangle", "text", True),
        ("Answer: blue", "red", "text", False),
        ("\\boxed{\\text{Paris}}", "paris", "text", True),
        ("Yes", "yes", "text", True),
        ("", "7", "number", False),
        ("step " * 40 + "7", "7", "number", False),  # long chain with no cue: no guess
    ],
)
def test_grade(pred_text, gold, answer_type, expected):
    assert grade(pred_text, gold, answer_type=answer_type) is expected


def test_grade_choice_uses_option_text():
    chain = "The longest bar is 12 cm.\n\nAnswer: 12 cm"
    assert grade(chain, "B", answer_type="choice", choices=CHOICES)
    assert not grade(chain, "A", answer_type="choice", choices=CHOICES)


def test_grade_unknown_type():
    with pytest.raises(ValueError, match="unknown answer_type 'numeric'") as err:
        grade("12", "12", answer_type="numeric")
    for name in ANSWER_TYPES:
        assert name in str(err.value)


def _question(gold, answer_type, choices=()):
    return Question("rec-7", None, "q?", gold, answer_type, tuple(choices))


@pytest.mark.parametrize(
    "gold, answer_type, choices",
    [
        ("12", "number", ()),
        ("-0.5 cm", "number", ()),
        ("B", "choice", ("x", "y")),
        ("C", "choice", ()),
        ("New York", "text", ()),
    ],
)
def test_check_gold_accepts_readable_golds(gold, answer_type, choices):
    check_gold(_question(gold, answer_type, choices))


@pytest.mark.parametrize(
    "gold, answer_type, choices, match",
    [
        ("about seven", "number", (), "not a number"),
        ("BC", "choice", ("x", "y", "z"), "one letter"),
        ("D", "choice", ("x", "y"), "past the 2 choices"),
        ("12", "integer", (), "unknown answer_type"),
    ],
)
def test_check_gold_names_the_record(gold, answer_type, choices, match):
    with pytest.raises(ValueError, match=match) as err:
        check_gold(_question(gold, answer_type, choices))
    assert "record 'rec-7'" in str(err.value) and repr(gold) in str(err.value)


def test_empty_choices_mean_unknown_option_texts():
    """`Question.choices` is () when the options are only in the question's text: a
    letter still grades (it used to raise "past the 0 choices"), option text cannot."""
    assert match_choice("The answer is (C).", "C", ()) and match_choice("C", "C", [])
    assert not match_choice("12 cm", "B", ())
    assert grade("Answer: D", "D", answer_type="choice", choices=())
