"""Group-normalised advantages (GRPO/SAPO): each rollout scored against its own group.

SAPO samples ``G`` rollouts per prompt and scores each with the reward ``R``
(`dreamr_jax.rl.rewards`). A rollout's advantage is its reward standardised within its
group, ``A_i = (R_i - mean(R)) / (std(R) + eps)``, so no value network is needed and the
scale of ``R`` (and of the weights w1..w3) does not change the step size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_advantages(rewards_bg: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Standardises rewards within each group of ``G`` rollouts of one prompt.

    Uses the population standard deviation (ddof 0), as GRPO does. A group whose rewards
    are all equal (including ``G = 1``) carries no learning signal and gets advantage 0.
    Flatten the result row-major (``reshape(-1)``) to get the per-rollout ``[b]``
    advantages that `sapo_loss` takes, with rollouts of one prompt kept adjacent.

    Args:
      rewards_bg: ``[prompts, G]`` rewards ``R``, one row per prompt.
      eps: added to the standard deviation so equal-reward groups divide by ``eps``, not 0.

    Returns:
      ``[prompts, G]`` float32 advantages ``A``.

    Raises:
      ValueError: when ``rewards_bg`` is not rank 2 or ``eps`` is not positive.
    """
    rewards_bg = jnp.asarray(rewards_bg)
    if rewards_bg.ndim != 2:
        raise ValueError(
            f"rewards must be [prompts, G] (rank 2: one row of G rollouts per prompt), got "
            f"shape {rewards_bg.shape}; reshape flat rewards with .reshape(prompts, G)."
        )
    if not eps > 0:
        raise ValueError(f"eps={eps} must be > 0.")
    r = rewards_bg.astype(jnp.float32)
    mean = jnp.mean(r, axis=-1, keepdims=True)
    std = jnp.std(r, axis=-1, keepdims=True)
    return (r - mean) / (std + eps)
