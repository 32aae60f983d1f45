"""Imported datasets as a TFDS builder: any importer's `Record`s as ArrayRecord, no TensorFlow.

`build` runs one importer (`IMPORTERS`: the evaluation readers of `importers` and the
training readers of `train_sets`) over a user-supplied local directory and writes one split
under ``data_dir``; `load` returns a random-access `tfds` data source of it and `as_record`
turns a read example back into the `Record` the importer produced. Example ``i`` of a split
is the importer's ``i``-th record (``disable_shuffling=True``; grain shuffles).

Images are stored as the bytes the importer read (PNG, JPEG, GIF, ...; several per record
for MMMU), not as tfds `Image` features: those decode on read, need one shape and encoding,
and would not give back the bytes the record held. The rest follows `synthetic_tfds`, which
explains what tfds 4.9.10 needs without TensorFlow (``file_format="array_record"``,
`DatasetInfo` built directly, `code_path` overridden, ``as_data_source``).

A split is identified by ``(importer, split)``: it lives in
``data_dir/imported_dataset/<importer>_<split>/<version>``, so `load` needs no source
directory. The source directory and reader options are recorded in the dataset's
description; building again with the same ones reuses the files, with others is an error
rather than a silent mix of two builds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from dreamr_jax.data import importers, train_sets
from dreamr_jax.data.records import DatasetFormatError, Record

_TEXT_FIELDS = ("id", "question", "answer", "answer_type", "source")
_SEQ_FIELDS = ("choices", "steps")
# Reader arguments that do not change what is written.
_NOT_SETTINGS = ("stats",)


@dataclasses.dataclass(frozen=True)
class Importer:
    """How to run one dataset's reader.

    Attributes:
      read: the reader, ``read(path, [split=split,] **options) -> Iterator[Record]``.
      splits: the split names it reads; the first is the default.
      takes_split: whether `read` takes a ``split`` argument (the readers of single-split
        benchmarks do not; their one split is only a name).
    """

    read: Callable[..., Iterator[Record]]
    splits: tuple[str, ...]
    takes_split: bool


IMPORTERS: dict[str, Importer] = {
    "mmbench": Importer(importers.read_mmbench, ("dev",), False),
    "mathverse": Importer(importers.read_mathverse, ("testmini",), False),
    "realworldqa": Importer(importers.read_realworldqa, ("test",), False),
    "mmmu": Importer(importers.read_mmmu, ("validation", "dev", "test"), True),
    "scienceqa": Importer(
        train_sets.read_scienceqa,
        ("train", "val", "test", "trainval", "minitrain", "minival", "minitest"),
        True,
    ),
    "geo3k": Importer(train_sets.read_geo3k, train_sets.GEO3K_SPLITS, True),
    "ocrvqa": Importer(train_sets.read_ocrvqa, tuple(train_sets.OCRVQA_SPLITS), True),
}


@dataclasses.dataclass(eq=False)
class ImportConfig(tfds.core.BuilderConfig):
    """A tfds config for one split of one importer.

    Attributes:
      importer: a key of `IMPORTERS`.
      split: one of that importer's splits.
      source_dir: the local copy to read; None when only loading.
      options: reader keyword arguments (``on_error``, ``max_image_pixels``, ...).
    """

    importer: str = ""
    split: str = ""
    source_dir: str | None = None
    options: Mapping = dataclasses.field(default_factory=dict)


def _settings(cfg: ImportConfig) -> str:
    """The build settings as canonical JSON: what makes two builds the same data."""
    options = {k: v for k, v in cfg.options.items() if k not in _NOT_SETTINGS}
    settings = {
        "importer": cfg.importer,
        "split": cfg.split,
        "source_dir": cfg.source_dir,
        "options": options,
    }
    return json.dumps(settings, sort_keys=True, default=str)


def make_config(name: str, split: str | None = None, source_dir=None, **options) -> ImportConfig:
    """The config for (name, split); `split` defaults to the importer's first split.

    Raises:
      ValueError: an unknown importer or split.
    """
    if name not in IMPORTERS:
        raise ValueError(f"importer must be one of {tuple(IMPORTERS)}, got {name!r}")
    importer = IMPORTERS[name]
    split = importer.splits[0] if split is None else split
    if split not in importer.splits:
        raise ValueError(f"split for {name!r} must be one of {importer.splits}, got {split!r}")
    source = None if source_dir is None else str(Path(source_dir).resolve())
    cfg = ImportConfig(
        name=f"{name}_{split}", importer=name, split=split, source_dir=source, options=options
    )
    cfg.description = f"{name} split {split!r} imported from local files; {_settings(cfg)}"
    return cfg


class ImportedDataset(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for the records of one importer's split; pass a `make_config` config."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds' own lookup imports `importlib_resources`, declared only for Python < 3.9.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        features = tfds.features.FeaturesDict(
            {
                **{k: text for k in _TEXT_FIELDS},
                **{k: tfds.features.Sequence(text) for k in _SEQ_FIELDS},
                # Raw encoded bytes (tf.string): read back exactly as stored.
                "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.builder_config.description,
            features=features,
            supervised_keys=None,
            disable_shuffling=True,  # example i == the importer's i-th record
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the user supplies the files
        cfg = self.builder_config
        importer = IMPORTERS[cfg.importer]
        split = {"split": cfg.split} if importer.takes_split else {}
        # Readers check files on call, so a missing or malformed file fails before writing.
        records = importer.read(cfg.source_dir, **split, **cfg.options)
        return {cfg.split: self._generate_examples(records)}

    def _generate_examples(self, records: Iterator[Record]):
        n = -1
        for n, record in enumerate(records):
            example = dataclasses.asdict(record)
            example["images"] = list(record.images)
            yield n, example
        if n < 0:  # tfds cannot finalize an empty split; say why instead
            cfg = self.builder_config
            raise DatasetFormatError(
                cfg.source_dir, None, f"no {cfg.importer} records for split {cfg.split!r}"
            )


def _built_description(builder: ImportedDataset) -> str | None:
    info = builder.data_path / "dataset_info.json"
    if not info.exists():
        return None
    return json.loads(info.read_text()).get("description", "")


def build(
    name: str, source_dir: str | Path, data_dir: str | Path, split: str | None = None, **options
) -> epath.Path:
    """Imports `split` of dataset `name` from `source_dir` into ``data_dir``.

    Args:
      name: a key of `IMPORTERS` ("mmbench", "mathverse", "realworldqa", "mmmu",
        "scienceqa", "geo3k", "ocrvqa").
      source_dir: the local copy, as the importer's reader takes it.
      data_dir: the tfds data directory to write under.
      split: one of the importer's splits (`Importer.splits`); default its first.
      **options: reader keyword arguments (``on_error``, ``stats``, ``max_image_pixels``,
        ``include_text_only`` for ScienceQA). ``stats`` is filled while writing.

    Returns:
      The dataset's directory, ``data_dir/imported_dataset/<name>_<split>/<version>``.
      A second call with the same settings writes nothing.

    Raises:
      ValueError: an unknown importer or split, or a dataset already built there from
        another source or with other options.
      DatasetFormatError: as the reader raises it (nothing is left written), or no record.
    """
    cfg = make_config(name, split, source_dir, **options)
    builder = ImportedDataset(data_dir=str(data_dir), config=cfg, file_format="array_record")
    built = _built_description(builder)
    if built is not None and built != cfg.description:
        raise ValueError(
            f"{builder.data_path} was built with other settings ({built!r}); use another "
            "data_dir or delete it to rebuild."
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder.data_path


def load(name: str, data_dir: str | Path, split: str | None = None) -> Sequence[dict]:
    """Random-access source of a built split: ``as_record(src[i])`` is the i-th record.

    Raises:
      ValueError: an unknown importer or split.
      FileNotFoundError: the split was not built under `data_dir`.
    """
    cfg = make_config(name, split)
    builder = ImportedDataset(data_dir=str(data_dir), config=cfg, file_format="array_record")
    if _built_description(builder) is None:
        raise FileNotFoundError(
            f"No imported {name!r} split {cfg.split!r} at {builder.data_path}: build it "
            "first with dreamr_jax.data.import_tfds.build(name, source_dir, data_dir, split)."
        )
    return builder.as_data_source(split=cfg.split)


def as_record(example: Mapping) -> Record:
    """A read example as the `Record` the importer produced (text decoded, tuples)."""
    fields = {k: _text(example[k]) for k in _TEXT_FIELDS}
    fields.update({k: tuple(_text(v) for v in example[k]) for k in _SEQ_FIELDS})
    return Record(images=tuple(bytes(v) for v in example["images"]), **fields)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
