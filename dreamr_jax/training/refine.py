"""Refining the target's verdicts on the draft's own steps (the ``refine_target`` stage).

Speculation shows the verifier one kind of step: the draft's step ``k`` written after an
accepted prefix. The demo target learns its verdicts in SFT from reference steps and
synthetic corruptions (`data.verification`), which are not the draft's mistakes: measured on
the demo, it passed (p > α = 0.7) 10% of the draft's right steps and 4% of its wrong ones,
so speculation accepted little. This stage (ours; the paper's target is an
instruction-tuned VLM that needs none) lets the SFT draft write step ``k`` after the
reference steps ``1..k-1`` of training records, labels each by whether it equals the
reference (`draft_candidates`), and fine-tunes the target on pairs of the reference step
and the draft's step, labelled right or wrong (`DraftSteps` + `PipelineConfig.verify_pairs`),
with chain rows so it keeps writing chains. In the demo (800 records, 400 steps, 30% of
the pairs synthetic) the refined target passed 68% / 3% of the draft's right / wrong steps
(greedy draft, 64 held-out questions); pairing only the wrong steps with the reference (no
second positives) made it pass none.

A step "differs" by text: with the synthetic chains' fixed phrasing a different step is a
wrong one; data whose steps may be phrased freely would need a grader here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax

from dreamr_jax.config import require
from dreamr_jax.data.steps import StepConfig, split_steps
from dreamr_jax.data.synthetic_tfds import as_record
from dreamr_jax.processing.image import ImageProcessorConfig
from dreamr_jax.rl.rollout import Prompts, RolloutConfig, chain_token_ids, sample_rollouts
from dreamr_jax.spec.verify import VerifierConfig
from dreamr_jax.training.loop import LoopResult
from dreamr_jax.training.sapo import make_prompts
from dreamr_jax.training.sft import SFTConfig, run_sft


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """The ``refine_target`` stage.

    Attributes:
      records: training records the draft writes steps for (the first ones).
      temperature: the draft's sampling temperature (1.0: its own distribution).
      min_step: the first step index (0-based) the draft writes; earlier steps are always
        the reference's.
      seed: the draft's sampling seed.
      synthetic_fraction: share of the rows' records without a draft step, whose pairs
        hold a synthetic corruption instead (keeps the verdicts the SFT taught).
      sft: the fine-tune; ``verify_pairs`` must be on (the contrast pairs are the point)
        and ``verify_fraction`` is the share of rows that are pairs (the rest chains).
    """

    records: int = 1000
    temperature: float = 1.0
    min_step: int = 1
    seed: int = 0
    synthetic_fraction: float = 0.3
    sft: SFTConfig = SFTConfig(steps=400, verify_fraction=0.5, verify_weight=16, verify_pairs=True)

    @property
    def steps(self) -> int:
        """Updates in the stage (``sft.steps``)."""
        return self.sft.steps

    def validate(self) -> RefineConfig:
        require(self.records >= 1, "records", self.records, "must be >= 1")
        require(self.temperature >= 0.0, "temperature", self.temperature, "must be >= 0")
        require(self.min_step >= 0, "min_step", self.min_step, "must be >= 0")
        require(
            0.0 <= self.synthetic_fraction < 1.0,
            "synthetic_fraction",
            self.synthetic_fraction,
            "must be in [0, 1)",
        )
        require(
            self.sft.verify_pairs and self.sft.verify_fraction > 0,
            "sft.verify_pairs",
            self.sft.verify_pairs,
            "must be True with sft.verify_fraction > 0: the stage trains contrast pairs",
        )
        self.sft.validate()
        return self


@dataclasses.dataclass(frozen=True)
class Candidate:
    """The draft's step ``k`` (0-based) of record ``record``, written after the reference
    steps before it; ``right`` when it equals the reference step ``k``."""

    record: int
    k: int
    step: str
    right: bool


def prefix_prompts(
    prompts: Prompts, steps: Sequence[Sequence[str]], ks: Sequence[int], tokenizer, delimiter: str
) -> Prompts:
    """Each prompt followed by the first ``k`` of its reference ``steps``, as generation
    writes them (each ending with the delimiter): where the draft writes step ``k``."""
    ids = []
    for p, ref, k in zip(prompts.ids, steps, ks, strict=True):
        text = "".join(s + delimiter for s in ref[:k])
        ids.append(list(p) + (tokenizer.encode(text, add_special_tokens=False) if text else []))
    return Prompts(ids, prompts.pixel_values, prompts.image_grid_thw)


def draft_candidates(
    draft,
    records: Sequence[Mapping],
    tokenizer,
    image_cfg: ImageProcessorConfig,
    *,
    max_step_tokens: int,
    delimiter: str,
    temperature: float,
    rng: jax.Array,
    eos_ids: Sequence[int],
    pad_id: int = 0,
    min_step: int = 1,
    batch_size: int = 64,
) -> list[Candidate]:
    """The draft's step ``k`` for every record and every ``k >= min_step`` (see module).

    Args:
      draft: the draft model.
      records: synthetic records (`synthetic_tfds.as_record`'s input).
      tokenizer, image_cfg: the draft's tokenizer and image settings.
      max_step_tokens, delimiter: a step's cap and end, as the engines cut steps.
      temperature: sampling temperature (0: greedy).
      rng: sampling key (one per batch is folded in).
      eos_ids, pad_id: end-of-chain tokens and padding.
      min_step: the first step index written.
      batch_size: prompts per generation call.

    Returns:
      One `Candidate` per (record, k) whose step is not empty, in record order.
    """
    refs = [as_record(r)["steps"] for r in records]
    items = [(i, k) for i, steps in enumerate(refs) for k in range(min_step, len(steps))]
    cfg = RolloutConfig(
        group_size=1,
        max_new_tokens=max_step_tokens,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_step_tokens=max_step_tokens,
        delimiter=delimiter,
        max_scored_steps=1,
    )
    steps_cfg = StepConfig(delimiter=delimiter)
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        # The chunk's records only (each image once): all records' patches at once would
        # not fit in host memory at real scale.
        order = sorted({i for i, _ in chunk})
        prompts, _ = make_prompts([records[i] for i in order], tokenizer, image_cfg)
        at = {i: j for j, i in enumerate(order)}
        rows, ks = [at[i] for i, _ in chunk], [k for _, k in chunk]
        batch = prefix_prompts(
            prompts.take(rows), [refs[i] for i, _ in chunk], ks, tokenizer, delimiter
        )
        key = jax.random.fold_in(rng, start)
        ro = sample_rollouts(draft, batch, cfg, tokenizer, key, eos_ids=eos_ids, pad_id=pad_id)
        for r, (i, k) in enumerate(chunk):
            # The first step as the engines cut it (`Rollouts.step_tokens`), less its delimiter.
            ids = ro.step_tokens[r, 0, : ro.step_lengths[r, 0]]
            pieces = split_steps(tokenizer.decode(ids, skip_special_tokens=True), steps_cfg)
            step = pieces[0].strip() if pieces else ""
            if step:
                out.append(Candidate(i, k, step, step == refs[i][k].strip()))
    return out


class DraftSteps(Sequence):
    """Records of ``source`` with the draft's steps: item ``j`` is the record of the
    ``j``-th candidate with ``draft_step = (k, step, right)``. The pipeline's contrast pair
    of such a record is the reference step k and the draft's step k, labelled ``right``
    (`TokenizeExample.plan`): a wrong step is a negative next to its reference, a right one
    a second positive (measured: without those positives the verifier learned to reject
    every step)."""

    def __init__(self, source: Sequence, candidates: Sequence[Candidate], *, plain: int = 0):
        """``plain`` more items are records without a draft step (their pairs hold a
        synthetic corruption, `data.verification`): source records ``0, 1, ...``."""
        self.source = source
        self.candidates = list(candidates)
        self.plain = plain
        if all(c.right for c in self.candidates):
            raise ValueError(
                "the draft wrote no wrong step: nothing to refine the verifier on (drop "
                "refine_target from stages, or raise refine_target.records)."
            )

    def __len__(self) -> int:
        return len(self.candidates) + self.plain

    def __getitem__(self, j: int) -> dict:
        if not 0 <= j < len(self):
            raise IndexError(f"index {j} of {len(self)} items")
        if j >= len(self.candidates):
            return self.source[(j - len(self.candidates)) % len(self.source)]
        c = self.candidates[j]
        return {**self.source[c.record], "draft_step": (c.k, c.step, c.right)}


def candidates_summary(candidates: Sequence[Candidate]) -> dict:
    """Counts of right and wrong draft steps by step index (for the stage's record)."""
    by_k: dict[int, list[int]] = {}
    for c in candidates:
        by_k.setdefault(c.k, [0, 0])[0 if c.right else 1] += 1
    return {
        "steps": len(candidates),
        "right": sum(c.right for c in candidates),
        "by_step": {str(k): {"right": r, "wrong": w} for k, (r, w) in sorted(by_k.items())},
    }


def save_candidates(path: Path, candidates: Sequence[Candidate]) -> None:
    rows = [dataclasses.asdict(c) for c in candidates]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"summary": candidates_summary(candidates), "candidates": rows}))
    os.replace(tmp, path)


