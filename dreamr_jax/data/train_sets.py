"""Readers for the real training sets stored locally in their published layouts.

Each reader turns one dataset into `records.Record`s, the schema the evaluation readers
(`importers`) produce too. Nothing is downloaded: the user points the reader at a local
copy of the original release.

- `read_scienceqa`: ScienceQA (lupantech/ScienceQA): ``problems.json``,
  ``pid_splits.json`` and ``<split>/<pid>/image.png``.
- `read_geo3k`: Geometry3K (the InterGPS release): ``<split>/<id>/data.json`` and
  ``<split>/<id>/img_diagram.png``.
- `read_ocrvqa`: OCR-VQA: ``dataset.json`` and ``images/<id>.<ext>`` as its download
  script (``loadDataset.py``) saves them; one record per question.

Bad input is handled as in `importers`: a missing file, a row with no answer, an answer
in an unknown format, an image that is missing, does not decode or is over
``max_image_pixels`` raises `records.DatasetFormatError` naming the file and the row; with
``on_error="skip"`` the row is logged, skipped and counted in ``stats["skipped"]``.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from dreamr_jax.data.records import (
    DEFAULT_MAX_IMAGE_PIXELS,
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
)

GEO3K_SPLITS = ("train", "val", "test")
# OCR-VQA's dataset.json numbers its splits.
OCRVQA_SPLITS = {"train": 1, "val": 2, "test": 3}
# Mirrors of OCR-VQA re-save images under another extension than the URL's.
_OCRVQA_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif")


def _check_split(split: str, splits) -> None:
    if split not in splits:
        raise ValueError(f"split must be one of {tuple(splits)}, got {split!r}")


def _text(value, what: str) -> str:
    """A non-empty string field of a JSON row, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"empty or missing {what}")
    return value.strip()


def _options(value, what: str = "choices") -> tuple[str, ...]:
    """A JSON list of at least two option texts (numbers allowed, stored as text)."""
    if not isinstance(value, list) or not all(
        isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in value
    ):
        raise RowError(f"{what} {str(value)[:80]!r} is not a list of strings")
    if len(value) < 2:
        raise RowError(f"{len(value)} {what}; need at least 2")
    return tuple(str(c).strip() for c in value)


def _answer_step(letter: str) -> str:
    return f"Answer: {letter}"  # the project's step format ends with this line


# --- ScienceQA ---------------------------------------------------------------------------


def _scienceqa_steps(solution, letter: str) -> tuple[str, ...]:
    """The solution's non-empty lines as steps, then ``"Answer: X"``; () without one.

    The lecture is left out: it is background shared by every problem of a skill, not
    reasoning about this problem.
    """
    if not isinstance(solution, str):
        return ()
    lines = tuple(line.strip() for line in solution.splitlines() if line.strip())
    return (*lines, _answer_step(letter)) if lines else ()


def _scienceqa_answer(problem: dict, choices: tuple[str, ...]) -> str:
    answer = problem.get("answer")
    if answer is None:
        raise RowError("no answer")
    # ScienceQA stores the option's index; a letter or option text is not its format.
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise RowError(f"answer {answer!r} is not an option index (an int)")
    if not 0 <= answer < len(choices):
        raise RowError(f"answer index {answer} is out of range for {len(choices)} choices")
    return string.ascii_uppercase[answer]


def _scienceqa_record(
    base: Path, pid: str, problem, include_text_only: bool, max_pixels: int | None
) -> Record | None:
    """The problem's Record; None for a text-only problem when those are excluded."""
    if not isinstance(problem, dict):
        raise RowError(f"problem is a {type(problem).__name__}, not an object")
    name = problem.get("image")
    if not name and not include_text_only:
        return None
    question = _text(problem.get("question"), "question")
    choices = _options(problem.get("choices"))
    letter = _scienceqa_answer(problem, choices)
    hint = problem.get("hint")
    if isinstance(hint, str) and hint.strip():  # the "context" shown with the question
        question = f"{hint.strip()}\n{question}"
    images: tuple[bytes, ...] = ()
    if name:
        images = (_scienceqa_image(base, pid, problem, str(name), max_pixels),)
    return Record(
        id=f"scienceqa:{pid}",
        images=images,
        question=question,
        choices=choices,
        answer=letter,
        answer_type="choice",
        steps=_scienceqa_steps(problem.get("solution"), letter),
        source="scienceqa",
    )


