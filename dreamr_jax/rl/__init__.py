"""SAPO's pure-function core: advantages, rewards and the clipped-ratio KL loss."""

from dreamr_jax.rl.advantages import group_advantages
from dreamr_jax.rl.losses import (
    BATCH_AXES,
    MAX_LOG_RATIO,
    finalize_metrics,
    global_mean,
    merge_metrics,
    reduce_metrics,
    sapo_loss,
    sharded_sapo_loss,
    token_entropy,
    token_logprobs,
)
from dreamr_jax.rl.rewards import RewardConfig, accepted_fraction, length_penalty, rewards

__all__ = [
    "BATCH_AXES",
    "MAX_LOG_RATIO",
    "RewardConfig",
    "accepted_fraction",
    "finalize_metrics",
    "global_mean",
    "group_advantages",
    "length_penalty",
    "merge_metrics",
    "reduce_metrics",
    "rewards",
    "sapo_loss",
    "sharded_sapo_loss",
    "token_entropy",
    "token_logprobs",
]
