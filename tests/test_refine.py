"""The refine_target stage's parts: the draft's steps after a reference prefix, their
labels, and the contrast pairs the pipeline makes from a draft's wrong step."""

from __future__ import annotations

import dataclasses
import types

import jax
import numpy as np
import pytest
from flax import nnx

from dreamr_jax.data import pipeline, synthetic_tfds
from dreamr_jax.data.synthetic import SyntheticConfig
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.processing.image import ImageProcessorConfig
from dreamr_jax.processing.tokenizer import byte_tokenizer
from dreamr_jax.rl.rollout import pack_steps
from dreamr_jax.spec.roles import builtin_config
from dreamr_jax.training import refine
from dreamr_jax.training.sapo import make_prompts
from dreamr_jax.training.sft import SFTConfig

TOK = byte_tokenizer()
MODEL_CFG = builtin_config(TOK)
SYN = SyntheticConfig(image_size=64, seed=3)
SIZES = {"train": 6}
IMAGE_CFG = ImageProcessorConfig.for_vision(
    MODEL_CFG.vision, min_pixels=64 * 64, max_pixels=64 * 64
)
EOS = (TOK.convert_tokens_to_ids("<|im_end|>"),)
PIPE = pipeline.PipelineConfig(
    batch_size=2, seq_len=1024, num_patches=2 * 256, verify_fraction=1.0, verify_pairs=True
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refine")
    synthetic_tfds.build(str(tmp), SYN, SIZES)
    return synthetic_tfds.load(str(tmp), SYN, "train", SIZES)


def _steps(rec) -> list[str]:
    return synthetic_tfds.as_record(rec)["steps"]


def test_a_pair_is_the_reference_and_the_drafts_step(source):
    ref = _steps(source[1])
    wrong = refine.Candidate(1, 2, "Reading: WRONG.", False)
    right = refine.Candidate(1, 3, ref[3], True)
    steps = refine.DraftSteps(source, [wrong, right])
    assert len(steps) == 2
    example = pipeline.TokenizeExample(PIPE, TOK, IMAGE_CFG)
    a, b = (synthetic_tfds.as_record(r) for r in steps)
    assert example.plan(a, 0, "reference") == (2, ref[2], True)
    assert example.plan(a, 0, "corrupted") == (2, "Reading: WRONG.", False)
    assert example.plan(b, 0, "corrupted") == (3, ref[3], True)  # a right step: a positive
    assert example.plan(b, 0, "chain") is None
    # The batched path makes the same rows, and the wrong row holds the draft's step.
    pair = [(steps[0], 0, "reference"), (steps[0], 0, "corrupted")]
    want = pipeline.collate([example.map(e) for e in pair], PIPE.num_patches)
    got = pipeline.TokenizeBatch(PIPE, TOK, IMAGE_CFG).fast(pair)
    assert got is not None
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    text = TOK.encode("Reading: WRONG.", add_special_tokens=False)
    row = want["input_ids"][1].tolist()
    assert any(row[i : i + len(text)] == text for i in range(len(row)))


def test_plain_items_are_records_without_a_draft_step(source):
    steps = refine.DraftSteps(source, [refine.Candidate(1, 2, "Reading: WRONG.", False)], plain=3)
    assert len(steps) == 4 and "draft_step" in steps[0]
    assert [steps[j]["id"] for j in (1, 2, 3)] == [source[j]["id"] for j in (0, 1, 2)]
    assert all("draft_step" not in steps[j] for j in (1, 2, 3))
    assert refine._plain(700, 0.3) == 300 and refine._plain(700, 0.0) == 0


def test_draft_steps_needs_a_wrong_step(source):
    with pytest.raises(ValueError, match="no wrong step"):
        refine.DraftSteps(source, [refine.Candidate(0, 1, _steps(source[0])[1], True)])


def test_the_draft_writes_after_the_chain_rows_own_prefix(source):
    """Prompt + reference steps before k: the first tokens of the record's chain row."""
    rec = source[0]
    chain = pipeline.TokenizeExample(dataclasses.replace(PIPE, verify_fraction=0.0), TOK, IMAGE_CFG)
    row = chain.map(rec)
    row_ids = row["input_ids"][: int(row["attention_mask"].sum())].tolist()
    for k in (1, 3):
        prompts, _ = make_prompts([rec], TOK, IMAGE_CFG)
        (ids,) = refine.prefix_prompts(prompts, [_steps(rec)], [k], TOK, "\n\n").ids
        assert len(ids) > len(prompts.ids[0]) and row_ids[: len(ids)] == ids


def test_candidates_are_labelled_by_the_reference_step(source, monkeypatch):
    """A stand-in draft writes the reference step at even k and something else at odd k."""
    records = [dict(source[i], steps=[f"Step {j}." for j in range(4)]) for i in range(3)]

    def fake(model, prompts, cfg, tokenizer, rng, *, eos_ids, pad_id):
        rows = []
        for ids in prompts.ids:
            answer = tokenizer.decode(ids).split("<|im_start|>assistant\n")[-1]
            k = answer.count("\n\n")
            text = f"Step {k}.\n\nStep 9." if k % 2 == 0 else f"Step {k}, I think.\n\n"
            if k == 3:  # no delimiter within the step cap: the step is cut at the cap
                text = f"Step {k}, " + "and " * 20 + "so on.\n\n"
            rows.append(tokenizer.encode(text, add_special_tokens=False))
        n = max(map(len, rows))
        tokens = np.array([r + [pad_id] * (n - len(r)) for r in rows])
        steps = pack_steps(rows, tokenizer, cfg, pad_id)
        return types.SimpleNamespace(
            tokens=tokens, lengths=np.array([len(r) for r in rows]), step_tokens=steps[0],
            step_lengths=steps[1],
        )  # fmt: skip

    monkeypatch.setattr(refine, "sample_rollouts", fake)
    got = refine.draft_candidates(
        None, records, TOK, IMAGE_CFG, max_step_tokens=32, delimiter="\n\n", temperature=1.0,
        rng=jax.random.key(0), eos_ids=EOS, min_step=1, batch_size=4,
    )  # fmt: skip
    assert [(c.record, c.k) for c in got] == [(i, k) for i in range(3) for k in (1, 2, 3)]
    assert [c.right for c in got] == [k % 2 == 0 for _ in range(3) for k in (1, 2, 3)]
    assert got[0].step == "Step 1, I think."
    cut = TOK.decode(TOK.encode("Step 3, " + "and " * 20, add_special_tokens=False)[:32])
    assert got[2].step == cut.strip() and "so on" not in got[2].step  # as the engines cut it
    summary = refine.candidates_summary(got)
    assert summary["by_step"]["2"] == {"right": 3, "wrong": 0}
    assert summary["by_step"]["3"] == {"right": 0, "wrong": 3}


def test_candidates_build_prompts_a_chunk_at_a_time(source, monkeypatch):
    """Prompts are made for each generation chunk's records only (host memory at real
    scale), and every row still gets its own record's image and reference prefix."""
    records = [dict(source[i], steps=[f"Step {j}." for j in range(4)]) for i in range(3)]
    full, _ = make_prompts(records, TOK, IMAGE_CFG)
    assert not np.array_equal(full.pixel_values[0], full.pixel_values[1])  # tells rows apart
    sizes, rows = [], []

    def spy(recs, *args, **kw):
        sizes.append(len(recs))
        return make_prompts(recs, *args, **kw)

    def fake(model, prompts, cfg, tokenizer, rng, *, eos_ids, pad_id):
        rows.extend(zip(prompts.ids, prompts.pixel_values, strict=True))
        steps = pack_steps([[65]] * len(prompts.ids), tokenizer, cfg, pad_id)
        return types.SimpleNamespace(step_tokens=steps[0], step_lengths=steps[1])

    monkeypatch.setattr(refine, "make_prompts", spy)
    monkeypatch.setattr(refine, "sample_rollouts", fake)
    refine.draft_candidates(
        None, records, TOK, IMAGE_CFG, max_step_tokens=8, delimiter="\n\n", temperature=1.0,
        rng=jax.random.key(0), eos_ids=EOS, min_step=1, batch_size=4,
    )  # fmt: skip
    assert sizes == [2, 2, 1]  # items (0,1..3) (1,1) | (1,2..3) (2,1..2) | (2,3)
    items = [(i, k) for i in range(3) for k in (1, 2, 3)]
    assert len(rows) == len(items)
    for (ids, pixels), (i, k) in zip(rows, items, strict=True):
        prefix = TOK.encode("".join(f"Step {j}.\n\n" for j in range(k)), add_special_tokens=False)
        assert list(ids) == list(full.ids[i]) + prefix
        np.testing.assert_array_equal(pixels, full.pixel_values[i])


def test_candidates_from_a_tiny_draft_are_reproducible(source, tmp_path):
    draft = Qwen3VL(MODEL_CFG, rngs=nnx.Rngs(1))
    records = [source[i] for i in range(2)]
    kw = dict(max_step_tokens=6, delimiter="e", temperature=1.0, eos_ids=EOS, min_step=2)
    a = refine.draft_candidates(draft, records, TOK, IMAGE_CFG, rng=jax.random.key(3), **kw)
    b = refine.draft_candidates(draft, records, TOK, IMAGE_CFG, rng=jax.random.key(3), **kw)
    assert a == b and a
    assert {(c.record, c.k) for c in a} <= {
        (i, k) for i, r in enumerate(records) for k in range(2, len(_steps(r)))
    }
    path = tmp_path / "candidates.json"
    refine.save_candidates(path, a)
    assert refine.load_candidates(path) == a


def test_refine_config_needs_contrast_pairs():
    with pytest.raises(Exception, match="verify_pairs"):
        refine.RefineConfig(sft=SFTConfig(verify_fraction=0.5, verify_pairs=False)).validate()
    refine.RefineConfig().validate()
