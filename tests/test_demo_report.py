"""The demo report's checks: each bar passes or fails on the measured figures."""

from __future__ import annotations

from dreamr_jax.training.demo_report import checks


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
