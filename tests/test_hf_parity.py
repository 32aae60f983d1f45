"""Parity with transformers' PyTorch Qwen3-VL (the oracle) on random tiny configs.

End to end (HF save -> our load -> same logits), block by block (same weights, same inputs,
submodules called directly), checkpoint round trips in both directions (single file,
sharded, bf16, the transformers 5.x config layout), and bad checkpoints / prompts that must
fail with an error naming the problem while leaving the checkpoint untouched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import nnx
from hf_utils import (
    build_hf_model,
    dir_hashes,
    hf_logits,
    make_pixels,
    make_prompts,
    max_abs_diff,
    merged_tokens,
    our_logits,
    save_hf_checkpoint,
)
from transformers import Qwen3VLForConditionalGeneration

from dreamr_jax.models import config as config_lib
from dreamr_jax.models import hf, positions, safetensors_io, text, vision
from dreamr_jax.models.qwen3_vl import Qwen3VL

#: Max abs difference of fp32 logits (and block outputs) at real, non-pad positions.
#: Stated once and never loosened to make a test pass.
TOL = 1e-4
#: bf16 weights *and* bf16 compute against the fp32 reference: max abs logit difference.
#: Logits here reach |4|; bf16 keeps 8 mantissa bits (~4e-3 relative per rounding) and
#: errors accumulate over 3 vision + 3 text layers: transformers' own bf16 model is off by
#: 0.05-0.09. We allow 0.25 (~6% of the largest logit) and, sharper, at most
#: BF16_VS_HF times the error of transformers in bf16 on the same checkpoint.
BF16_TOL = 0.25
BF16_VS_HF = 2.0

# Tiny configs covering GQA ratios n/k = 1, 2, 4, tied and untied heads and several
# DeepStack layer choices (3 text layers, 3 vision blocks each).
CONFIGS = {
    "gqa1_untied_ds02": dict(
        num_heads=4, num_kv_heads=4, tie_word_embeddings=False, deepstack=(0, 2)
    ),
    "gqa2_tied_ds0": dict(num_heads=4, num_kv_heads=2, tie_word_embeddings=True, deepstack=(0,)),
    "gqa4_untied_ds1": dict(num_heads=8, num_kv_heads=2, tie_word_embeddings=False, deepstack=(1,)),
    "gqa4_tied_ds012": dict(
        num_heads=4,
        num_kv_heads=1,
        tie_word_embeddings=True,
        deepstack=(0, 1, 2),
        vision_heads=4,
    ),
}
#: Images per prompt row, as (t, h, w) patch grids. The 8x8 learned position table is both
#: shrunk (2x4) and stretched (10x8) by the interpolation.
PROMPTS = {
    "text_only": [[], []],
    "one_image": [[(1, 4, 6)]],
    "two_images": [[(1, 4, 6), (1, 10, 8)]],
    "padded_text_row_and_image_row": [[], [(1, 6, 4)]],
    "padded_multi_image": [[(1, 2, 4), (1, 8, 8)], [(1, 4, 4)]],
    "multi_frame_images": [[(2, 4, 4)], [(1, 2, 2), (2, 2, 6)]],
}
BLOCK_CONFIG = "gqa4_tied_ds012"  # three DeepStack mergers, 4 vision heads
CHECK_CONFIG = "gqa4_untied_ds1"  # the checkpoint the round-trip / bad-input tests use
VISION_GRIDS = np.array([[1, 4, 6], [1, 10, 8], [2, 4, 4], [1, 2, 2]])


class Reference(NamedTuple):
    cfg: config_lib.ModelConfig
    loaded_cfg: config_lib.ModelConfig
    hf_model: Qwen3VLForConditionalGeneration
    ours: Qwen3VL
    path: Path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``get(name)``: the `Reference` for ``CONFIGS[name]``, built and saved once per module."""
    cache: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in cache:
            cfg = config_lib.tiny_config(**CONFIGS[name])
            hf_model = build_hf_model(cfg, seed=list(CONFIGS).index(name))
            path = save_hf_checkpoint(hf_model, tmp_path_factory.mktemp(name))
            ours, loaded_cfg = hf.load_pretrained(path, dtype=jnp.float32)
            cache[name] = Reference(cfg, loaded_cfg, hf_model, ours, path)
        return cache[name]

    return get


