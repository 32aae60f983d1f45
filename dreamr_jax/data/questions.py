"""One question to put to a model, from a record of either kind of dataset.

Evaluation (`dreamr_jax.eval`) and SAPO (`training.sapo.make_prompts`) both prompt with an
image and a question and grade the answer; `Question` is what they share, so a record reads
the same way in training and in evaluation:

- a synthetic record (`synthetic.to_record`'s shape, or a raw `synthetic_tfds` example)
  already writes its options into the question ("... Options: (A) x (B) y");
- an imported `Record` (or a raw `import_tfds` example) keeps its options apart, so they
  are appended in that same format (`with_options`), and only its first image is used.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence

from PIL import Image

from dreamr_jax.data import import_tfds, synthetic_tfds
from dreamr_jax.data.records import Record


@dataclasses.dataclass(frozen=True)
class Question:
    """One question to ask: its image, prompt text and gold answer.

    Attributes:
      id: the record's id.
      image: ``[S, S, 3]`` uint8 array (synthetic) or a PIL image (imported).
      question: the prompt text, options included.
      gold: the gold answer (an option letter for ``answer_type == "choice"``).
      answer_type: one of `grading.ANSWER_TYPES`.
      choices: option texts in letter order; () when none are given in text.
    """

    id: str
    image: object
    question: str
    gold: str
    answer_type: str
    choices: tuple[str, ...]


def with_options(question: str, choices: Sequence[str]) -> str:
    """``question`` with its options appended as the synthetic set writes them."""
    if not choices:
        return question
    opts = " ".join(f"({chr(65 + j)}) {c}" for j, c in enumerate(choices))
    return f"{question} Options: {opts}"


def from_synthetic(record: Mapping) -> Question:
    """A synthetic record, read from TFDS (image decoded) or from `synthetic.to_record`
    (image as PNG bytes); its question already lists the options."""
    r = synthetic_tfds.as_record(record)
    image = record["image"]
    image = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else r["image"]
    return Question(
        r["id"], image, r["question"], r["answer"], r["answer_type"], tuple(r["choices"])
    )


def from_imported(record: Record) -> Question:
    """An imported record: options appended to the question, its first image decoded.

    Raises:
      ValueError: the record has no image (every engine and SAPO prompt needs one).
    """
    if not record.images:
        raise ValueError(f"record {record.id!r} has no image; a prompt needs one")
    image = Image.open(io.BytesIO(record.images[0]))
    question = with_options(record.question, record.choices)
    return Question(
        record.id, image, question, record.answer, record.answer_type, tuple(record.choices)
    )


def from_example(example) -> Question:
    """A `Record`, a raw `import_tfds` example (key ``images``) or a synthetic record."""
    if isinstance(example, Question):
        return example
    if isinstance(example, Record):
        return from_imported(example)
    if "images" in example:
        return from_imported(import_tfds.as_record(example))
    return from_synthetic(example)
