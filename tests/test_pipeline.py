"""The grain batch pipeline: static shapes, answer-only loss mask, resumable state, shards."""

import collections
import dataclasses
import json
import types

import jax
import numpy as np
import pytest

from dreamr_jax.data import iterator_state, pipeline, synthetic_tfds
from dreamr_jax.data.steps import join_steps
from dreamr_jax.data.synthetic import SyntheticConfig
from dreamr_jax.models.config import VisionConfig
from dreamr_jax.models.positions import PromptImageMismatch, rope_index
from dreamr_jax.models.vision import host_vision_inputs
from dreamr_jax.processing.image import ImageProcessorConfig
from dreamr_jax.processing.tokenizer import save_byte_tokenizer
from dreamr_jax.training.objectives import prepare_batch

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
    state = iterator_state.state_to_bytes(it)
    json.loads(state)  # JSON-serialisable
    expected = [next(it) for _ in range(4)]  # crosses the epoch boundary
    fresh = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    iterator_state.state_from_bytes(fresh, state)
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
        ("cache_records", -1),
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


class _CountingSource:
    """A source that counts the reads of each index."""

    def __init__(self, source):
        self.source, self.reads = source, collections.Counter()

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        self.reads[index] += 1
        return self.source[index]


@pytest.mark.parametrize("cache", [12, 5])
def test_record_cache_saves_reads_and_changes_no_batch(data, cache):
    source, tokenizer = data
    # 3 epochs of 12 records; one read thread, so no two reads of one record overlap.
    cfg = dataclasses.replace(CFG, num_epochs=3, read_threads=1, verify_fraction=0.5)
    want = _batches(data, cfg)
    counting = _CountingSource(source)
    cached = dataclasses.replace(cfg, cache_records=cache)
    got = list(pipeline.make_dataset(counting, cached, tokenizer, IMAGE_CFG))
    _assert_same_batches(want, got)  # later epochs come from the cache, unchanged
    # The first `cache` records read are read once; any others, once per epoch.
    want_reads = +collections.Counter({1: cache, 3: 12 - cache})  # + drops a zero count
    assert collections.Counter(counting.reads.values()) == want_reads


def test_orbax_saved_iterator_resumes_identically(data, tmp_path):
    source, tokenizer = data
    cfg = dataclasses.replace(CFG, num_epochs=None)
    it = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    for _ in range(2):
        next(it)
    iterator_state.save_iterator(it, tmp_path / "ckpt", step=2)
    expected = [next(it) for _ in range(3)]  # crosses the epoch boundary
    iterator_state.save_iterator(it, tmp_path / "ckpt", step=5)
    fresh = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    assert iterator_state.restore_iterator(fresh, tmp_path / "ckpt", step=2) == 2
    _assert_same_batches(expected, [next(fresh) for _ in range(3)])


def test_orbax_restore_defaults_to_the_latest_step(data, tmp_path):
    source, tokenizer = data
    cfg = dataclasses.replace(CFG, num_epochs=None)
    it = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    next(it)
    iterator_state.save_iterator(it, tmp_path, step=1)
    next(it)
    iterator_state.save_iterator(it, tmp_path, step=2)
    expected = [next(it) for _ in range(2)]
    fresh = iter(pipeline.make_dataset(source, cfg, tokenizer, IMAGE_CFG))
    assert iterator_state.restore_iterator(fresh, tmp_path) == 2
    _assert_same_batches(expected, [next(fresh) for _ in range(2)])


def test_orbax_restore_without_a_checkpoint_names_the_directory(data, tmp_path):
    source, tokenizer = data
    it = iter(pipeline.make_dataset(source, CFG, tokenizer, IMAGE_CFG))
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        iterator_state.restore_iterator(it, missing)
    assert not missing.exists()
    with pytest.raises(FileNotFoundError, match="saved steps: \\[\\]"):
        iterator_state.restore_iterator(it, tmp_path)  # exists, but holds no checkpoint
    iterator_state.save_iterator(it, tmp_path / "ckpt", step=0)
    with pytest.raises(FileNotFoundError, match="step 7"):
        iterator_state.restore_iterator(it, tmp_path / "ckpt", step=7)


# --- the batched path (TokenizeBatch) against the per-example reference -------------------------

VERIFY = dataclasses.replace(CFG, verify_fraction=0.5, verify_weight=3)


def _assert_identical(want, got):
    """Same keys in the same order, dtypes, shapes and bytes."""
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert np.array_equal(got[k], want[k]), k


def _no_rope_index(*args):
    raise AssertionError("the batched path called rope_index")


@pytest.mark.parametrize("cfg", [CFG, VERIFY], ids=["chains", "with_verification"])
def test_batched_path_is_the_reference_bit_for_bit(data, cfg, monkeypatch):
    source, tokenizer = data
    batcher = pipeline.TokenizeBatch(cfg, tokenizer, IMAGE_CFG)
    lengths, verify_rows = set(), 0
    for start in range(0, 12, 4):
        # (record, epoch), and (record, epoch, role) as verify_pairs makes them
        records = [(source[i], i % 3) for i in range(start, start + 2)]
        records += [(source[start], 1, "reference"), (source[start], 1, "corrupted")]
        want = pipeline.collate([batcher.example.map(r) for r in records], cfg.num_patches)
        with monkeypatch.context() as patch:
            patch.setattr(pipeline, "rope_index", _no_rope_index)
            got = batcher.fast(records)  # None would mean the reference path made the batch
        assert got is not None
        _assert_identical(want, got)
        lengths |= set(want["attention_mask"].sum(axis=1).tolist())
        verify_rows += int((want["loss_mask"].max(axis=1) == 3).sum())
    assert len(lengths) >= 4  # rows of different lengths
    assert (verify_rows > 0) == bool(cfg.verify_fraction)