def _batch(cfg, prompt: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids, mask, grids = make_prompts(cfg, PROMPTS[prompt], rng)
    return ids, mask, make_pixels(cfg, grids, rng), grids


def _perturbed(model: Qwen3VL, scale: float, seed: int) -> Qwen3VL:
    """A copy of ``model`` with ``scale * N(0, 1)`` added to every parameter."""
    rng = np.random.default_rng(seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(
        lambda x: x + scale * rng.standard_normal(x.shape).astype(x.dtype), params
    )
    return nnx.merge(graphdef, params, rest)


def _params(model: Qwen3VL) -> dict:
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", CONFIGS)
def test_loaded_config_equals_original(reference, name):
    ref = reference(name)
    assert ref.loaded_cfg == ref.cfg


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(reference, name, prompt):
    """transformers saves, we load: same logits at every real position."""
    ref = reference(name)
    ids, mask, pixels, grids = _batch(ref.cfg, prompt)
    want = hf_logits(ref.hf_model, ids, mask, pixels, grids)
    got = our_logits(ref.ours, ids, mask, pixels, grids)
    assert np.abs(want[mask.astype(bool)]).max() > 0.5  # the comparison is not vacuous
    assert max_abs_diff(got, want, mask) < TOL


def test_hf_style_call_matches_transformers(reference):
    """The eager ``model(input_ids, pixel_values=..., ...)`` entry point (the other tests use
    the jitted `Qwen3VL.forward` it wraps)."""
    ref = reference(CHECK_CONFIG)
    ids, mask, pixels, grids = _batch(ref.cfg, "padded_text_row_and_image_row")
    want = hf_logits(ref.hf_model, ids, mask, pixels, grids)
    got = our_logits(ref.ours, ids, mask, pixels, grids, jit=False)
    assert max_abs_diff(got, want, mask) < TOL


@pytest.mark.parametrize(
    "where",
    [
        ("visual", "pos_embed", "embedding"),
        ("visual", "blocks", 2, "qkv", "bias"),
        ("visual", "deepstack_mergers", 0, "norm", "bias"),
        ("language_model", "layers", 2, "k_norm", "scale"),
    ],
    ids=lambda w: ".".join(map(str, w)),
)
def test_parity_check_catches_a_small_weight_error(reference, where):
    """1e-2 noise on one tensor breaks parity by far more than TOL: the end-to-end
    comparison is sensitive to every part of the model, images included."""
    ref = reference(CHECK_CONFIG)
    graphdef, params, rest = nnx.split(ref.ours, nnx.Param, ...)
    params = jax.tree.map(lambda x: x, params)  # a copy; ref.ours stays intact
    var = params
    for key in where:
        var = var[key]
    noise = np.random.default_rng(0).standard_normal(var.shape).astype(np.float32)
    var.set_value(var[...] + 1e-2 * noise)
    broken = nnx.merge(graphdef, params, rest)
    ids, mask, pixels, grids = _batch(ref.cfg, "padded_multi_image")
    want = hf_logits(ref.hf_model, ids, mask, pixels, grids)
    assert max_abs_diff(our_logits(broken, ids, mask, pixels, grids), want, mask) > 10 * TOL
    assert max_abs_diff(our_logits(ref.ours, ids, mask, pixels, grids), want, mask) < TOL


# ------------------------------------------------------------------------- block level


def _vision_setup(ref, grids=VISION_GRIDS, seed=0):
    """Random vision activations and both implementations' rotary tables for ``grids``."""
    rng = np.random.default_rng(seed)
    vin = vision.vision_inputs(make_pixels(ref.cfg, grids, rng), grids, ref.cfg.vision)
    x = rng.standard_normal((vin.num_patches, ref.cfg.vision.hidden_size)).astype(np.float32)
    rot = ref.hf_model.model.visual.rot_pos_emb(torch.from_numpy(grids))
    emb = torch.cat([rot, rot], dim=-1)
    return vin, x, (emb.cos(), emb.sin())


def test_vision_rotary_matches(reference):
    ref = reference(BLOCK_CONFIG)
    vin, _, (cos_t, sin_t) = _vision_setup(ref)
    cos, sin = vision._vision_rope(vin.rope_pos, ref.cfg.vision.head_dim)
    assert max_abs_diff(cos, cos_t.numpy()) < TOL
    assert max_abs_diff(sin, sin_t.numpy()) < TOL


def test_vision_position_interpolation_matches(reference):
    ref = reference(BLOCK_CONFIG)
    vin, _, _ = _vision_setup(ref)
    with torch.no_grad():
        want = ref.hf_model.model.visual.fast_pos_embed_interpolate(
            torch.from_numpy(VISION_GRIDS)
        ).numpy()
    table = ref.ours.visual.pos_embed.embedding[...]
    got = jnp.einsum("cp,cpd->pd", vin.pos_weight, jnp.take(table, vin.pos_index, axis=0))
    assert max_abs_diff(got, want) < TOL


@pytest.mark.parametrize("i", range(3))
def test_vision_block_matches(reference, i):
    """Block ``i`` on several images at once: 2D rotary and per-image attention."""
    ref = reference(BLOCK_CONFIG)
    vin, x, cos_sin = _vision_setup(ref)
    sizes = np.repeat(VISION_GRIDS[:, 1] * VISION_GRIDS[:, 2], VISION_GRIDS[:, 0])
    cu_seqlens = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.int32)
    with torch.no_grad():
        want = ref.hf_model.model.visual.blocks[i](
            torch.from_numpy(x), cu_seqlens=cu_seqlens, position_embeddings=cos_sin
        ).numpy()
    cos, sin = vision._vision_rope(vin.rope_pos, ref.cfg.vision.head_dim)
    seg = vin.segment_ids
    mask = (seg[:, None] == seg[None, :]) & (seg[:, None] >= 0)
    got = ref.ours.visual.blocks[i](jnp.asarray(x), cos, sin, mask)
    assert max_abs_diff(got, want) < TOL


@pytest.mark.parametrize("j", [None, 0, 1, 2], ids=lambda j: "merger" if j is None else f"ds{j}")
def test_patch_mergers_match(reference, j):
    ref = reference(BLOCK_CONFIG)
    _, x, _ = _vision_setup(ref)
    visual = ref.hf_model.model.visual
    theirs = visual.merger if j is None else visual.deepstack_merger_list[j]
    ours = ref.ours.visual.merger if j is None else ref.ours.visual.deepstack_mergers[j]
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    assert max_abs_diff(ours(jnp.asarray(x)), want) < TOL


ROPE_BATCHES = {
    "text_only": [[], []],
    "padded_multi_image": [[(1, 2, 4), (1, 8, 8)], [(1, 4, 4)]],
    "image_row_and_text_row": [[], [(1, 6, 4)]],
    "three_rows_temporal": [[(2, 4, 4)], [(1, 4, 6), (1, 2, 2), (1, 2, 4)], []],
}


@pytest.mark.parametrize("batch", ROPE_BATCHES)
def test_mrope_positions_match(reference, batch):
    """`positions.rope_index` == transformers' ``get_rope_index`` (ids and next position)."""
    ref = reference(BLOCK_CONFIG)
    ids, mask, grids = make_prompts(ref.cfg, ROPE_BATCHES[batch], np.random.default_rng(1))
    want, deltas = ref.hf_model.model.get_rope_index(
        torch.from_numpy(ids),
        None if grids is None else torch.from_numpy(grids),
        None,
        torch.from_numpy(mask),
    )
    got, next_pos = positions.rope_index(ids, grids, mask, ref.cfg)
    np.testing.assert_array_equal(got, want.numpy())
    np.testing.assert_array_equal(next_pos, deltas.numpy()[:, 0] + ids.shape[1])


@pytest.mark.parametrize("name", CONFIGS)
def test_mrope_tables_and_decoder_layer_match(reference, name):
    """Interleaved M-RoPE cos/sin and decoder layer 1 (GQA, QK-norm, SwiGLU) on a padded
    multi-image batch."""
    ref = reference(name)
    rng = np.random.default_rng(2)
    ids, mask, grids = make_prompts(ref.cfg, PROMPTS["padded_multi_image"], rng)
    pos, _ = positions.rope_index(ids, grids, mask, ref.cfg)
    x = rng.standard_normal((*ids.shape, ref.cfg.text.hidden_size)).astype(np.float32)
    x_t = torch.from_numpy(x)
    lm = ref.hf_model.model.language_model
    cos_t, sin_t = lm.rotary_emb(x_t, torch.from_numpy(pos.astype(np.int64)))
    cos, sin = text.mrope_cos_sin(jnp.asarray(pos), ref.cfg.text)
    assert max_abs_diff(cos, cos_t.numpy()) < TOL
    assert max_abs_diff(sin, sin_t.numpy()) < TOL

    t = ids.shape[1]
    allowed = np.tril(np.ones((t, t), bool))[None] & mask.astype(bool)[:, None, :]
    additive = np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)
    with torch.no_grad():
        want = lm.layers[1](
            x_t,
            position_embeddings=(cos_t, sin_t),
            attention_mask=torch.from_numpy(additive[:, None]),
        ).numpy()
    got, _ = ref.ours.language_model.layers[1](jnp.asarray(x), cos, sin, jnp.asarray(allowed))
    assert max_abs_diff(got, want, mask) < TOL


