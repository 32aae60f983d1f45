"""Sharding on 8 fake CPU devices: invariance, placement, errors and golden PartitionSpecs.

* A sharded forward equals the single-device forward (fp32 logits within 1e-5) for several
  ``(data, fsdp, tensor)`` mesh shapes, on a multimodal batch whose rows are split over
  ``(data, fsdp)``.
* Parameters really are split (spec and per-device shard shape), `load_pretrained` places
  every tensor straight into its sharding, and meshes that do not fit fail with the
  parameter's name.
* Every parameter's PartitionSpec for the shipped presets matches a reviewed golden file
  (``tests/golden/partition_specs_<preset>.json``). After an intended change, regenerate
  with ``python -m tests.test_sharding --regen`` (or ``UPDATE_GOLDEN=1 pytest
  tests/test_sharding.py``) and review the diff.
"""

# ruff: noqa: E402
import os

# tests/conftest.py sets this for pytest; `python -m tests.test_sharding --regen` needs it too.
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}=8".strip()

import difflib
import functools
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dreamr_jax.models import hf
from dreamr_jax.models.config import PRESETS, tiny_config
from dreamr_jax.models.positions import rope_index
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import (
    MESH_AXES,
    ShardingError,
    ShardingRules,
    init_sharded,
    make_mesh,
    param_shardings,
    shard_model,
)
from dreamr_jax.models.vision import vision_inputs

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
GOLDEN_PRESETS = ("qwen3-vl-2b", "qwen3-vl-32b")
# Golden specs are computed on this abstract mesh: no devices needed, and every preset's
# sharded dimensions must divide it (heads and kv heads over tensor=4, widths over fsdp=2).
GOLDEN_MESH_SHAPE = (1, 2, 4)
MESH_SHAPES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]
ATOL = 1e-5  # fp32 logits; reductions split across devices change only the summation order
SEQ_LEN = 24
# Images per row as (t, h, w) patch grids: rows with one or two images and text-only rows.
ROW_IMAGES = [
    [(1, 4, 4)],
    [(1, 2, 4)],
    [(1, 4, 2), (1, 2, 2)],
    [],
    [(1, 4, 4)],
    [],
    [(1, 2, 2)],
    [(1, 2, 4)],
]


def _config():
    """Tiny config whose sharded dims divide 4: 8 heads, 4 kv heads, 4 vision heads."""
    return tiny_config(
        num_heads=8, num_kv_heads=4, vision_heads=4, num_layers=2, vision_depth=2, deepstack=(0, 1)
    )


def _make(cfg, dtype=jnp.float32):
    return lambda: Qwen3VL(cfg, dtype=dtype, rngs=nnx.Rngs(0))


def _flat(state):
    """``(path, leaf)`` pairs of a state, sorted by path."""
    return list(nnx.to_flat_state(state))


def _params(model) -> dict:
    return {path: np.asarray(v[...]) for path, v in _flat(nnx.state(model))}


def _multimodal_batch(cfg, seed: int = 0):
    """Eight left-padded rows of text and image placeholders, with their pixel patches."""
    rng = np.random.default_rng(seed)
    m2 = cfg.vision.spatial_merge_size**2
    ids = np.zeros((len(ROW_IMAGES), SEQ_LEN), np.int32)
    mask = np.zeros_like(ids)
    for row, grids in enumerate(ROW_IMAGES):
        tokens = []
        for t, h, w in grids:
            tokens += list(rng.integers(1, cfg.vision_start_token_id, 2))
            tokens += (
                [cfg.vision_start_token_id]
                + [cfg.image_token_id] * (t * h * w // m2)
                + [cfg.vision_end_token_id]
            )
        tokens += list(rng.integers(1, cfg.vision_start_token_id, 3 + row % 3))
        assert len(tokens) <= SEQ_LEN
        ids[row, SEQ_LEN - len(tokens) :] = tokens
        mask[row, SEQ_LEN - len(tokens) :] = 1
    grid_thw = np.asarray([g for grids in ROW_IMAGES for g in grids], np.int64)
    n_patches = int(np.prod(grid_thw, axis=1).sum())
    pixels = rng.standard_normal((n_patches, cfg.vision.patch_dim)).astype(np.float32)
    # Padding patches (segment -1) too, as the bucketed rollout feeds them.
    vision = vision_inputs(pixels, grid_thw, cfg.vision, pad_to=n_patches + 2 * m2)
    positions, _ = rope_index(ids, grid_thw, mask, cfg)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "positions": positions,
        "vision": jax.tree.map(np.asarray, vision),
    }


