"""Test-wide setup: 8 fake CPU devices, no hub access, absl flags marked parsed.

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


@pytest.fixture
def tmp_workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    """An empty, existing run directory unique to the test."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    return workdir
