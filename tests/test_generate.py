"""Generation: HF parity, cached == uncached decoding, sampling, stopping, no recompilation
and bad input.

The reference is transformers' ``Qwen3VLForConditionalGeneration`` with random weights on
tiny configs, saved with ``save_pretrained`` and loaded with `hf.load_pretrained` in fp32.
Greedy generation must match token for token; cached logits must match the full forward to
1e-5 (fp32).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from dreamr_jax.inference import (
    CacheTooShort,
    SamplingConfig,
    generate,
    make_batch,
    sample,
    truncate_at_stop,
)
from dreamr_jax.models import KVCache, PromptImageMismatch, hf, rope_index, vision_inputs
from dreamr_jax.models import config as config_lib

# `dreamr_jax.inference.generate` is the re-exported function; the module holds `_generate`.
generate_module = importlib.import_module("dreamr_jax.inference.generate")

MAX_NEW = 16
ATOL = 1e-5  # fp32 cached vs full forward


@dataclasses.dataclass(frozen=True)
class Pair:
    """The same random weights as a transformers model and as ours."""

    torch_model: Qwen3VLForConditionalGeneration
    model: object
    cfg: config_lib.ModelConfig


def _make_pair(path, cfg: config_lib.ModelConfig, seed: int) -> Pair:
    torch.manual_seed(seed)
    tm = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**config_lib.to_hf_dict(cfg))).eval()
    with torch.no_grad():  # norms all start at 1; perturb them so a misplaced norm shows
        for name, p in tm.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    tm.save_pretrained(path)
    model, loaded = hf.load_pretrained(path, dtype=jnp.float32)
    assert loaded == cfg
    return Pair(tm, model, cfg)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Pair:
    return _make_pair(tmp_path_factory.mktemp("ckpt"), config_lib.tiny_config(), seed=0)


@pytest.fixture(scope="module")
def tied_pair(tmp_path_factory) -> Pair:
    cfg = config_lib.tiny_config(tie_word_embeddings=True, num_heads=8, num_kv_heads=2)
    assert cfg.text.num_heads // cfg.text.num_kv_heads == 4
    return _make_pair(tmp_path_factory.mktemp("ckpt_tied"), cfg, seed=1)


# ------------------------------------------------------------------------- prompt helpers


def _text(rng, n: int) -> list[int]:
    return [int(x) for x in rng.integers(1, 200, n)]


def _image(cfg: config_lib.ModelConfig, grid) -> list[int]:
    """<vision_start>, one placeholder per merged patch, <vision_end>."""
    n = int(np.prod(grid)) // cfg.vision.spatial_merge_size**2
    return [cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id]


def _pixels(rng, cfg: config_lib.ModelConfig, grids) -> np.ndarray:
    n = int(np.prod(np.asarray(grids), axis=1).sum())
    return rng.standard_normal((n, cfg.vision.patch_dim)).astype(np.float32)


def _left_pad(prompts, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    length = length or max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), length), np.int64)
    mask = np.zeros((len(prompts), length), np.int64)
    for row, p in enumerate(prompts):
        ids[row, length - len(p) :] = p
        mask[row, length - len(p) :] = 1
    return ids, mask


def _hf_greedy(tm, prompts, pixel_values=None, image_grid_thw=None) -> np.ndarray:
    ids, mask = _left_pad(prompts)
    kw = {}
    if pixel_values is not None:
        kw = dict(
            pixel_values=torch.from_numpy(pixel_values),
            image_grid_thw=torch.from_numpy(np.asarray(image_grid_thw, np.int64)),
        )
    with torch.no_grad():
        out = tm.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            **kw,
        )
    return out[:, ids.shape[1] :].numpy()


def _ours_greedy(p: Pair, prompts, pixel_values=None, image_grid_thw=None, **sampling):
    batch = make_batch(p.cfg, prompts, pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    return generate(p.model, batch, SamplingConfig(max_new_tokens=MAX_NEW, **sampling))


# ------------------------------------------------------------------- 1. greedy HF parity


def _case_text(cfg, rng):
    return [_text(rng, 5), _text(rng, 11)], None, None


def _case_one_image(cfg, rng):
    grids = np.array([[1, 4, 4]])
    return [_text(rng, 3) + _image(cfg, grids[0]) + _text(rng, 4)], _pixels(rng, cfg, grids), grids


def _case_two_images(cfg, rng):
    grids = np.array([[1, 4, 6], [1, 2, 4]])
    row0 = _text(rng, 3) + _image(cfg, grids[0]) + _text(rng, 2) + _image(cfg, grids[1])
    return [row0 + _text(rng, 4), _text(rng, 9)], _pixels(rng, cfg, grids), grids


def _case_tied(cfg, rng):
    grids = np.array([[1, 2, 6]])
    row0 = _text(rng, 2) + _image(cfg, grids[0]) + _text(rng, 3)
    return [row0, _text(rng, 6)], _pixels(rng, cfg, grids), grids


@pytest.mark.parametrize(
    "fixture, case",
    [
        ("pair", _case_text),
        ("pair", _case_one_image),
        ("pair", _case_two_images),
        ("tied_pair", _case_tied),
    ],
    ids=["text_left_pad", "one_image", "two_images_padded_row", "tied_gqa4"],
)
def test_greedy_matches_hf_generate(request, fixture, case):
    p = request.getfixturevalue(fixture)
    prompts, pix, grids = case(p.cfg, np.random.default_rng(0))
    ours = _ours_greedy(p, prompts, pix, grids)
    ref = _hf_greedy(p.torch_model, prompts, pix, grids)
    np.testing.assert_array_equal(np.asarray(ours.tokens), ref)
    np.testing.assert_array_equal(np.asarray(ours.lengths), [MAX_NEW] * len(prompts))


# --------------------------------------------------------- 2. cached == full forward


PREFILL = 14  # covers the image span (columns 3..10) of the cached-test prompt
CACHE = 32


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward(graphdef, state, ids, positions, mask, vision, cache):
    """`Qwen3VL.forward`, jitted: eager op-by-op dispatch is far slower than compiling."""
    out = nnx.merge(graphdef, state).forward(ids, positions, mask, vision=vision, cache=cache)
    return out.logits, out.cache


@pytest.fixture(scope="module")
def cached_case(pair):
    """A 23-token prompt with one image (row 0) and a left-padded text row (row 1).

    Returns ``{rows: (PromptBatch, full-forward logits [rows, 23, v])}`` for the one-row
    prompt (bucketed by `make_batch` to 32 columns, its full forward unpadded) and the
    two-row batch (23 columns). The full forward is `Qwen3VL.forward` jitted, checked once
    against the eager ``model(input_ids, pixel_values=..., image_grid_thw=...,
    attention_mask=...)``.
    """
    cfg, rng = pair.cfg, np.random.default_rng(3)
    grids = np.array([[1, 4, 6]])
    row0 = _text(rng, 3) + _image(cfg, grids[0]) + _text(rng, 12)
    prompts = [row0, _text(rng, 15)]
    pix = _pixels(rng, cfg, grids)
    graphdef, state = nnx.split(pair.model)
    vision = vision_inputs(pix, grids, cfg.vision)
    out = {}
    for rows in (1, 2):
        ids, mask = _left_pad(prompts[:rows])
        positions, _ = rope_index(ids, grids, mask, cfg)
        full, _ = _forward(graphdef, state, ids, positions, mask, vision, None)
        if rows == 2:  # once (eager is slow): the jitted reference is the HF-style call
            call = pair.model(ids, pixel_values=pix, image_grid_thw=grids, attention_mask=mask)
            np.testing.assert_allclose(np.asarray(call.logits), full, rtol=0, atol=ATOL)
        length = None if rows == 1 else len(row0)
        batch = make_batch(
            cfg, prompts[:rows], pixel_values=pix, image_grid_thw=grids, length=length
        )
        out[rows] = (batch, np.asarray(full))
    assert out[1][0].input_ids.shape[1] == CACHE and len(row0) == 23
    return out


def _prefill_chunks(model, batch, splits):
    """Prefills ``batch`` into a fresh cache in chunks ending at ``splits``; the vision
    inputs go with the chunk that holds the image tokens.

    Returns:
      ``(logits [b, splits[-1], v], cache)``.
    """
    graphdef, state = nnx.split(model)
    cache = KVCache.init(model.cfg.text, batch.input_ids.shape[0], CACHE)
    logits, start = [], 0
    for end in splits:
        ids = batch.input_ids[:, start:end]
        has_image = bool(jnp.any(ids == model.cfg.image_token_id))
        out, cache = _forward(
            graphdef,
            state,
            ids,
            batch.positions[:, :, start:end],
            batch.attention_mask[:, start:end],
            batch.vision if has_image else None,
            cache,
        )
        logits.append(out)
        start = end
    return jnp.concatenate(logits, axis=1), cache


@pytest.mark.parametrize("rows", [1, 2], ids=["single", "left_padded_batch"])
@pytest.mark.parametrize("chunks", [1, 2], ids=["one_prefill", "two_chunk_prefill"])
def test_cached_decoding_matches_full_forward(pair, cached_case, rows, chunks):
    batch, full = cached_case[rows]
    b, t = batch.input_ids.shape
    pad = t - full.shape[1]  # extra left padding of the bucketed one-row batch
    prefill = pad + PREFILL
    real = np.asarray(batch.attention_mask, bool)
    assert np.all(real[:, prefill:])  # teacher-forced tokens are all real
    # Two chunks split just before <vision_start>: the second one carries the image.
    splits = (prefill,) if chunks == 1 else (pad + 3, prefill)
    logits, cache = _prefill_chunks(pair.model, batch, splits)
    got = np.asarray(logits)[:, pad:][real[:, pad:prefill]]
    np.testing.assert_allclose(got, full[:, :PREFILL][real[:, pad:prefill]], rtol=0, atol=ATOL)
    assert int(cache.index) == prefill
    graphdef, state = nnx.split(pair.model)
    for col in range(prefill, t):
        np.testing.assert_array_equal(cache.next_pos, batch.positions[0, :, col])
        pos = jnp.broadcast_to(cache.next_pos[None, :, None], (3, b, 1))
        step, cache = _forward(
            graphdef,
            state,
            batch.input_ids[:, col : col + 1],
            pos,
            jnp.ones((b, 1), jnp.int32),
            None,
            cache,
        )
        np.testing.assert_allclose(
            np.asarray(step[:, 0]), full[:, col - pad], rtol=0, atol=ATOL, err_msg=f"column {col}"
        )
    assert int(cache.index) == t


def test_chunked_prefill_equals_one_prefill(pair, cached_case):
    batch, _ = cached_case[2]
    one_logits, one = _prefill_chunks(pair.model, batch, (PREFILL,))
    # Three chunks; row 1 (8 padding columns) sees an all-padding first chunk.
    three_logits, three = _prefill_chunks(pair.model, batch, (2, 11, PREFILL))
    real = np.asarray(batch.attention_mask[:, :PREFILL], bool)
    np.testing.assert_allclose(
        np.asarray(three_logits)[real], np.asarray(one_logits)[real], rtol=0, atol=ATOL
    )
    np.testing.assert_array_equal(three.mask, one.mask)
    np.testing.assert_array_equal(three.next_pos, one.next_pos)
    assert int(three.index) == int(one.index) == PREFILL
    slots = np.asarray(one.mask)  # keys/values of padding slots are masked, so unchecked
    for layer in range(pair.model.cfg.text.num_layers):
        for name, a, c in zip("kv", three.layer_kv(layer), one.layer_kv(layer), strict=True):
            np.testing.assert_allclose(
                np.asarray(a)[slots], np.asarray(c)[slots], rtol=0, atol=ATOL, err_msg=name
            )


# ------------------------------------------------------------------------- 3. sampling


N_DRAWS = 4096


_sample_many = jax.jit(jax.vmap(sample, in_axes=(None, 0, None)), static_argnums=2)


def _draws(logits, cfg: SamplingConfig, seed: int = 0) -> np.ndarray:
    """``[N_DRAWS, b]`` tokens, one independent key per draw."""
    keys = jax.random.split(jax.random.key(seed), N_DRAWS)
    return np.asarray(_sample_many(logits, keys, cfg))


@pytest.fixture(scope="module")
def random_logits():
    return jax.random.normal(jax.random.key(7), (4, 64)) * 3.0


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(temperature=1.0, top_k=1),
        SamplingConfig(temperature=5.0, top_p=1e-6),
        SamplingConfig(temperature=0.0, top_k=5, top_p=0.5),
    ],
    ids=["top_k_1", "top_p_tiny", "temperature_0"],
)
def test_degenerate_sampling_is_greedy(random_logits, cfg):
    greedy = np.asarray(jnp.argmax(random_logits, axis=-1))
    draws = _draws(random_logits, cfg)
    np.testing.assert_array_equal(draws, np.broadcast_to(greedy, draws.shape))


def test_top_k_support_is_exactly_the_top_k():
    rng = np.random.default_rng(0)
    # Close logits: without top-k the other tokens would be drawn often.
    values = np.concatenate([[5.0, 4.9, 4.8, 4.7, 4.6], np.linspace(4.5, 3.0, 27)])
    logits = np.stack([rng.permutation(values) for _ in range(2)]).astype(np.float32)
    draws = _draws(jnp.asarray(logits), SamplingConfig(temperature=1.0, top_k=5))
    for row in range(2):
        top5 = set(np.argsort(-logits[row])[:5].tolist())
        assert set(draws[:, row].tolist()) == top5
    unfiltered = _draws(jnp.asarray(logits), SamplingConfig(temperature=1.0))
    assert not set(unfiltered[:, 0].tolist()) <= set(np.argsort(-logits[0])[:5].tolist())


def test_top_p_keeps_exactly_the_nucleus():
    probs = np.array([0.4, 0.3, 0.15, 0.1, 0.05])  # nucleus for p = 0.8: first three (0.85)
    perms = [np.array([3, 0, 4, 2, 1]), np.array([4, 2, 1, 3, 0])]  # token of each prob
    logits = np.full((2, 5), 0.0, np.float32)
    for row, perm in enumerate(perms):
        logits[row, perm] = np.log(probs)
    draws = _draws(jnp.asarray(logits), SamplingConfig(temperature=1.0, top_p=0.8))
    for row, perm in enumerate(perms):
        assert set(draws[:, row].tolist()) == set(perm[:3].tolist())
        freq = np.bincount(draws[:, row], minlength=5)[perm[:3]] / N_DRAWS
        np.testing.assert_allclose(freq, probs[:3] / probs[:3].sum(), atol=0.03)


def test_temperature_sharpens_distribution():
    probs = np.array([0.5, 0.3, 0.2])
    logits = jnp.asarray(np.log(probs)[None].astype(np.float32))
    draws = _draws(logits, SamplingConfig(temperature=0.5))[:, 0]
    want = probs**2 / np.sum(probs**2)  # softmax(log p / 0.5)
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / N_DRAWS, want, atol=0.03)


def test_same_rng_same_tokens(random_logits):
    cfg = SamplingConfig(temperature=1.5, top_k=20, top_p=0.9)
    a = _draws(random_logits, cfg, seed=3)
    np.testing.assert_array_equal(a, _draws(random_logits, cfg, seed=3))
    assert not np.array_equal(a, _draws(random_logits, cfg, seed=4))


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-0.1), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(stop_sequences=((1, 2), ())), "stop_sequences"),
    ],
)
def test_sampling_config_validate_rejects(kw, field):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**kw).validate()


def test_generate_validates_sampling(pair):
    batch = make_batch(pair.cfg, [[1, 2, 3]])
    with pytest.raises(ValueError, match="top_p"):
        generate(pair.model, batch, SamplingConfig(top_p=0.0))


# ------------------------------------------------------------------------- 4. stopping


@pytest.fixture(scope="module")
def stop_case(pair):
    """Text prompts and their unstopped greedy continuations ``[2, MAX_NEW]``."""
    rng = np.random.default_rng(15)  # seed chosen so that each stop case below exists
    prompts = [_text(rng, 6), _text(rng, 10)]
    return prompts, np.asarray(_ours_greedy(pair, prompts).tokens)


def _expected(ref: np.ndarray, stop_ids=(), stop_seqs=(), pad=-1):
    """Greedy continuations cut after the first stop token or completed stop sequence."""
    out, lengths = np.full_like(ref, pad), []
    for r, row in enumerate(ref.tolist()):
        n = len(row)
        for i, tok in enumerate(row):
            hit = tok in stop_ids or any(
                tuple(row[max(0, i + 1 - len(s)) : i + 1]) == s for s in stop_seqs
            )
            if hit:
                n = i + 1
                break
        out[r, :n] = row[:n]
        lengths.append(n)
    return out, np.array(lengths)


def test_stop_token_stops_only_its_row(pair, stop_case):
    prompts, ref = stop_case
    # A token first seen at step j >= 2 of row 0 that row 1 never emits.
    j = next(
        j for j in range(2, MAX_NEW) if ref[0, j] not in ref[0, :j] and ref[0, j] not in ref[1]
    )
    stop = int(ref[0, j])
    out = _ours_greedy(pair, prompts, stop_token_ids=(stop,), pad_id=-1)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    np.testing.assert_array_equal(lengths, [j + 1, MAX_NEW])
    np.testing.assert_array_equal(tokens[0, : j + 1], ref[0, : j + 1])
    assert np.all(tokens[0, j + 1 :] == -1)
    np.testing.assert_array_equal(tokens[1], ref[1])


def test_stop_tokens_in_every_row_end_the_loop(pair, stop_case):
    prompts, ref = stop_case
    stops = (int(ref[0, 2]), int(ref[1, 4]))
    out = _ours_greedy(pair, prompts, stop_token_ids=stops, pad_id=-1)
    want_tokens, want_lengths = _expected(ref, stop_ids=stops)
    assert np.all(want_lengths < MAX_NEW)
    np.testing.assert_array_equal(np.asarray(out.tokens), want_tokens)
    np.testing.assert_array_equal(np.asarray(out.lengths), want_lengths)


def test_stop_sequence_stops_after_its_last_token(pair, stop_case):
    prompts, ref = stop_case
    r0, r1 = ref.tolist()

    def bigrams(row, end):
        return {tuple(row[i - 1 : i + 1]) for i in range(1, end)}

    # Bigram (a, b) completing at step j in row 0 only, where b alone appeared earlier: a
    # last-token-only check would stop too early.
    j = next(
        j
        for j in range(2, MAX_NEW)
        if tuple(r0[j - 1 : j + 1]) not in bigrams(r0, j) | bigrams(r1, MAX_NEW)
        and r0[j] in r0[: j - 1]
    )
    seq = tuple(r0[j - 1 : j + 1])
    # Decoy: row 1's last token behind a first token that never precedes it.
    decoy = next((x, r1[-1]) for x in range(256) if (x, r1[-1]) not in bigrams(r0 + r1, 32))
    out = _ours_greedy(pair, prompts, stop_sequences=(seq, decoy), pad_id=-1)
    want_tokens, want_lengths = _expected(ref, stop_seqs=(seq, decoy))
    np.testing.assert_array_equal(want_lengths, [j + 1, MAX_NEW])
    np.testing.assert_array_equal(np.asarray(out.tokens), want_tokens)
    np.testing.assert_array_equal(np.asarray(out.lengths), want_lengths)


def test_stop_sequence_longer_than_max_new_tokens_never_fires(pair, stop_case):
    # Such a sequence cannot complete inside the generated tokens; it must be inert, not
    # crash the trace (dynamic_slice wider than the output buffer).
    prompts, ref = stop_case
    seq = tuple(int(x) for x in ref[0, :3])
    batch = make_batch(pair.cfg, prompts)
    out = generate(pair.model, batch, SamplingConfig(max_new_tokens=2, stop_sequences=(seq,)))
    np.testing.assert_array_equal(np.asarray(out.tokens), ref[:, :2])
    np.testing.assert_array_equal(np.asarray(out.lengths), [2, 2])


@pytest.mark.parametrize(
    "text, stops, want",
    [
        ("The answer is 42.<|im_end|>junk", ["<|im_end|>"], "The answer is 42."),
        ("a STOP b END c", ["END", "STOP"], "a "),  # earliest occurrence wins, not list order
        ("no stop here", ["<|im_end|>"], "no stop here"),
        ("END at start", ["END"], ""),
        ("anything", [], "anything"),
    ],
)
def test_truncate_at_stop(text, stops, want):
    assert truncate_at_stop(text, stops) == want


# ------------------------------------------------------------------ 5. no recompilation


def test_same_buckets_reuse_one_program(pair):
    cfg, rng = pair.cfg, np.random.default_rng(5)

    def image_prompts(pre, grid, post, other):
        grids = np.array([grid])
        row0 = _text(rng, pre) + _image(cfg, grid) + _text(rng, post)
        return [row0, _text(rng, other)], _pixels(rng, cfg, grids), grids

    # Prompt lengths 15 and 14 share bucket 16; 24 and 32 patches share patch bucket 32.
    first = image_prompts(2, [1, 4, 6], 5, 7)
    second = image_prompts(3, [1, 4, 8], 1, 13)
    _ours_greedy(pair, *first)
    size = generate_module._generate._cache_size()
    out = _ours_greedy(pair, *second)
    assert generate_module._generate._cache_size() == size
    # The reused program is still right for the new prompt and image size.
    np.testing.assert_array_equal(np.asarray(out.tokens), _hf_greedy(pair.torch_model, *second))
    # 40 tokens: bucket 64, which no other test in this module uses.
    _ours_greedy(pair, *image_prompts(2, [1, 4, 6], 30, 7))
    assert generate_module._generate._cache_size() == size + 1


# ----------------------------------------------------------------------- 6. bad input


def test_cache_too_short_names_both_numbers(pair):
    batch = make_batch(pair.cfg, [[1, 2, 3]])  # bucketed to 16
    with pytest.raises(CacheTooShort) as err:
        generate(pair.model, batch, SamplingConfig(max_new_tokens=10), cache_length=20)
    msg = str(err.value)
    for n in ("16", "10", "20"):
        assert re.search(rf"\b{n}\b", msg), msg


def test_prompt_longer_than_batch_length(pair):
    with pytest.raises(CacheTooShort) as err:
        make_batch(pair.cfg, [[1] * 20, [2] * 3], length=16)
    msg = str(err.value)
    assert re.search(r"\b20\b", msg) and re.search(r"\b16\b", msg), msg


def test_image_token_count_mismatch(pair):
    cfg, rng = pair.cfg, np.random.default_rng(0)
    grids = np.array([[1, 4, 6]])  # 6 merged tokens
    short = [cfg.vision_start_token_id] + [cfg.image_token_id] * 5 + [cfg.vision_end_token_id]
    with pytest.raises(PromptImageMismatch, match="5 image tokens"):
        make_batch(
            cfg,
            [_text(rng, 3) + short],
            pixel_values=_pixels(rng, cfg, grids),
            image_grid_thw=grids,
        )


def test_image_tokens_without_pixels(pair):
    cfg = pair.cfg
    with pytest.raises(PromptImageMismatch, match="pixel_values"):
        make_batch(cfg, [[1, 2] + _image(cfg, [1, 4, 4])])


@pytest.mark.parametrize("missing", ["image_grid_thw", "pixel_values"])
def test_image_inputs_given_alone(pair, missing):
    cfg, rng = pair.cfg, np.random.default_rng(0)
    grids = np.array([[1, 4, 4]])
    kw = dict(pixel_values=_pixels(rng, cfg, grids), image_grid_thw=grids)
    del kw[missing]
    with pytest.raises(ValueError, match=missing):
        make_batch(cfg, [[1, 2] + _image(cfg, grids[0])], **kw)


def test_generate_accepts_a_split_model(pair):
    prompts, pix, grids = _case_one_image(pair.cfg, np.random.default_rng(1))
    batch = make_batch(pair.cfg, prompts, pixel_values=pix, image_grid_thw=grids)
    sampling = SamplingConfig(max_new_tokens=MAX_NEW, temperature=0.7, top_k=20)
    key = jax.random.key(3)
    whole = generate(pair.model, batch, sampling, rng=key)
    split = generate(nnx.split(pair.model), batch, sampling, rng=key)
    np.testing.assert_array_equal(np.asarray(split.tokens), np.asarray(whole.tokens))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_suppressed_tokens_are_never_sampled(random_logits, temperature):
    top = np.asarray(jnp.argmax(random_logits, -1))
    banned = tuple(sorted(set(top.tolist())))  # every row's most likely token
    cfg = SamplingConfig(temperature=temperature, suppress_token_ids=banned)
    draws = _draws(random_logits, cfg)
    assert not np.isin(draws, banned).any()
