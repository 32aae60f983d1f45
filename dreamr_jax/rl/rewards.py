"""SAPO's reward: R = w1 * R_outcome + w2 * R_draft + w3 * R_length, on per-rollout arrays.

The three terms (DESIGN.md section 2), each on a scale of one so the weights mean what the
paper's ``w1:w2:w3 = 1:1:1`` says:

* ``R_outcome`` in {0, 1}: the extracted final answer is correct (`dreamr_jax.data.grading`).
* ``R_draft`` in [0, 1]: the fraction of the rollout's steps the frozen target accepts with
  the CPN verifier (p > α); see `accepted_fraction`.
* ``R_length`` in [-1, 0]: a length penalty. The paper does not publish its form; ours is
  described in `length_penalty`.

``draft_needs_answer`` (ours, off by default) gives ``R_draft = 0`` to a rollout with no
final answer: the fraction form otherwise pays a draft for writing one step the target
trusts and stopping (measured on the demo: 100 SAPO steps took held-out acceptance from 20%
to 92% and accuracy from 42% to 0% that way).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights of SAPO's three reward terms and the shape of the length penalty.

    Hashable, so it can be a static argument of a jitted function.

    Attributes:
      w_outcome: w1, weight of ``R_outcome`` (correct final answer). Paper default 1.
      w_draft: w2, weight of ``R_draft`` (fraction of steps the target accepts). Paper
        default 1.
      w_length: w3, weight of ``R_length`` (length penalty, in [-1, 0]). Paper default 1.
      length_free: ``L_free``, rollouts of at most this many generated tokens are not
        penalised (``R_length = 0``). Our choice (not published): 2048 tokens covers the
        step-by-step chains of the target benchmarks.
      length_max: ``L_max``, the penalty falls linearly from 0 at ``L_free`` to -1 here and
        stays at -1 beyond. Our choice: the paper's maximum length, 8192, so a rollout cut
        off at the cap gets the full penalty.
      draft_needs_answer: ``R_draft = 0`` for a rollout with no final answer (none that
        `grading.final_answer`, the answer `grade` judges, finds; a guard of ours against
        short unanswered rollouts; see the module doc).
    """

    w_outcome: float = 1.0
    w_draft: float = 1.0
    w_length: float = 1.0
    length_free: int = 2048
    length_max: int = 8192
    draft_needs_answer: bool = False

    def validate(self) -> RewardConfig:
        """Checks the fields; returns ``self`` so calls chain.

        Raises:
          ValueError: naming the field when a weight is negative or not finite, all
            weights are zero, or the length bounds are not ``0 <= L_free < L_max``.
        """
        weights = {
            "w_outcome": self.w_outcome,
            "w_draft": self.w_draft,
            "w_length": self.w_length,
        }
        for name, w in weights.items():
            if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
                raise ValueError(
                    f"{name}={w!r} must be a finite number >= 0 (a negative weight would "
                    f"reward the opposite of what the term measures)."
                )
        if not any(weights.values()):
            raise ValueError(
                "w_outcome, w_draft and w_length are all 0: every rollout would get the same "
                "reward and every advantage would be 0."
            )
        for name in ("length_free", "length_max"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}={v!r} must be an integer number of tokens >= 0.")
        if not isinstance(self.draft_needs_answer, bool):
            raise ValueError(
                f"draft_needs_answer={self.draft_needs_answer!r} must be True or False."
            )
        if self.length_max <= self.length_free:
            raise ValueError(
                f"length_max={self.length_max} must be > length_free={self.length_free}: the "
                f"penalty falls from 0 at length_free to -1 at length_max."
            )
        return self


