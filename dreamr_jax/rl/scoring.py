"""Target scoring of rollouts: every step of every rollout verified by the frozen target.

One packed forward pass per rollout, batched over rollouts: the prompt is prefilled, then
`spec.core.verify_window` runs the chunk ``d_1 .. d_K  V_1 .. V_K`` where each
verification question ``V_k`` attends to the prompt and ``d_<=k`` only (in-chunk mask,
explicit positions). That is the same function the inference engines verify with, so SAPO
optimises exactly the acceptance the engines will see.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from dreamr_jax.inference.generate import bucket, prefill
from dreamr_jax.models.text import KVCache
from dreamr_jax.rl.rollout import Rollouts
from dreamr_jax.spec import core
from dreamr_jax.spec.verify import VerdictTokens, VerifierConfig


def score_rollouts(
    graphdef,
    state,
    model_cfg,
    rollouts: Rollouts,
    verdict: VerdictTokens,
    verifier: VerifierConfig,
    *,
    pad_id: int = 0,
    dtype=jnp.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """CPN scores of the first K steps of every rollout.

    Args:
      graphdef, state: the target, split.
      model_cfg: the target's `ModelConfig`.
      rollouts: from `sample_rollouts` (steps packed ``[rows, K, S]``).
      verdict, verifier: the tokenised verifier and its threshold α.

    Returns:
      ``(p [rows, K], accepted [rows, K])``; positions without a step are not accepted.
    """
    batch = rollouts.prompts.batch(model_cfg, pad_id=pad_id)
    rows, k, s = rollouts.step_tokens.shape
    length = bucket(batch.shape[1] + k * (s + len(verdict.suffix)), step=256)
    cache = KVCache.init(model_cfg.text, rows, length, dtype)
    _, cache = prefill(graphdef, state, batch, cache)
    p, ok, _, _ = core.verify_window(
        graphdef,
        state,
        cache,
        jnp.asarray(rollouts.step_tokens),
        jnp.asarray(rollouts.step_lengths),
        verdict=verdict,
        verifier=verifier,
    )
    return np.asarray(p), np.asarray(ok)
