"""Tests for the training-set readers on fixtures written in the published layouts."""

from __future__ import annotations

import json

import pytest
from test_importers import _jpeg, _noisy_png, _png

from dreamr_jax.data import grading
from dreamr_jax.data.importers import DatasetFormatError, Record
from dreamr_jax.data.train_sets import read_geo3k, read_ocrvqa, read_scienceqa

_CORRUPT_PNG = b"\x89PNG\r\n\x1a\nnot a png"

# --- ScienceQA ---------------------------------------------------------------------------


def _sqa_problem(**overrides) -> dict:
    problem = {
        "question": "Which of these states is farthest north?",
        "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"],
        "answer": 0,
        "hint": "",
        "image": "image.png",
        "task": "closed choice",
        "grade": "grade2",
        "subject": "social science",
        "topic": "geography",
        "category": "Geography",
        "skill": "Read a map: cardinal directions",
        "lecture": "Maps have four cardinal directions, or main directions.",
        "solution": "To find the answer, look at the compass rose.\n"
        "West Virginia is farthest north.",
        "split": "train",
    }
    problem.update(overrides)
    return problem


def _write_scienceqa(root, problems: dict, splits: dict, images: dict | None = None, json_dir=""):
    """problems.json and pid_splits.json (in root/json_dir), images at root/<rel path>."""
    (root / json_dir).mkdir(parents=True, exist_ok=True)
    (root / json_dir / "problems.json").write_text(json.dumps(problems), "utf-8")
    (root / json_dir / "pid_splits.json").write_text(json.dumps(splits), "utf-8")
    if images is None:  # every problem with an image gets a red PNG where it belongs
        images = {
            f"{p['split']}/{pid}/{p['image']}": _png()
            for pid, p in problems.items()
            if isinstance(p, dict) and p.get("image")
        }
    for rel, data in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root / json_dir / "problems.json"


def _sqa_fixture(root):
    problems = {
        "1": _sqa_problem(),
        "5": _sqa_problem(
            question="Which tense does the sentence use?\nMona will print her name.",
            choices=["present tense", "future tense", "past tense"],
            answer=1,
            hint="Read the sentence.\tThen answer.",
            solution="The sentence is in future tense.\n\n\nYou can tell because it uses will.",
        ),
        "7": _sqa_problem(image=None, question="Which word is a noun?", choices=["run", "dog"]),
        "9": _sqa_problem(answer=3, solution="", split="val"),
    }
    splits = {"train": ["5", "1", "7"], "val": ["9"], "test": [], "minitrain": ["7", "1"]}
    red, blue = _png("red"), _jpeg("blue")
    images = {"train/1/image.png": red, "train/5/image.png": blue, "val/9/image.png": red}
    return _write_scienceqa(root, problems, splits, images), red, blue


def test_scienceqa_normalises_problems(tmp_path):
    _, red, blue = _sqa_fixture(tmp_path)
    records = list(read_scienceqa(tmp_path))
    # pid_splits order; the text-only problem 7 is left out by default.
    assert [r.id for r in records] == ["scienceqa:5", "scienceqa:1"]
    assert records[0] == Record(
        id="scienceqa:5",
        images=(blue,),
        question="Read the sentence.\tThen answer.\n"
        "Which tense does the sentence use?\nMona will print her name.",
        choices=("present tense", "future tense", "past tense"),
        answer="B",
        answer_type="choice",
        steps=(
            "The sentence is in future tense.",
            "You can tell because it uses will.",
            "Answer: B",
        ),
        source="scienceqa",
    )
    first = records[1]  # answer index 0 is an answer, not a missing one
    assert (first.answer, first.images, first.question) == ("A", (red,), _sqa_problem()["question"])
    assert first.steps[-1] == "Answer: A" and len(first.steps) == 3
    (val,) = read_scienceqa(tmp_path, "val")
    assert (val.answer, val.steps) == ("D", ())  # no solution, no steps
    for r in records:
        assert grading.grade(r.answer, r.answer, answer_type=r.answer_type, choices=r.choices)


def test_scienceqa_text_only_option_and_mini_split(tmp_path):
    _sqa_fixture(tmp_path)
    records = list(read_scienceqa(tmp_path, include_text_only=True))
    assert [r.id for r in records] == ["scienceqa:5", "scienceqa:1", "scienceqa:7"]
    assert records[2].images == () and records[2].choices == ("run", "dog")
    stats = {}
    mini = list(read_scienceqa(tmp_path, "minitrain", stats=stats, on_error="skip"))
    assert [r.id for r in mini] == ["scienceqa:1"] and stats == {}  # a filter, not a skip


