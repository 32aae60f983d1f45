"""Tests for the benchmark importers on fixtures written in the published layouts."""

from __future__ import annotations

import base64
import csv
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from dreamr_jax.data import grading
from dreamr_jax.data.importers import (
    DatasetFormatError,
    Record,
    read_mathverse,
    read_mmbench,
    read_mmmu,
    read_realworldqa,
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


# --- Parquet helpers ---------------------------------------------------------------------

_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _img(data: bytes | None, name: str = "x.png") -> dict | None:
    return None if data is None else {"bytes": data, "path": name}


def _write_parquet(file, rows: list[dict], schema: pa.Schema):
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), file)
    return file


# --- RealWorldQA -------------------------------------------------------------------------

RWQA_SCHEMA = pa.schema(
    [("image", _IMAGE_TYPE), ("question", pa.string()), ("answer", pa.string())]
)
_RWQA_MC = (
    "In which direction is the front wheel of the car facing?\n\nA. Left\nB. Straight\n"
    "C. Right\n\nPlease answer directly with only the letter of the correct option and "
    "nothing else."
)


def _rwqa_row(**overrides) -> dict:
    row = {"image": _img(_png()), "question": _RWQA_MC, "answer": "B"}
    row.update(overrides)
    return row


def test_realworldqa_normalises_rows(tmp_path):
    img1, img2 = _png("red"), _jpeg("white")
    rows = [
        _rwqa_row(image=_img(img1)),
        _rwqa_row(
            image=_img(img2, "b.jpg"),
            question="How many cars are there?\nPlease answer directly with a single number.",
            answer="3",
        ),
    ]
    _write_parquet(tmp_path / "data" / "test-00000-of-00002.parquet", rows, RWQA_SCHEMA)
    more = [_rwqa_row(question="Is the light red or green?", answer="Green")]
    _write_parquet(tmp_path / "data" / "test-00001-of-00002.parquet", more, RWQA_SCHEMA)
    records = list(read_realworldqa(tmp_path))
    assert records[0] == Record(
        id="realworldqa:0",
        images=(img1,),
        question="In which direction is the front wheel of the car facing?",
        choices=("Left", "Straight", "Right"),
        answer="B",
        answer_type="choice",
        steps=(),
        source="realworldqa",
    )
    assert records[1].id == "realworldqa:1" and records[1].images == (img2,)
    assert records[1].question == "How many cars are there?"
    assert (records[1].choices, records[1].answer, records[1].answer_type) == ((), "3", "number")
    # Row numbers run on across files; the second file's row is number 2.
    assert (records[2].id, records[2].answer, records[2].answer_type) == (
        "realworldqa:2",
        "Green",
        "text",
    )
    assert records[2].question == "Is the light red or green?"
    # A single file works too.
    (one,) = read_realworldqa(tmp_path / "data" / "test-00001-of-00002.parquet")
    assert one.id == "realworldqa:0"


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"answer": None}, "no answer"),
        ({"answer": ""}, "no answer"),
        ({"answer": "D"}, "not among the options"),
        ({"image": None}, "no image"),
        ({"image": {"bytes": None, "path": "a.png"}}, "no image bytes"),
        ({"image": _img(b"\x89PNG\r\n\x1a\nnot a png")}, "does not decode"),
        ({"image": _img(_noisy_png()[:2000])}, "does not decode"),  # truncated PNG
        ({"question": "Please answer directly."}, "empty question"),
    ],
)
def test_realworldqa_bad_row_names_file_and_row(tmp_path, overrides, problem):
    file = _write_parquet(
        tmp_path / "rwqa.parquet", [_rwqa_row(), _rwqa_row(**overrides)], RWQA_SCHEMA
    )
    records = read_realworldqa(file)
    assert next(records).id == "realworldqa:0"
    with pytest.raises(DatasetFormatError, match=problem) as info:
        next(records)
    assert info.value.file == str(file) and info.value.row == "1"
    assert "rwqa.parquet, row 1" in str(info.value)

    stats = {}
    kept = list(read_realworldqa(file, on_error="skip", stats=stats))
    assert [r.id for r in kept] == ["realworldqa:0"] and stats == {"skipped": 1}


def test_realworldqa_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="no such"):
        read_realworldqa(tmp_path / "absent")
    with pytest.raises(DatasetFormatError, match="no parquet files"):
        read_realworldqa(tmp_path)
    schema = pa.schema([("image", _IMAGE_TYPE), ("question", pa.string())])
    file = _write_parquet(tmp_path / "data" / "test-0.parquet", [], schema)
    with pytest.raises(DatasetFormatError, match=r"row header: missing columns \['answer'\]"):
        read_realworldqa(tmp_path)
    file.write_bytes(b"not parquet")
    with pytest.raises(DatasetFormatError, match="not a readable parquet file"):
        read_realworldqa(file)
    with pytest.raises(ValueError, match="on_error"):
        read_realworldqa(file, on_error="ignore")