def test_dataset_batches_are_the_reference_rows_collated(data):
    source, tokenizer = data
    reference = pipeline.TokenizeExample(VERIFY, tokenizer, IMAGE_CFG)
    passes = collections.Counter()  # a record's epoch: how often it was read before
    for batch in _batches(data, dataclasses.replace(VERIFY, num_epochs=2)):
        records = []
        for i in map(str, batch["id"]):
            records.append((source[int(i.rsplit("-", 1)[1])], passes[i]))
            passes[i] += 1
        _assert_identical(
            pipeline.collate([reference.map(r) for r in records], VERIFY.num_patches), batch
        )


def test_batched_path_leaves_overlong_batches_to_the_reference(data):
    source, tokenizer = data
    cfg = dataclasses.replace(CFG, seq_len=64)
    batcher = pipeline.TokenizeBatch(cfg, tokenizer, IMAGE_CFG)
    records = [source[i] for i in range(4)]
    assert batcher.fast([(r, 0) for r in records]) is None
    with pytest.raises(pipeline.ExampleTooLong, match="example 'train-3-0' has"):
        batcher.map(records)


def test_bad_record_gives_the_reference_error(data):
    source, _ = data
    records = [dict(source[i]) for i in range(12)]
    records[5]["image"] = records[5]["image"].astype(np.float32)
    with pytest.raises(ValueError, match="image 0 has dtype float32"):
        _batches((records, data[1]), dataclasses.replace(CFG, shuffle=False))


def test_batched_path_failure_on_good_input_is_logged_and_the_batch_still_made(data, monkeypatch):
    source, tokenizer = data
    batcher = pipeline.TokenizeBatch(CFG, tokenizer, IMAGE_CFG)
    records = [(source[i], 0) for i in range(4)]
    want = batcher.map(records)
    assert not batcher.reported  # good input: the batched path made it

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    # (this batcher only: a module-level patch also breaks the prefetch threads of other
    # tests' iterators still running, whose batchers then log too)
    monkeypatch.setattr(batcher, "assemble", broken)
    warnings = []
    monkeypatch.setattr(pipeline.logging, "warning", lambda *a: warnings.append(a[0] % a[1:]))
    for _ in range(2):
        _assert_identical(want, batcher.map(records))
    assert batcher.reported
    assert len(warnings) == 1 and "RuntimeError: simulated bug" in warnings[0]


def _rope_rows(rng, b: int, t: int, start_id: int, image_id: int):
    """Right-padded rows ``text <vision_start> image-tokens text`` with random grids."""
    ids, grids = np.zeros((b, t), np.int32), []
    for row in range(b):
        grid = [1, 2 * int(rng.integers(1, 4)), 2 * int(rng.integers(1, 4))]
        before = rng.integers(10, 20, int(rng.integers(0, 5))).tolist() + [start_id]
        after = rng.integers(10, 20, int(rng.integers(0, 8))).tolist()
        tokens = before + [image_id] * (grid[1] * grid[2] // 4) + after
        ids[row, : len(tokens)] = tokens
        grids.append(grid)
    return ids, (ids != 0).astype(np.int32), np.asarray(grids)


def test_one_image_positions_are_rope_index(monkeypatch):
    rope_cfg = types.SimpleNamespace(
        vision=types.SimpleNamespace(spatial_merge_size=2),
        vision_start_token_id=5,
        image_token_id=6,
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids, mask, grid = _rope_rows(rng, 5, 64, 5, 6)
        want = rope_index(ids, grid, mask, rope_cfg)[0]
        with monkeypatch.context() as patch:
            patch.setattr(pipeline, "rope_index", _no_rope_index)
            got = pipeline._one_image_positions(ids, mask, grid, rope_cfg)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    # Other layouts go to rope_index: two images in row 0 and none in row 1 ...
    ids, mask, grid = _rope_rows(rng, 2, 64, 5, 6)
    n = int(mask[0].sum())
    ids[0, n : n + 3], ids[1] = [5, 6, 9], np.where(ids[1] == 6, 7, ids[1])
    grid[1] = [1, 2, 2]  # the second image of row 0: one token
    mask = (ids != 0).astype(np.int32)
    want = rope_index(ids, grid, mask, rope_cfg)[0]
    assert np.array_equal(pipeline._one_image_positions(ids, mask, grid, rope_cfg), want)
    # ... and a stray image token after the image raises rope_index's error.
    ids, mask, grid = _rope_rows(rng, 2, 64, 5, 6)
    ids[0, 60], mask[0, 60] = 6, 1
    with pytest.raises(PromptImageMismatch):
        pipeline._one_image_positions(ids, mask, grid, rope_cfg)


@pytest.mark.parametrize("patches_per_row", [PATCHES, PATCHES + 8])
def test_prepare_batch_gives_each_row_its_vision_inputs(data, patches_per_row):
    batch = _batches(data)[0]
    model_cfg = types.SimpleNamespace(vision=VisionConfig(patch_size=8, num_position_embeddings=64))
    vision = prepare_batch(batch, model_cfg, patches_per_row=patches_per_row)["vision"]
    for row, grid in enumerate(batch["image_grid_thw"]):
        pixels = batch["pixel_values"][row * PATCHES : (row + 1) * PATCHES]
        want = host_vision_inputs(pixels, grid[None], model_cfg.vision, pad_to=patches_per_row)
        for got_b, want_row in zip(jax.tree.leaves(vision), jax.tree.leaves(want), strict=True):
            assert got_b.dtype == want_row.dtype and np.array_equal(got_b[row], want_row)
