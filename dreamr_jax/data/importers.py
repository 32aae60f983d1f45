"""Readers for real evaluation benchmarks stored locally in their published layouts.

Each reader turns one benchmark into `Record`s, the schema the rest of the data code
consumes. Nothing is downloaded: the user points the reader at a local copy.

- `read_mmbench`: MMBench's TSV (``MMBench_DEV_EN.tsv`` ...), base64 images inline.
- `read_mathverse`: MathVerse's ``testmini.json`` plus its ``images/`` directory.
- `read_realworldqa`: the Hugging Face parquet copy of RealWorldQA.
- `read_mmmu`: MMMU's Hugging Face parquet layout (one folder per subject).

The parquet readers need ``pyarrow``, imported only when they are called.

Bad input never turns into a silent wrong label (see `records`): a missing file, a row
with no answer, an answer letter that names no option, an unknown question type, an image
PIL cannot decode or one over ``max_image_pixels`` (checked from the header, before any
decode) raises `DatasetFormatError` naming the file and the row; with
``on_error="skip"`` the row is logged, skipped and counted in ``stats["skipped"]``.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import re
import string
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from dreamr_jax.data.records import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ON_ERROR,
    DatasetFormatError,
    Record,
    RowError,
    check_on_error,
    free_answer_type,
    handle_row_error,
    image_file,
    inside,
    is_missing,
    letter_answer,
    read_json,
    verified_image,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ON_ERROR",
    "DatasetFormatError",
    "Record",
    "read_mathverse",
    "read_mmbench",
    "read_mmmu",
    "read_realworldqa",
]

# VLMEvalKit-style TSVs store an image once and refer to it from later rows by index;
# a cell this short cannot be an encoded image.
_IMAGE_REF_MAX_CHARS = 64
_CHOICES_HEAD_RE = re.compile(r"^\s*choices?\s*[:：]\s*$", re.IGNORECASE | re.MULTILINE)
_CHOICE_LINE_RE = re.compile(r"^\s*\(?([A-Z])\)?\s*[:.：)]\s*(.*?)\s*$")


# --- MMBench -----------------------------------------------------------------------------


def _find_file(path: Path, pattern: str, what: str) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetFormatError(path, None, f"no such {what} file or directory")
    found = sorted(path.glob(pattern))
    if len(found) != 1:
        raise DatasetFormatError(path, None, f"expected exactly one {pattern}, found {found}")
    return found[0]


def _read_tsv(file: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a pandas-written TSV whose cells hold megabytes of base64."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # process-global, so restored below
    try:
        with file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            return list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetFormatError(file, None, f"not a readable TSV: {e}") from e
    finally:
        csv.field_size_limit(old_limit)


def _mmbench_choices(row: dict[str, str], option_cols: list[str]) -> tuple[str, ...]:
    present = [not is_missing(row.get(c)) for c in option_cols]
    n = sum(present)
    if n < 2:
        raise RowError(f"{n} non-empty options; need at least 2")
    if not all(present[:n]):  # a gap (A, B, D) would shift every later letter
        raise RowError(f"options are not contiguous from A: {present}")
    return tuple(row[c].strip() for c in option_cols[:n])


def _mmbench_record(
    row: dict, option_cols: list[str], images: dict[str, str], max_pixels: int | None
) -> Record:
    index = row["index"].strip()
    if is_missing(row.get("question")):
        raise RowError("empty question")
    if is_missing(row.get("answer")):
        raise RowError("no answer")
    choices = _mmbench_choices(row, option_cols)
    answer = letter_answer(row["answer"], choices)
    cell = (row.get("image") or "").strip()
    if len(cell) <= _IMAGE_REF_MAX_CHARS:
        cell = images.get(cell, "")
        if len(cell) <= _IMAGE_REF_MAX_CHARS:
            raise RowError(f"image cell {row.get('image')!r} is neither base64 nor a row index")
    try:
        data = base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RowError(f"image is not valid base64 ({e})") from e
    question = row["question"].strip()
    if not is_missing(row.get("hint")):
        question = f"{row['hint'].strip()}\n{question}"
    return Record(
        id=f"mmbench:{index}",
        images=(verified_image(data, max_pixels),),
        question=question,
        choices=choices,
        answer=answer,
        answer_type="choice",
        steps=(),
        source="mmbench",
    )


def read_mmbench(
    path: str | Path,
    *,
    on_error: str = "raise",
    stats: MutableMapping | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[Record]:
    """Reads MMBench's published TSV (``MMBench_DEV_EN.tsv`` and its siblings).

    Columns used: ``index, question, hint, A, B, C, D[, E...], answer, image``; other
    columns (category, split, ...) are ignored and ``hint`` may be absent. Empty or "nan"
    option cells end the option list; the answer letter must name a present option.
    ``image`` holds base64 image bytes, or (VLMEvalKit style) the index of a row that does.

    Args:
      path: the TSV file, or a directory holding exactly one ``*.tsv``.
      on_error: "raise" a `DatasetFormatError` on a bad row, or "skip" it.
      stats: when given, ``stats["skipped"]`` is incremented for every skipped row.
      max_image_pixels: a row with an image of more pixels (width * height) than this is
        bad; default 4096 * 4096 (`DEFAULT_MAX_IMAGE_PIXELS`), None disables the limit.

    Returns:
      an iterator of one `Record` per good row, in file order (``answer_type`` "choice").
      The file and header are checked on call; rows as they are iterated.

    Raises:
      DatasetFormatError: missing file, missing columns, or (with on_error="raise") a bad
        row; the message names the file and the row's ``index``.
    """
    check_on_error(on_error)
    file = _find_file(Path(path), "*.tsv", "MMBench TSV")
    header, rows = _read_tsv(file)
    missing = [c for c in ("index", "question", "answer", "image", "A", "B") if c not in header]
    if missing:
        raise DatasetFormatError(file, "header", f"missing columns {missing}")
    option_cols = []
    for letter in string.ascii_uppercase:  # A, B, ... as long as the columns run
        if letter not in header:
            break
        option_cols.append(letter)
    return _iter_mmbench(file, rows, option_cols, on_error, stats, max_image_pixels)


def _iter_mmbench(
    file: Path,
    rows: list[dict],
    option_cols: list[str],
    on_error: str,
    stats,
    max_pixels: int | None,
) -> Iterator[Record]:
    images = {(r.get("index") or "").strip(): (r.get("image") or "").strip() for r in rows}
    for n, row in enumerate(rows):
        row_id = (row.get("index") or "").strip() or f"#{n + 1}"
        try:
            yield _mmbench_record(row, option_cols, images, max_pixels)
        except RowError as e:
            handle_row_error(e, file, row_id, on_error, stats)


# --- MathVerse ---------------------------------------------------------------------------


def _split_choices(text: str) -> tuple[str, tuple[str, ...]]:
    """Splits "stem\\nChoices:\\nA:x\\nB.y" into the stem and ("x", "y").

    Returns (text, ()) when there is no "Choices:" line (the options may be drawn in the
    image, as in MathVerse's vision-only versions).
    """
    head = _CHOICES_HEAD_RE.search(text)
    if head is None:
        return text.strip(), ()
    choices: list[str] = []
    for line in text[head.end() :].splitlines():
        match = _CHOICE_LINE_RE.match(line)
        if match and match[1] == string.ascii_uppercase[len(choices)]:
            choices.append(match[2])
        elif line.strip() and choices:  # an option that wraps onto a second line
            choices[-1] = f"{choices[-1]}\n{line.strip()}"
        elif line.strip():
            raise RowError(f"cannot parse option line {line!r}")
    if len(choices) < 2:
        raise RowError(f"'Choices:' block has {len(choices)} parsable options; need >= 2")
    return text[: head.start()].strip(), tuple(choices)


def _mathverse_image(root: Path, name: str, max_pixels: int | None) -> bytes:
    for relative in (Path("images") / name, Path(name)):
        candidate = inside(root, relative)
        if candidate.is_file():
            return image_file(candidate, max_pixels)
    raise RowError(f"image {name!r} not found under {(root / 'images').resolve()}")


def _mathverse_record(root: Path, item: dict, max_pixels: int | None) -> Record:
    if not isinstance(item, dict):
        raise RowError(f"entry is a {type(item).__name__}, not an object")
    answer = str(item.get("answer") or "").strip()
    if is_missing(answer):
        raise RowError("no answer")
    qtype = item.get("question_type")
    stem, choices = _split_choices(str(item.get("question") or ""))
    if not stem:  # vision-only versions put the whole question in the image
        stem = str(item.get("query_wo") or "").strip()
    if not stem:
        raise RowError("empty question and query_wo")
    if qtype == "multi-choice":
        answer, answer_type = letter_answer(answer, choices), "choice"
    elif qtype == "free-form":
        choices = ()
        answer_type = free_answer_type(answer)
    else:
        raise RowError(f"unknown question_type {qtype!r}; expected multi-choice/free-form")
    name = str(item.get("image") or "").strip()
    images = (_mathverse_image(root, name, max_pixels),) if name else ()
    return Record(
        id=f"mathverse:{item.get('sample_index')}",
        images=images,
        question=stem,
        choices=choices,
        answer=answer,
        answer_type=answer_type,
        steps=(),
        source="mathverse",
    )


def read_mathverse(
    path: str | Path,
    *,
    on_error: str = "raise",
    stats: MutableMapping | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[Record]:
    """Reads MathVerse's published ``testmini.json`` and its ``images/`` directory.

    Multi-choice questions carry their options after a "Choices:" line ("A:x" or "A. x");
    they become `Record.choices` and the question keeps only the stem. Free-form answers
    are "number" when `grading.parse_number` reads them, else "text".

    Args:
      path: the directory holding ``testmini.json`` and ``images/``, or the JSON file.
      on_error: "raise" a `DatasetFormatError` on a bad entry, or "skip" it.
      stats: when given, ``stats["skipped"]`` is incremented for every skipped entry.
      max_image_pixels: an entry with an image of more pixels (width * height) than this
        is bad; default 4096 * 4096 (`DEFAULT_MAX_IMAGE_PIXELS`), None disables the limit.

    Returns:
      an iterator of one `Record` per good entry, in file order. The file is checked on
      call; entries as they are iterated.

    Raises:
      DatasetFormatError: missing or unparsable file, or (with on_error="raise") a bad
        entry; the message names the file and the entry's ``sample_index``.
    """
    check_on_error(on_error)
    path = Path(path)
    file = path if path.is_file() else path / "testmini.json"
    items = read_json(file, "MathVerse")
    if not isinstance(items, list):
        raise DatasetFormatError(file, None, f"expected a JSON list, got {type(items).__name__}")
    return _iter_mathverse(file, items, on_error, stats, max_image_pixels)


def _iter_mathverse(
    file: Path, items: list, on_error: str, stats, max_pixels: int | None
) -> Iterator[Record]:
    for n, item in enumerate(items):
        row_id = f"#{n + 1}"
        if isinstance(item, dict) and item.get("sample_index") is not None:
            row_id = str(item["sample_index"])
        try:
            yield _mathverse_record(file.parent, item, max_pixels)
        except RowError as e:
            handle_row_error(e, file, row_id, on_error, stats)


# --- Parquet (Hugging Face layouts) --------------------------------------------------------


def _parquet_files(path: Path, patterns: tuple[str, ...], what: str) -> list[Path]:
    """`path` itself when a file, else the files of the first glob pattern that matches."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetFormatError(path, None, f"no such {what} file or directory")
    for pattern in patterns:
        found = sorted(p for p in path.glob(pattern) if p.is_file())
        if found:
            return found
    raise DatasetFormatError(path, None, f"no parquet files matching {list(patterns)}")


def _check_parquet(file: Path, required: tuple[str, ...]) -> list[str]:
    """The column names of a parquet file, after checking `required` are all present."""
    import pyarrow.parquet as pq  # optional dependency: only the parquet readers need it

    try:
        names = list(pq.read_schema(file).names)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DatasetFormatError(file, None, f"not a readable parquet file: {e}") from e
    missing = [c for c in required if c not in names]
    if missing:
        raise DatasetFormatError(file, "header", f"missing columns {missing}")
    return names


def _parquet_rows(file: Path) -> Iterator[dict]:
    """The rows of a parquet file as dicts, read a batch at a time."""
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=64):
            yield from batch.to_pylist()
    except Exception as e:
        raise DatasetFormatError(file, None, f"not a readable parquet file: {e}") from e


