"""The demo report's checks: each bar passes or fails on the measured figures."""

from __future__ import annotations

from dreamr_jax.training.demo_report import checks, markdown


def _row(engine, alpha=None, *, accuracy=0.9, acceptance=None, speedup=1.0):
    return {
        "engine": engine,
        "alpha": alpha,
        "accuracy": accuracy,
        "acceptance_rate": acceptance,
        "speedup": speedup,
    }


def _summary(acceptance, fpsr_speedup=0.5):
    return {
        "results": [
            _row("target_only", accuracy=0.95),
            _row("draft_only", accuracy=0.3, speedup=3.0),
            _row("specreason", 0.7, accuracy=0.95, acceptance=acceptance, speedup=0.3),
            _row("lookahead", 0.7, accuracy=0.95, acceptance=acceptance, speedup=0.4),
            _row("fpsr", 0.7, accuracy=0.94, acceptance=acceptance, speedup=fpsr_speedup),
        ]
    }


def _effect(before, after, accuracy=(0.4, 0.4)):
    return {
        "before": {"acceptance": before, "accuracy": accuracy[0]},
        "after": {"acceptance": after, "accuracy": accuracy[1]},
    }


def _by_name(out):
    return {c["check"].split(" (")[0]: c["pass"] for c in out}


def test_sapo_gain_below_one_point_is_not_a_gain():
    summaries = {"draft_sft": _summary(0.200), "draft_sapo": _summary(0.205)}
    got = _by_name(checks(summaries, _effect(0.198, 0.199)))
    assert not got["SAPO raises held-out step acceptance"]
    assert not got["SAPO raises fpsr step acceptance"]
    summaries = {"draft_sft": _summary(0.20), "draft_sapo": _summary(0.25)}
    got = _by_name(checks(summaries, _effect(0.20, 0.22)))
    assert got["SAPO raises held-out step acceptance"]
    assert got["SAPO raises fpsr step acceptance"]


def test_sapo_acceptance_gain_bought_with_accuracy_is_flagged():
    # A draft that stops after the first step: acceptance up, answers gone.
    got = _by_name(checks({"draft_sapo": _summary(0.9)}, _effect(0.2, 0.9, (0.42, 0.0))))
    assert got["SAPO raises held-out step acceptance"]
    assert not got["SAPO keeps the draft's held-out accuracy"]
    got = _by_name(checks({"draft_sapo": _summary(0.3)}, _effect(0.2, 0.3, (0.42, 0.41))))
    assert got["SAPO keeps the draft's held-out accuracy"]
    got = _by_name(checks({"draft_sapo": _summary(0.3)}, _effect(0.2, 0.3, (0.42, 0.39))))
    assert not got["SAPO keeps the draft's held-out accuracy"]


def test_accuracy_speedup_and_order_checks():
    got = _by_name(checks({"draft_sapo": _summary(0.5, fpsr_speedup=1.2)}, None))
    assert got["target-only accuracy >= 90%"]
    assert got["draft alone visibly weaker"]
    assert got["fpsr accuracy within 2 points of target-only"]
    assert got["fpsr wall-clock speedup > 1x"]
    assert got["speedup order fpsr > lookahead > specreason"]
    got = _by_name(checks({"draft_sapo": _summary(0.5, fpsr_speedup=0.35)}, None))
    assert not got["fpsr wall-clock speedup > 1x"]
    assert not got["speedup order fpsr > lookahead > specreason"]


def test_report_says_what_a_slow_fpsr_spent():
    summary = _summary(0.4, fpsr_speedup=0.35)
    counts = dict(verify_calls=98, fallbacks=77, target_tokens=850, draft_tokens=2100)
    for r in summary["results"]:
        r.update(counts, accepted_per_verify=0.6, tokens_per_s=100.0)
    summary["results"][0].update(target_tokens=1400)  # target_only
    models = {
        "target": {"params": 2, "layers": 4, "hidden": 128, "s_per_token": 0.0005},
        "draft_sft": {"params": 1, "layers": 1, "hidden": 64, "s_per_token": 0.0001},
    }
    report = {
        "models": models,
        "checks": checks({"draft_sapo": summary}, None, 0.7),
        "evaluations": {"draft_sapo": summary},
        "checked_draft": "draft_sapo",
        "alpha": 0.7,
        "plots": {},
    }
    text = markdown(report)
    assert "Why fpsr is slower here (α=0.7, SAPO draft): it accepted 40.0%" in text
    assert "(0.60 per verification pass)" in text and "ran 98 packed verification" in text
    assert "77 fallback steps (850 target tokens, against target_only's 1400)" in text
    assert "wrote 2100 tokens" in text and "a target token cost 5.0x a draft token" in text
    assert "| fpsr | 0.70 | 94.0% | 40.0% | 0.35x | 100.0 | 98 | 77 | 850 | 2100 |" in text
    report["evaluations"] = {"draft_sapo": _summary(0.9, fpsr_speedup=1.5)}
    for r in report["evaluations"]["draft_sapo"]["results"]:
        r.update(counts, accepted_per_verify=3.0, tokens_per_s=100.0)
    assert "Why fpsr is slower" not in markdown(report)  # only when the check fails