def test_scienceqa_repository_and_images_layouts(tmp_path):
    problems = {"3": _sqa_problem(split="test")}
    splits = {"test": ["3"]}
    # The repo: data/scienceqa/{problems,pid_splits}.json and data/test/3/image.png.
    repo = tmp_path / "data"
    _write_scienceqa(repo, problems, splits, json_dir="scienceqa")
    assert [r.id for r in read_scienceqa(repo, "test")] == ["scienceqa:3"]
    # Images unzipped under images/.
    flat = tmp_path / "flat"
    _write_scienceqa(flat, problems, splits, {"images/test/3/image.png": _jpeg()})
    (record,) = read_scienceqa(flat, "test")
    assert record.images == (_jpeg(),)


@pytest.mark.parametrize(
    "pid, problem, problem_match",
    [
        ("2", _sqa_problem(answer=None), "no answer"),
        ("2", {k: v for k, v in _sqa_problem().items() if k != "answer"}, "no answer"),
        ("2", _sqa_problem(answer="A"), r"answer 'A' is not an option index"),
        ("2", _sqa_problem(answer=True), "not an option index"),
        ("2", _sqa_problem(answer=1.0), "not an option index"),
        ("2", _sqa_problem(answer=4), "out of range for 4 choices"),
        ("2", _sqa_problem(answer=-1), "out of range"),
        ("2", _sqa_problem(choices=["only"]), "1 choices; need at least 2"),
        ("2", _sqa_problem(choices="A or B"), "not a list of strings"),
        ("2", _sqa_problem(question=" "), "empty or missing question"),
        ("2", _sqa_problem(image="missing.png"), "'train/2/missing.png' not found"),
        ("2", _sqa_problem(image="corrupt.png"), "does not decode"),
        ("2", _sqa_problem(image="truncated.png"), "does not decode"),
        ("2", _sqa_problem(split=None), "no split field"),
        ("2", ["not", "a", "problem"], "not an object"),
        ("../../etc", _sqa_problem(), "leaves the dataset directory"),
        ("404", None, "not in problems.json"),
    ],
)
def test_scienceqa_bad_problem_names_file_and_row(tmp_path, pid, problem, problem_match):
    problems = {"1": _sqa_problem()}
    if problem is not None:
        problems[pid] = problem
    images = {
        "train/1/image.png": _png(),
        "train/2/image.png": _png(),
        "train/2/corrupt.png": _CORRUPT_PNG,
        "train/2/truncated.png": _noisy_png()[:2000],
    }
    file = _write_scienceqa(tmp_path, problems, {"train": ["1", pid]}, images)
    records = read_scienceqa(tmp_path)
    assert next(records).id == "scienceqa:1"  # problems before the bad one are fine
    with pytest.raises(DatasetFormatError, match=problem_match) as info:
        next(records)
    assert info.value.file == str(file) and info.value.row == pid
    assert f"problems.json, row {pid}" in str(info.value)

    stats = {"skipped": 1}
    kept = list(read_scienceqa(tmp_path, on_error="skip", stats=stats))
    assert [r.id for r in kept] == ["scienceqa:1"] and stats == {"skipped": 2}


def test_scienceqa_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="absent: no such ScienceQA directory"):
        read_scienceqa(tmp_path / "absent")
    with pytest.raises(DatasetFormatError, match="no problems.json"):
        read_scienceqa(tmp_path)
    (tmp_path / "problems.json").write_text("{not json", "utf-8")
    with pytest.raises(DatasetFormatError, match="problems.json: not valid JSON"):
        read_scienceqa(tmp_path)
    (tmp_path / "problems.json").write_text("[]", "utf-8")
    with pytest.raises(DatasetFormatError, match="expected a JSON object of problems"):
        read_scienceqa(tmp_path)
    (tmp_path / "problems.json").write_text("{}", "utf-8")
    with pytest.raises(DatasetFormatError, match="pid_splits.json: no such ScienceQA pid_splits"):
        read_scienceqa(tmp_path)
    (tmp_path / "pid_splits.json").write_text('{"train": [], "val": []}', "utf-8")
    with pytest.raises(
        DatasetFormatError, match=r"no list for split 'dev'; has \['train', 'val'\]"
    ):
        read_scienceqa(tmp_path, "dev")
    with pytest.raises(ValueError, match="on_error"):
        read_scienceqa(tmp_path, on_error="ignore")


