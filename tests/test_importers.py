"""Tests for the benchmark importers on fixtures written in the published layouts."""

from __future__ import annotations

import base64
import csv
import io
import json
import random

import pytest
from PIL import Image

from dreamr_jax.data import grading
from dreamr_jax.data.importers import (
    DatasetFormatError,
    Record,
    read_mathverse,
    read_mmbench,
)

MMBENCH_COLS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
]


def _png(color: str = "red", size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _noisy_png() -> bytes:
    buf = io.BytesIO()
    Image.frombytes("L", (64, 64), random.Random(0).randbytes(64 * 64)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(color: str = "blue") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


def _mmbench_row(index: int, image_bytes: bytes, **overrides) -> dict[str, str]:
    row = {
        "index": str(index),
        "question": "What colour is the square?",
        "hint": "nan",
        "A": "red",
        "B": "green",
        "C": "blue",
        "D": "yellow",
        "answer": "A",
        "category": "attribute_recognition",
        "image": base64.b64encode(image_bytes).decode(),
        "source": "fixture",
        "l2-category": "finegrained_perception",
        "comment": "nan",
        "split": "dev",
    }
    row.update(overrides)
    return row


def _write_tsv(path, rows, cols=MMBENCH_COLS):
    # pandas' to_csv(sep="\t") layout: header row, minimal quoting.
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


# --- MMBench -----------------------------------------------------------------------------


def test_mmbench_normalises_rows(tmp_path):
    red, blue = _png("red"), _jpeg("blue")
    rows = [
        _mmbench_row(0, red),
        _mmbench_row(
            1,
            blue,
            question="Which shape?",
            hint="Look at\tthe picture.",  # a tab inside a quoted cell
            A="circle",
            B="square",
            C="triangle",
            D="",  # 3-option row, empty cell
            answer="C",
        ),
        _mmbench_row(2, red, D="nan", C="nan", answer="B", hint=""),  # 2 options, nan cells
    ]
    _write_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows)
    records = list(read_mmbench(tmp_path))  # a directory with one TSV
    assert records[0] == Record(
        id="mmbench:0",
        images=(red,),
        question="What colour is the square?",
        choices=("red", "green", "blue", "yellow"),
        answer="A",
        answer_type="choice",
        steps=(),
        source="mmbench",
    )
    second = records[1]
    assert second.images == (blue,)
    assert second.question == "Look at\tthe picture.\nWhich shape?"
    assert second.choices == ("circle", "square", "triangle")
    assert second.answer == "C"
    assert records[2].choices == ("red", "green")
    assert records[2].question == "What colour is the square?"
    assert records[2].answer == "B"
    for r in records:
        assert r.answer_type in grading.ANSWER_TYPES
        assert grading.grade(
            r.answer, r.answer, answer_type=r.answer_type, choices=r.choices or None
        )


def test_mmbench_minimal_columns_and_image_reference(tmp_path):
    cols = ["index", "question", "A", "B", "C", "answer", "image"]
    img = _png("green")
    rows = [_mmbench_row(10, img, answer="b"), _mmbench_row(11, img, image="10")]
    file = _write_tsv(tmp_path / "MMBench_TEST_EN.tsv", rows, cols)
    records = list(read_mmbench(file))
    assert [r.answer for r in records] == ["B", "A"]  # lower-case gold letter normalised
    assert records[0].choices == ("red", "green", "blue")
    assert records[1].images == (img,)  # VLMEvalKit-style reference to row 10's image
    assert records[1].question == "What colour is the square?"


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"answer": ""}, "no answer"),
        ({"answer": "nan"}, "no answer"),
        ({"answer": "D", "D": "nan"}, "not among the options"),
        ({"answer": "Q"}, "not among the options"),
        ({"C": ""}, "not contiguous"),
        ({"image": "!!!not base64!!!" * 8}, "base64"),
        ({"image": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 80).decode()}, "decode"),
        ({"image": base64.b64encode(_noisy_png()[:2000]).decode()}, "decode"),  # truncated PNG
        ({"image": "999"}, "neither base64 nor a row index"),
    ],
)
def test_mmbench_bad_row_names_file_and_row(tmp_path, overrides, problem):
    rows = [_mmbench_row(0, _png()), _mmbench_row(7, _png(), **overrides)]
    file = _write_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows)
    records = read_mmbench(file)
    assert next(records).id == "mmbench:0"  # rows before the bad one are fine
    with pytest.raises(DatasetFormatError, match=problem) as info:
        next(records)
    assert info.value.file == str(file) and info.value.row == "7"
    assert "MMBench_DEV_EN.tsv, row 7" in str(info.value)

    stats = {}
    kept = list(read_mmbench(file, on_error="skip", stats=stats))
    assert [r.id for r in kept] == ["mmbench:0"] and stats == {"skipped": 1}


def test_mmbench_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="no such"):
        read_mmbench(tmp_path / "absent")
    with pytest.raises(DatasetFormatError, match="exactly one"):
        read_mmbench(tmp_path)  # directory without a TSV
    file = _write_tsv(tmp_path / "x.tsv", [], ["index", "question", "A", "B", "image"])
    with pytest.raises(DatasetFormatError, match=r"row header: missing columns \['answer'\]"):
        read_mmbench(file)
    with pytest.raises(ValueError, match="on_error"):
        read_mmbench(file, on_error="ignore")