def _struct_image(cell, column: str, max_pixels: int | None) -> bytes:
    """The verified bytes of a Hugging Face ``Image`` cell ({"bytes": ..., "path": ...})."""
    if cell is None:
        raise RowError(f"no {column}")
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not isinstance(data, bytes) or not data:
        raise RowError(f"{column} holds no image bytes")
    return verified_image(data, max_pixels)


def _text_cell(row: dict, column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value).strip()


# --- RealWorldQA -------------------------------------------------------------------------

_RWQA_OPTION_RE = re.compile(r"^\s*([A-Z])\.\s*(.*?)\s*$")
_RWQA_INSTRUCTION_RE = re.compile(r"^\s*please\s+answer\b", re.IGNORECASE)


def _rwqa_split(text: str) -> tuple[str, tuple[str, ...]]:
    """Splits a RealWorldQA question into its stem and embedded "A. x" option lines.

    The options are a run of lines lettered A, B, ... from A; what follows them (and, with
    no options, a trailing line starting "Please answer") is the answer-format
    instruction, which is dropped: prompt building adds its own.
    """
    lines = text.splitlines()
    for i in range(len(lines) - 1):
        first, second = _RWQA_OPTION_RE.match(lines[i]), _RWQA_OPTION_RE.match(lines[i + 1])
        if first and second and first[1] == "A" and second[1] == "B":
            choices: list[str] = []
            for line in lines[i:]:
                match = _RWQA_OPTION_RE.match(line)
                if not match or match[1] != string.ascii_uppercase[len(choices)]:
                    break
                choices.append(match[2])
            return "\n".join(lines[:i]).strip(), tuple(choices)
    while lines and (not lines[-1].strip() or _RWQA_INSTRUCTION_RE.match(lines[-1])):
        lines.pop()
    return "\n".join(lines).strip(), ()


