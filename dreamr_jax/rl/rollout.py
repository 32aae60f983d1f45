"""SAPO rollouts: G sampled reasoning chains per prompt, cut into steps, ready to score
and to train on.

Shapes are static per config: ``rows = prompts * G``, completions of ``max_new_tokens``
tokens, at most ``max_scored_steps`` (K) steps of ``max_step_tokens`` (S) tokens each.
Sampling is one jitted `generate` (a ``lax.while_loop``); step segmentation is host-side
text-level (`step_boundaries`), the project's single definition of a step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from dreamr_jax.config import require
from dreamr_jax.data.steps import StepConfig, step_boundaries
from dreamr_jax.inference.generate import PromptBatch, bucket, generate, make_batch
from dreamr_jax.inference.sampling import SamplingConfig
from dreamr_jax.models.positions import rope_index


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How the draft samples its rollouts.

    Attributes:
      group_size: G, rollouts per prompt (GRPO-standard 8).
      max_new_tokens: completion length cap (static).
      temperature: sampling temperature (1.0: the policy's own distribution).
      top_k: keep the k most likely tokens (0 = all).
      top_p: nucleus mass (1.0 = all).
      max_step_tokens: S, a step is cut after this many tokens.
      delimiter: text that ends a step.
      max_scored_steps: K, steps per rollout the target scores; later steps count as
        not accepted.
    """

    group_size: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_step_tokens: int = 64
    delimiter: str = "\n\n"
    max_scored_steps: int = 16

    def validate(self) -> RolloutConfig:
        require(self.group_size >= 1, "group_size", self.group_size, "must be >= 1 (G)")
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        require(self.temperature >= 0, "temperature", self.temperature, "must be >= 0")
        require(self.max_step_tokens >= 1, "max_step_tokens", self.max_step_tokens, "must be >= 1")
        require(
            self.max_scored_steps >= 1, "max_scored_steps", self.max_scored_steps, "must be >= 1"
        )
        return self

    @property
    def steps(self) -> StepConfig:
        return StepConfig(self.delimiter, self.max_step_tokens)


def chain_token_ids(tokenizer) -> tuple[tuple[int, ...], int]:
    """``(eos_ids, pad_id)`` of a chat model's rollouts: a chain ends at end-of-turn or the
    tokenizer's end-of-sequence; padding is its pad token (else 0)."""
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return tuple(dict.fromkeys(i for i in eos if i is not None)), pad


@dataclasses.dataclass
class Prompts:
    """Tokenised prompts with their images (host side), one image list per prompt."""

    ids: list[list[int]]
    pixel_values: list[np.ndarray]  # per prompt: [patches, patch_dim]
    image_grid_thw: list[np.ndarray]  # per prompt: [images, 3]

    def repeat(self, g: int) -> Prompts:
        """Each prompt ``g`` times in a row (a group of G rollouts shares its prompt)."""
        rep = lambda xs: [x for x in xs for _ in range(g)]  # noqa: E731
        return Prompts(rep(self.ids), rep(self.pixel_values), rep(self.image_grid_thw))

    def take(self, rows: Sequence[int]) -> Prompts:
        """Prompts ``rows``, in that order (a row may repeat)."""
        pick = lambda xs: [xs[r] for r in rows]  # noqa: E731
        return Prompts(pick(self.ids), pick(self.pixel_values), pick(self.image_grid_thw))

    def batch(self, cfg, *, pad_id: int = 0, num_patches: int | None = None) -> PromptBatch:
        return make_batch(
            cfg,
            self.ids,
            pixel_values=np.concatenate(self.pixel_values),
            image_grid_thw=np.concatenate(self.image_grid_thw),
            pad_id=pad_id,
            num_patches=num_patches,
        )


@dataclasses.dataclass
class Rollouts:
    """Sampled chains for ``rows = prompts * G`` (group-major: rows ``g*G .. g*G+G-1``
    share prompt ``g``).

    Attributes:
      prompts: the repeated prompts.
      tokens: ``[rows, n]`` completions (pad after each length).
      lengths: ``[rows]`` completion lengths (end-of-sequence included).
      step_tokens: ``[rows, K, S]`` the first K steps, each left-aligned in S slots.
      step_lengths: ``[rows, K]`` their lengths (0 = no such step).
      num_steps: ``[rows]`` steps in the whole completion (may exceed K).
    """

    prompts: Prompts
    tokens: np.ndarray
    lengths: np.ndarray
    step_tokens: np.ndarray
    step_lengths: np.ndarray
    num_steps: np.ndarray


