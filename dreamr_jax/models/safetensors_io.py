"""Minimal streaming safetensors reader and writer.

The reader memory-maps a file and hands out one tensor at a time (bf16 included, through
``ml_dtypes``), so loading never holds more than the tensor being converted; it validates the
header against the file size, so a truncated download fails with the file's name instead of
a bus error. The writer streams tensors produced one at a time into the standard format,
readable by the ``safetensors`` library and transformers.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file is missing, truncated or malformed."""


class SafetensorsFile:
    """Read-only view of one ``.safetensors`` file.

    Attributes:
      path: the file.
      tensors: name -> (dtype, shape, begin, end) from the header.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise SafetensorsError(f"{self.path}: file is truncated (no header).")
                (n,) = struct.unpack("<Q", head)
                if 8 + n > size:
                    raise SafetensorsError(
                        f"{self.path}: header claims {n} bytes but the file has {size}; the "
                        "file is truncated or not safetensors. Re-download or re-save it."
                    )
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise SafetensorsError(f"{self.path}: no such file.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{self.path}: unreadable header ({e}).") from None
        header.pop("__metadata__", None)
        self._data_start = 8 + n
        self.tensors = {}
        for name, info in header.items():
            if info.get("dtype") not in _DTYPES:
                raise SafetensorsError(
                    f"{self.path}: tensor {name} has unsupported dtype {info.get('dtype')!r}."
                )
            begin, end = info["data_offsets"]
            self.tensors[name] = (info["dtype"], tuple(info["shape"]), begin, end)
        last = max((e for *_, e in self.tensors.values()), default=0)
        if self._data_start + last > size:
            raise SafetensorsError(
                f"{self.path}: tensors need {self._data_start + last} bytes but the file has "
                f"{size}; the file is truncated. Re-download or re-save it."
            )
        self._mmap = None

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped NumPy array (no copy)."""
        dtype, shape, begin, end = self.tensors[name]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._mmap[self._data_start + begin : self._data_start + end]
        arr = raw.view(_DTYPES[dtype])
        expected = int(np.prod(shape)) if shape else 1
        if arr.size != expected:
            raise SafetensorsError(
                f"{self.path}: tensor {name} has {arr.size} elements, "
                f"header shape {list(shape)} needs {expected}."
            )
        return arr.reshape(shape)


def write_file(
    path: str | os.PathLike,
    entries: list[tuple[str, tuple[int, ...], np.dtype]],
    produce: Callable[[str], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Streams tensors into a safetensors file, one tensor in memory at a time.

    Args:
      path: destination; written to ``path + ".tmp"`` then renamed, so an existing file is
        never left half-written.
      entries: ``(name, shape, dtype)`` of each tensor, in file order.
      produce: called once per name, returns the array (shape and dtype as declared).
      metadata: optional string metadata (transformers expects ``{"format": "pt"}``).
    """
    header, offset = {}, 0
    for name, shape, dtype in entries:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[name] = {
            "dtype": _NAMES[np.dtype(dtype)],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header["__metadata__"] = metadata or {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in entries:
            arr = np.ascontiguousarray(produce(name))
            if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise SafetensorsError(
                    f"tensor {name}: produced {arr.shape} {arr.dtype}, "
                    f"declared {tuple(shape)} {np.dtype(dtype)}."
                )
            f.write(arr.tobytes())
    os.replace(tmp, path)


def iter_tensors(files: list[SafetensorsFile]) -> Iterator[tuple[str, SafetensorsFile]]:
    for f in files:
        for name in f.keys():
            yield name, f