# --- MMMU --------------------------------------------------------------------------------

MMMU_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("options", pa.string()),
        ("explanation", pa.string()),
        *[(f"image_{k}", _IMAGE_TYPE) for k in range(1, 8)],
        ("img_type", pa.string()),
        ("answer", pa.string()),
        ("topic_difficulty", pa.string()),
        ("question_type", pa.string()),
        ("subfield", pa.string()),
    ]
)


def _mmmu_row(id_: str, **overrides) -> dict:
    row = {
        "id": id_,
        "question": "<image 1> What is the price? ",
        "options": "['$6', '$7', '$8']",
        "explanation": "",
        "image_1": _img(_png()),
        "img_type": "['Tables']",
        "answer": "B",
        "topic_difficulty": "Easy",
        "question_type": "multiple-choice",
        "subfield": "Managerial Accounting",
    }
    row.update(overrides)
    return row


def test_mmmu_normalises_rows(tmp_path):
    img1, img2, img3 = _png("red"), _jpeg("white"), _png("green")
    acc = [
        _mmmu_row("validation_Accounting_1", image_1=_img(img1)),
        _mmmu_row(
            "validation_Accounting_2",
            question="Compare <image 1> and <image 2>. Which is larger?",
            options="['<image 3>', 'neither', \"it's equal\"]",
            image_1=_img(img1),
            image_2=_img(img2),
            image_3=_img(img3),
            answer="A",
        ),
    ]
    art = [
        _mmmu_row("validation_Art_1", options="[]", answer="12.5", question_type="open"),
        _mmmu_row("validation_Art_2", options="[]", answer="Baroque", question_type="open"),
        _mmmu_row("validation_Art_3", question="No picture here.", image_1=None),
    ]
    _write_parquet(tmp_path / "Accounting" / "validation-00000-of-00001.parquet", acc, MMMU_SCHEMA)
    _write_parquet(tmp_path / "Art" / "validation-00000-of-00001.parquet", art, MMMU_SCHEMA)
    _write_parquet(tmp_path / "Art" / "dev-00000-of-00001.parquet", art[:1], MMMU_SCHEMA)
    records = list(read_mmmu(tmp_path))
    assert [r.id for r in records] == [
        "mmmu:validation_Accounting_1",
        "mmmu:validation_Accounting_2",
        "mmmu:validation_Art_1",
        "mmmu:validation_Art_2",
        "mmmu:validation_Art_3",
    ]
    assert records[0] == Record(
        id="mmmu:validation_Accounting_1",
        images=(img1,),
        question="<image 1> What is the price?",  # placeholders are kept
        choices=("$6", "$7", "$8"),
        answer="B",
        answer_type="choice",
        steps=(),
        source="mmmu",
    )
    assert records[1].images == (img1, img2, img3)  # image_k order
    assert records[1].choices == ("<image 3>", "neither", "it's equal")
    assert records[1].question == "Compare <image 1> and <image 2>. Which is larger?"
    assert (records[2].answer, records[2].answer_type, records[2].choices) == ("12.5", "number", ())
    assert (records[3].answer, records[3].answer_type) == ("Baroque", "text")
    assert records[4].images == ()
    (dev,) = read_mmmu(tmp_path, split="dev")
    assert dev.id == "mmmu:validation_Art_1"
    single = list(read_mmmu(tmp_path / "Art" / "validation-00000-of-00001.parquet"))
    assert len(single) == 3
    for r in records:
        assert grading.grade(
            r.answer, r.answer, answer_type=r.answer_type, choices=r.choices or None
        )


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"answer": None}, "no answer"),
        ({"answer": "nan"}, "no answer"),
        ({"answer": "D"}, "not among the options"),
        ({"answer": "$9"}, "not an option letter"),
        ({"options": "$6, $7"}, "not a Python list literal"),
        ({"options": "__import__('os').system('true')"}, "not a Python list literal"),
        ({"options": "{'a': 1}"}, "not a list of strings"),
        ({"options": "['$6']"}, "with 1 options"),
        ({"options": "['a', 'b']", "question_type": "open"}, "open question with options"),
        ({"question_type": "true-false"}, "unknown question_type"),
        ({"question": "See <image 2>."}, "<image 2> refers to a missing image"),
        ({"options": "['<image 4>', 'x']"}, "<image 4> refers to a missing image"),
        ({"image_1": None}, "refers to a missing image"),
        ({"image_1": None, "image_2": _img(_png())}, "no image_1"),
        ({"image_1": _img(b"\x89PNG\r\n\x1a\nnot a png")}, "does not decode"),
        ({"image_1": _img(_noisy_png()[:2000])}, "does not decode"),
        ({"question": "  "}, "empty question"),
    ],
)
def test_mmmu_bad_row_names_file_and_row(tmp_path, overrides, problem):
    rows = [_mmmu_row("validation_Accounting_1"), _mmmu_row("validation_Accounting_2", **overrides)]
    file = _write_parquet(tmp_path / "Accounting" / "validation-0.parquet", rows, MMMU_SCHEMA)
    records = read_mmmu(tmp_path)
    assert next(records).id == "mmmu:validation_Accounting_1"
    with pytest.raises(DatasetFormatError, match=problem) as info:
        next(records)
    assert info.value.file == str(file) and info.value.row == "validation_Accounting_2"
    assert "validation-0.parquet, row validation_Accounting_2" in str(info.value)

    stats = {"skipped": 2}
    kept = list(read_mmmu(tmp_path, on_error="skip", stats=stats))
    assert [r.id for r in kept] == ["mmmu:validation_Accounting_1"] and stats == {"skipped": 3}