def length_penalty(lengths_b: jax.Array, cfg: RewardConfig) -> jax.Array:
    """``R_length``: 0 up to ``L_free`` tokens, then linear down to -1 at ``L_max``, clipped.

        R_length = -clip((L - L_free) / (L_max - L_free), 0, 1)

    Why this form (the paper only says the penalty grows with length):

    * bounded in [-1, 0], on the same scale as ``R_outcome`` and ``R_draft``, so the
      paper's equal weights w1:w2:w3 = 1:1:1 balance the terms as intended;
    * free below ``L_free``, so ordinary reasoning chains are not pushed to skip steps: the
      paper's length-heavy ablation shows that over-weighting length collapses acceptance;
    * linear beyond it, so within a group the longer of two long rollouts always scores
      lower and the advantage has a gradient to follow (a step function would not). This
      is DAPO's "soft overlong punishment", generalised to a configurable start.

    Args:
      lengths_b: ``[b]`` generated tokens per rollout (prompt excluded).
      cfg: the reward config.

    Returns:
      ``[b]`` float32 penalties in [-1, 0].
    """
    span = float(cfg.length_max - cfg.length_free)
    over = (jnp.asarray(lengths_b).astype(jnp.float32) - cfg.length_free) / span
    return -jnp.clip(over, 0.0, 1.0)


def accepted_fraction(accepted_b: jax.Array, steps_b: jax.Array) -> jax.Array:
    """``R_draft``: accepted steps / drafted steps per rollout; 0 for a rollout with none.

    Args:
      accepted_b: ``[b]`` number of draft steps the target accepted (CPN p > α).
      steps_b: ``[b]`` number of draft steps verified.

    Returns:
      ``[b]`` float32 fractions in [0, 1].
    """
    steps = jnp.asarray(steps_b).astype(jnp.float32)
    accepted = jnp.asarray(accepted_b).astype(jnp.float32)
    return jnp.where(steps > 0, accepted / jnp.maximum(steps, 1.0), 0.0)


def rewards(
    correct_b: jax.Array,
    accepted_frac_b: jax.Array,
    lengths_b: jax.Array,
    cfg: RewardConfig,
    answered_b: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SAPO's reward ``R = w1 * R_outcome + w2 * R_draft + w3 * R_length`` per rollout.

    Args:
      correct_b: ``[b]`` bool (or 0/1): the rollout's final answer is correct.
      accepted_frac_b: ``[b]`` fraction of its steps the target accepts, in [0, 1]
        (`accepted_fraction`).
      lengths_b: ``[b]`` generated tokens per rollout.
      cfg: the reward config (validated here).
      answered_b: ``[b]`` bool: the rollout has a final answer (`grading.final_answer`
        is not None); needed (only) when
        ``cfg.draft_needs_answer``.

    Returns:
      ``(total_b, terms)``: ``[b]`` float32 rewards ``R`` and the unweighted ``[b]`` terms
      ``{"outcome": R_outcome, "draft": R_draft, "length": R_length}`` for logging.

    Raises:
      ValueError: when the inputs are not rank 1 with the same shape, or the config is
        invalid.
    """
    cfg.validate()
    shapes = {
        "correct_b": jnp.shape(correct_b),
        "accepted_frac_b": jnp.shape(accepted_frac_b),
        "lengths_b": jnp.shape(lengths_b),
    }
    if cfg.draft_needs_answer:
        if answered_b is None:
            raise ValueError("draft_needs_answer=True needs answered_b (has a final answer).")
        shapes["answered_b"] = jnp.shape(answered_b)
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"rewards needs [b] arrays of one shape, got shapes {shapes}.")
    if cfg.draft_needs_answer:
        accepted_frac_b = jnp.where(jnp.asarray(answered_b, bool), accepted_frac_b, 0.0)
    terms = {
        "outcome": jnp.asarray(correct_b).astype(jnp.float32),
        "draft": jnp.asarray(accepted_frac_b).astype(jnp.float32),
        "length": length_penalty(lengths_b, cfg),
    }
    total = (
        cfg.w_outcome * terms["outcome"]
        + cfg.w_draft * terms["draft"]
        + cfg.w_length * terms["length"]
    )
    return total, terms
