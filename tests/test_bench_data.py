"""Smoke test of bench/data.py: a tiny ``--quick`` run ends with one JSON object holding the
pipeline rates, the stage profile, both models' step rates and the goal. No timing
assertions (timings belong in bench/)."""

from __future__ import annotations

from fixtures import run_bench

TINY_CONFIG = [
    *("data.validation_size=4 data.test_size=4 data.tokenizer_examples=100".split()),
    *("sft_target.batch_size=4 sft_draft.batch_size=4".split()),
    *("target_model.hidden_size=32 target_model.num_layers=1 draft_model.hidden_size=32".split()),
    *("target_model.vision_depth=1 draft_model.vision_depth=1".split()),
]
TINY = [
    *("--train_size 32 --batches 2 --steps 1 --warmup 1 --profile_examples 4".split()),
    *("--workers 0 --read_options 1/2".split()),
]


def test_quick_run_prints_all_numbers_as_json(tmp_path):
    out, stdout = run_bench(
        "data.py",
        "--quick",
        *TINY,
        "--workdir",
        str(tmp_path / "work"),
        "--override",
        *TINY_CONFIG,
        timeout=600,
    )
    assert {"settings", "pipeline", "profile_ms_per_example", "models", "goal"} <= set(out)
    assert out["settings"]["train_size"] == 32
    demo, diagnostic = "worker_count=0", "worker_count=0, ReadOptions(1, 2)"
    assert set(out["pipeline"]) == {demo, diagnostic}
    for rates in out["pipeline"].values():
        assert rates["examples"] == 2 * 4 and rates["examples_per_s"] > 0
    assert out["profile_ms_per_example"]["total"] > 0
    for role in ("target", "draft"):
        model = out["models"][role]
        assert model["batch_size"] == 4 and model["examples_per_s"] > 0, role
        assert set(model["live"]) == {demo, diagnostic}, role
        assert len(model["rounds"]) == 2 and model["ratio_adjacent"] > 0, role
        assert out["goal"][role]["ratio_demo"] > 0, role
    assert out["models"]["target"]["params"] > out["models"]["draft"]["params"]
    assert isinstance(out["goal"]["met"], bool)
    assert ("NOT MET" in stdout) != out["goal"]["met"]