def _place(batch, mesh):
    """Rows over the batch mesh axes; the flat patch sequence is replicated."""
    rows = ShardingRules().batch

    def put(x, spec):
        return jax.device_put(x, NamedSharding(mesh, spec))

    return {
        "input_ids": put(batch["input_ids"], P(rows)),
        "attention_mask": put(batch["attention_mask"], P(rows)),
        "positions": put(batch["positions"], P(None, rows)),
        "vision": jax.tree.map(lambda x: put(x, P()), batch["vision"]),
    }


def _logits(graphdef, state, batch):
    """Pure forward: parameters and inputs in, fp32 logits ``[b, t, v]`` out."""
    model = nnx.merge(graphdef, state)
    return model.forward(
        batch["input_ids"], batch["positions"], batch["attention_mask"], vision=batch["vision"]
    ).logits


_forward = jax.jit(_logits, static_argnums=0)


def _run(model, batch, mesh) -> np.ndarray:
    graphdef, state = nnx.split(model)
    # Blocking on every result keeps jax<=0.10's CPU collectives from deadlocking.
    return np.asarray(jax.block_until_ready(_forward(graphdef, state, _place(batch, mesh))))


def _single_device_mesh():
    return make_mesh((1, 1, 1), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def cfg():
    return _config()


@pytest.fixture(scope="module")
def batch(cfg):
    return _multimodal_batch(cfg)


@pytest.fixture(scope="module")
def reference(cfg):
    """The unsharded model on one device (built by the same jitted init as sharded ones)."""
    return init_sharded(_make(cfg), _single_device_mesh())


@pytest.fixture(scope="module")
def reference_logits(reference, batch):
    return _run(reference, batch, _single_device_mesh())


def test_reference_is_single_device_and_batch_is_multimodal(reference, batch, cfg):
    for _, v in _flat(nnx.state(reference)):
        assert len(v[...].sharding.device_set) == 1
    n_img = int(np.sum(batch["input_ids"] == cfg.image_token_id))
    assert n_img > 0 and np.any(batch["attention_mask"] == 0)
    assert np.any(batch["vision"].segment_ids == -1)


@pytest.fixture(scope="module")
def init_sharded_124(cfg):
    """`init_sharded` straight into the (1, 2, 4) layout, same seed as the reference."""
    return init_sharded(_make(cfg), make_mesh((1, 2, 4)))


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_equals_unsharded(shape, cfg, reference, batch, reference_logits):
    mesh = make_mesh(shape)
    model = shard_model(nnx.clone(reference), mesh)
    q = model.language_model.layers[0].q_proj.kernel[...]
    assert q.sharding.mesh == mesh and len(q.sharding.device_set) == 8
    placed = _place(batch, mesh)
    rows_per_shard = len(ROW_IMAGES) // (shape[0] * shape[1])
    ids_shape = (len(ROW_IMAGES), SEQ_LEN)
    assert placed["input_ids"].sharding.shard_shape(ids_shape) == (rows_per_shard, SEQ_LEN)
    logits = _run(model, batch, mesh)
    assert logits.shape == (len(ROW_IMAGES), SEQ_LEN, cfg.text.vocab_size)
    assert np.all(np.isfinite(logits))
    np.testing.assert_allclose(logits, reference_logits, rtol=0, atol=ATOL)
    # shard_model moved the clone only; the reference stays on one device.
    q_ref = reference.language_model.layers[0].q_proj.kernel[...]
    assert len(q_ref.sharding.device_set) == 1


def test_init_sharded_equals_unsharded(init_sharded_124, reference, batch, reference_logits):
    # Same seed, same jitted init: the values must not depend on the layout.
    ref = _params(reference)
    got = _params(init_sharded_124)
    assert got.keys() == ref.keys()
    for path, value in got.items():
        np.testing.assert_array_equal(value, ref[path], err_msg=str(path))
    mesh = make_mesh((1, 2, 4))
    logits = _run(init_sharded_124, batch, mesh)
    np.testing.assert_allclose(logits, reference_logits, rtol=0, atol=ATOL)


def test_init_sharded_zeros_is_the_model_without_the_values(cfg, init_sharded_124):
    """The restore target: every parameter of `init_sharded`'s model, same path, shape,
    dtype and sharding, all zeros."""
    zeros = init_sharded(_make(cfg), make_mesh((1, 2, 4)), zeros=True)
    want = dict(_flat(nnx.state(init_sharded_124)))
    got = dict(_flat(nnx.state(zeros)))
    assert got.keys() == want.keys()
    for path, var in got.items():
        a, b = var[...], want[path][...]
        assert (a.shape, a.dtype, a.sharding) == (b.shape, b.dtype, b.sharding), path
        assert not np.any(np.asarray(a)), path


def test_params_are_really_sharded(cfg, init_sharded_124):
    model = init_sharded_124
    t, v = cfg.text, cfg.vision
    layer = model.language_model.layers[0]
    expected = {  # array: (spec, per-device shard shape) on fsdp=2, tensor=4
        "q_proj": (
            layer.q_proj.kernel[...],
            P("fsdp", "tensor", None),
            (t.hidden_size // 2, t.num_heads // 4, t.head_dim),
        ),
        "k_proj": (
            layer.k_proj.kernel[...],
            P("fsdp", "tensor", None),
            (t.hidden_size // 2, t.num_kv_heads // 4, t.head_dim),
        ),
        "o_proj": (
            layer.o_proj.kernel[...],
            P("tensor", None, "fsdp"),
            (t.num_heads // 4, t.head_dim, t.hidden_size // 2),
        ),
        "down_proj": (
            layer.down_proj.kernel[...],
            P("tensor", "fsdp"),
            (t.intermediate_size // 4, t.hidden_size // 2),
        ),
        "embed_tokens": (
            model.language_model.embed_tokens.embedding[...],
            P("tensor", "fsdp"),
            (t.vocab_size // 4, t.hidden_size // 2),
        ),
        "lm_head": (
            model.lm_head.kernel[...],
            P("fsdp", "tensor"),
            (t.hidden_size // 2, t.vocab_size // 4),
        ),
        "vision qkv": (
            model.visual.blocks[0].qkv.kernel[...],
            P("fsdp", None, "tensor", None),
            (v.hidden_size // 2, 3, v.num_heads // 4, v.head_dim),
        ),
        "input_norm": (layer.input_norm.scale[...], P(None), (t.hidden_size,)),
    }
    for name, (x, spec, shard_shape) in expected.items():
        assert x.sharding.spec == spec, name
        shards = x.addressable_shards
        assert len(shards) == 8, name
        assert {s.data.shape for s in shards} == {shard_shape}, name
    # The 8 shards of q_proj are 8 distinct blocks that tile the whole kernel.
    q = layer.q_proj.kernel[...]
    blocks = {tuple((s.start, s.stop) for s in shard.index) for shard in q.addressable_shards}
    assert len(blocks) == 8
    whole = np.zeros(q.shape, np.float32)
    for shard in q.addressable_shards:
        whole[shard.index] = np.asarray(shard.data)
    np.testing.assert_array_equal(whole, np.asarray(q))


def test_load_pretrained_places_params_in_shardings(
    tmp_path, cfg, reference, batch, reference_logits
):
    hf.save_pretrained(reference, cfg, tmp_path)
    mesh = make_mesh((1, 2, 4))
    loaded, loaded_cfg = hf.load_pretrained(tmp_path, dtype=jnp.float32, mesh=mesh)
    assert loaded_cfg == cfg
    want = dict(_flat(param_shardings(loaded, mesh)))
    ref = _params(reference)
    for path, var in _flat(nnx.state(loaded)):
        x = var[...]
        assert isinstance(x.sharding, NamedSharding), path
        assert x.sharding.mesh == mesh and x.sharding.spec == want[path].spec, path
        assert x.dtype == jnp.float32, path
        np.testing.assert_array_equal(np.asarray(x), ref[path], err_msg=str(path))
    q = loaded.language_model.layers[0].q_proj.kernel[...]
    assert q.sharding.spec == P("fsdp", "tensor", None)
    np.testing.assert_allclose(_run(loaded, batch, mesh), reference_logits, rtol=0, atol=ATOL)


def test_indivisible_weight_names_parameter_axis_and_mesh_axis():
    cfg = tiny_config(num_heads=8, num_kv_heads=2, vision_heads=4)
    mesh = make_mesh((1, 2, 4))
    abstract = nnx.eval_shape(_make(cfg))
    with pytest.raises(ShardingError) as err:
        param_shardings(abstract, mesh)
    msg = str(err.value)
    assert "language_model.layers.0.k_proj.kernel" in msg
    assert "kv_heads=2" in msg and "'tensor'" in msg and "size 4" in msg
    # init_sharded fails the same way, before allocating anything.
    with pytest.raises(ShardingError, match=r"k_proj\.kernel.*kv_heads=2"):
        init_sharded(_make(cfg), mesh)


def test_make_mesh_wrong_device_count():
    assert len(jax.devices()) == 8
    with pytest.raises(ShardingError, match=r"\(3, 1, 1\).*needs 3 devices but 8 are available"):
        make_mesh((3, 1, 1))


# ------------------------------------------------------------------------ golden specs


@functools.cache
def _abstract_preset(preset: str):
    return nnx.eval_shape(_make(PRESETS[preset], jnp.bfloat16))


def _golden_mesh() -> AbstractMesh:
    return AbstractMesh(GOLDEN_MESH_SHAPE, MESH_AXES)


def _spec_json(spec: P) -> list:
    return [list(a) if isinstance(a, tuple) else a for a in spec]


def partition_spec_dump(preset: str) -> dict:
    """``{path: spec}`` for every parameter of ``preset`` under the default rules.

    Layer indices are collapsed to ``*`` (``language_model.layers.*.q_proj.kernel``) after
    checking that every layer has layer 0's spec, so the file stays small.
    """
    shardings = param_shardings(_abstract_preset(preset), _golden_mesh())
    groups: dict[str, dict] = {}
    for path, sharding in _flat(shardings):
        key = ".".join("*" if isinstance(p, int) else str(p) for p in path)
        groups.setdefault(key, {})[path] = _spec_json(sharding.spec)
    specs = {}
    for key, members in groups.items():
        first_path, first = next(iter(members.items()))
        for path, spec in members.items():
            assert spec == first, f"{preset}: {path} has spec {spec} but {first_path} {first}"
        specs[key] = first
    return {
        "preset": preset,
        "mesh": dict(zip(MESH_AXES, GOLDEN_MESH_SHAPE, strict=True)),
        "specs": dict(sorted(specs.items())),
    }


def _golden_file(preset: str) -> pathlib.Path:
    return GOLDEN_DIR / f"partition_specs_{preset}.json"


def _golden_text(dump: dict) -> str:
    """JSON with one parameter per line, so a review diff shows exactly what moved."""
    rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in dump["specs"].items()]
    return (
        f'{{\n "preset": {json.dumps(dump["preset"])},\n "mesh": {json.dumps(dump["mesh"])},'
        f'\n "specs": {{\n' + ",\n".join(rows) + "\n }\n}\n"
    )


def write_golden(preset: str) -> pathlib.Path:
    file = _golden_file(preset)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(_golden_text(partition_spec_dump(preset)))
    return file


@pytest.mark.parametrize("preset", GOLDEN_PRESETS)
def test_partition_specs_match_golden(preset):
    if os.environ.get("UPDATE_GOLDEN") == "1":
        write_golden(preset)
    file = _golden_file(preset)
    assert file.is_file(), (
        f"{file} is missing; generate it with `python -m tests.test_sharding --regen`."
    )
    got = partition_spec_dump(preset)
    golden = json.loads(file.read_text())
    if got != golden:
        diff = "\n".join(
            difflib.unified_diff(
                file.read_text().splitlines(),
                _golden_text(got).splitlines(),
                str(file),
                "current",
                lineterm="",
            )
        )
        pytest.fail(
            f"PartitionSpecs of {preset} changed; if intended, regenerate with "
            f"`python -m tests.test_sharding --regen` and review:\n{diff}"
        )
    # The golden file itself says what we mean: Megatron-style tensor parallelism over
    # heads/MLP/vocab, FSDP over the residual width, replicated norms.
    specs = golden["specs"]
    assert specs["language_model.layers.*.q_proj.kernel"] == ["fsdp", "tensor", None]
    assert specs["language_model.layers.*.down_proj.kernel"] == ["tensor", "fsdp"]
    assert specs["language_model.embed_tokens.embedding"] == ["tensor", "fsdp"]
    assert specs["language_model.layers.*.input_norm.scale"] == [None]
    assert ("lm_head.kernel" in specs) == (not PRESETS[preset].text.tie_word_embeddings)


# Weight matrices deliberately not split over all 8 devices: the vision input tables, whose
# first axis (patch pixels / position rows) has no logical name and is replicated. Norm
# scales and biases are small and split over at most one axis.
_NOT_FULLY_SHARDED = ("visual.patch_embed.kernel", "visual.pos_embed.embedding")


def test_per_device_memory_32b():
    mesh = _golden_mesh()
    n_dev = math.prod(GOLDEN_MESH_SHAPE)
    abstract = _abstract_preset("qwen3-vl-32b")
    shardings = dict(_flat(param_shardings(abstract, mesh)))
    total = per_device = slack = 0
    for path, var in _flat(nnx.state(abstract)):
        assert var.dtype == jnp.bfloat16
        name = ".".join(map(str, path))
        nbytes = math.prod(var.shape) * var.dtype.itemsize
        shard = shardings[path].shard_shape(var.shape)
        shard_bytes = math.prod(shard) * var.dtype.itemsize
        total += nbytes
        per_device += shard_bytes
        if path[-1] in ("scale", "bias") or name in _NOT_FULLY_SHARDED:
            slack += nbytes - nbytes // n_dev  # at worst fully replicated
        else:
            assert shard_bytes * n_dev == nbytes, f"{name} {var.shape} -> shard {shard}"
    gib = 1 << 30
    print(
        f"\nqwen3-vl-32b bf16 params: {total / gib:.2f} GiB total, "
        f"{per_device / gib:.3f} GiB per device on (data, fsdp, tensor)={GOLDEN_MESH_SHAPE} "
        f"(ideal {total / n_dev / gib:.3f}, replicated slack <= {slack / gib:.3f})"
    )
    assert 33e9 < total / 2 < 34e9  # ~33.5B parameters
    assert total / n_dev <= per_device <= total / n_dev + slack
    assert slack < 0.002 * total / n_dev


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        sys.exit("usage: python -m tests.test_sharding --regen")
    for name in GOLDEN_PRESETS:
        print(f"wrote {write_golden(name)}")
