"""Step-level speculative reasoning: the CPN verifier, the shared core and the engines."""

from dreamr_jax.spec.engine import (
    ENGINES,
    Decision,
    Request,
    Result,
    Role,
    SpecConfig,
    SpecEngine,
    SpecSetupError,
    Step,
)
from dreamr_jax.spec.metrics import RequestMetrics, aggregate
from dreamr_jax.spec.verify import VerifierConfig, cpn_probability

__all__ = [
    "ENGINES",
    "Decision",
    "Request",
    "RequestMetrics",
    "Result",
    "Role",
    "SpecConfig",
    "SpecEngine",
    "SpecSetupError",
    "Step",
    "VerifierConfig",
    "aggregate",
    "cpn_probability",
]