# --- Geometry3K --------------------------------------------------------------------------


def _geo_data(id_: int, **overrides) -> dict:
    data = {
        "id": id_,
        "problem_text": "Find x. Round to the nearest tenth if necessary.",
        "choices": ["5.0", "6.0", "7.0", "8.0"],
        "answer": "B",
        "diagram_logic_form": ["Equals(LengthOf(Line(A, B)), x)", "PointLiesOnLine(C, Line(A, B))"],
        "text_logic_form": ["Find(x)"],
        "problem_type_graph": ["Triangle"],
        "problem_type_goal": ["Length"],
        "compact_choices": ["5.0", "6.0", "7.0", "8.0"],
        "precise_value": [5.0, 6.0, 7.0, 8.0],
        "rough_value": [5, 6, 7, 8],
        "comment": "",
        "annotat_text": "Find x.",
        "unit": "",
    }
    data.update(overrides)
    return data


def _write_geo3k(root, split: str, problems: dict, images: dict | None = None):
    """One folder per problem id: data.json (a dict, or raw text) and img_diagram.png."""
    for name, data in problems.items():
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        if data is not None:
            text = data if isinstance(data, str) else json.dumps(data)
            (folder / "data.json").write_text(text, "utf-8")
        image = (images or {}).get(name, _png())
        if image is not None:
            (folder / "img_diagram.png").write_bytes(image)
    return root / split


def test_geo3k_normalises_problems(tmp_path):
    red, white = _png("red"), _png("white", (30, 20))
    problems = {
        "10": _geo_data(10, answer="d", choices=["2 \\sqrt { 3 }", "4", "6", "8 \\sqrt { 3 }"]),
        "2": _geo_data(2),
        "1": _geo_data(1, choices=[12, 24.5, 36, 48], answer="24.5"),  # numbers; option text
    }
    split_dir = _write_geo3k(tmp_path, "train", problems, {"10": white, "2": red, "1": red})
    (split_dir / ".DS_Store").write_bytes(b"\0")  # stray files are not problems
    _write_geo3k(tmp_path, "test", {"2401": _geo_data(2401, answer="A")})
    records = list(read_geo3k(tmp_path))
    assert [r.id for r in records] == ["geo3k:1", "geo3k:2", "geo3k:10"]  # numeric order
    assert records[1] == Record(
        id="geo3k:2",
        images=(red,),
        question="Find x. Round to the nearest tenth if necessary.",
        choices=("5.0", "6.0", "7.0", "8.0"),
        answer="B",
        answer_type="choice",
        steps=(),
        source="geo3k",
    )
    assert records[0].choices == ("12", "24.5", "36", "48") and records[0].answer == "B"
    assert records[2].answer == "D" and records[2].images == (white,)
    assert records[2].choices[0] == "2 \\sqrt { 3 }"
    (test,) = read_geo3k(tmp_path, "test")
    assert (test.id, test.answer) == ("geo3k:2401", "A")
    for r in records:
        assert grading.grade(r.answer, r.answer, answer_type=r.answer_type, choices=r.choices)


@pytest.mark.parametrize(
    "data, image, problem",
    [
        (_geo_data(7, answer=None), _png(), r"no answer \(got None\)"),
        (_geo_data(7, answer=" "), _png(), "no answer"),
        (_geo_data(7, answer=2), _png(), r"no answer \(got 2\)"),
        (_geo_data(7, answer="E"), _png(), "not among the options A,B,C,D"),
        (_geo_data(7, answer="9.0"), _png(), "not an option letter or option text"),
        (_geo_data(7, choices=["5"]), _png(), "1 choices; need at least 2"),
        (_geo_data(7, choices=None), _png(), "not a list of strings"),
        (_geo_data(7, problem_text=""), _png(), "empty or missing problem_text"),
        (None, _png(), "no such Geometry3K data.json file"),
        ('{"id": 7, "problem_text": ', _png(), "not valid JSON"),
        ("[1, 2]", _png(), "holds a list, not an object"),
        (_geo_data(7), None, "img_diagram.png' not found"),
        (_geo_data(7), _CORRUPT_PNG, "does not decode"),
        (_geo_data(7), _noisy_png()[:2000], "does not decode"),
    ],
)
def test_geo3k_bad_problem_names_file_and_row(tmp_path, data, image, problem):
    _write_geo3k(tmp_path, "val", {"6": _geo_data(6), "7": data}, {"7": image})
    records = read_geo3k(tmp_path, "val")
    assert next(records).id == "geo3k:6"
    with pytest.raises(DatasetFormatError, match=problem) as info:
        next(records)
    assert info.value.file == str(tmp_path / "val" / "7" / "data.json")
    assert info.value.row == "7" and "7/data.json, row 7" in str(info.value)

    stats = {}
    kept = list(read_geo3k(tmp_path, "val", on_error="skip", stats=stats))
    assert [r.id for r in kept] == ["geo3k:6"] and stats == {"skipped": 1}