def _scienceqa_image(base: Path, pid: str, problem: dict, name: str, max_pixels) -> bytes:
    # Images live under the problem's own split, also for "minitrain", "trainval", ...
    split = problem.get("split")
    if not isinstance(split, str) or not split:
        raise RowError("no split field to locate the image under <split>/<pid>/")
    relative = Path(split) / pid / name
    for root in (Path("."), Path("images")):  # unzipped in place, or under images/
        candidate = inside(base, root / relative)
        if candidate.is_file():
            return image_file(candidate, max_pixels)
    raise RowError(f"image {str(relative)!r} not found under {base} or {base / 'images'}")


def _scienceqa_files(base: Path) -> tuple[Path, Path]:
    if not base.is_dir():
        raise DatasetFormatError(base, None, "no such ScienceQA directory")
    for folder in (base, base / "scienceqa"):  # the repo keeps them in data/scienceqa/
        if (folder / "problems.json").is_file():
            return folder / "problems.json", folder / "pid_splits.json"
    raise DatasetFormatError(base, None, "no problems.json in it or in scienceqa/")


def read_scienceqa(
    path: str | Path,
    split: str = "train",
    *,
    include_text_only: bool = False,
    on_error: str = "raise",
    stats: MutableMapping | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[Record]:
    """Reads ScienceQA as published in lupantech/ScienceQA.

    ``problems.json`` maps a problem id to ``{question, choices, answer, hint, image,
    split, lecture, solution, ...}``: ``answer`` is the index of the right choice (it
    becomes the option letter, ``answer_type`` "choice"), a non-empty ``hint`` (the
    context) is put before the question, and ``image`` is ``"image.png"`` or null.
    ``pid_splits.json`` lists the ids of each split ("train", "val", "test", "minitrain",
    ...); images are ``<problem split>/<pid>/image.png`` under `path` (or `path`/images).
    Steps are the solution's lines followed by ``"Answer: X"``.

    Args:
      path: the directory holding the images' split folders, with ``problems.json`` and
        ``pid_splits.json`` in it or in its ``scienceqa/`` folder (the repo's ``data/``).
      split: a key of ``pid_splits.json``; records come in its order.
      include_text_only: also read problems without an image (``images == ()``); by
        default they are left out (not counted as skipped): the project is multimodal.
      on_error: "raise" a `DatasetFormatError` on a bad problem, or "skip" it.
      stats: when given, ``stats["skipped"]`` is incremented for every skipped problem.
      max_image_pixels: a problem with an image of more pixels (width * height) than this
        is bad; default 4096 * 4096, None disables the limit.

    Returns:
      an iterator of one `Record` per good problem, with id ``"scienceqa:<pid>"``. Files
      and the split are checked on call; problems as they are iterated.

    Raises:
      DatasetFormatError: missing or unparsable files, an unknown split, or (with
        on_error="raise") a bad problem; the message names the file and the pid.
    """
    check_on_error(on_error)
    base = Path(path)
    problems_file, splits_file = _scienceqa_files(base)
    problems = read_json(problems_file, "ScienceQA problems")
    if not isinstance(problems, dict):
        raise DatasetFormatError(problems_file, None, "expected a JSON object of problems")
    splits = read_json(splits_file, "ScienceQA pid_splits")
    if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
        keys = sorted(splits) if isinstance(splits, dict) else []
        raise DatasetFormatError(splits_file, None, f"no list for split {split!r}; has {keys}")
    pids = [str(pid) for pid in splits[split]]
    return _iter_scienceqa(
        base, problems_file, problems, pids, include_text_only, on_error, stats, max_image_pixels
    )


def _iter_scienceqa(
    base, file, problems, pids, include_text_only, on_error, stats, max_pixels
) -> Iterator[Record]:
    for pid in pids:
        try:
            if pid not in problems:
                raise RowError("listed in pid_splits.json but not in problems.json")
            record = _scienceqa_record(base, pid, problems[pid], include_text_only, max_pixels)
        except RowError as e:
            handle_row_error(e, file, pid, on_error, stats)
            continue
        if record is not None:
            yield record


# --- Geometry3K --------------------------------------------------------------------------


def _geo3k_record(folder: Path, max_pixels: int | None) -> Record:
    file = folder / "data.json"
    try:
        data = read_json(file, "Geometry3K data.json")
    except DatasetFormatError as e:  # one problem's file: a bad row, not a bad dataset
        raise RowError(e.problem) from e
    if not isinstance(data, dict):
        raise RowError(f"data.json holds a {type(data).__name__}, not an object")
    question = _text(data.get("problem_text"), "problem_text")
    choices = _options(data.get("choices"))
    answer = data.get("answer")
    if not isinstance(answer, str) or is_missing(answer):
        raise RowError(f"no answer (got {answer!r})")
    letter = letter_answer(answer, choices)
    return Record(
        id=f"geo3k:{folder.name}",
        images=(image_file(folder / "img_diagram.png", max_pixels),),
        question=question,
        choices=choices,
        answer=letter,
        answer_type="choice",
        steps=(),  # the release has logic forms, not worded solutions
        source="geo3k",
    )


def read_geo3k(
    path: str | Path,
    split: str = "train",
    *,
    on_error: str = "raise",
    stats: MutableMapping | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[Record]:
    """Reads Geometry3K as released with InterGPS (``train.zip``, ``val.zip``, ``test.zip``).

    Each problem is a folder ``<split>/<id>/`` holding ``data.json`` (``problem_text``,
    ``choices``: four option texts, ``answer``: the letter, and logic forms that are not
    used) and the diagram ``img_diagram.png``. ``answer_type`` is "choice".

    Args:
      path: the directory holding the unzipped ``train/``, ``val/`` and ``test/``.
      split: "train", "val" or "test".
      on_error: "raise" a `DatasetFormatError` on a bad problem, or "skip" it.
      stats: when given, ``stats["skipped"]`` is incremented for every skipped problem.
      max_image_pixels: a problem with a diagram of more pixels (width * height) than
        this is bad; default 4096 * 4096, None disables the limit.

    Returns:
      an iterator of one `Record` per good problem, in numeric folder order, with id
      ``"geo3k:<id>"``. The split folder is checked on call; problems as they are iterated.

    Raises:
      DatasetFormatError: a missing or empty split folder, or (with on_error="raise") a
        bad problem; the message names its ``data.json`` and the folder id.
    """
    check_on_error(on_error)
    _check_split(split, GEO3K_SPLITS)
    split_dir = Path(path) / split
    if not split_dir.is_dir():
        raise DatasetFormatError(split_dir, None, "no such Geometry3K split directory")
    folders = sorted(
        (p for p in split_dir.iterdir() if p.is_dir()),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    if not folders:
        raise DatasetFormatError(split_dir, None, "no problem folders")
    return _iter_geo3k(folders, on_error, stats, max_image_pixels)


def _iter_geo3k(folders: list[Path], on_error: str, stats, max_pixels) -> Iterator[Record]:
    for folder in folders:
        try:
            yield _geo3k_record(folder, max_pixels)
        except RowError as e:
            handle_row_error(e, folder / "data.json", folder.name, on_error, stats)


# --- OCR-VQA -----------------------------------------------------------------------------


def _ocrvqa_image(root: Path, key: str, url, max_pixels: int | None) -> bytes:
    if not isinstance(url, str) or not url.strip():
        raise RowError("no imageURL (it names the image's extension)")
    ext = Path(url.strip().split("?")[0]).suffix  # as saved: loadDataset.py keeps its case
    for suffix in dict.fromkeys((ext, *_OCRVQA_EXTENSIONS)):  # the URL's first, no repeats
        if suffix:
            candidate = inside(root, Path("images") / f"{key}{suffix}")
            if candidate.is_file():
                return image_file(candidate, max_pixels)
    raise RowError(f"image images/{key}{ext} not found under {root}")


def _ocrvqa_pairs(entry: dict) -> list[tuple[object, object]]:
    questions, answers = entry.get("questions"), entry.get("answers")
    if not isinstance(questions, list) or not isinstance(answers, list):
        raise RowError("questions and answers must be lists")
    if len(questions) != len(answers):
        # Pairing them up anyway would shift every answer onto the wrong question.
        raise RowError(f"{len(questions)} questions but {len(answers)} answers")
    return list(zip(questions, answers, strict=True))


def _ocrvqa_record(key: str, k: int, image: bytes, question, answer) -> Record:
    question = _text(question, "question")
    if not isinstance(answer, str):
        raise RowError(f"answer {answer!r} is not a string")
    if is_missing(answer):
        raise RowError("no answer")
    answer = answer.strip()
    return Record(
        id=f"ocrvqa:{key}:{k}",
        images=(image,),
        question=question,
        choices=(),
        answer=answer,
        answer_type=free_answer_type(answer),
        steps=(),
        source="ocrvqa",
    )


def read_ocrvqa(
    path: str | Path,
    split: str = "train",
    *,
    on_error: str = "raise",
    stats: MutableMapping | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[Record]:
    """Reads OCR-VQA as published: ``dataset.json`` and the ``images/`` it downloads.

    ``dataset.json`` maps an image id to ``{imageURL, questions, answers, title, genre,
    split, ...}`` with split 1 (train), 2 (val) or 3 (test); the download script saves the
    image as ``images/<id><extension of imageURL>`` (an image saved under another common
    extension is found too). Every question becomes one free-form `Record` (``answer_type``
    "number" when `grading.parse_number` reads the answer, else "text").

    Args:
      path: the directory holding ``dataset.json`` and ``images/``, or the JSON file.
      split: "train", "val" or "test".
      on_error: "raise" a `DatasetFormatError` on a bad entry or question, or "skip" it.
      stats: when given, ``stats["skipped"]`` is incremented for every skipped row: an
        entry whose image or question list is bad counts once, a bad question once.
      max_image_pixels: an entry with an image of more pixels (width * height) than this
        is bad; default 4096 * 4096, None disables the limit.

    Returns:
      an iterator of one `Record` per good question, in file order, with id
      ``"ocrvqa:<image id>:<question index>"``. The file is checked on call; entries as
      they are iterated.

    Raises:
      DatasetFormatError: a missing or unparsable file, or (with on_error="raise") a bad
        entry or question; the message names the file and ``<id>`` or ``<id>:<index>``.
    """
    check_on_error(on_error)
    _check_split(split, OCRVQA_SPLITS)
    path = Path(path)
    file = path if path.is_file() else path / "dataset.json"
    data = read_json(file, "OCR-VQA dataset.json")
    if not isinstance(data, dict):
        raise DatasetFormatError(file, None, f"expected a JSON object, got {type(data).__name__}")
    return _iter_ocrvqa(file, data, OCRVQA_SPLITS[split], on_error, stats, max_image_pixels)


def _iter_ocrvqa(file: Path, data: dict, split: int, on_error, stats, max_pixels):
    for key, entry in data.items():
        try:
            if not isinstance(entry, dict):
                raise RowError(f"entry is a {type(entry).__name__}, not an object")
            if isinstance(entry.get("split"), bool) or entry.get("split") not in (1, 2, 3):
                raise RowError(f"unknown split {entry.get('split')!r}; expected 1, 2 or 3")
            if entry["split"] != split:
                continue
            pairs = _ocrvqa_pairs(entry)
            image = _ocrvqa_image(file.parent, key, entry.get("imageURL"), max_pixels)
        except RowError as e:
            handle_row_error(e, file, key, on_error, stats)
            continue
        for k, (question, answer) in enumerate(pairs):
            try:
                yield _ocrvqa_record(key, k, image, question, answer)
            except RowError as e:
                handle_row_error(e, file, f"{key}:{k}", on_error, stats)
