"""The importers' TFDS builder: every importer round-trips, reuse, isolation, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_importers import (
    MMMU_SCHEMA,
    RWQA_SCHEMA,
    _img,
    _jpeg,
    _mmbench_row,
    _mmmu_row,
    _mv_item,
    _png,
    _rwqa_row,
    _write_mathverse,
    _write_parquet,
    _write_tsv,
)
from test_train_sets import (
    _geo_data,
    _ocr_entry,
    _sqa_fixture,
    _write_geo3k,
    _write_ocrvqa,
)

from dreamr_jax.data import import_tfds
from dreamr_jax.data.importers import DatasetFormatError, read_mmmu


def _write_source(name: str, root) -> tuple[str, dict]:
    """A small copy of dataset `name` at `root`; returns (split, reader options)."""
    root.mkdir(parents=True, exist_ok=True)
    if name == "mmbench":
        _write_tsv(root / "MMBench_DEV_EN.tsv", [_mmbench_row(0, _png()), _mmbench_row(1, _jpeg())])
        return "dev", {}
    if name == "mathverse":  # the vision-only entry has no image: images == ()
        _write_mathverse(root, [_mv_item(1), _mv_item(2, question="", image="")])
        return "testmini", {}
    if name == "realworldqa":
        rows = [_rwqa_row(), _rwqa_row(question="How many?", answer="3")]
        _write_parquet(root / "data" / "test-0.parquet", rows, RWQA_SCHEMA)
        return "test", {}
    if name == "mmmu":  # three images in one record, then one, then none
        rows = [
            _mmmu_row(
                "validation_Art_1",
                question="Compare <image 1>, <image 2> and <image 3>.",
                image_1=_img(_png("red")),
                image_2=_img(_jpeg("white")),
                image_3=_img(_png("green", (5, 9))),
            ),
            _mmmu_row("validation_Art_2"),
            _mmmu_row("validation_Art_3", options="[]", answer="12.5", question_type="open"),
        ]
        _write_parquet(root / "Art" / "validation-0.parquet", rows, MMMU_SCHEMA)
        return "validation", {}
    if name == "scienceqa":  # text-only problems included: images == (), steps kept
        _sqa_fixture(root)
        return "train", {"include_text_only": True}
    if name == "geo3k":
        _write_geo3k(root, "val", {"2101": _geo_data(2101), "2102": _geo_data(2102, answer="D")})
        return "val", {}
    data = {"1": _ocr_entry(), "2": _ocr_entry(".png", questions=["Year?"], answers=["2016"])}
    _write_ocrvqa(root, data, {"1.jpg": _jpeg(), "2.png": _png()})
    return "train", {}


def _records(name: str, data_dir, split: str):
    src = import_tfds.load(name, str(data_dir), split)
    return [import_tfds.as_record(src[i]) for i in range(len(src))]


def _read(name: str, source, split: str, options: dict):
    importer = import_tfds.IMPORTERS[name]
    kwargs = {"split": split} if importer.takes_split else {}
    return list(importer.read(source, **kwargs, **options))


@pytest.mark.parametrize("name", sorted(import_tfds.IMPORTERS))
def test_round_trip_equals_reader(tmp_path, name):
    source = tmp_path / "source"
    split, options = _write_source(name, source)
    path = import_tfds.build(name, source, tmp_path / "tfds", split, **options)
    assert path.name == "1.0.0" and path.parent.name == f"{name}_{split}"
    want = _read(name, source, split, options)
    assert len(want) >= 2
    assert _records(name, tmp_path / "tfds", split) == want  # same order, bytes, text
    assert "tensorflow" not in sys.modules


def test_registry_covers_every_importer():
    assert set(import_tfds.IMPORTERS) == {
        "mmbench",
        "mathverse",
        "realworldqa",
        "mmmu",
        "scienceqa",
        "geo3k",
        "ocrvqa",
    }


def test_multi_image_and_empty_fields_survive(tmp_path):
    _write_source("mmmu", tmp_path / "src")
    import_tfds.build("mmmu", tmp_path / "src", tmp_path / "tfds")  # default split
    first, _, third = _records("mmmu", tmp_path / "tfds", "validation")
    assert first.images == (_png("red"), _jpeg("white"), _png("green", (5, 9)))
    assert third.images != () and third.choices == () and third.steps == ()
    assert first == next(read_mmmu(tmp_path / "src"))


def test_splits_are_separate_and_rebuild_reuses_files(tmp_path):
    source, data_dir = tmp_path / "src", tmp_path / "tfds"
    _write_source("scienceqa", source)
    train = import_tfds.build("scienceqa", source, data_dir, "train")
    val = import_tfds.build("scienceqa", source, data_dir, "val")
    assert train != val
    assert [r.id for r in _records("scienceqa", data_dir, "train")] == [
        "scienceqa:5",
        "scienceqa:1",
    ]  # the default leaves text-only problem 7 out
    assert [r.id for r in _records("scienceqa", data_dir, "val")] == ["scienceqa:9"]
    files = {p: p.stat().st_mtime_ns for p in Path(train).glob("*")}
    assert len(files) >= 2  # dataset_info.json and the records, at least
    assert import_tfds.build("scienceqa", source, data_dir, "train") == train
    assert {p: p.stat().st_mtime_ns for p in Path(train).glob("*")} == files  # none rewritten


def test_other_settings_on_built_split_are_an_error(tmp_path):
    source, data_dir = tmp_path / "src", tmp_path / "tfds"
    _write_source("scienceqa", source)
    import_tfds.build("scienceqa", source, data_dir)
    with pytest.raises(ValueError, match="built with other settings"):
        import_tfds.build("scienceqa", source, data_dir, include_text_only=True)
    other = tmp_path / "copy"
    _write_source("scienceqa", other)
    with pytest.raises(ValueError, match="built with other settings"):
        import_tfds.build("scienceqa", other, data_dir)
    # stats is an output, not a setting: the same build is found again.
    stats = {}
    import_tfds.build("scienceqa", source, data_dir, stats=stats)
    assert len(_records("scienceqa", data_dir, "train")) == 2


def test_bad_row_fails_the_build_and_leaves_nothing(tmp_path):
    source, data_dir = tmp_path / "src", tmp_path / "tfds"
    _write_source("geo3k", source)  # the val split
    good = import_tfds.build("geo3k", source, data_dir, "val")
    _write_geo3k(source, "train", {"1": _geo_data(1), "2": _geo_data(2, answer="Z")})
    with pytest.raises(DatasetFormatError, match="not among the options") as info:
        import_tfds.build("geo3k", source, data_dir, "train")
    assert info.value.row == "2" and info.value.file.endswith("train/2/data.json")
    with pytest.raises(FileNotFoundError, match="build it first"):
        import_tfds.load("geo3k", data_dir, "train")
    assert not list((data_dir / "imported_dataset" / "geo3k_train").glob("*"))
    assert len(_records("geo3k", data_dir, "val")) == 2 and good.exists()  # untouched

    stats = {}
    import_tfds.build("geo3k", source, data_dir, "train", on_error="skip", stats=stats)
    assert stats == {"skipped": 1}
    assert [r.id for r in _records("geo3k", data_dir, "train")] == ["geo3k:1"]


def test_bad_sources_and_names(tmp_path):
    with pytest.raises(DatasetFormatError, match="no such Geometry3K split directory"):
        import_tfds.build("geo3k", tmp_path / "absent", tmp_path / "tfds")
    empty = tmp_path / "empty"
    _write_ocrvqa(empty, {"1": _ocr_entry(split=2)}, {"1.jpg": _jpeg()})  # no train entries
    with pytest.raises(DatasetFormatError, match="no ocrvqa records for split 'train'"):
        import_tfds.build("ocrvqa", empty, tmp_path / "tfds")
    with pytest.raises(ValueError, match="importer must be one of"):
        import_tfds.build("vqav2", tmp_path, tmp_path / "tfds")
    with pytest.raises(ValueError, match=r"split for 'geo3k' must be one of \('train'"):
        import_tfds.build("geo3k", tmp_path, tmp_path / "tfds", "validation")
    with pytest.raises(ValueError, match="split for 'mmbench'"):
        import_tfds.load("mmbench", tmp_path / "tfds", "test")
    with pytest.raises(FileNotFoundError, match="No imported 'mmmu' split 'dev'"):
        import_tfds.load("mmmu", tmp_path / "tfds", "dev")
