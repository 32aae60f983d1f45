"""Verification examples: corrupted steps and the exact token layout the engine verifies."""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import pytest

from dreamr_jax.data import pipeline, synthetic_tfds
from dreamr_jax.data.synthetic import SyntheticConfig
from dreamr_jax.data.verification import corrupt_step
from dreamr_jax.processing.image import ImageProcessorConfig
from dreamr_jax.processing.prompt import build_prompt
from dreamr_jax.processing.tokenizer import save_byte_tokenizer
from dreamr_jax.spec.verify import VerifierConfig, verdict_tokens

SYN = SyntheticConfig(image_size=64, seed=5)
SIZES = {"train": 24}
IMAGE_CFG = ImageProcessorConfig(patch_size=8, merge_size=2, min_pixels=64 * 64, max_pixels=64 * 64)
CFG = pipeline.PipelineConfig(
    batch_size=4,
    seq_len=512,
    num_patches=4 * 64,
    shuffle=False,
    num_epochs=1,
    verify_fraction=1.0,
)


@pytest.mark.parametrize(
    "step",
    [
        "Counting the red circles: there are 4.",
        "Adding: 3 + 5 = 8.",
        "The green bar is option C.",
        "Answer: B",
        "The tallest bar is the blue one.",
    ],
)
def test_corrupt_step_changes_exactly_one_fact(step):
    rng = np.random.default_rng(0)
    for _ in range(20):
        wrong = corrupt_step(step, rng)
        assert wrong is not None and wrong != step
        a, b = step.split(), wrong.split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1


def test_corrupt_step_swaps_option_letters_within_a_to_h():
    rng = np.random.default_rng(0)
    seen = {corrupt_step("Answer: H", rng).split()[-1] for _ in range(200)}
    assert seen == set("ABCDEFG")  # every other letter the pattern reads, never H itself


def test_corrupt_step_gives_up_on_steps_without_facts():
    assert corrupt_step("Let us look at the picture.", np.random.default_rng(0)) is None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify")
    synthetic_tfds.build(str(tmp), SYN, SIZES)
    return synthetic_tfds.load(str(tmp), SYN, "train", SIZES), save_byte_tokenizer(tmp / "tok")


def test_verification_examples_match_the_engine_layout(data):
    source, tok = data
    verdict = verdict_tokens(tok, VerifierConfig(question=CFG.verify_question))
    yes, no = verdict.positive[0], verdict.negative[0]
    records = {synthetic_tfds.as_record(source[i])["id"]: source[i] for i in range(len(source))}
    labels = []
    for batch in pipeline.make_dataset(source, CFG, tok, IMAGE_CFG):
        for row in range(batch["input_ids"].shape[0]):
            mask = batch["loss_mask"][row]
            (pos,) = np.flatnonzero(mask)  # exactly one trained token: the verdict
            ids = batch["input_ids"][row, : pos + 1].tolist()
            assert batch["attention_mask"][row, pos + 1 :].sum() == 0
            assert ids[-1] in (yes, no)
            labels.append(ids[-1] == yes)
            # prompt + steps + suffix + verdict: the engine's verification sequence.
            rec = synthetic_tfds.as_record(records[str(batch["id"][row])])
            user = [{"type": "image"}, {"type": "text", "text": rec["question"]}]
            prompt, _ = build_prompt(
                tok,
                [{"role": "user", "content": user}],
                batch["image_grid_thw"][row : row + 1],
                merge_size=2,
            )
            assert ids[: len(prompt)] == prompt
            assert ids[-1 - len(verdict.suffix) : -1] == list(verdict.suffix)
            text = tok.decode(ids[len(prompt) : -1 - len(verdict.suffix)])
            steps = text.replace("<|im_end|>", "").split("\n\n")
            steps = [s for s in steps if s]
            prefix_ok = steps[:-1] == rec["steps"][: len(steps) - 1]
            assert prefix_ok, "the steps before the candidate are the reference steps"
            candidate = steps[-1]
            assert (candidate == rec["steps"][len(steps) - 1]) == labels[-1]
    assert 0.25 < np.mean(labels) < 0.75, "about half the examples should be negatives"


