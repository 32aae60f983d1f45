"""The README's main job: `python -m dreamr_jax.infer --config=configs/demo.py`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dreamr_jax import config as config_lib
from dreamr_jax import infer
from dreamr_jax.models.hf import CheckpointError
from dreamr_jax.models.sharding import ShardingError

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*overrides):
    raw = config_lib.load_config(str(ROOT / "configs/demo.py:smoke"), overrides)
    sections = {k: raw[k] for k in ("model", "prompt", "generate", "mesh")}
    return config_lib.to_dataclass(infer.InferConfig, sections)


def test_run_writes_generation_and_reuses_model(tmp_path):
    result = infer.run(_cfg(), tmp_path)
    saved = json.loads((tmp_path / "generation.json").read_text())
    assert saved == result
    assert 1 <= result["answer_tokens"] <= 8
    assert result["image_grid_thw"][0][0] == 1
    weights = tmp_path / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = infer.run(_cfg(), tmp_path)
    assert weights.stat().st_mtime_ns == stamp, "the built-in model must be reused, not rewritten"
    assert again["answer"] == result["answer"], "greedy decoding must be deterministic"


def test_sharded_run_matches_single_device(tmp_path):
    one = infer.run(_cfg(), tmp_path / "a")
    eight = infer.run(_cfg("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), tmp_path / "b")
    assert eight["answer"] == one["answer"]


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        infer.run(_cfg(f"model.checkpoint={tmp_path / 'nope'}"), tmp_path)


def test_bad_mesh_is_named(tmp_path):
    with pytest.raises(ShardingError, match="needs 16 devices but 8 are available"):
        infer.run(_cfg("mesh.data=16"), tmp_path)


def test_bad_dtype_is_named():
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.dtype='float8'"):
        _cfg("model.dtype=float8")


def test_cli(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamr_jax.infer",
            "--config=configs/demo.py:smoke",
            f"--workdir={tmp_path}",
            "--config.generate.max_new_tokens=4",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "answer (" in proc.stdout
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert resolved["generate"]["max_new_tokens"] == 4
    assert json.loads((tmp_path / "generation.json").read_text())["answer_tokens"] <= 4


def test_interrupted_builtin_model_is_rewritten(tmp_path):
    first = infer.run(_cfg(), tmp_path)
    (tmp_path / "model" / "config.json").unlink()  # as if killed before the last write
    (tmp_path / "model" / "model.safetensors").write_bytes(b"\0" * 10)
    again = infer.run(_cfg(), tmp_path)
    assert again["answer"] == first["answer"]


def test_bad_image_is_named_before_model_work(tmp_path, monkeypatch):
    infer.run(_cfg(), tmp_path)  # writes the built-in model once

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the image was checked")

    monkeypatch.setattr(infer.hf, "load_pretrained", no_load)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        infer.run(_cfg(f"prompt.image={tmp_path / 'missing.png'}"), tmp_path)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        infer.run(_cfg(f"prompt.image={corrupt}"), tmp_path)
