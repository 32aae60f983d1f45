"""The optimizer every training stage uses: AdamW, warmup + cosine decay, global-norm clip.

``make_optimizer(cfg)`` is ``clip_by_global_norm -> AdamW`` with the learning rate of
`make_schedule`:

    lr(s) = peak * s / warmup                                  for s < warmup
    lr(s) = floor + (peak - floor) * (1 + cos(π * q)) / 2      q = (s - warmup) / (total - warmup)
    lr(s) = floor                                              for s >= total
    floor = peak * min_lr_ratio

``s`` counts optimizer updates from 0, so the first update of a run with warmup uses lr 0
(as big_vision's linear warmup does). Weight decay applies only to weight matrices
(`decay_mask`): kernels and embeddings of rank >= 2, never norm scales or biases.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

# Parameter names (last path component) that weight decay applies to, if rank >= 2.
DECAYED_NAMES = ("kernel", "embedding")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, cosine decay and global-norm gradient clipping.

    Attributes:
      learning_rate: peak learning rate η, reached at the end of warmup (the paper's SAPO
        runs use 1e-6).
      warmup_steps: updates of linear warmup from 0 to ``learning_rate``; 0 starts at the
        peak.
      total_steps: update at which the cosine decay reaches its floor; later updates stay
        at the floor. Must exceed ``warmup_steps``.
      min_lr_ratio: the cosine floor as a fraction of ``learning_rate``, in [0, 1].
      weight_decay: decoupled (AdamW) weight decay λ on weight matrices only (`decay_mask`).
      b1: Adam's first-moment decay β1, in [0, 1).
      b2: Adam's second-moment decay β2, in [0, 1).
      eps: Adam's ε added to the root of the second moment; > 0.
      grad_clip_norm: clip the gradient to this global L2 norm before Adam; None disables
        clipping.
    """

    learning_rate: float = 1e-5
    warmup_steps: int = 100
    total_steps: int = 10_000
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip_norm: float | None = 1.0

    def validate(self) -> OptimConfig:
        """Returns self; raises ValueError naming the bad field."""
        for name in ("learning_rate", "eps"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ValueError(f"{name}={value!r} must be a number > 0.")
        for name in ("warmup_steps", "total_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} must be an int >= 0.")
        if self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"total_steps={self.total_steps} must be greater than "
                f"warmup_steps={self.warmup_steps} (the cosine decay needs at least one step)."
            )
        if not _is_number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1].")
        if not _is_number(self.weight_decay) or not self.weight_decay >= 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0.")
        for name in ("b1", "b2"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise ValueError(f"{name}={value!r} must be in [0, 1).")
        clip = self.grad_clip_norm
        if clip is not None and (not _is_number(clip) or not clip > 0):
            raise ValueError(f"grad_clip_norm={clip!r} must be None (no clipping) or > 0.")
        return self


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """The learning rate as a jittable function of the update count (module docstring)."""
    cfg.validate()
    peak = float(cfg.learning_rate)
    floor = peak * float(cfg.min_lr_ratio)
    warmup, decay = cfg.warmup_steps, cfg.total_steps - cfg.warmup_steps

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = peak * s / max(warmup, 1)
        q = jnp.clip((s - warmup) / decay, 0.0, 1.0)
        cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * q))
        return jnp.where(s < warmup, warm, cosine)

    return schedule


def learning_rate_at(cfg: OptimConfig, step: int) -> float:
    """The learning rate `make_optimizer(cfg)` uses for update number ``step`` (from 0)."""
    return float(make_schedule(cfg)(step))


def _leaf_name(path) -> str:
    """The last named component of a pytree path (``kernel`` for ``...q_proj.kernel``)."""
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    names = [n for n in names if isinstance(n, str) and n != "value"]
    return names[-1] if names else ""


def decay_mask(params):
    """True for the parameters weight decay applies to: rank >= 2 kernels and embeddings.

    Norm scales and biases (including the rank-3 ``qkv.bias`` of the vision blocks) are
    excluded: decaying them pulls scales towards 0 and only regularises offsets.

    Args:
      params: a pytree of arrays, e.g. the `nnx.State` of a model's `nnx.Param`s.

    Returns:
      A pytree of bools with the structure of ``params``.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _leaf_name(path) in DECAYED_NAMES and jnp.ndim(x) >= 2, params
    )


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm(cfg.grad_clip_norm) -> adamw(make_schedule(cfg), ...)``.

    Raises:
      ValueError: when ``cfg`` does not validate.
    """
    cfg.validate()
    adamw = optax.adamw(
        learning_rate=make_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    if cfg.grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)