def load_candidates(path: Path) -> list[Candidate]:
    return [Candidate(**row) for row in json.loads(path.read_text())["candidates"]]


def run_refine(
    stage_dir: str | os.PathLike,
    target,
    draft,
    source: Sequence,
    tokenizer,
    image_cfg: ImageProcessorConfig,
    cfg: RefineConfig,
    mesh: jax.sharding.Mesh,
    *,
    draft_image_cfg: ImageProcessorConfig,
    max_step_tokens: int,
    delimiter: str,
    verifier: VerifierConfig,
    config: Mapping | None = None,
) -> tuple[object, LoopResult]:
    """Fine-tunes ``target``'s verdicts on ``draft``'s wrong steps; resumes from
    ``stage_dir``. The draft's steps are written once and kept in
    ``stage_dir/candidates.json`` (a resumed run reads them back).

    Returns:
      ``(refined target, LoopResult)``; ``target``'s arrays are donated (use the result).
    """
    cfg.validate()
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / "candidates.json"
    if path.exists():
        candidates = load_candidates(path)
    else:
        records = [source[i] for i in range(min(cfg.records, len(source)))]
        eos_ids, pad_id = chain_token_ids(tokenizer)
        candidates = draft_candidates(
            draft,
            records,
            tokenizer,
            draft_image_cfg,
            max_step_tokens=max_step_tokens,
            delimiter=delimiter,
            temperature=cfg.temperature,
            rng=jax.random.key(cfg.seed),
            eos_ids=eos_ids,
            pad_id=pad_id,
            min_step=cfg.min_step,
        )
        save_candidates(path, candidates)
    summary = candidates_summary(candidates)
    print(
        f"refine_target: the draft wrote {summary['steps']} steps, "
        f"{summary['steps'] - summary['right']} differ from the reference",
        flush=True,
    )
    return run_sft(
        stage_dir,
        target,
        DraftSteps(source, candidates, plain=_plain(len(candidates), cfg.synthetic_fraction)),
        tokenizer,
        image_cfg,
        cfg.sft,
        mesh,
        config=config,
        desc="refine_target",
        verifier=verifier,
    )


def _plain(candidates: int, fraction: float) -> int:
    """Items without a draft step so that they are ``fraction`` of all items."""
    return round(candidates * fraction / (1.0 - fraction))
