"""Test-wide setup: 8 fake CPU devices, no hub access, absl flags marked parsed, and the
longest test files collected first.

The environment is set at import, before any test module imports jax: XLA reads
``XLA_FLAGS`` once, when its first backend starts.
"""

import os
import pathlib

import pytest
from absl import flags

_DEVICE_FLAG = "--xla_force_host_platform_device_count"
# Keep the caller's other XLA flags; the device count is ours since tests assume 8 devices.
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_FLAG)]
    + [f"{_DEVICE_FLAG}=8"]
)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# grain worker processes and library code read absl flags; nothing parses argv in pytest.
flags.FLAGS.mark_as_parsed()

# Files that take minutes each (measured in CI on 2 cores: each is a whole pipeline or a
# benchmark run end to end), longest first. scripts/test.sh hands whole files to pytest-xdist
# workers in collection order, so starting these first keeps one of them from running
# alone at the end.
LONG_FILES = (
    "test_train.py",
    "test_bench_train.py",
    "test_notebooks.py",
    "test_multihost.py",
    "test_real_configs.py",
    "test_bench_data.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Moves the tests of `LONG_FILES` to the front (stable: order within files is kept)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def tmp_workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    """An empty, existing run directory unique to the test."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    return workdir