def test_geo3k_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="train: no such Geometry3K split directory"):
        read_geo3k(tmp_path)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "README").write_text("not a problem", "utf-8")
    with pytest.raises(DatasetFormatError, match="test: no problem folders"):
        read_geo3k(tmp_path, "test")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test'\)"):
        read_geo3k(tmp_path, "validation")
    with pytest.raises(ValueError, match="on_error"):
        read_geo3k(tmp_path, on_error="ignore")


# --- OCR-VQA -----------------------------------------------------------------------------

_BOOK_QUESTIONS = [
    "Who wrote this book?",
    "What is the title of this book?",
    "What is the genre of this book?",
    "Is this a comedy book?",
    "Is this a historical book?",
]


def _ocr_entry(url_ext: str = ".jpg", split: int = 1, **overrides) -> dict:
    entry = {
        "imageURL": f"http://ecx.images-amazon.com/images/I/51Y8pAtPw8L{url_ext}",
        "questions": list(_BOOK_QUESTIONS),
        "answers": ["Bill Martin Jr.", "Brown Bear, Brown Bear", "Children's Books", "No", "No"],
        "title": "Brown Bear, Brown Bear, What Do You See?",
        "authorName": "Bill Martin Jr.",
        "genre": "Children's Books",
        "split": split,
    }
    entry.update(overrides)
    return entry


def _write_ocrvqa(root, data: dict, images: dict):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        (root / "images" / name).write_bytes(image)
    (root / "dataset.json").write_text(json.dumps(data), "utf-8")
    return root / "dataset.json"


def test_ocrvqa_one_record_per_question(tmp_path):
    cover, png, gif_as_jpg = _jpeg("blue"), _png("green"), _jpeg("white")
    data = {
        "0060194863": _ocr_entry(),
        "0451526538": _ocr_entry(
            ".png", questions=["What is the year printed on this calendar?"], answers=["2016"]
        ),
        "1558580042": _ocr_entry(".gif", split=3, questions=["Who is the author?"], answers=["X"]),
        "0000000002": _ocr_entry(split=2),
    }
    images = {
        "0060194863.jpg": cover,
        "0451526538.png": png,
        "1558580042.jpg": gif_as_jpg,  # a mirror that re-saved the GIF as JPEG
        "0000000002.jpg": cover,
    }
    _write_ocrvqa(tmp_path, data, images)
    records = list(read_ocrvqa(tmp_path))
    assert [r.id for r in records] == [f"ocrvqa:0060194863:{k}" for k in range(5)] + [
        "ocrvqa:0451526538:0"
    ]
    assert records[0] == Record(
        id="ocrvqa:0060194863:0",
        images=(cover,),
        question="Who wrote this book?",
        choices=(),
        answer="Bill Martin Jr.",
        answer_type="text",
        steps=(),
        source="ocrvqa",
    )
    assert [r.question for r in records[:5]] == _BOOK_QUESTIONS
    assert [r.answer for r in records[3:5]] == ["No", "No"]
    assert (records[5].answer, records[5].answer_type, records[5].images) == (
        "2016",
        "number",
        (png,),
    )
    (test,) = read_ocrvqa(tmp_path / "dataset.json", "test")  # the JSON file works too
    assert test.images == (gif_as_jpg,)
    assert len(list(read_ocrvqa(tmp_path, "val"))) == 5


