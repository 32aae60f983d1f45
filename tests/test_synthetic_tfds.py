"""The synthetic TFDS builder: round trip, determinism, config isolation, reuse, bad input."""

import hashlib
import io
import pathlib
import pickle
import sys

import numpy as np
import pytest
from PIL import Image
from tensorflow_datasets.proto import tf_example_pb2

from dreamr_jax.data import synthetic_tfds
from dreamr_jax.data.synthetic import SPLITS, SyntheticConfig, make_example, to_record

SIZES = {"train": 12, "validation": 4, "test": 4}
CFG = SyntheticConfig(image_size=64, seed=3)


def _files(path: pathlib.Path) -> dict[str, pathlib.Path]:
    return {p.name: p for p in sorted(path.glob("*.array_record-*"))}


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, pathlib.Path(synthetic_tfds.build(str(data_dir), CFG, SIZES))


@pytest.mark.parametrize("split", SPLITS)
def test_round_trip_equals_generator(built, split):
    data_dir, _ = built
    src = synthetic_tfds.load(str(data_dir), CFG, split, SIZES)
    assert len(src) == SIZES[split]
    for i in range(len(src)):
        got, want = synthetic_tfds.as_record(src[i]), to_record(make_example(i, split, CFG))
        image = want.pop("image")
        np.testing.assert_array_equal(got.pop("image"), make_example(i, split, CFG).image)
        assert np.asarray(Image.open(io.BytesIO(image))).shape == (64, 64, 3)
        assert got == want, (split, i)
    assert "tensorflow" not in sys.modules


def test_same_config_is_byte_identical(built, tmp_path):
    _, path_a = built
    path_b = pathlib.Path(synthetic_tfds.build(str(tmp_path), CFG, SIZES))
    files_a, files_b = _files(path_a), _files(path_b)
    assert len(files_a) == len(SPLITS) and files_a.keys() == files_b.keys()
    for name in files_a:
        assert _sha(files_a[name]) == _sha(files_b[name]), name


def test_different_seed_gives_different_records_in_own_dir(built):
    data_dir, path_a = built
    other = SyntheticConfig(image_size=64, seed=4)
    path_b = pathlib.Path(synthetic_tfds.build(str(data_dir), other, SIZES))
    assert path_b != path_a and path_a.exists()  # same data_dir, no collision
    src_a = synthetic_tfds.load(str(data_dir), CFG, "train", SIZES)
    src_b = synthetic_tfds.load(str(data_dir), other, "train", SIZES)
    ids = [synthetic_tfds.as_record(src_b[i])["id"] for i in range(len(src_b))]
    assert ids == [f"train-4-{i}" for i in range(SIZES["train"])]
    questions_a = [src_a[i]["question"] for i in range(len(src_a))]
    questions_b = [src_b[i]["question"] for i in range(len(src_b))]
    assert questions_a != questions_b


def test_config_name_encodes_all_settings():
    names = {
        synthetic_tfds.make_config(CFG, SIZES).name,
        synthetic_tfds.make_config(SyntheticConfig(image_size=64, seed=4), SIZES).name,
        synthetic_tfds.make_config(SyntheticConfig(image_size=96, seed=3), SIZES).name,
        synthetic_tfds.make_config(CFG, {**SIZES, "train": 13}).name,
        synthetic_tfds.make_config(
            SyntheticConfig(image_size=64, seed=3, max_objects=5), SIZES
        ).name,
    }
    assert len(names) == 5
    assert (
        synthetic_tfds.make_config(CFG, SIZES).name == synthetic_tfds.make_config(CFG, SIZES).name
    )


def test_rebuild_reuses_existing_data(built):
    data_dir, path = built
    before = {p: p.stat().st_mtime_ns for p in path.iterdir()}
    assert synthetic_tfds.build(str(data_dir), CFG, SIZES) == path
    assert {p: p.stat().st_mtime_ns for p in path.iterdir()} == before


def test_load_without_build_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        synthetic_tfds.load(str(missing), CFG, "train", SIZES)
    assert "build(" in str(err.value)
    assert not missing.exists()  # a failed load writes nothing


def test_bad_split_and_sizes(built):
    data_dir, _ = built
    with pytest.raises(ValueError, match="split='dev'"):
        synthetic_tfds.load(str(data_dir), CFG, "dev", SIZES)
    with pytest.raises(ValueError, match="sizes"):
        synthetic_tfds.make_config(CFG, {"dev": 3})
    with pytest.raises(ValueError, match="sizes\\['train'\\]"):
        synthetic_tfds.make_config(CFG, {"train": 0})


@pytest.mark.parametrize("split", SPLITS)
def test_source_reads_what_tfds_reads(built, split):
    """`Source` parses records itself: the same values and types as tfds' decoding."""
    data_dir, _ = built
    src = synthetic_tfds.load(str(data_dir), CFG, split, SIZES)
    want = [src.tfds_source[i] for i in range(len(src))]
    keys = list(range(len(src)))[::-1] + [0]
    for got in ([src[i] for i in range(len(src))], src.__getitems__(keys)[::-1][1:]):
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.keys() == w.keys(), (split, i)
            for k in w:
                if k == "image":
                    assert g[k].dtype == w[k].dtype == np.uint8 and g[k].flags.writeable
                    np.testing.assert_array_equal(g[k], w[k])
                else:
                    assert type(g[k]) is type(w[k]) and g[k] == w[k], (split, i, k)
    assert pickle.loads(pickle.dumps(src))[1]["id"] == want[1]["id"]  # grain workers
    with pytest.raises(IndexError, match="out of range"):
        src[len(src)]
    with pytest.raises(IndexError, match="out of range"):
        src.__getitems__([0, -1])


class _Raw:
    """A tfds source stand-in holding serialised records."""

    def __init__(self, records):
        self.data_source = records

    def __len__(self):
        return len(self.data_source)


def test_source_refuses_bad_records(built):
    data_dir, _ = built
    good = synthetic_tfds.load(str(data_dir), CFG, "train", SIZES).tfds_source.data_source[0]
    example = tf_example_pb2.Example.FromString(good)
    small = to_record(make_example(0, "train", SyntheticConfig(image_size=96, seed=3)))
    example.features.feature["image"].bytes_list.value[0] = small["image"]
    no_answer = tf_example_pb2.Example.FromString(good)
    del no_answer.features.feature["answer"]
    truncated = tf_example_pb2.Example.FromString(good)
    png = truncated.features.feature["image"].bytes_list.value[0]
    truncated.features.feature["image"].bytes_list.value[0] = png[: len(png) // 2]
    cases = {
        b"not a record": "does not parse",
        example.SerializeToString(): "image shape \\(96, 96, 3\\), expected \\(64, 64, 3\\)",
        no_answer.SerializeToString(): "expected one value, found 0",
        truncated.SerializeToString(): "does not parse",
    }
    for record, match in cases.items():
        src = synthetic_tfds.Source(_Raw([good, record]), "train", 64)
        assert src[0]["id"] == b"train-3-0"
        with pytest.raises(ValueError, match=match) as err:
            src[1]
        assert "train record 1" in str(err.value) and "build it again" in str(err.value)