def test_verify_fraction_mixes_and_is_deterministic(data):
    source, tok = data
    cfg = dataclasses.replace(CFG, verify_fraction=0.5)
    runs = [list(pipeline.make_dataset(source, cfg, tok, IMAGE_CFG)) for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    trained = np.concatenate([b["loss_mask"].sum(1) for b in runs[0]])
    assert (trained == 1).any() and (trained > 1).any()


def test_each_epoch_draws_new_verification_examples(data):
    source, tok = data
    cfg = dataclasses.replace(CFG, num_epochs=3)
    runs = [list(pipeline.make_dataset(source, cfg, tok, IMAGE_CFG)) for _ in range(2)]
    for a, b in zip(*runs, strict=True):  # deterministic, epochs included
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    rows = collections.defaultdict(list)  # record id -> its row in each epoch
    for batch in runs[0]:
        for i, ids in zip(batch["id"], batch["input_ids"], strict=True):
            rows[str(i)].append(ids.tobytes())
    assert all(len(r) == 3 for r in rows.values())
    changed = sum(len(set(r)) > 1 for r in rows.values())
    assert changed >= len(rows) // 2  # most records judge another step or candidate


def test_contrast_pairs_judge_one_step_as_written_and_corrupted(data):
    source, tok = data
    cfg = dataclasses.replace(CFG, verify_fraction=0.5, verify_weight=3, verify_pairs=True)
    verdict = verdict_tokens(tok, VerifierConfig(question=CFG.verify_question))
    yes, no = verdict.positive[0], verdict.negative[0]
    batches = list(pipeline.make_dataset(source, cfg, tok, IMAGE_CFG))
    again = list(pipeline.make_dataset(source, cfg, tok, IMAGE_CFG))
    pairs = chains = 0
    for batch, same in zip(batches, again, strict=True):
        np.testing.assert_array_equal(batch["input_ids"], same["input_ids"])  # deterministic
        for j in range(0, batch["input_ids"].shape[0], 2):
            ids, mask = batch["input_ids"][j : j + 2], batch["loss_mask"][j : j + 2]
            is_verdict = mask.max(1) == 3
            assert is_verdict[0] == is_verdict[1], "a pair is two verdicts or two chains"
            if not is_verdict[0]:
                chains += 1
                continue
            pairs += 1
            assert batch["id"][j] == batch["id"][j + 1]  # one record
            ends = mask.argmax(1)  # each row's verdict position
            assert {ids[0, ends[0]], ids[1, ends[1]]} == {yes, no}
            # the same prompt, steps and question around one changed fact in one step
            a, b = (tok.decode(ids[r, : ends[r]]) for r in (0, 1))
            head = len(os.path.commonprefix([a, b]))
            tail = len(os.path.commonprefix([a[head:][::-1], b[head:][::-1]]))
            diff = (a[head : len(a) - tail], b[head : len(b) - tail])
            assert all(d and "\n" not in d and len(d) <= 8 for d in diff), diff
    assert pairs and chains


def test_pairs_need_an_even_batch_and_no_skipping():
    with pytest.raises(ValueError, match="even batch_size"):
        dataclasses.replace(CFG, verify_pairs=True, batch_size=3).validate()
    with pytest.raises(ValueError, match="skip_overlong=False"):
        dataclasses.replace(CFG, verify_pairs=True, skip_overlong=True).validate()
    with pytest.raises(ValueError, match="verify_pairs='yes'"):
        dataclasses.replace(CFG, verify_pairs="yes").validate()


def test_verdict_token_carries_the_verify_weight(data):
    source, tok = data
    cfg = dataclasses.replace(CFG, verify_fraction=0.5, verify_weight=7)
    masks = np.concatenate(
        [b["loss_mask"] for b in pipeline.make_dataset(source, cfg, tok, IMAGE_CFG)]
    )
    verify_rows = masks.max(1) == 7
    assert verify_rows.any() and (~verify_rows).any()
    assert ((masks[verify_rows] > 0).sum(1) == 1).all()  # only the verdict is trained
    assert set(np.unique(masks[~verify_rows])) == {0, 1}  # chains weigh 1 per token


def test_bad_verify_settings_are_named():
    with pytest.raises(ValueError, match="verify_weight"):
        dataclasses.replace(CFG, verify_weight=0).validate()
    with pytest.raises(ValueError, match="verify_fraction=1.5"):
        dataclasses.replace(CFG, verify_fraction=1.5).validate()
    with pytest.raises(ValueError, match="verify_words"):
        dataclasses.replace(CFG, verify_words=("Yes", "Yes")).validate()
