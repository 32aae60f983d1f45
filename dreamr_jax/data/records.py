"""The record schema every dataset importer produces, and the checks they share.

`Record` is one normalised example; `DatasetFormatError` is what a file that does not
follow its published layout raises. The rest are the building blocks of the readers in
`importers` (evaluation sets) and `train_sets` (training sets):

- a reader validates ``on_error`` with `check_on_error`, raises `RowError` for a problem
  with one row, and turns it into a `DatasetFormatError` naming the file and the row (or a
  logged, counted skip) with `handle_row_error`;
- `verified_image` checks an image's size from its header, then fully decodes it;
- `letter_answer` maps a gold answer to an option letter, or fails; never guesses.

Bad input never turns into a silent wrong label.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import string
import warnings
from collections.abc import MutableMapping
from pathlib import Path

from PIL import Image

from dreamr_jax.data import grading

logger = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
_MISSING = ("", "nan", "none", "null")


class DatasetFormatError(ValueError):
    """A dataset file that does not follow its published layout.

    Attributes:
      file: the offending file (or directory).
      row: the row's id in the file (MMBench ``index``, MathVerse ``sample_index``), or
        None for a problem with the file as a whole.
    """

    def __init__(self, file: str | Path, row: str | None, problem: str):
        self.file, self.row, self.problem = str(file), row, problem
        where = f"{self.file}" if row is None else f"{self.file}, row {row}"
        super().__init__(f"{where}: {problem}")


@dataclasses.dataclass(frozen=True)
class Record:
    """One normalised example.

    Attributes:
      id: unique id, ``"<source>:<row id>"``.
      images: encoded image files (PNG/JPEG bytes as stored), in prompt order.
      question: the question text, with any hint prepended and without the options.
      choices: option texts in letter order (A, B, ...); () when the question has none
        in text (free-form, or options drawn inside the image).
      answer: the gold answer; for ``answer_type == "choice"`` the option letter.
      answer_type: one of `grading.ANSWER_TYPES`.
      steps: reference reasoning steps, the last ``"Answer: X"``; () when the dataset
        has none.
      source: the dataset the record came from ("mmbench", "mathverse", "realworldqa",
        "mmmu", "scienceqa", "geo3k", "ocrvqa").
    """

    id: str
    images: tuple[bytes, ...]
    question: str
    choices: tuple[str, ...]
    answer: str
    answer_type: str
    steps: tuple[str, ...]
    source: str


class RowError(Exception):
    """A problem with one row; turned into a DatasetFormatError or a counted skip."""


def is_missing(cell: str | None) -> bool:
    """True for None, empty, whitespace-only and the pandas/JSON spellings of nothing."""
    return cell is None or cell.strip().lower() in _MISSING


def check_on_error(on_error: str) -> None:
    """Raises ValueError unless `on_error` is one of `ON_ERROR`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def handle_row_error(
    err: RowError, file: Path, row: str, on_error: str, stats: MutableMapping | None
) -> None:
    """Raises the row's error as a DatasetFormatError, or logs and counts it as skipped."""
    if on_error == "raise":
        raise DatasetFormatError(file, row, str(err)) from err
    logger.warning("skipping %s, row %s: %s", file, row, err)
    if stats is not None:
        stats["skipped"] = stats.get("skipped", 0) + 1


def read_json(file: Path, what: str):
    """The parsed content of a JSON file; DatasetFormatError when absent or unparsable."""
    if not file.is_file():
        raise DatasetFormatError(file, None, f"no such {what} file")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetFormatError(file, None, f"not valid JSON: {e}") from e


def inside(root: Path, relative: str | Path) -> Path:
    """``root / relative``, resolved, after checking it stays inside `root`.

    `relative` comes from a data file (an image name, a row id used as a folder name), so
    ``"../../x"`` must not reach files outside the dataset directory.
    """
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise RowError(f"path {str(relative)!r} leaves the dataset directory")
    return path


def verified_image(data: bytes, max_pixels: int | None) -> bytes:
    """Returns `data` unchanged after checking its size and that PIL can fully decode it.

    The size comes from the header (``Image.open`` reads no pixel data), so an image over
    `max_pixels` is rejected without being decoded. PIL's own decompression-bomb guard
    (``PIL.Image.MAX_IMAGE_PIXELS``) applies on top: its warning and error are bad rows too.
    """
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: make it a bad row too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if max_pixels is not None and width * height > max_pixels:
                    raise RowError(
                        f"image is {width}x{height} = {width * height} pixels, over the "
                        f"limit of {max_pixels} pixels; pass a larger max_image_pixels "
                        "(or None) to read it"
                    )
                im.load()  # decodes every pixel: catches truncated files that verify() misses
    except RowError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RowError(
            f"image exceeds PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels "
            f"({type(e).__name__}: {e}); raise PIL.Image.MAX_IMAGE_PIXELS to read it"
        ) from e
    except Exception as e:  # PIL raises many types for corrupt data
        raise RowError(f"image does not decode ({type(e).__name__}: {e})") from e
    return data


def image_file(path: Path, max_pixels: int | None) -> bytes:
    """The verified bytes of the image file at `path`; RowError when it is absent."""
    if not path.is_file():
        raise RowError(f"image {str(path)!r} not found")
    return verified_image(path.read_bytes(), max_pixels)


def letter_answer(answer: str, choices: tuple[str, ...]) -> str:
    """The gold option letter, checked against `choices` (any letter when choices=())."""
    letter = answer.strip().upper()
    if len(letter) != 1 or letter not in string.ascii_uppercase:
        # Some copies store the option text instead of its letter: map it only when it
        # names exactly one option.
        norm = grading.normalize_text(answer)
        hits = [i for i, c in enumerate(choices) if grading.normalize_text(c) == norm]
        if len(hits) != 1:
            raise RowError(f"answer {answer!r} is not an option letter or option text")
        return string.ascii_uppercase[hits[0]]
    if choices and letter not in string.ascii_uppercase[: len(choices)]:
        raise RowError(f"answer {letter!r} is not among the options {letters(choices)}")
    return letter


def letters(choices: tuple[str, ...]) -> str:
    """``"A,B,C"`` for three choices."""
    return ",".join(string.ascii_uppercase[: len(choices)])


def free_answer_type(answer: str) -> str:
    """ "number" when `grading.parse_number` reads the free-form answer, else "text"."""
    return "number" if grading.parse_number(answer) is not None else "text"
