"""SAPO rollouts and target scoring on tiny random models with the byte tokenizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamr_jax.data.steps import step_boundaries
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.processing.image import ImageProcessorConfig, preprocess_images
from dreamr_jax.processing.prompt import build_prompt
from dreamr_jax.processing.tokenizer import byte_tokenizer
from dreamr_jax.rl.rollout import (
    Prompts,
    RolloutConfig,
    pack_steps,
    sample_rollouts,
    training_batch,
)
from dreamr_jax.rl.scoring import score_rollouts
from dreamr_jax.spec.roles import builtin_config
from dreamr_jax.spec.verify import VerifierConfig, cpn_probability, verdict_tokens
from dreamr_jax.training.objectives import forward_logits, prepare_batch

TOK = byte_tokenizer()
CFG = builtin_config(TOK)
EOS = (TOK.convert_tokens_to_ids("<|im_end|>"),)


@pytest.fixture(scope="module")
def models():
    return Qwen3VL(CFG, rngs=nnx.Rngs(1)), Qwen3VL(CFG, rngs=nnx.Rngs(0))  # draft, target


def _prompts(n: int = 2) -> Prompts:
    v = CFG.vision
    side = v.patch_size * v.spatial_merge_size
    ipc = ImageProcessorConfig.for_vision(v, min_pixels=(2 * side) ** 2, max_pixels=(3 * side) ** 2)
    rng = np.random.default_rng(0)
    ids, pixels, grids = [], [], []
    for i in range(n):
        image = rng.integers(0, 255, (32 + 16 * i, 40, 3), dtype=np.uint8)
        pv, grid = preprocess_images([image], ipc)
        content = [{"type": "image"}, {"type": "text", "text": "Count" + "?" * i}]
        p, _ = build_prompt(TOK, [{"role": "user", "content": content}], grid, merge_size=2)
        ids.append(p)
        pixels.append(pv)
        grids.append(grid)
    return Prompts(ids, pixels, grids)


# A delimiter the random models write often, so rollouts have several steps.
RCFG = RolloutConfig(
    group_size=3, max_new_tokens=24, max_step_tokens=6, delimiter="e", max_scored_steps=5
)


def test_pack_steps_matches_step_boundaries():
    completions = [TOK.encode("ab e cd e efgh"), TOK.encode("x"), list(range(65, 65 + 40))]
    tokens, lengths, counts = pack_steps(completions, TOK, RCFG)
    for row, ids in enumerate(completions):
        spans = step_boundaries(ids, TOK, RCFG.steps)
        assert counts[row] == len(spans)
        for j, (a, b) in enumerate(spans[: RCFG.max_scored_steps]):
            assert lengths[row, j] == b - a
            assert tokens[row, j, : b - a].tolist() == ids[a:b]
        assert np.all(lengths[row, len(spans) :] == 0)
    assert counts[2] > RCFG.max_scored_steps  # 40 tokens, S = 6: cut, and K caps the count


def test_rollouts_are_grouped_and_sampled(models):
    draft, _ = models
    prompts = _prompts()
    out = sample_rollouts(draft, prompts, RCFG, TOK, jax.random.key(0), eos_ids=EOS)
    rows = 2 * RCFG.group_size
    assert out.tokens.shape == (rows, RCFG.max_new_tokens)
    assert out.step_tokens.shape == (rows, RCFG.max_scored_steps, RCFG.max_step_tokens)
    assert out.prompts.ids == [p for p in prompts.ids for _ in range(RCFG.group_size)]
    group = {tuple(out.tokens[r, : out.lengths[r]]) for r in range(RCFG.group_size)}
    assert len(group) > 1, "temperature 1 should give different rollouts in a group"
    assert np.all(out.step_lengths.sum(1) <= out.lengths)
    greedy = sample_rollouts(
        draft,
        prompts,
        RolloutConfig(**{**RCFG.__dict__, "temperature": 0.0}),
        TOK,
        jax.random.key(0),
        eos_ids=EOS,
    )
    assert len({tuple(r) for r in greedy.tokens[: RCFG.group_size]}) == 1


def test_training_batch_aligns_with_generation(models):
    """Greedy rollouts: in the training batch, the full forward's argmax at position t-1
    is the completion token at t (positions, padding and image placement all agree)."""
    draft, _ = models
    cfg = RolloutConfig(**{**RCFG.__dict__, "temperature": 0.0, "group_size": 1})
    out = sample_rollouts(draft, _prompts(), cfg, TOK, jax.random.key(0), eos_ids=EOS)
    raw = training_batch(CFG, out)
    batch = prepare_batch(raw, CFG, patches_per_row=64)
    logits = forward_logits(draft, jax.tree.map(jnp.asarray, batch))
    pred = np.asarray(jnp.argmax(logits, -1))
    comp = batch["mask"].astype(bool)
    for r in range(comp.shape[0]):
        cols = np.flatnonzero(comp[r])
        assert len(cols) == out.lengths[r]
        np.testing.assert_array_equal(pred[r, cols - 1], batch["input_ids"][r, cols])


def test_packed_scoring_equals_per_step_scoring(models):
    """One packed pass per rollout gives every step's CPN score of a full forward over
    prompt + steps <= k + the verification question (within 1e-5)."""
    draft, target = models
    out = sample_rollouts(draft, _prompts(), RCFG, TOK, jax.random.key(1), eos_ids=EOS)
    verifier = VerifierConfig(alpha=0.5)
    verdict = verdict_tokens(TOK, verifier)
    graphdef, state = nnx.split(target)
    p, ok = score_rollouts(graphdef, state, CFG, out, verdict, verifier)
    assert p.shape == ok.shape == out.step_lengths.shape
    checked = 0
    for r in range(0, p.shape[0], 2):
        prefix = list(out.prompts.ids[r])
        for k in range(RCFG.max_scored_steps):
            n = int(out.step_lengths[r, k])
            if n == 0:
                assert not ok[r, k]
                continue
            prefix += out.step_tokens[r, k, :n].tolist()
            ids = np.asarray([prefix + list(verdict.suffix)])
            logits = target(ids, out.prompts.pixel_values[r], out.prompts.image_grid_thw[r]).logits
            want = float(cpn_probability(logits[0, -1], verdict.positive, verdict.negative))
            assert abs(p[r, k] - want) < 1e-5
            assert bool(ok[r, k]) == (want > 0.5)
            checked += 1
    assert checked >= 6
