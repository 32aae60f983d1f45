"""The grain batch pipeline: static shapes, answer-only loss mask, resumable state, shards."""

import dataclasses
import json

import numpy as np
import pytest

from dreamr_jax.data import pipeline, synthetic_tfds
from dreamr_jax.data.steps import join_steps
from dreamr_jax.data.synthetic import SyntheticConfig
from dreamr_jax.processing.image import ImageProcessorConfig
from dreamr_jax.processing.tokenizer import save_byte_tokenizer

SYN = SyntheticConfig(image_size=64, seed=3)
SIZES = {"train": 12}
# 64x64 -> 64x64 (factor 16): an 8x8 patch grid, 64 patches, 16 image tokens.
IMAGE_CFG = ImageProcessorConfig(patch_size=8, merge_size=2, min_pixels=32 * 32, max_pixels=64 * 64)
PATCHES = 64
CFG = pipeline.PipelineConfig(
    batch_size=4, seq_len=640, num_patches=4 * PATCHES, shuffle=True, seed=1, num_epochs=1
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    synthetic_tfds.build(str(tmp), SYN, SIZES)
    source = synthetic_tfds.load(str(tmp), SYN, "train", SIZES)
    tokenizer = save_byte_tokenizer(tmp / "tok")
    return source, tokenizer


def _batches(data, cfg=CFG, **kw):
    source, tokenizer = data
    return list(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG, **kw))


def _ids(batches):
    return [str(i) for b in batches for i in b["id"]]


def test_every_batch_has_the_declared_static_shapes(data):
    batches = _batches(data)
    assert len(batches) == 3  # 12 examples, batch 4, one epoch
    b, t, p = CFG.batch_size, CFG.seq_len, CFG.num_patches
    want = {
        "input_ids": (b, t),
        "attention_mask": (b, t),
        "loss_mask": (b, t),
        "positions": (3, b, t),
        "pixel_values": (p, IMAGE_CFG.patch_dim),
        "patch_mask": (p,),
        "image_grid_thw": (b, 3),
        "num_valid_patches": (),
        "id": (b,),
    }
    for batch in batches:
        assert {k: v.shape for k, v in batch.items()} == want
        assert batch["input_ids"].dtype == np.int32 and batch["positions"].dtype == np.int32
        assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * b
        assert int(batch["num_valid_patches"]) == int(batch["patch_mask"].sum()) == b * PATCHES
        # Right padding: real tokens first, then padding only.
        mask = batch["attention_mask"]
        assert (np.diff(mask, axis=1) <= 0).all() and (mask[:, 0] == 1).all()
    assert sorted(_ids(batches)) == sorted(f"train-3-{i}" for i in range(12))


def test_remainder_is_dropped(data):
    cfg = dataclasses.replace(CFG, batch_size=5, num_patches=5 * PATCHES)
    batches = _batches(data, cfg)
    assert len(batches) == 2 and all(b["input_ids"].shape == (5, CFG.seq_len) for b in batches)


def test_loss_mask_covers_exactly_the_reference_chain_and_end_token(data):
    source, tokenizer = data
    batch = _batches(data)[0]
    for row, example_id in enumerate(batch["id"]):
        record = synthetic_tfds.as_record(source[int(str(example_id).rsplit("-", 1)[1])])
        masked = batch["input_ids"][row][batch["loss_mask"][row] == 1].tolist()
        assert tokenizer.decode(masked) == join_steps(record["steps"]) + "<|im_end|>"
        # The prompt (with its image tokens) comes before the answer and is never trained on.
        first = int(np.argmax(batch["loss_mask"][row]))
        prompt = tokenizer.decode(batch["input_ids"][row][:first].tolist())
        assert prompt.endswith("<|im_start|>assistant\n") and record["question"] in prompt
        assert (batch["loss_mask"][row] <= batch["attention_mask"][row]).all()


