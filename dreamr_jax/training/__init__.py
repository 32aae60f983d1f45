"""Training infrastructure shared by the stages: checkpoints and fault tolerance, the
optimizer, the objectives and the jitted train step."""

from dreamr_jax.training.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    CheckpointError,
    NonFiniteLoss,
    PreemptionGuard,
    WorkdirError,
    check_finite,
    check_workdir,
)
from dreamr_jax.training.objectives import (
    forward_logits,
    prepare_batch,
    sapo_objective,
    sft_objective,
)
from dreamr_jax.training.optim import (
    OptimConfig,
    decay_mask,
    learning_rate_at,
    make_optimizer,
    make_schedule,
)
from dreamr_jax.training.step import (
    TrainState,
    check_batch,
    compute_gradients,
    init_train_state,
    make_train_step,
)

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "Checkpointer",
    "NonFiniteLoss",
    "OptimConfig",
    "PreemptionGuard",
    "TrainState",
    "WorkdirError",
    "check_batch",
    "check_finite",
    "check_workdir",
    "compute_gradients",
    "decay_mask",
    "forward_logits",
    "init_train_state",
    "learning_rate_at",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "prepare_batch",
    "sapo_objective",
    "sft_objective",
]