# --- MathVerse ---------------------------------------------------------------------------


def _mv_item(sample_index: int, **overrides) -> dict:
    item = {
        "sample_index": str(sample_index),
        "problem_index": "1",
        "problem_version": "Text Dominant",
        "question": "As shown in the figure, find angle ABC.\nChoices:\nA:30°\nB:60°\nC:90°",
        "image": "image_1.png",
        "answer": "B",
        "question_type": "multi-choice",
        "metadata": {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry"},
        "query_wo": "Please directly answer the question ...",
        "query_cot": "Please first conduct reasoning ...",
        "question_for_eval": "As shown in the figure, find angle ABC.",
    }
    item.update(overrides)
    return item


def _write_mathverse(root, items, images=None):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, data in (images or {"image_1.png": _png("red")}).items():
        (root / "images" / name).write_bytes(data)
    (root / "testmini.json").write_text(json.dumps(items, ensure_ascii=False), "utf-8")
    return root / "testmini.json"


def test_mathverse_normalises_entries(tmp_path):
    img1, img2 = _png("red"), _jpeg("white")
    items = [
        _mv_item(1),
        _mv_item(
            2,
            question="Find x.\nChoices:\nA. 3 cm\nB. 4 cm\nC. 5 cm\nD. 6 cm",
            image="image_2.jpg",
            answer="D",
        ),
        _mv_item(3, question="What is the area?", answer="12.5", question_type="free-form"),
        _mv_item(4, question="Name the shape.", answer="rhombus", question_type="free-form"),
        _mv_item(5, question="", image="", answer="A", problem_version="Vision Only"),
    ]
    _write_mathverse(tmp_path, items, {"image_1.png": img1, "image_2.jpg": img2})
    records = list(read_mathverse(tmp_path))
    assert records[0] == Record(
        id="mathverse:1",
        images=(img1,),
        question="As shown in the figure, find angle ABC.",
        choices=("30°", "60°", "90°"),
        answer="B",
        answer_type="choice",
        steps=(),
        source="mathverse",
    )
    assert records[1].choices == ("3 cm", "4 cm", "5 cm", "6 cm")  # "A. x" style
    assert records[1].question == "Find x." and records[1].answer == "D"
    assert records[1].images == (img2,)
    assert (records[2].answer, records[2].answer_type, records[2].choices) == ("12.5", "number", ())
    assert (records[3].answer, records[3].answer_type) == ("rhombus", "text")
    # Vision-only: options are drawn in the image; the prompt comes from query_wo.
    assert records[4].choices == () and records[4].images == ()
    assert records[4].question == "Please directly answer the question ..."
    for r in records:
        assert grading.grade(
            r.answer, r.answer, answer_type=r.answer_type, choices=r.choices or None
        )


def test_mathverse_option_text_answer_and_json_path(tmp_path):
    items = [_mv_item(1, question="Which?\nChoice:\nA.5 cm\nB.5 m", answer="5 m")]
    file = _write_mathverse(tmp_path, items)
    (record,) = read_mathverse(file)
    assert record.choices == ("5 cm", "5 m") and record.answer == "B"


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"answer": ""}, "no answer"),
        ({"answer": "D"}, "not among the options"),
        ({"answer": "45°"}, "not an option letter"),
        ({"question_type": "true-false"}, "unknown question_type"),
        ({"question": "Find x.\nChoices:\nfoo\nbar"}, "cannot parse option line"),
        ({"question": "Find x.\nChoices:\nA: 1"}, "need >= 2"),
        ({"image": "missing.png"}, "not found"),
        ({"image": "../../escape.png"}, "leaves the dataset directory"),
        ({"image": "corrupt.png"}, "does not decode"),
    ],
)
def test_mathverse_bad_entry_names_file_and_row(tmp_path, overrides, problem):
    items = [_mv_item(1), _mv_item(42, **overrides)]
    images = {"image_1.png": _png(), "corrupt.png": b"\x89PNG\r\n\x1a\nnot a png"}
    file = _write_mathverse(tmp_path, items, images)
    records = read_mathverse(tmp_path)
    assert next(records).id == "mathverse:1"
    with pytest.raises(DatasetFormatError, match=problem) as info:
        next(records)
    assert info.value.file == str(file) and info.value.row == "42"
    assert "testmini.json, row 42" in str(info.value)

    stats = {"skipped": 3}  # counts accumulate across calls
    kept = list(read_mathverse(tmp_path, on_error="skip", stats=stats))
    assert [r.id for r in kept] == ["mathverse:1"] and stats == {"skipped": 4}


def test_mathverse_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="testmini.json: no such"):
        read_mathverse(tmp_path)
    (tmp_path / "testmini.json").write_text("{not json", "utf-8")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_mathverse(tmp_path)
    (tmp_path / "testmini.json").write_text('{"a": 1}', "utf-8")
    with pytest.raises(DatasetFormatError, match="expected a JSON list"):
        read_mathverse(tmp_path)
