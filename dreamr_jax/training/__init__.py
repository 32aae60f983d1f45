"""Training infrastructure shared by the stages: checkpoints and fault tolerance."""

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

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "Checkpointer",
    "NonFiniteLoss",
    "PreemptionGuard",
    "WorkdirError",
    "check_finite",
    "check_workdir",
]