def pack_steps(
    completions: Sequence[Sequence[int]], tokenizer, cfg: RolloutConfig, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cuts each completion into steps and packs the first K into ``[rows, K, S]``.

    Returns:
      ``(step_tokens [rows, K, S], step_lengths [rows, K], num_steps [rows])``.
    """
    k, s = cfg.max_scored_steps, cfg.max_step_tokens
    tokens = np.full((len(completions), k, s), pad_id, np.int32)
    lengths = np.zeros((len(completions), k), np.int32)
    counts = np.zeros((len(completions),), np.int32)
    for row, ids in enumerate(completions):
        spans = step_boundaries(list(ids), tokenizer, cfg.steps)
        counts[row] = len(spans)
        for j, (a, b) in enumerate(spans[:k]):
            tokens[row, j, : b - a] = ids[a:b]
            lengths[row, j] = b - a
    return tokens, lengths, counts


def sample_rollouts(
    model,
    prompts: Prompts,
    cfg: RolloutConfig,
    tokenizer,
    rng: jax.Array,
    *,
    eos_ids: Sequence[int],
    pad_id: int = 0,
) -> Rollouts:
    """Samples G chains per prompt with the draft and cuts them into steps.

    Args:
      model: the policy, or its ``nnx.split``.
      prompts: P prompts.
      cfg: rollout settings.
      tokenizer: decodes for step segmentation.
      rng: sampling key.
      eos_ids: tokens that end a chain.
    """
    cfg.validate()
    group = prompts.repeat(cfg.group_size)
    model_cfg = model.cfg if not isinstance(model, tuple) else None
    if model_cfg is None:
        raise TypeError("sample_rollouts needs the model (not its split) to read its config.")
    batch = group.batch(model_cfg, pad_id=pad_id)
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        stop_token_ids=tuple(eos_ids),
        pad_id=pad_id,
        suppress_token_ids=model_cfg.vision_token_ids,
    )
    out = generate(model, batch, sampling, rng=rng)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    completions = [tokens[r, : lengths[r]].tolist() for r in range(len(lengths))]
    steps, step_lengths, counts = pack_steps(completions, tokenizer, cfg, pad_id)
    return Rollouts(group, tokens, lengths, steps, step_lengths, counts)


def training_batch(model_cfg, rollouts: Rollouts, *, pad_id: int = 0) -> dict:
    """Prompt + completion rows for the loss, in `data.pipeline.collate`'s layout (feed it
    to `training.objectives.prepare_batch`): ``[rows, Tp + n]`` with the prompt
    left-padded to a bucket and the completion right-padded to ``n``.

    Returns:
      dict with ``input_ids``, ``attention_mask``, ``positions [3, rows, T]``,
      ``pixel_values`` (every row's image, concatenated), ``image_grid_thw [rows, 3]`` and
      ``mask [rows, T]`` (1 on completion tokens: the tokens SAPO trains; column ``t`` is
      about ``input_ids[:, t]`` as predicted from the tokens before it).
    """
    prompts = rollouts.prompts
    rows, n = rollouts.tokens.shape
    tp = bucket(max(len(p) for p in prompts.ids))
    ids = np.full((rows, tp + n), pad_id, np.int32)
    mask = np.zeros((rows, tp + n), np.int32)
    completion = np.zeros((rows, tp + n), np.int32)
    for r, p in enumerate(prompts.ids):
        ids[r, tp - len(p) : tp] = p
        mask[r, tp - len(p) : tp] = 1
        m = int(rollouts.lengths[r])
        ids[r, tp : tp + m] = rollouts.tokens[r, :m]
        mask[r, tp : tp + m] = 1
        completion[r, tp : tp + m] = 1
    grid = np.concatenate(prompts.image_grid_thw)
    if grid.shape[0] != rows:
        raise ValueError(f"training batches need one image per prompt; got {grid.shape[0]}.")
    positions, _ = rope_index(ids, grid, mask, model_cfg)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "positions": positions.astype(np.int32),
        "pixel_values": np.concatenate(prompts.pixel_values),
        "image_grid_thw": grid.astype(np.int32),
        "mask": completion,
    }