def test_positions_follow_the_image_grid(data):
    batch = _batches(data)[0]
    image_id = 262 - 1  # <|image_pad|> in the byte tokenizer
    row = batch["input_ids"][0]
    img = np.flatnonzero(row == image_id)
    assert len(img) == PATCHES // 4
    start = batch["positions"][0, 0, img[0]]
    # A 4x4 merged grid: t constant, h = start + row, w = start + col.
    assert (batch["positions"][0, 0, img] == start).all()
    assert batch["positions"][1, 0, img].tolist() == [start + i // 4 for i in range(16)]
    assert batch["positions"][2, 0, img].tolist() == [start + i % 4 for i in range(16)]
    pad = batch["attention_mask"][0] == 0
    assert (batch["positions"][:, 0, pad] == 1).all()


def test_restored_iterator_state_continues_identically(data):
    source, tokenizer = data
    cfg = dataclasses.replace(CFG, num_epochs=None)  # repeat forever, reshuffled each epoch
    it = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    for _ in range(2):
        next(it)
    state = pipeline.state_to_bytes(it)
    json.loads(state)  # JSON-serialisable
    expected = [next(it) for _ in range(4)]  # crosses the epoch boundary
    fresh = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    pipeline.state_from_bytes(fresh, state)
    for want, got in zip(expected, [next(fresh) for _ in range(4)], strict=True):
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_array_equal(want[k], got[k], err_msg=k)


def test_shards_are_disjoint_and_cover_the_data(data):
    cfg = dataclasses.replace(CFG, batch_size=2)
    shard0 = _ids(_batches(data, cfg, shard_index=0, shard_count=2))
    shard1 = _ids(_batches(data, cfg, shard_index=1, shard_count=2))
    assert len(shard0) == len(shard1) == 6
    assert not set(shard0) & set(shard1)
    assert sorted(shard0 + shard1) == sorted(f"train-3-{i}" for i in range(12))


def test_shuffle_order_depends_on_the_seed_only(data):
    first = _ids(_batches(data))
    assert _ids(_batches(data)) == first
    assert _ids(_batches(data, dataclasses.replace(CFG, seed=2))) != first
    unshuffled = _ids(_batches(data, dataclasses.replace(CFG, shuffle=False)))
    assert unshuffled == [f"train-3-{i}" for i in range(12)]


def test_overlong_example_raises_naming_the_example(data):
    cfg = dataclasses.replace(CFG, seq_len=64, shuffle=False)
    with pytest.raises(
        pipeline.ExampleTooLong, match=r"example 'train-3-0' has \d+ tokens, more than seq_len=64"
    ):
        _batches(data, cfg)


def test_overlong_examples_can_be_skipped(data):
    source, tokenizer = data
    transform = pipeline.TokenizeExample(CFG, tokenizer, IMAGE_CFG)
    lengths = sorted(int(transform.map(source[i])["attention_mask"].sum()) for i in range(12))
    seq_len = lengths[7]  # keeps at least 8 examples (ties keep more)
    kept = sum(n <= seq_len for n in lengths)
    cfg = dataclasses.replace(CFG, seq_len=seq_len, skip_overlong=True, batch_size=2)
    batches = _batches(data, cfg)
    assert len(_ids(batches)) == kept - kept % 2
    assert all(b["input_ids"].shape == (2, seq_len) for b in batches)


@pytest.mark.parametrize(
    "field, value",
    [
        ("batch_size", 0),
        ("seq_len", -1),
        ("num_epochs", 0),
        ("worker_count", -1),
        ("drop_remainder", False),
        ("seed", -2),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CFG, **{field: value}).validate()


def test_num_patches_too_small_for_a_batch_is_an_error(data):
    cfg = dataclasses.replace(CFG, num_patches=2 * PATCHES)
    with pytest.raises(pipeline.ExampleTooLong, match="num_patches=128"):
        _batches(data, cfg)


def test_worker_processes_give_the_in_process_batches(data):
    cfg = dataclasses.replace(CFG, worker_count=2)
    source, tokenizer = data
    it = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    try:
        assert _ids(list(it)) == _ids(_batches(data))
    finally:
        it.close()


def _assert_same_batches(want_batches, got_batches):
    for want, got in zip(want_batches, got_batches, strict=True):
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_array_equal(want[k], got[k], err_msg=k)


def test_orbax_saved_iterator_resumes_identically(data, tmp_path):
    source, tokenizer = data
    cfg = dataclasses.replace(CFG, num_epochs=None)
    it = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    for _ in range(2):
        next(it)
    pipeline.save_iterator(it, tmp_path / "ckpt", step=2)
    expected = [next(it) for _ in range(3)]  # crosses the epoch boundary
    pipeline.save_iterator(it, tmp_path / "ckpt", step=5)
    fresh = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    assert pipeline.restore_iterator(fresh, tmp_path / "ckpt", step=2) == 2
    _assert_same_batches(expected, [next(fresh) for _ in range(3)])


def test_orbax_restore_defaults_to_the_latest_step(data, tmp_path):
    source, tokenizer = data
    cfg = dataclasses.replace(CFG, num_epochs=None)
    it = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    next(it)
    pipeline.save_iterator(it, tmp_path, step=1)
    next(it)
    pipeline.save_iterator(it, tmp_path, step=2)
    expected = [next(it) for _ in range(2)]
    fresh = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    assert pipeline.restore_iterator(fresh, tmp_path) == 2
    _assert_same_batches(expected, [next(fresh) for _ in range(2)])


def test_orbax_restore_without_a_checkpoint_names_the_directory(data, tmp_path):
    source, tokenizer = data
    it = iter(pipeline.make_dataset(source, CFG, tokenizer, IMAGE_CFG))
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        pipeline.restore_iterator(it, missing)
    assert not missing.exists()
    with pytest.raises(FileNotFoundError, match="saved steps: \\[\\]"):
        pipeline.restore_iterator(it, tmp_path)  # exists, but holds no checkpoint
    pipeline.save_iterator(it, tmp_path / "ckpt", step=0)
    with pytest.raises(FileNotFoundError, match="step 7"):
        pipeline.restore_iterator(it, tmp_path / "ckpt", step=7)
