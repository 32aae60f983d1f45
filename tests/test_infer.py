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
from dreamr_jax.spec import SpecSetupError
from dreamr_jax.spec import roles as roles_lib

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*overrides):
    raw = config_lib.load_config(str(ROOT / "configs/demo.py:smoke"), overrides)
    return config_lib.to_dataclass(infer.InferConfig, {k: raw[k] for k in infer.SECTIONS})


def test_run_writes_generation_and_reuses_models(tmp_path):
    lines = []
    result = infer.run(_cfg(), tmp_path, printer=lines.append)
    saved = json.loads((tmp_path / "generation.json").read_text())
    assert saved == result
    assert len(result["steps"]) == len(lines) == result["metrics"]["steps"] <= 3
    for step, line in zip(result["steps"], lines, strict=True):
        assert line.startswith("[draft ok p=" if step["source"] == "draft" else "[target")
        assert 1 <= step["tokens"] <= 8
    assert result["answer"] == "".join(s["text"] for s in result["steps"])
    stamps = {
        r: (tmp_path / r / "model.safetensors").stat().st_mtime_ns for r in ("target", "draft")
    }
    again = infer.run(_cfg(), tmp_path)
    for role, stamp in stamps.items():
        assert (tmp_path / role / "model.safetensors").stat().st_mtime_ns == stamp, role
    assert again["answer"] == result["answer"], "greedy decoding must be deterministic"


def test_engines_agree_at_alpha_extremes(tmp_path):
    target = infer.run(_cfg("spec.engine=target_only"), tmp_path)
    draft = infer.run(_cfg("spec.engine=draft_only"), tmp_path)
    assert infer.run(_cfg("verifier.alpha=1.0"), tmp_path)["answer"] == target["answer"]
    assert infer.run(_cfg("verifier.alpha=0.0"), tmp_path)["answer"] == draft["answer"]


def test_separate_device_sets_match_shared(tmp_path):
    shared = infer.run(_cfg(), tmp_path / "a")
    split = infer.run(
        _cfg(
            "target_mesh.fsdp=2",
            "target_mesh.tensor=2",
            "draft_mesh.data=2",
            "draft_mesh.first_device=4",
        ),
        tmp_path / "b",
    )
    assert split["answer"] == shared["answer"]


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        infer.run(_cfg(f"target.checkpoint={tmp_path / 'nope'}"), tmp_path)


def test_bad_mesh_is_named(tmp_path):
    with pytest.raises(ShardingError, match=r"target mesh \(16, 1, 1\).* only 8 exist"):
        infer.run(_cfg("target_mesh.data=16"), tmp_path)
    with pytest.raises(
        ShardingError, match=r"draft mesh \(2, 1, 1\) from device 7.*draft_mesh.first_device"
    ):
        infer.run(_cfg("draft_mesh.first_device=7", "draft_mesh.data=2"), tmp_path)


def test_bad_values_are_named():
    with pytest.raises(config_lib.ConfigError, match=r"config\.target\.dtype='float8'"):
        _cfg("target.dtype=float8")
    with pytest.raises(config_lib.ConfigError, match=r"config\.verifier\.alpha=1\.5"):
        _cfg("verifier.alpha=1.5")
    with pytest.raises(config_lib.ConfigError, match=r"config\.spec\.window=0"):
        _cfg("spec.window=0")


def test_different_tokenizers_are_refused_before_model_work(tmp_path, monkeypatch):
    infer.run(_cfg(), tmp_path)  # writes both built-in models
    tok_file = tmp_path / "draft" / "tokenizer.json"
    tok = json.loads(tok_file.read_text())
    tok["added_tokens"][0]["content"] = "<|something_else|>"
    tok_file.write_text(json.dumps(tok))
    monkeypatch.setattr(roles_lib.hf, "load_pretrained", _no_load)
    with pytest.raises(SpecSetupError, match="tokenizer"):
        infer.run(_cfg(), tmp_path)


def _no_load(*args, **kwargs):
    raise AssertionError("weights were loaded before the inputs were checked")


def test_cli(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamr_jax.infer",
            "--config=configs/demo.py:smoke",
            f"--workdir={tmp_path}",
            "--question=What colour is the top square?",
            "--config.spec.max_steps=2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "question: What colour is the top square?" in proc.stdout
    assert proc.stdout.count("\n[") + proc.stdout.startswith("[") == 2  # one line per step
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert resolved["spec"]["max_steps"] == 2
    assert resolved["prompt"]["question"] == "What colour is the top square?"
    assert len(json.loads((tmp_path / "generation.json").read_text())["steps"]) == 2


def test_interrupted_builtin_model_is_rewritten(tmp_path):
    first = infer.run(_cfg(), tmp_path)
    (tmp_path / "target" / "config.json").unlink()  # as if killed before the last write
    (tmp_path / "target" / "model.safetensors").write_bytes(b"\0" * 10)
    again = infer.run(_cfg(), tmp_path)
    assert again["answer"] == first["answer"]


def test_bad_image_is_named_before_model_work(tmp_path, monkeypatch):
    infer.run(_cfg(), tmp_path)  # writes the built-in models once
    monkeypatch.setattr(roles_lib.hf, "load_pretrained", _no_load)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        infer.run(_cfg(f"prompt.image={tmp_path / 'missing.png'}"), tmp_path)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        infer.run(_cfg(f"prompt.image={corrupt}"), tmp_path)


def test_question_longer_than_cache_is_refused_before_model_work(tmp_path, monkeypatch):
    infer.run(_cfg(), tmp_path)
    monkeypatch.setattr(roles_lib.hf, "load_pretrained", _no_load)
    from dreamr_jax.inference.generate import CacheTooShort

    with pytest.raises(CacheTooShort, match="cache_length"):
        infer.run(_cfg("spec.cache_length=256", "prompt.question=" + "why " * 100), tmp_path)
