"""Smoke test of bench/train.py: a tiny ``--quick`` run ends with one JSON object holding the
SAPO step's time split and token rates, MFU, the packed-vs-per-step scoring speedup, the
target's SFT step with and without `CPU_COMPILER_OPTIONS` and the 1- and 8-device step times.
No timing assertions (timings belong in bench/)."""

from __future__ import annotations

from fixtures import run_bench

TINY_CONFIG = [
    *("data.validation_size=4 data.test_size=4 data.tokenizer_examples=100".split()),
    *("sft_target.batch_size=4 sft_draft.batch_size=4".split()),
    *("target_model.hidden_size=32 target_model.num_layers=1 draft_model.hidden_size=32".split()),
    *("target_model.vision_depth=1 draft_model.vision_depth=1".split()),
    *("sapo.prompts_per_step=2 sapo.rollout.group_size=2 sapo.rollout.max_new_tokens=16".split()),
]
TINY = "--train_size 16 --matmul 256 --per_step_rollouts 1 --steps 1 --warmup 1".split()


def test_quick_run_prints_all_numbers_as_json(tmp_path):
    out, _ = run_bench(
        "train.py",
        "--quick",
        *TINY,
        "--workdir",
        str(tmp_path / "work"),
        "--override",
        *TINY_CONFIG,
        timeout=900,
    )
    assert {"settings", "sapo", "packed_vs_per_step", "xla_options", "devices"} <= set(out)
    assert out["settings"]["train_size"] == 16
    sapo = out["sapo"]
    parts = {"prompts", "rollout", "scoring", "grade_rewards", "batch_logprobs", "update"}
    assert set(sapo["seconds"]) == set(sapo["fraction"]) == parts
    assert abs(sum(sapo["fraction"].values()) - 1) < 1e-2
    for key in ("rollout_tokens_per_s", "scoring_tokens_per_s", "train_tokens_per_s", "mfu"):
        assert sapo[key] > 0, key
    assert sapo["rows"] == 4 and sapo["matmul_peak_flops_per_s"] > 0
    assert sapo["target_params"] > sapo["draft_params"] > 0
    packed = out["packed_vs_per_step"]
    assert packed["rollouts"] == 1 and packed["speedup"] > 0
    xo = out["xla_options"]
    assert set(xo["step_s"]) == {"ours", "xla"} and xo["speedup"] > 0
    assert all(len(v) == out["settings"]["option_rounds"] for v in xo["step_s"].values())
    assert set(out["devices"]) == {"1", "8"}
    assert out["devices"]["1"]["devices"] == 1 and out["devices"]["8"]["devices"] == 8
    for r in out["devices"].values():
        assert r["sft_target_step_ms"] > 0 and r["sapo_update_step_ms"] > 0
