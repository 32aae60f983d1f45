"""Supervised fine-tuning stages (``sft_target``, ``sft_draft``): next-token cross-entropy
on reasoning chains, through the grain pipeline, the sharded train step and the resumable
loop."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax
from flax import nnx

from dreamr_jax.config import require
from dreamr_jax.data.pipeline import PipelineConfig, make_dataset
from dreamr_jax.processing.image import ImageProcessorConfig
from dreamr_jax.spec.verify import VerifierConfig
from dreamr_jax.training.checkpoint import CheckpointConfig
from dreamr_jax.training.loop import LoopResult, run_loop
from dreamr_jax.training.objectives import prepare_batch, sft_objective
from dreamr_jax.training.optim import OptimConfig, make_optimizer, make_schedule
from dreamr_jax.training.step import init_train_state, make_train_step


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """One supervised stage.

    Attributes:
      steps: updates in the stage.
      batch_size: examples per update (global).
      seq_len: static token length of a row (prompt + chain); longer examples are an error.
      patches_per_row: static image patches of one example (multiple of merge_size**2).
      micro_batches: gradient-accumulation micro-batches per update.
      seed: data-order seed.
      verify_fraction: share of examples that teach the CPN verifier's task (the step
        judged correct or not, `data.verification`); the demo's target needs it, since no
        instruction tuning taught it to answer the verifier's question.
      verify_weight: loss weight of a verification example's verdict token, against 1 per
        chain token (`PipelineConfig.verify_weight`).
      verify_pairs: verification examples come in contrast pairs, one step as written and
        corrupted in adjacent rows (`PipelineConfig.verify_pairs`; needs an even batch).
      cache_records: records the pipeline keeps decoded in host memory after their first
        read (`PipelineConfig.cache_records`; 0: none). Worth it when the training set fits
        in memory and is read for several epochs, as the demo's.
      optim: AdamW + warmup/cosine settings.
      checkpoint: save period and retention.
    """

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 256
    patches_per_row: int = 64
    micro_batches: int = 1
    seed: int = 0
    verify_fraction: float = 0.0
    verify_weight: int = 1
    verify_pairs: bool = False
    cache_records: int = 0
    optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=20, total_steps=200)
    checkpoint: CheckpointConfig = CheckpointConfig(every_steps=50, keep=2)

    def validate(self) -> SFTConfig:
        require(self.steps >= 1, "steps", self.steps, "must be >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.seq_len >= 8, "seq_len", self.seq_len, "must be >= 8")
        require(self.patches_per_row >= 1, "patches_per_row", self.patches_per_row, "must be >= 1")
        require(
            self.batch_size % self.micro_batches == 0,
            "micro_batches",
            self.micro_batches,
            f"must divide batch_size={self.batch_size}",
        )
        require(
            0.0 <= self.verify_fraction <= 1.0,
            "verify_fraction",
            self.verify_fraction,
            "must be in [0, 1]",
        )
        require(self.verify_weight >= 1, "verify_weight", self.verify_weight, "must be >= 1")
        require(
            self.cache_records >= 0, "cache_records", self.cache_records, "must be >= 0 (0: none)"
        )
        require(
            isinstance(self.verify_pairs, bool), "verify_pairs", self.verify_pairs, "must be a bool"
        )
        require(
            not self.verify_pairs or self.batch_size % 2 == 0,
            "verify_pairs",
            self.verify_pairs,
            f"needs an even batch_size, not {self.batch_size}",
        )
        self.optim.validate()
        self.checkpoint.validate()
        return self


def pipeline_config(
    cfg: SFTConfig, image_cfg: ImageProcessorConfig, verifier: VerifierConfig
) -> PipelineConfig:
    """The training pipeline of an SFT stage (shuffled, repeating; one image per row)."""
    unit = image_cfg.merge_size**2
    return PipelineConfig(
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        num_patches=-(-cfg.batch_size * cfg.patches_per_row // unit) * unit,
        shuffle=True,
        seed=cfg.seed,
        num_epochs=None,
        verify_fraction=cfg.verify_fraction,
        verify_weight=cfg.verify_weight,
        verify_pairs=cfg.verify_pairs,
        verify_question=verifier.question,
        verify_words=(verifier.positive_words[0], verifier.negative_words[0]),
        cache_records=cfg.cache_records,
    )


def run_sft(
    stage_dir: str | os.PathLike,
    model,
    source: Sequence,
    tokenizer,
    image_cfg: ImageProcessorConfig,
    cfg: SFTConfig,
    mesh: jax.sharding.Mesh,
    *,
    config: Mapping | None = None,
    desc: str = "sft",
    verifier: VerifierConfig | None = None,
) -> tuple[object, LoopResult]:
    """Trains ``model`` on ``source``'s reasoning chains; resumes from ``stage_dir``.

    Args:
      stage_dir: the stage's directory (checkpoints, metrics).
      model: the initial model, already sharded on ``mesh`` (ignored when resuming, except
        as the shape of the state). Its arrays are donated to the first step: use the
        returned model.
      source: random-access records in `synthetic.to_record`'s shape (question, image,
        steps).
      tokenizer, image_cfg: the model's tokenizer and image settings.
      cfg: the stage settings.
      mesh: the model's mesh.
      verifier: the engine's verifier (question and verdict words of the verification
        examples, when ``cfg.verify_fraction > 0``).

    Returns:
      ``(trained model, LoopResult)``.
    """
    cfg.validate()
    verifier = verifier or VerifierConfig()
    tx = make_optimizer(cfg.optim)
    graphdef = nnx.graphdef(model)
    state = init_train_state(model, tx)
    pipe = pipeline_config(cfg, image_cfg, verifier)
    iterator = iter(
        make_dataset(
            source,
            pipe,
            tokenizer,
            image_cfg,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
        )
    )
    step_fn = make_train_step(
        graphdef,
        sft_objective,
        tx,
        mesh=mesh,
        learning_rate=make_schedule(cfg.optim),
        micro_batches=cfg.micro_batches,
    )
    model_cfg = model.cfg

    def next_batch(step: int, state):
        del step, state
        return prepare_batch(next(iterator), model_cfg, patches_per_row=cfg.patches_per_row)

    result = run_loop(
        stage_dir,
        state,
        step_fn,
        next_batch,
        steps=cfg.steps,
        checkpoint=cfg.checkpoint,
        iterator=iterator,
        config=config,
        desc=desc,
    )
    return nnx.merge(graphdef, result.state.params), result