def test_mmmu_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="no such"):
        read_mmmu(tmp_path / "absent")
    with pytest.raises(DatasetFormatError, match="no parquet files"):
        read_mmmu(tmp_path)
    schema = pa.schema([(n, pa.string()) for n in ("id", "question", "options", "answer")])
    file = _write_parquet(tmp_path / "Art" / "validation-0.parquet", [], schema)
    with pytest.raises(DatasetFormatError, match=r"missing columns \['question_type'\]"):
        read_mmmu(tmp_path)
    file.write_bytes(b"PAR1 garbage")
    with pytest.raises(DatasetFormatError, match="not a readable parquet file") as info:
        read_mmmu(tmp_path)
    assert info.value.file == str(file)
    with pytest.raises(ValueError, match="on_error"):
        read_mmmu(tmp_path, on_error="ignore")


# --- Image-size limit (all readers) --------------------------------------------------------


def _big_image_fixture(reader: str, tmp_path):
    """A dataset whose second row has a 20x20 image; returns (read, file, bad row id)."""
    big = _png(size=(20, 20))
    if reader == "mmbench":
        file = _write_tsv(tmp_path / "mm.tsv", [_mmbench_row(0, _png()), _mmbench_row(7, big)])
        return read_mmbench, file, "7"
    if reader == "mathverse":
        images = {"image_1.png": _png(), "big.png": big}
        file = _write_mathverse(tmp_path, [_mv_item(1), _mv_item(42, image="big.png")], images)
        return read_mathverse, file, "42"
    if reader == "realworldqa":
        rows = [_rwqa_row(), _rwqa_row(image=_img(big))]
        return read_realworldqa, _write_parquet(tmp_path / "r.parquet", rows, RWQA_SCHEMA), "1"
    rows = [_mmmu_row("v_1"), _mmmu_row("v_2", image_1=_img(big))]
    file = _write_parquet(tmp_path / "Art" / "validation-0.parquet", rows, MMMU_SCHEMA)
    return read_mmmu, file, "v_2"


READERS = ["mmbench", "mathverse", "realworldqa", "mmmu"]


@pytest.mark.parametrize("reader", READERS)
def test_image_over_pixel_limit_is_a_bad_row(tmp_path, reader, monkeypatch):
    read, file, row = _big_image_fixture(reader, tmp_path)
    path = tmp_path if reader in ("mathverse", "mmmu") else file
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda im: loads.append(im.size) or real_load(im)
    )
    with pytest.raises(DatasetFormatError, match="20x20 = 400 pixels") as info:
        list(read(path, max_image_pixels=100))
    assert info.value.file == str(file) and info.value.row == row
    assert "limit of 100 pixels" in str(info.value) and "max_image_pixels" in str(info.value)
    assert (20, 20) not in loads  # rejected from the header, never decoded
    assert loads  # the patch does see decodes (of the good row's image)

    stats = {}
    assert len(list(read(path, on_error="skip", stats=stats, max_image_pixels=100))) == 1
    assert stats == {"skipped": 1}
    assert len(list(read(path, max_image_pixels=None))) == 2  # None disables the limit
    assert len(list(read(path, max_image_pixels=400))) == 2  # the limit is inclusive
    assert len(list(read(path))) == 2  # default 4096 * 4096


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("pil_limit, kind", [(300, "Warning"), (100, "Error")])
def test_pil_decompression_bomb_is_a_bad_row(tmp_path, reader, pil_limit, kind, monkeypatch):
    # 400 pixels: over PIL's limit (a warning) or over twice it (an error).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    read, file, row = _big_image_fixture(reader, tmp_path)
    path = tmp_path if reader in ("mathverse", "mmmu") else file
    with pytest.raises(DatasetFormatError, match=f"DecompressionBomb{kind}") as info:
        list(read(path, max_image_pixels=None))
    assert info.value.file == str(file) and info.value.row == row
    assert "MAX_IMAGE_PIXELS" in str(info.value)
    stats = {}
    assert len(list(read(path, on_error="skip", stats=stats, max_image_pixels=None))) == 1
    assert stats == {"skipped": 1}