# ------------------------------------------------------------------------- round trips


def _hf_from_pretrained(path, **kw) -> Qwen3VLForConditionalGeneration:
    model, info = Qwen3VLForConditionalGeneration.from_pretrained(
        path, attn_implementation="eager", output_loading_info=True, **kw
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


@pytest.mark.parametrize("name", ["gqa2_tied_ds0", "gqa4_untied_ds1"])
def test_our_save_loads_in_transformers(reference, tmp_path, name):
    """Our model with weights transformers never saw -> save_pretrained -> transformers
    ``from_pretrained``: same logits."""
    cfg = reference(name).cfg
    ours = _perturbed(reference(name).ours, scale=0.1, seed=3)
    hf.save_pretrained(ours, cfg, tmp_path)
    theirs = _hf_from_pretrained(tmp_path)
    ids, mask, pixels, grids = _batch(cfg, "padded_multi_image")
    want = hf_logits(theirs, ids, mask, pixels, grids)
    assert max_abs_diff(our_logits(ours, ids, mask, pixels, grids), want, mask) < TOL


@pytest.mark.parametrize("name", ["gqa2_tied_ds0", "gqa4_untied_ds1"])
def test_hf_save_our_load_our_save_is_lossless(reference, tmp_path, name):
    """transformers' file -> our load -> our save reproduces every tensor bit for bit (the
    logits of the loaded model are checked against transformers above)."""
    ref = reference(name)
    hf.save_pretrained(ref.ours, ref.cfg, tmp_path)
    theirs = safetensors.numpy.load_file(ref.path / "model.safetensors")
    mine = safetensors.numpy.load_file(tmp_path / "model.safetensors")
    if ref.cfg.text.tie_word_embeddings:
        theirs.pop("lm_head.weight", None)  # a tied head is the embedding; we store it once
    assert sorted(mine) == sorted(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(mine[key], value, err_msg=key)
    assert hf.read_config(tmp_path) == ref.cfg


def _save_sharded(ref: Reference, path: Path) -> list[Path]:
    files = hf.save_pretrained(ref.ours, ref.cfg, path, max_shard_bytes=200_000)
    assert len(files) >= 3
    return files


def test_sharded_save_loads_in_ours_and_transformers(reference, tmp_path):
    ref = reference(CHECK_CONFIG)
    files = _save_sharded(ref, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(f.name for f in files)
    assert set(index["weight_map"]) == set(hf.param_map(ref.cfg))
    for name, file in index["weight_map"].items():
        assert name in safetensors_io.SafetensorsFile(tmp_path / file).tensors

    ours, cfg = hf.load_pretrained(tmp_path, dtype=jnp.float32)
    assert cfg == ref.cfg
    want_params = _params(ref.ours)
    for path, value in _params(ours).items():
        np.testing.assert_array_equal(value, want_params[path], err_msg=str(path))

    theirs = _hf_from_pretrained(tmp_path)
    ids, mask, pixels, grids = _batch(ref.cfg, "padded_multi_image")
    want = hf_logits(theirs, ids, mask, pixels, grids)
    assert max_abs_diff(our_logits(ours, ids, mask, pixels, grids), want, mask) < TOL


def test_bf16_save_and_load(reference, tmp_path):
    ref = reference(CHECK_CONFIG)
    hf.save_pretrained(ref.ours, ref.cfg, tmp_path, dtype=jnp.bfloat16)
    header = safetensors_io.SafetensorsFile(tmp_path / "model.safetensors").tensors
    assert {dtype for dtype, *_ in header.values()} == {"BF16"}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"

    ours16, _ = hf.load_pretrained(tmp_path, dtype="bfloat16")  # names work like dtypes
    assert {v.dtype for v in _params(ours16).values()} == {np.dtype(jnp.bfloat16)}
    ours32, _ = hf.load_pretrained(tmp_path, dtype=jnp.float32)  # bf16 values, widened
    want_params = _params(ref.ours)
    for path, value in _params(ours32).items():
        rounded = want_params[path].astype(jnp.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(value, rounded, err_msg=str(path))

    ids, mask, pixels, grids = _batch(ref.cfg, "padded_multi_image")
    # Same bf16-rounded weights, both computed in fp32: the fp32 tolerance applies.
    theirs32 = _hf_from_pretrained(tmp_path, dtype=torch.float32)
    want = hf_logits(theirs32, ids, mask, pixels, grids)
    assert max_abs_diff(our_logits(ours32, ids, mask, pixels, grids), want, mask) < TOL

    fp32_ref = hf_logits(ref.hf_model, ids, mask, pixels, grids)
    theirs16 = _hf_from_pretrained(tmp_path, dtype=torch.bfloat16)
    hf_error = max_abs_diff(hf_logits(theirs16, ids, mask, pixels, grids), fp32_ref, mask)
    our_error = max_abs_diff(our_logits(ours16, ids, mask, pixels, grids), fp32_ref, mask)
    assert our_error < BF16_TOL
    assert our_error < BF16_VS_HF * hf_error, (our_error, hf_error)

    # transformers' own bf16 file loads into ours bit for bit.
    theirs16.save_pretrained(tmp_path / "hf_bf16")
    ours_again, _ = hf.load_pretrained(tmp_path / "hf_bf16", dtype=jnp.bfloat16)
    want_params = _params(ours16)
    for path, value in _params(ours_again).items():
        np.testing.assert_array_equal(value, want_params[path], err_msg=str(path))


def _to_transformers5_layout(raw: dict) -> dict:
    """``config.json`` as transformers 5.x writes it: rope settings in ``rope_parameters``."""
    raw = json.loads(json.dumps(raw))
    text_cfg = raw["text_config"]
    scaling = text_cfg.pop("rope_scaling")
    text_cfg["rope_parameters"] = {
        "rope_type": scaling.get("rope_type", "default"),
        "rope_theta": text_cfg.pop("rope_theta"),
        "mrope_section": scaling["mrope_section"],
        "mrope_interleaved": True,
    }
    for key in ("rope_theta", "rope_scaling"):
        raw.pop(key, None)
    return raw


def test_transformers5_config_layout_loads_to_same_config(reference, tmp_path):
    ref = reference(CHECK_CONFIG)
    raw = json.loads((ref.path / "config.json").read_text())
    new = _to_transformers5_layout(raw)
    assert not {"rope_theta", "rope_scaling"} & (set(new) | set(new["text_config"]))
    (tmp_path / "config.json").write_text(json.dumps(new))
    assert hf.read_config(tmp_path) == ref.cfg == hf.read_config(ref.path)


# ------------------------------------------------------------------------- bad input


@pytest.fixture
def checkpoint(reference, tmp_path) -> Path:
    """A private copy of the reference checkpoint that a test may corrupt."""
    path = tmp_path / "ckpt"
    shutil.copytree(reference(CHECK_CONFIG).path, path)
    return path


def _assert_load_fails(path: Path, error: type[Exception], *needles: str) -> None:
    """Loading ``path`` raises ``error`` whose message contains every needle, and the
    directory's files are byte-for-byte what they were."""
    before = dir_hashes(path)
    with pytest.raises(error) as info:
        hf.load_pretrained(path, dtype=jnp.float32)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    assert dir_hashes(path) == before


def _edit_config(path: Path, edit) -> None:
    raw = json.loads((path / "config.json").read_text())
    edit(raw)
    (path / "config.json").write_text(json.dumps(raw))


def _edit_tensors(path: Path, edit) -> None:
    file = path / "model.safetensors"
    tensors = safetensors.numpy.load_file(file)
    edit(tensors)
    safetensors.numpy.save_file(tensors, file, metadata={"format": "pt"})


def test_missing_config_json(checkpoint):
    (checkpoint / "config.json").unlink()
    _assert_load_fails(checkpoint, hf.CheckpointError, "config.json", "missing")


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl_moe"])
def test_unsupported_model_type(checkpoint, model_type):
    _edit_config(checkpoint, lambda raw: raw.update(model_type=model_type))
    _assert_load_fails(checkpoint, config_lib.ConfigError, "model_type", repr(model_type))


@pytest.mark.parametrize(
    "section,key", [("text_config", "num_hidden_layers"), ("vision_config", "depth")]
)
def test_missing_required_config_key(checkpoint, section, key):
    _edit_config(checkpoint, lambda raw: raw[section].pop(key))
    _assert_load_fails(checkpoint, config_lib.ConfigError, "config.json", section, key)


@pytest.mark.parametrize("section,key", [("text_config", "num_experts"), ("vision_config", "foo")])
def test_unknown_config_key(checkpoint, section, key):
    _edit_config(checkpoint, lambda raw: raw[section].update({key: 8}))
    _assert_load_fails(checkpoint, config_lib.ConfigError, "config.json", section, key)


def test_missing_tensor(checkpoint):
    name = "model.language_model.layers.1.mlp.up_proj.weight"
    _edit_tensors(checkpoint, lambda t: t.pop(name))
    _assert_load_fails(checkpoint, hf.CheckpointError, "missing", name)


def test_unexpected_tensor(checkpoint):
    name = "model.language_model.layers.7.mlp.up_proj.weight"  # the config has 3 layers
    _edit_tensors(checkpoint, lambda t: t.update({name: np.zeros((128, 64), np.float32)}))
    _assert_load_fails(checkpoint, hf.CheckpointError, "unexpected", name)


def test_misshaped_tensor(checkpoint):
    name = "model.visual.blocks.0.attn.qkv.weight"  # [96, 32] in this config

    def transpose(tensors):
        tensors[name] = np.ascontiguousarray(tensors[name].T)

    _edit_tensors(checkpoint, transpose)
    _assert_load_fails(checkpoint, hf.CheckpointError, name, "[32, 96]", "[96, 32]")


def test_truncated_safetensors(checkpoint):
    file = checkpoint / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    _assert_load_fails(checkpoint, safetensors_io.SafetensorsError, str(file), "truncated")


def test_index_lists_missing_shard(reference, tmp_path):
    files = _save_sharded(reference(CHECK_CONFIG), tmp_path)
    files[1].unlink()
    _assert_load_fails(tmp_path, hf.CheckpointError, "model.safetensors.index.json", files[1].name)


def test_image_token_count_mismatch(reference):
    ref = reference(CHECK_CONFIG)
    ids, mask, pixels, grids = _batch(ref.cfg, "one_image")
    n = merged_tokens(tuple(grids[0]), ref.cfg)
    drop = int(np.flatnonzero(ids[0] == ref.cfg.image_token_id)[0])
    ids, mask = np.delete(ids, drop, axis=1), np.delete(mask, drop, axis=1)
    with pytest.raises(positions.PromptImageMismatch) as info:
        ref.ours(ids, pixel_values=pixels, image_grid_thw=grids, attention_mask=mask)
    msg = str(info.value)
    assert f"{n - 1} image tokens" in msg and f"{n} image features" in msg, msg
    assert str(grids.tolist()) in msg, msg


def test_pixel_patch_count_mismatch(reference):
    ref = reference(CHECK_CONFIG)
    ids, mask, pixels, grids = _batch(ref.cfg, "one_image")
    with pytest.raises(ValueError) as info:
        ref.ours(ids, pixel_values=pixels[:-4], image_grid_thw=grids, attention_mask=mask)
    msg = str(info.value)
    n = len(pixels)
    assert "pixel_values" in msg and f"{n - 4} patches" in msg and f"describes {n}" in msg, msg


@pytest.mark.parametrize("layout", ["sharded_then_single", "single_then_sharded"])
def test_save_over_previous_checkpoint_replaces_it(reference, tmp_path, layout):
    """Saving into a directory that holds an older checkpoint of the other layout: both
    loaders must see the new weights, not a stale index / shard / single file."""
    ref = reference(CHECK_CONFIG)
    new = _perturbed(ref.ours, scale=0.1, seed=5)
    first, second = (200_000, 1 << 30) if layout == "sharded_then_single" else (1 << 30, 200_000)
    hf.save_pretrained(ref.ours, ref.cfg, tmp_path, max_shard_bytes=first)
    written = hf.save_pretrained(new, ref.cfg, tmp_path, max_shard_bytes=second)

    expected = {f.name for f in written}
    if len(written) > 1:
        expected.add("model.safetensors.index.json")
    left = {f.name for f in tmp_path.iterdir() if f.name.startswith("model")}
    assert left == expected, f"stale weight files of the earlier save: {sorted(left - expected)}"
    loaded, _ = hf.load_pretrained(tmp_path, dtype=jnp.float32)
    want_params = _params(new)
    for path, value in _params(loaded).items():
        np.testing.assert_array_equal(value, want_params[path], err_msg=str(path))
    ids, mask, pixels, grids = _batch(ref.cfg, "one_image")
    want = our_logits(new, ids, mask, pixels, grids)
    theirs = _hf_from_pretrained(tmp_path)
    assert max_abs_diff(hf_logits(theirs, ids, mask, pixels, grids), want, mask) < TOL
