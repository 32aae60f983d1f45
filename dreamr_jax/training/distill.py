"""The draft's warm start on target-written chains (``sft_draft.chains.source = "target"``).

DESIGN.md's ``sft_draft`` stage warm-starts the draft "on target-written chains": the
target answers training questions, its chains are cut into steps with the engines'
segmentation, and the draft is fine-tuned on them, so it starts out writing steps the way
the target would (what the verifier then accepts). With ``source = "reference"`` the draft
trains on the dataset's own reference chains instead (the synthetic set has them; imported
training sets do not, so there the target's chains are the only SFT data).

`target_chains` writes the chains once (``keep = "correct"``: only those the grader marks
right, rejection sampling; ``"all"``: every chain that has a step) and `ChainRecords` serves
them to the SFT pipeline as records of the synthetic set's shape.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from dreamr_jax.config import require
from dreamr_jax.data import grading, questions
from dreamr_jax.data.steps import StepConfig, split_steps
from dreamr_jax.inference.generate import generate
from dreamr_jax.inference.sampling import SamplingConfig
from dreamr_jax.processing.image import ImageProcessorConfig
from dreamr_jax.training.sapo import make_prompts
from dreamr_jax.training.sft import SFTConfig

SOURCES = ("reference", "target")
KEEP = ("correct", "all")


@dataclasses.dataclass(frozen=True)
class ChainsConfig:
    """Which chains ``sft_draft`` trains on.

    Attributes:
      source: "reference" (the dataset's reference chains) or "target" (chains the target
        writes for the first ``records`` training questions).
      records: training questions the target answers.
      keep: "correct" keeps the chains whose final answer the grader marks right; "all"
        keeps every chain with at least one step.
      temperature: the target's sampling temperature (0: greedy).
      max_new_tokens: cap on a chain's tokens.
      batch_size: questions per generation call.
      seed: sampling seed.
    """

    source: str = "reference"
    records: int = 1000
    keep: str = "correct"
    temperature: float = 0.0
    max_new_tokens: int = 256
    batch_size: int = 32
    seed: int = 0

    def validate(self) -> ChainsConfig:
        require(self.source in SOURCES, "source", self.source, f"must be one of {SOURCES}")
        require(self.keep in KEEP, "keep", self.keep, f"must be one of {KEEP}")
        require(self.records >= 1, "records", self.records, "must be >= 1")
        require(self.temperature >= 0.0, "temperature", self.temperature, "must be >= 0")
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        return self


@dataclasses.dataclass(frozen=True)
class DraftSFTConfig(SFTConfig):
    """The ``sft_draft`` stage: `SFTConfig` plus the chains it trains on."""

    chains: ChainsConfig = ChainsConfig()

    def validate(self) -> DraftSFTConfig:
        super().validate()
        self.chains.validate()
        require(
            self.chains.source == "reference" or self.chains.max_new_tokens < self.seq_len,
            "chains.max_new_tokens",
            self.chains.max_new_tokens,
            f"must leave room for the prompt in seq_len={self.seq_len} (a row is prompt + "
            "chain): lower it or raise seq_len",
        )
        return self


@dataclasses.dataclass(frozen=True)
class Chain:
    """The target's chain for training record ``record``, cut into ``steps``."""

    record: int
    steps: tuple[str, ...]
    correct: bool


def target_chains(
    target,
    records: Sequence,
    tokenizer,
    image_cfg: ImageProcessorConfig,
    cfg: ChainsConfig,
    *,
    delimiter: str,
    eos_ids: Sequence[int],
    pad_id: int = 0,
) -> list[Chain]:
    """The target's chain for every record (greedy or sampled, `cfg`), graded against the
    record's answer; chains without a step are dropped, and with ``keep="correct"`` the
    wrong ones too.

    Args:
      target: the target model.
      records: training records (synthetic or imported; see `questions.from_example`).
      tokenizer, image_cfg: the target's tokenizer and image settings.
      delimiter: the step delimiter the engines cut steps at.
      eos_ids, pad_id: tokens that end a chain, and padding.

    Raises:
      ValueError: a record's gold answer the grader cannot read (before any generation).
    """
    cfg.validate()
    qs = [questions.from_example(r) for r in records]
    for q in qs:  # grading follows the generation: refuse unreadable golds first
        grading.check_gold(q)
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        stop_token_ids=tuple(eos_ids),
        pad_id=pad_id,
        suppress_token_ids=target.cfg.vision_token_ids,
    )
    steps_cfg = StepConfig(delimiter=delimiter)
    rng = jax.random.key(cfg.seed)
    out = []
    for start in range(0, len(records), cfg.batch_size):
        # One batch's prompts at a time: at real scale every image's patches at once
        # would not fit in host memory.
        prompts, batch_qs = make_prompts(qs[start : start + cfg.batch_size], tokenizer, image_cfg)
        batch = prompts.batch(target.cfg, pad_id=pad_id)
        gen = generate(target, batch, sampling, rng=jax.random.fold_in(rng, start))
        tokens, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
        for r, q in enumerate(batch_qs):
            text = tokenizer.decode(tokens[r, : lengths[r]], skip_special_tokens=True)
            steps = tuple(s.strip() for s in split_steps(text, steps_cfg) if s.strip())
            if not steps:
                continue
            i = start + r
            right = grading.grade(text, q.gold, answer_type=q.answer_type, choices=q.choices)
            if right or cfg.keep == "all":
                out.append(Chain(i, steps, bool(right)))
    return out


def save_chains(path: Path, chains: Sequence[Chain], asked: int) -> None:
    """Writes the chains and a summary atomically (``asked``: questions answered)."""
    summary = {"asked": asked, "kept": len(chains), "correct": sum(c.correct for c in chains)}
    rows = [dataclasses.asdict(c) for c in chains]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"summary": summary, "chains": rows}))
    os.replace(tmp, path)


def load_chains(path: Path) -> list[Chain]:
    rows = json.loads(path.read_text())["chains"]
    return [Chain(r["record"], tuple(r["steps"]), r["correct"]) for r in rows]


class ChainRecords(Sequence):
    """Records of ``source`` with the target's chains as their steps, in the synthetic
    set's record shape (what the SFT pipeline reads): item ``j`` is chain ``j``'s record."""

    def __init__(self, source: Sequence, chains: Sequence[Chain]):
        if not chains:
            raise ValueError(
                "the target wrote no usable chain (none had a step, or none was graded "
                "right with sft_draft.chains.keep='correct'): check the target, raise "
                "sft_draft.chains.records or max_new_tokens, or set keep='all'."
            )
        self.source, self.chains = source, list(chains)

    def __len__(self) -> int:
        return len(self.chains)

    def __getitem__(self, j: int) -> dict:
        if not 0 <= j < len(self):
            raise IndexError(f"index {j} of {len(self)} chains")
        chain = self.chains[j]
        q = questions.from_example(self.source[chain.record])
        image = q.image if isinstance(q.image, np.ndarray) else np.asarray(q.image.convert("RGB"))
        return {
            "id": q.id,
            "question": q.question,
            "answer": q.gold,
            "answer_type": q.answer_type,
            "family": "target_chain",
            "choices": list(q.choices),
            "steps": list(chain.steps),
            "image": image,
            "difficulty": 0,
        }
