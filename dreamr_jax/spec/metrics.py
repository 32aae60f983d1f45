"""Per-request and aggregate metrics of the speculative engines.

Counts are exact (integers from the run); times are wall-clock seconds on the host. Step
acceptance is over *judged* draft steps: those the engine's decision rule looked at (every
step up to and including the first rejection of each window), which is the same set for
``specreason``, ``lookahead`` and ``fpsr``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass
class RequestMetrics:
    """What one request cost and how the verifier behaved.

    Attributes:
      engine: engine name; window: K.
      steps: steps in the final chain.
      judged / accepted: draft steps judged by the verifier / accepted.
      judged_by_pos / accepted_by_pos: the same per 1-based window position (index k-1).
      fallbacks: target steps written because a draft step was rejected.
      bonus_steps: target steps appended after a fully accepted window.
      verify_calls: packed verification passes of the target.
      target_passes: target forward passes (prefill, verification, one per decoded token
        step; a batched multi-row decode step counts once).
      target_tokens / draft_tokens: tokens each model generated, wasted work included.
      overlap_hits: fpsr windows whose speculatively drafted successor was used.
      output_tokens: tokens in the final chain.
      wall_s: wall-clock time of the request.
      correct: graded answer (set by the evaluator), None if not graded.
    """

    engine: str
    window: int
    steps: int = 0
    judged: int = 0
    accepted: int = 0
    judged_by_pos: list[int] = dataclasses.field(default_factory=list)
    accepted_by_pos: list[int] = dataclasses.field(default_factory=list)
    fallbacks: int = 0
    bonus_steps: int = 0
    verify_calls: int = 0
    target_passes: int = 0
    target_tokens: int = 0
    draft_tokens: int = 0
    overlap_hits: int = 0
    output_tokens: int = 0
    wall_s: float = 0.0
    correct: bool | None = None

    def __post_init__(self):
        if not self.judged_by_pos:
            self.judged_by_pos = [0] * self.window
            self.accepted_by_pos = [0] * self.window

    def count_decision(self, position: int, accepted: bool) -> None:
        """One verifier decision at 0-based window ``position``."""
        self.judged += 1
        self.judged_by_pos[position] += 1
        if accepted:
            self.accepted += 1
            self.accepted_by_pos[position] += 1

    def count_target_step(self, fallback: bool) -> None:
        if fallback:
            self.fallbacks += 1
        else:
            self.bonus_steps += 1

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.judged if self.judged else None

    @property
    def accepted_per_verify(self) -> float | None:
        return self.accepted / self.verify_calls if self.verify_calls else None

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(
            acceptance_rate=self.acceptance_rate,
            accepted_per_verify=self.accepted_per_verify,
            tokens_per_s=self.tokens_per_s,
        )
        return out


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def aggregate(items: Sequence[RequestMetrics], baseline_wall_s: float | None = None) -> dict:
    """Sums counts over requests of one engine and derives rates.

    Args:
      items: the engine's per-request metrics (same engine and window).
      baseline_wall_s: total wall time of ``target_only`` on the same requests in the same
        run; gives ``speedup``.

    Returns:
      A JSON-ready dict: totals, acceptance rate and by position, accepted steps per
      verification call, accuracy (over graded requests), tokens/s and speedup.
    """
    if not items:
        raise ValueError("no requests to aggregate.")
    first = items[0]
    window = first.window
    total = lambda name: sum(getattr(m, name) for m in items)  # noqa: E731
    judged_pos = [sum(m.judged_by_pos[i] for m in items) for i in range(window)]
    accepted_pos = [sum(m.accepted_by_pos[i] for m in items) for i in range(window)]
    graded = [m.correct for m in items if m.correct is not None]
    wall = total("wall_s")
    out = {
        "engine": first.engine,
        "window": window,
        "requests": len(items),
        "accuracy": _ratio(sum(graded), len(graded)),
        "acceptance_rate": _ratio(total("accepted"), total("judged")),
        "acceptance_by_position": [
            _ratio(a, j) for a, j in zip(accepted_pos, judged_pos, strict=True)
        ],
        "accepted_per_verify": _ratio(total("accepted"), total("verify_calls")),
        "wall_s": wall,
        "tokens_per_s": _ratio(total("output_tokens"), wall),
        "speedup": _ratio(baseline_wall_s, wall) if baseline_wall_s else None,
    }
    for name in (
        "steps",
        "judged",
        "accepted",
        "fallbacks",
        "bonus_steps",
        "verify_calls",
        "target_passes",
        "target_tokens",
        "draft_tokens",
        "overlap_hits",
        "output_tokens",
    ):
        out[name] = total(name)
    return out
