"""The SAPO stage: RL on the draft so the frozen target accepts more of its steps.

One update (DESIGN.md §2):

1. P prompts from the training split; the draft (policy) samples G chains each;
2. the frozen target verifies every step of every chain in one packed pass per chain
   (`rl.scoring`), the grader checks every final answer;
3. ``R = w1*R_outcome + w2*R_draft + w3*R_length`` (`rl.rewards`), advantages normalised
   within each group of G (`rl.advantages`);
4. old log-probs (the policy that sampled) and reference log-probs (the frozen starting
   draft) of every completion token, then one clipped-ratio + k3-KL update
   (`training.objectives.sapo_objective`) through the sharded train step.

`policy_stats` measures a draft on held-out prompts (greedy chains: acceptance, reward,
accuracy), so a run can show SAPO's effect against its starting point.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamr_jax.config import require
from dreamr_jax.data import questions
from dreamr_jax.data.grading import final_answer, match_answer
from dreamr_jax.data.questions import Question
from dreamr_jax.models.sharding import param_shardings
from dreamr_jax.processing.image import ImageProcessorConfig, preprocess_images
from dreamr_jax.processing.prompt import build_prompt
from dreamr_jax.rl.advantages import group_advantages
from dreamr_jax.rl.losses import token_logprobs
from dreamr_jax.rl.rewards import RewardConfig, accepted_fraction, rewards
from dreamr_jax.rl.rollout import (
    Prompts,
    RolloutConfig,
    chain_token_ids,
    sample_rollouts,
    training_batch,
)
from dreamr_jax.rl.scoring import score_rollouts
from dreamr_jax.spec.verify import VerifierConfig, verdict_tokens
from dreamr_jax.training.checkpoint import CheckpointConfig
from dreamr_jax.training.loop import LoopResult, run_loop
from dreamr_jax.training.objectives import forward_logits, prepare_batch, sapo_objective
from dreamr_jax.training.optim import OptimConfig, make_optimizer, make_schedule
from dreamr_jax.training.step import init_train_state, make_train_step


@dataclasses.dataclass(frozen=True)
class SAPOConfig:
    """The SAPO stage (GRPO-standard defaults where the paper is silent).

    Attributes:
      steps: updates.
      prompts_per_step: P prompts per update; the batch is ``P * G`` rollouts.
      rollout: G, sampling temperature, lengths, step segmentation, K scored steps.
      reward: w1 (outcome), w2 (accepted-step fraction), w3 (length penalty) and the
        penalty's form.
      verifier: the target's CPN verifier (α) that defines ``R_draft``.
      clip_eps: ε of the ratio clip.
      kl_beta: β of the k3 KL penalty to the frozen reference (the starting draft).
      micro_batches: gradient accumulation (each micro-batch holds whole groups).
      patches_per_row: static image patches per rollout row.
      seed: prompt order and sampling seed.
      log_entropy: log the policy's mean token entropy over the completion tokens (one
        more softmax over ``[rows, tokens, vocab]`` per update).
      optim: AdamW settings (the paper: lr 1e-6 at real scale).
      checkpoint: save period and retention.
    """

    steps: int = 50
    prompts_per_step: int = 4
    rollout: RolloutConfig = RolloutConfig(
        group_size=4, max_new_tokens=96, max_step_tokens=32, max_scored_steps=8
    )
    reward: RewardConfig = RewardConfig(length_free=64, length_max=96)
    verifier: VerifierConfig = VerifierConfig()
    clip_eps: float = 0.2
    kl_beta: float = 0.04
    micro_batches: int = 1
    patches_per_row: int = 64
    seed: int = 0
    log_entropy: bool = True
    optim: OptimConfig = OptimConfig(learning_rate=1e-5, warmup_steps=5, total_steps=50)
    checkpoint: CheckpointConfig = CheckpointConfig(every_steps=10, keep=2)

    def validate(self) -> SAPOConfig:
        require(self.steps >= 1, "steps", self.steps, "must be >= 1")
        require(
            self.prompts_per_step >= 1, "prompts_per_step", self.prompts_per_step, "must be >= 1"
        )
        require(0 < self.clip_eps < 1, "clip_eps", self.clip_eps, "must be in (0, 1)")
        require(self.kl_beta >= 0, "kl_beta", self.kl_beta, "must be >= 0")
        rows = self.prompts_per_step * self.rollout.group_size
        require(
            self.prompts_per_step % self.micro_batches == 0,
            "micro_batches",
            self.micro_batches,
            f"must divide prompts_per_step={self.prompts_per_step} (a micro-batch holds "
            f"whole groups of G={self.rollout.group_size}; {rows} rollouts per update)",
        )
        for part in (self.rollout, self.reward, self.verifier, self.optim, self.checkpoint):
            part.validate()
        return self


def make_prompts(
    records: Sequence, tokenizer, image_cfg: ImageProcessorConfig
) -> tuple[Prompts, list[Question]]:
    """Chat prompts (user: image + question, then the assistant header) for records.

    Args:
      records: synthetic records (`synthetic.to_record`'s shape, raw or decoded) or
        imported ones (`Record`s or raw `import_tfds` examples: encoded images, options
        appended to the question as `dreamr_jax.eval` does; see `questions`).

    Returns:
      The prompts and each record's `Question` (gold answer, answer type, options).
    """
    qs = [questions.from_example(r) for r in records]
    ids, pixels, grids = [], [], []
    for q in qs:
        pv, grid = preprocess_images(q.image, image_cfg)
        user = [{"type": "image"}, {"type": "text", "text": q.question}]
        prompt, _ = build_prompt(
            tokenizer, [{"role": "user", "content": user}], grid, merge_size=image_cfg.merge_size
        )
        ids.append(prompt)
        pixels.append(pv)
        grids.append(grid)
    return Prompts(ids, pixels, grids), qs


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _logp(graphdef, params, batch):
    """``[b, t]`` log-prob of each token given the ones before it (column 0: 0)."""
    logits = forward_logits(nnx.merge(graphdef, params), batch)[:, :-1]
    logp = token_logprobs(logits, batch["input_ids"][:, 1:])
    return jnp.pad(logp, ((0, 0), (1, 0)))


@dataclasses.dataclass
class Scored:
    """One batch of scored rollouts (host arrays, rows group-major)."""

    rollouts: object
    p: np.ndarray  # [rows, K]
    accepted: np.ndarray  # [rows, K]
    correct: np.ndarray  # [rows] bool
    rewards: np.ndarray  # [rows]
    terms: dict[str, np.ndarray]

    def summary(self) -> dict[str, float]:
        steps = np.maximum(self.rollouts.num_steps, 1)
        return {
            "reward": float(self.rewards.mean()),
            "reward_outcome": float(self.terms["outcome"].mean()),
            "reward_draft": float(self.terms["draft"].mean()),
            "reward_length": float(self.terms["length"].mean()),
            "accuracy": float(self.correct.mean()),
            "acceptance": float(self.accepted.sum() / steps.sum()),
            "completion_tokens": float(self.rollouts.lengths.mean()),
            "steps_per_chain": float(self.rollouts.num_steps.mean()),
        }


class Scorer:
    """Rollouts, target scores, grades and rewards for a batch of prompts."""

    def __init__(self, target, tokenizer, image_cfg, cfg: SAPOConfig):
        self.target_graphdef, self.target_state = nnx.split(target)
        self.target_cfg, self.target_dtype = target.cfg, target.dtype
        self.tokenizer, self.image_cfg, self.cfg = tokenizer, image_cfg, cfg
        self.verdict = verdict_tokens(tokenizer, cfg.verifier)
        self.eos_ids, self.pad_id = chain_token_ids(tokenizer)

    def score(self, out):
        """The target's verdicts on every step of rollouts ``out`` (`score_rollouts`)."""
        return score_rollouts(
            self.target_graphdef,
            self.target_state,
            self.target_cfg,
            out,
            self.verdict,
            self.cfg.verifier,
            pad_id=self.pad_id,
            dtype=self.target_dtype,
        )

    def __call__(self, policy, records, rng, rollout: RolloutConfig | None = None) -> Scored:
        rollout = rollout or self.cfg.rollout
        prompts, qs = make_prompts(records, self.tokenizer, self.image_cfg)
        out = sample_rollouts(
            policy, prompts, rollout, self.tokenizer, rng, eos_ids=self.eos_ids, pad_id=self.pad_id
        )
        p, ok = self.score(out)
        correct, total, terms = self.reward(out, qs, ok, rollout.group_size)
        return Scored(out, p, ok, correct, total, terms)

    def reward(self, out, qs, ok, group_size: int):
        """Grades ``out``'s rollouts (``group_size`` per question of ``qs``) and computes
        SAPO's reward from the verdicts ``ok``: ``(correct, total, terms)`` as NumPy."""
        texts = [
            self.tokenizer.decode(out.tokens[r, : out.lengths[r]], skip_special_tokens=True)
            for r in range(out.tokens.shape[0])
        ]
        q = [qs[r // group_size] for r in range(len(texts))]
        answers = [final_answer(t) for t in texts]  # what `grade` judges; None: no answer
        correct = np.array(
            [
                match_answer(a, x.gold, answer_type=x.answer_type, choices=x.choices or None)
                for a, x in zip(answers, q, strict=True)
            ]
        )
        answered = np.array([a is not None for a in answers])
        frac = accepted_fraction(jnp.asarray(ok.sum(1)), jnp.asarray(out.num_steps))
        total, terms = rewards(
            jnp.asarray(correct, jnp.float32),
            frac,
            jnp.asarray(out.lengths),
            self.cfg.reward,
            answered_b=jnp.asarray(answered),
        )
        return correct, np.asarray(total), {k: np.asarray(v) for k, v in terms.items()}


def sapo_batch(scored: Scored, policy_graphdef, params, ref_params, cfg: SAPOConfig, model_cfg):
    """The train-step batch: tokens, masks, advantages, old and reference log-probs."""
    g = cfg.rollout.group_size
    adv = group_advantages(jnp.asarray(scored.rewards).reshape(-1, g)).reshape(-1)
    raw = training_batch(model_cfg, scored.rollouts)
    batch = prepare_batch(raw, model_cfg, patches_per_row=cfg.patches_per_row)
    batch = jax.tree.map(jnp.asarray, batch)
    batch["old_logp"] = _logp(policy_graphdef, params, batch)
    batch["ref_logp"] = _logp(policy_graphdef, ref_params, batch)
    batch["advantages"] = adv
    return batch


def prompt_iterator(source: Sequence, cfg: SAPOConfig):
    """A checkpointable grain iterator of ``prompts_per_step`` records per update."""
    ds = grain.MapDataset.source(source)[jax.process_index() :: jax.process_count()]
    ds = ds.shuffle(seed=cfg.seed).repeat(None)
    ds = ds.batch(cfg.prompts_per_step, drop_remainder=True, batch_fn=list)
    return iter(ds.to_iter_dataset())


def rollout_layout(params: nnx.State, shardings: nnx.State) -> nnx.State:
    """The policy's parameters moved from the trainer's layout into the rollout's
    (``shardings``: `param_shardings` of the policy on the rollout mesh). The one place
    weights cross between the two: a copy per update, the trainer's arrays stay put."""
    return jax.device_put(params, shardings)


def run_sapo(
    stage_dir: str | os.PathLike,
    policy,
    target,
    source: Sequence,
    tokenizer,
    image_cfg: ImageProcessorConfig,
    cfg: SAPOConfig,
    mesh: jax.sharding.Mesh,
    *,
    config: Mapping | None = None,
    rollout_mesh: jax.sharding.Mesh | None = None,
) -> tuple[object, LoopResult]:
    """Runs SAPO on ``policy`` (the starting draft, also the frozen reference) against the
    frozen ``target``; resumes from ``stage_dir``.

    The policy trains on ``mesh`` (with the reference); its rollouts run on
    ``rollout_mesh`` when given and different (e.g. tensor-parallel decoding while training
    is FSDP), its weights moved there by `rollout_layout` before every update's rollouts,
    else on ``mesh``.

    Returns:
      ``(trained policy, LoopResult)``; ``policy`` itself is left unchanged.
    """
    cfg.validate()
    graphdef, ref_params = nnx.split(policy, nnx.Param)
    # The train state owns a copy (the step donates it); ``policy``'s arrays stay valid
    # and serve as the frozen reference.
    trainee = nnx.merge(graphdef, jax.tree.map(jnp.copy, ref_params))
    to_rollout = None
    if rollout_mesh is not None and rollout_mesh != mesh:
        to_rollout = param_shardings(nnx.state(trainee, nnx.Param), rollout_mesh)
    tx = make_optimizer(cfg.optim)
    state = init_train_state(trainee, tx)
    objective = functools.partial(
        sapo_objective, clip_eps=cfg.clip_eps, kl_beta=cfg.kl_beta, entropy=cfg.log_entropy
    )
    step_fn = make_train_step(
        graphdef,
        objective,
        tx,
        mesh=mesh,
        learning_rate=make_schedule(cfg.optim),
        micro_batches=cfg.micro_batches,
        group_size=cfg.rollout.group_size,
    )
    scorer = Scorer(target, tokenizer, image_cfg, cfg)
    iterator = prompt_iterator(source, cfg)
    last: dict[str, float] = {}

    def next_batch(step: int, state):
        params = state.params if to_rollout is None else rollout_layout(state.params, to_rollout)
        policy_now = nnx.merge(graphdef, params)
        rng = jax.random.fold_in(jax.random.key(cfg.seed), step)
        scored = scorer(policy_now, next(iterator), rng)
        last.clear()
        last.update(scored.summary())
        return sapo_batch(scored, graphdef, state.params, ref_params, cfg, policy.cfg)

    result = run_loop(
        stage_dir,
        state,
        step_fn,
        next_batch,
        steps=cfg.steps,
        checkpoint=cfg.checkpoint,
        iterator=iterator,
        config=config,
        desc="sapo",
        extra_metrics=lambda step: dict(last),
    )
    return nnx.merge(graphdef, result.state.params), result


def policy_stats(
    scorer: Scorer, policy, records: Sequence, *, seed: int = 0, batch: int = 8
) -> dict[str, float]:
    """Greedy-chain statistics of ``policy`` on ``records`` (held-out): acceptance by the
    target, reward terms, accuracy, lengths; averaged over records."""
    greedy = dataclasses.replace(scorer.cfg.rollout, group_size=1, temperature=0.0)
    parts = []
    for i in range(0, len(records), batch):
        chunk = [records[j] for j in range(i, min(i + batch, len(records)))]
        scored = scorer(policy, chunk, jax.random.key(seed), rollout=greedy)
        parts.append((len(chunk), scored.summary()))
    n = sum(k for k, _ in parts)
    return {key: sum(k * s[key] for k, s in parts) / n for key in parts[0][1]}