def _realworldqa_record(row: dict, row_id: str, max_pixels: int | None) -> Record:
    answer = _text_cell(row, "answer")
    if is_missing(answer):
        raise RowError("no answer")
    stem, choices = _rwqa_split(_text_cell(row, "question"))
    if not stem:
        raise RowError("empty question")
    if choices:
        answer, answer_type = letter_answer(answer, choices), "choice"
    else:
        answer_type = free_answer_type(answer)
    return Record(
        id=f"realworldqa:{row_id}",
        images=(_struct_image(row.get("image"), "image", max_pixels),),
        question=stem,
        choices=choices,
        answer=answer,
        answer_type=answer_type,
        steps=(),
        source="realworldqa",
    )


def read_realworldqa(
    path: str | Path,
    *,
    on_error: str = "raise",
    stats: MutableMapping | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[Record]:
    """Reads the Hugging Face parquet copy of RealWorldQA.

    Columns used: ``image`` (a struct ``{bytes, path}``), ``question`` and ``answer``.
    Multiple-choice questions embed their options as lines "A. x", "B. y", ...: these
    become `Record.choices`, the gold answer must be one of their letters (``answer_type``
    "choice"), and the question keeps only the text before them. The answer-format
    instruction that ends every question ("Please answer directly with ...") is dropped.
    Other answers are "number" when `grading.parse_number` reads them, else "text".

    Args:
      path: the dataset directory (``data/test-*.parquet`` under it, or ``test-*.parquet``
        directly in it) or a single parquet file.
      on_error: "raise" a `DatasetFormatError` on a bad row, or "skip" it.
      stats: when given, ``stats["skipped"]`` is incremented for every skipped row.
      max_image_pixels: a row with an image of more pixels (width * height) than this is
        bad; default 4096 * 4096 (`DEFAULT_MAX_IMAGE_PIXELS`), None disables the limit.

    Returns:
      an iterator of one `Record` per good row, in file order, with id
      ``"realworldqa:<n>"``: n counts rows from 0 across the files in sorted order. Files
      and columns are checked on call; rows as they are iterated.

    Raises:
      DatasetFormatError: missing or unreadable file, missing columns, or (with
        on_error="raise") a bad row; the message names the file and the row number.
    """
    check_on_error(on_error)
    files = _parquet_files(
        Path(path), ("data/test-*.parquet", "test-*.parquet"), "RealWorldQA parquet"
    )
    for file in files:
        _check_parquet(file, ("image", "question", "answer"))
    return _iter_realworldqa(files, on_error, stats, max_image_pixels)


def _iter_realworldqa(
    files: list[Path], on_error: str, stats, max_pixels: int | None
) -> Iterator[Record]:
    n = 0
    for file in files:
        for row in _parquet_rows(file):
            row_id = str(n)
            n += 1
            try:
                yield _realworldqa_record(row, row_id, max_pixels)
            except RowError as e:
                handle_row_error(e, file, row_id, on_error, stats)


# --- MMMU --------------------------------------------------------------------------------

_MMMU_MAX_IMAGES = 7
_IMAGE_PLACEHOLDER_RE = re.compile(r"<image\s*(\d+)>")


def _mmmu_options(cell) -> tuple[str, ...]:
    text = "" if cell is None else str(cell).strip()
    try:
        options = ast.literal_eval(text)  # literals only: never evaluates code
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise RowError(f"options {text[:80]!r} is not a Python list literal") from e
    if not isinstance(options, list) or not all(
        isinstance(o, (str, int, float)) and not isinstance(o, bool) for o in options
    ):
        raise RowError(f"options {text[:80]!r} is not a list of strings")
    return tuple(str(o).strip() for o in options)


def _mmmu_images(row: dict, max_pixels: int | None) -> tuple[bytes, ...]:
    """image_1, image_2, ... up to the last present one; a gap would renumber images."""
    cells = [row.get(f"image_{k}") for k in range(1, _MMMU_MAX_IMAGES + 1)]
    while cells and cells[-1] is None:
        cells.pop()
    return tuple(_struct_image(cell, f"image_{k}", max_pixels) for k, cell in enumerate(cells, 1))


def _mmmu_record(row: dict, max_pixels: int | None) -> Record:
    question = _text_cell(row, "question")
    if not question:
        raise RowError("empty question")
    answer = _text_cell(row, "answer")
    if is_missing(answer):
        raise RowError("no answer")
    options = _mmmu_options(row.get("options"))
    qtype = _text_cell(row, "question_type")
    if qtype == "multiple-choice":
        if len(options) < 2:
            raise RowError(f"multiple-choice question with {len(options)} options")
        answer, answer_type, choices = letter_answer(answer, options), "choice", options
    elif qtype == "open":
        if options:
            raise RowError(f"open question with options {list(options)}")
        answer_type, choices = free_answer_type(answer), ()
    else:
        raise RowError(f"unknown question_type {qtype!r}; expected multiple-choice/open")
    images = _mmmu_images(row, max_pixels)
    for text in (question, *choices):
        for k in _IMAGE_PLACEHOLDER_RE.findall(text):
            if not 1 <= int(k) <= len(images):
                raise RowError(f"<image {k}> refers to a missing image ({len(images)} given)")
    return Record(
        id=f"mmmu:{_text_cell(row, 'id')}",
        images=images,
        question=question,
        choices=choices,
        answer=answer,
        answer_type=answer_type,
        steps=(),
        source="mmmu",
    )


def read_mmmu(
    path: str | Path,
    *,
    split: str = "validation",
    on_error: str = "raise",
    stats: MutableMapping | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[Record]:
    """Reads MMMU's Hugging Face layout: one folder per subject holding parquet files.

    Columns used: ``id, question, options, answer, question_type, image_1 ... image_7``.
    ``options`` is a string holding a Python list literal (``"['$6', '$7']"``; ``"[]"``
    for open questions), parsed with `ast.literal_eval`. "multiple-choice" answers must be
    the letter (or the text) of an option; "open" answers are "number" when
    `grading.parse_number` reads them, else "text" (an open answer that lists several
    accepted values stays one string).

    Images are the non-null ``image_k`` cells in k order and must be contiguous from
    ``image_1``, so that ``images[k - 1]`` is image k. The question and the options keep
    their ``<image k>`` placeholders, so a prompt builder can put each image where the
    question refers to it; every placeholder must name a present image.

    Args:
      path: the dataset directory (reads ``*/{split}-*.parquet``, subjects in sorted
        order) or a single parquet file.
      split: which split's files to read from a directory ("dev", "validation", "test";
        the test split has no public answers, so its rows fail with "no answer").
      on_error: "raise" a `DatasetFormatError` on a bad row, or "skip" it.
      stats: when given, ``stats["skipped"]`` is incremented for every skipped row.
      max_image_pixels: a row with an image of more pixels (width * height) than this is
        bad; default 4096 * 4096 (`DEFAULT_MAX_IMAGE_PIXELS`), None disables the limit.

    Returns:
      an iterator of one `Record` per good row with id ``"mmmu:<id>"``. Files and columns
      are checked on call; rows as they are iterated.

    Raises:
      DatasetFormatError: missing or unreadable file, missing columns, or (with
        on_error="raise") a bad row; the message names the file and the row's ``id``.
    """
    check_on_error(on_error)
    files = _parquet_files(Path(path), (f"*/{split}-*.parquet",), "MMMU parquet")
    for file in files:
        _check_parquet(file, ("id", "question", "options", "answer", "question_type"))
    return _iter_mmmu(files, on_error, stats, max_image_pixels)


def _iter_mmmu(files: list[Path], on_error: str, stats, max_pixels: int | None) -> Iterator[Record]:
    for file in files:
        for n, row in enumerate(_parquet_rows(file)):
            row_id = _text_cell(row, "id") or f"#{n + 1}"
            try:
                yield _mmmu_record(row, max_pixels)
            except RowError as e:
                handle_row_error(e, file, row_id, on_error, stats)
