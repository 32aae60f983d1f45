"""Smoke test of bench/spec.py: a tiny ``--quick`` run ends with one JSON object holding
every engine's numbers in both modes. No timing assertions (timings belong in bench/)."""

from __future__ import annotations

from fixtures import run_bench

TINY = [
    *("--target-hidden 64 --target-layers 2 --target-heads 4 --target-kv-heads 2".split()),
    *("--target-mlp 128 --draft-hidden 32 --draft-layers 1 --draft-heads 2".split()),
    *("--draft-kv-heads 1 --draft-mlp 64 --step-tokens 6 --steps 5 --requests 2".split()),
    *("--window 3 --rates 0.0,1.0 --reps 1".split()),
]
VARIANTS = ("target_only", "draft_only", "specreason", "lookahead", "fpsr", "fpsr_no_overlap")


def test_quick_run_prints_all_numbers_as_json():
    out, stdout = run_bench("spec.py", "--quick", *TINY)
    assert "controlled acceptance (verifier override)" in stdout
    assert {"settings", "params", "components_ms", "mode_a", "mode_b", "goals"} <= set(out)
    assert set(out["mode_b"]) == set(out["goals"]) == {"0.0", "1.0"}
    for mode in (out["mode_a"], *out["mode_b"].values()):
        assert set(VARIANTS) <= set(mode)
        for variant in VARIANTS:
            entry = mode[variant]
            assert entry["steps"] == 2 * 5 and entry["output_tokens"] == 2 * 5 * 6, variant
            for key in ("wall_s", "speedup", "ideal_speedup", "measured_over_ideal"):
                assert entry[key] > 0, (variant, key)
        assert mode["info"]["steps_shorter_than_cap"] == 0
    # The override decides: r = 0 rejects every draft step, r = 1 accepts every one.
    for variant in ("specreason", "lookahead", "fpsr"):
        assert out["mode_b"]["0.0"][variant]["acceptance_rate"] == 0.0
        assert out["mode_b"]["1.0"][variant]["acceptance_rate"] == 1.0
    assert out["mode_b"]["0.0"]["specreason"]["fallbacks"] == 2 * 5
    assert out["mode_b"]["1.0"]["fpsr"]["fallbacks"] == 0
    assert out["components_ms"]["verify_3"] > 0 and out["components_ms"]["verify_1"] > 0