@pytest.mark.parametrize(
    "entry, image, row, problem",
    [
        (_ocr_entry(answers=["a", "b"]), _jpeg(), "B2", "5 questions but 2 answers"),
        (_ocr_entry(questions="Who?"), _jpeg(), "B2", "must be lists"),
        (_ocr_entry(split=7), _jpeg(), "B2", "unknown split 7"),
        (_ocr_entry(split=True), _jpeg(), "B2", "unknown split True"),
        (_ocr_entry(imageURL=None), _jpeg(), "B2", "no imageURL"),
        (_ocr_entry(), None, "B2", r"images/B2\.jpg not found"),
        (_ocr_entry(), _CORRUPT_PNG, "B2", "does not decode"),
        (["not", "an", "entry"], _jpeg(), "B2", "not an object"),
        (_ocr_entry(answers=["a", "b", "", "d", "e"]), _jpeg(), "B2:2", "no answer"),
        (_ocr_entry(answers=["a", "b", None, "d", "e"]), _jpeg(), "B2:2", "is not a string"),
        (_ocr_entry(answers=["a", "b", 3, "d", "e"]), _jpeg(), "B2:2", "answer 3 is not a string"),
        (_ocr_entry(questions=["q", "q", "", "q", "q"]), _jpeg(), "B2:2", "missing question"),
    ],
)
def test_ocrvqa_bad_entry_names_file_and_row(tmp_path, entry, image, row, problem):
    images = {"A1.jpg": _jpeg()} | ({} if image is None else {"B2.jpg": image})
    file = _write_ocrvqa(tmp_path, {"A1": _ocr_entry(), "B2": entry}, images)
    records = read_ocrvqa(tmp_path)
    good = [next(records) for _ in range(5)]  # entries before the bad one are fine
    if row == "B2:2":  # a bad question: the questions before it are kept
        good += [next(records), next(records)]
    with pytest.raises(DatasetFormatError, match=problem) as info:
        next(records)
    assert info.value.file == str(file) and info.value.row == row
    assert f"dataset.json, row {row}" in str(info.value)

    stats = {}
    kept = list(read_ocrvqa(tmp_path, on_error="skip", stats=stats))
    assert kept[: len(good)] == good and stats == {"skipped": 1}
    # A bad question drops only that question; a bad entry all of its questions.
    assert len(kept) == (9 if row == "B2:2" else 5)


def test_ocrvqa_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="dataset.json: no such OCR-VQA"):
        read_ocrvqa(tmp_path)
    (tmp_path / "dataset.json").write_text("{", "utf-8")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_ocrvqa(tmp_path)
    (tmp_path / "dataset.json").write_text("[]", "utf-8")
    with pytest.raises(DatasetFormatError, match="expected a JSON object, got list"):
        read_ocrvqa(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        read_ocrvqa(tmp_path, "validation")
    with pytest.raises(ValueError, match="on_error"):
        read_ocrvqa(tmp_path, on_error="ignore")


# --- Image-size limit (all readers) --------------------------------------------------------


def _big_image_fixture(reader: str, root):
    """A dataset whose second row has a 20x20 image; returns (read, file, bad row id)."""
    big = _png(size=(20, 20))
    if reader == "scienceqa":
        problems = {"1": _sqa_problem(), "2": _sqa_problem()}
        images = {"train/1/image.png": _png(), "train/2/image.png": big}
        return read_scienceqa, _write_scienceqa(root, problems, {"train": ["1", "2"]}, images), "2"
    if reader == "geo3k":
        _write_geo3k(root, "train", {"1": _geo_data(1), "2": _geo_data(2)}, {"2": big})
        return read_geo3k, root / "train" / "2" / "data.json", "2"
    data = {"1": _ocr_entry(questions=["q"], answers=["a"]), "2": _ocr_entry()}
    return read_ocrvqa, _write_ocrvqa(root, data, {"1.jpg": _png(), "2.jpg": big}), "2"


@pytest.mark.parametrize("reader", ["scienceqa", "geo3k", "ocrvqa"])
def test_image_over_pixel_limit_is_a_bad_row(tmp_path, reader):
    read, file, row = _big_image_fixture(reader, tmp_path)
    with pytest.raises(DatasetFormatError, match="20x20 = 400 pixels") as info:
        list(read(tmp_path, max_image_pixels=100))
    assert info.value.file == str(file) and info.value.row == row
    assert "limit of 100 pixels" in str(info.value)
    stats = {}
    assert len(list(read(tmp_path, on_error="skip", stats=stats, max_image_pixels=100))) == 1
    assert stats == {"skipped": 1}
    n = 6 if reader == "ocrvqa" else 2
    assert len(list(read(tmp_path, max_image_pixels=None))) == n
    assert len(list(read(tmp_path, max_image_pixels=400))) == n  # the limit is inclusive
