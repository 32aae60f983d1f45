"""The real-scale configs: paper settings, full-size memory per device, and SAPO from
Hugging Face checkpoints at tiny scale.

``tests/test_config.py`` loads every shipped config and converts it for each entry point;
here each real-scale config is also checked against the paper's settings and its own
docstring, the full-size Qwen3-VL models of its presets are built abstractly
(`nnx.eval_shape`, no weights) in the configured shardings, and the per-device parameter
memory of each role is printed and bounded by the HBM the docstring claims. Finally the
train.py checkpoint path (``ModelSpec.checkpoint``, an imported Geo3K set, no SFT stages)
runs end to end on tiny random checkpoints.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_importers import _png
from test_train_sets import _geo_data, _write_geo3k

from dreamr_jax import config as config_lib
from dreamr_jax import eval as eval_lib
from dreamr_jax import train
from dreamr_jax.data import import_tfds, questions, synthetic
from dreamr_jax.data.records import Record
from dreamr_jax.models import hf
from dreamr_jax.models.config import PRESETS
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import ShardingRules, make_mesh, param_shardings
from dreamr_jax.processing import load_tokenizer
from dreamr_jax.processing.image import ImageProcessorConfig
from dreamr_jax.spec.roles import DTYPES, builtin_checkpoint
from dreamr_jax.training import sapo as sapo_lib
from dreamr_jax.training.optim import make_optimizer
from dreamr_jax.training.sapo import make_prompts

REPO = pathlib.Path(__file__).resolve().parents[1]
SAPO_CONFIGS = ("sapo_qwen3vl_2b_32b", "sapo_qwen3vl_4b_32b")
EVAL_CONFIGS = ("eval_mathverse", "eval_mmbench", "eval_realworldqa", "eval_mmmu")
GIB = 2**30


def _module(name: str):
    path = REPO / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_real_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _typed(name: str, overrides=()):
    """The config as its entry point's dataclass (TrainConfig or EvalConfig)."""
    raw = config_lib.load_config(str(REPO / "configs" / f"{name}.py"), overrides)
    module = train if name.startswith("sapo") else eval_lib
    cls = train.TrainConfig if module is train else eval_lib.EvalConfig
    return config_lib.to_dataclass(cls, {k: raw[k] for k in module.SECTIONS if k in raw})


def _device_range(mesh) -> range:
    return range(mesh.first_device, mesh.first_device + mesh.data * mesh.fsdp * mesh.tensor)


# ------------------------------------------------------------------ settings and docs


def test_helper_module_is_not_a_config():
    shipped = {p.stem for p in (REPO / "configs").glob("*.py")}
    assert set(SAPO_CONFIGS + EVAL_CONFIGS) <= shipped
    assert (REPO / "configs" / "common" / "real_scale.py").is_file()  # not matched by *.py


@pytest.mark.parametrize("name", SAPO_CONFIGS)
def test_sapo_config_has_the_paper_settings(name):
    cfg = _typed(name)
    module = _module(name)
    assert cfg.stages == ("data", "sapo", "export", "eval")
    assert cfg.data.dataset == "geo3k" and cfg.data.source_dir
    size = module.MODELS["draft"].split("-")[-1]
    assert cfg.target_model.checkpoint.endswith("Qwen3-VL-32B-Instruct")
    assert cfg.draft_model.checkpoint.endswith(f"Qwen3-VL-{size.upper()}-Instruct")
    assert {cfg.target_model.dtype, cfg.draft_model.dtype} == {"bfloat16"}
    sapo = cfg.sapo
    assert sapo.optim.learning_rate == 1e-6  # the paper's AdamW lr
    assert sapo.prompts_per_step * sapo.rollout.group_size == 64  # the paper's batch
    assert sapo.verifier.alpha == cfg.verifier.alpha == 0.7
    assert (sapo.reward.w_outcome, sapo.reward.w_draft, sapo.reward.w_length) == (1, 1, 1)
    assert cfg.spec.window == 4
    # Prompt (image tokens after the 2x2 merge, plus text) and completion fit 8192 tokens.
    assert cfg.data.max_patches // 4 + 512 + sapo.rollout.max_new_tokens <= 8192
    # Policy and reference on the draft mesh, the target on disjoint chips.
    assert not set(_device_range(cfg.draft_mesh)) & set(_device_range(cfg.target_mesh))
    assert "paper's numbers, not ours" in module.__doc__


@pytest.mark.parametrize("name", EVAL_CONFIGS)
def test_eval_config_has_the_paper_settings(name):
    cfg = _typed(name)
    module = _module(name)
    assert cfg.verifier.alpha == 0.7 and cfg.eval.alphas == (0.7,)
    assert cfg.spec.window == 4
    assert {"target_only", "fpsr"} <= set(cfg.eval.engines)
    assert cfg.eval.dataset == name.removeprefix("eval_") and cfg.eval.source_dir
    assert {cfg.target.dtype, cfg.draft.dtype} == {"bfloat16"}
    assert cfg.target.checkpoint and cfg.draft.checkpoint
    assert not set(_device_range(cfg.draft_mesh)) & set(_device_range(cfg.target_mesh))
    assert "python -m dreamr_jax.eval --config=configs/" + name in module.__doc__


def test_paper_numbers_are_quoted_and_attributed():
    mathverse, mmbench = _module("eval_mathverse").__doc__, _module("eval_mmbench").__doc__
    for doc, numbers in ((mathverse, ("75.98", "76.00", "2.38x")), (mmbench, ("89.44", "2.48x"))):
        assert all(n in doc for n in numbers)
        assert "the paper's numbers, not ours" in doc


# --------------------------------------------------------- full-size memory per device


@functools.cache
def _abstract_params(preset: str, dtype: str):
    """The preset's parameters as an abstract `nnx.State` (shapes, dtypes, logical axes)."""
    cfg, dt = PRESETS[preset], DTYPES[dtype]
    model = nnx.eval_shape(lambda: Qwen3VL(cfg, dtype=dt, rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param)


def _axes_size(axis, shape: dict[str, int]) -> int:
    if axis is None:
        return 1
    return math.prod(shape[a] for a in ((axis,) if isinstance(axis, str) else axis))


def per_device_bytes(state, mesh_shape: dict[str, int], rules=ShardingRules()) -> int:
    """Bytes of ``state`` on one device of a mesh of ``mesh_shape``, from each parameter's
    PartitionSpec (every sharded dimension divides evenly: `param_shardings` checks)."""
    total = 0
    for var in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        spec = rules.spec(var.get_metadata()["logical_axes"])
        shard = [n // _axes_size(a, mesh_shape) for n, a in zip(var.shape, spec, strict=True)]
        total += math.prod(shard) * var.dtype.itemsize
    return total


def _mesh_shape(section) -> dict[str, int]:
    return {"data": section.data, "fsdp": section.fsdp, "tensor": section.tensor}


@functools.cache
def _sharded_abstract(preset: str, dtype: str, shape: tuple[int, int, int]):
    """The model's init traced under `jax.jit` with the configured out-shardings on a mesh
    of fake CPU devices (an `AbstractMesh` when the mesh needs more than there are): the
    shapes each device would hold, without allocating."""
    state = _abstract_params(preset, dtype)
    if math.prod(shape) > len(jax.devices()):
        mesh = jax.sharding.AbstractMesh(shape, ("data", "fsdp", "tensor"))
        return None, param_shardings(state, mesh)  # raises naming a non-divisible parameter
    mesh = make_mesh(shape, jax.devices()[: math.prod(shape)])
    shardings = param_shardings(state, mesh)
    cfg, dt = PRESETS[preset], DTYPES[dtype]
    make = lambda: nnx.state(Qwen3VL(cfg, dtype=dt, rngs=nnx.Rngs(0)), nnx.Param)  # noqa: E731
    return jax.eval_shape(jax.jit(make, out_shardings=shardings)), shardings


def test_per_device_bytes_match_named_shardings():
    """The PartitionSpec arithmetic equals what `NamedSharding.shard_shape` gives."""
    shape = (1, 2, 4)
    out, shardings = _sharded_abstract("qwen3-vl-2b", "bfloat16", shape)
    want = sum(
        math.prod(sh.shard_shape(x.shape)) * x.dtype.itemsize
        for x, sh in zip(jax.tree.leaves(out), jax.tree.leaves(shardings), strict=True)
    )
    mesh = dict(zip(("data", "fsdp", "tensor"), shape, strict=True))
    assert per_device_bytes(_abstract_params("qwen3-vl-2b", "bfloat16"), mesh) == want


def test_abstract_mesh_larger_than_the_host():
    """A mesh needing more devices than exist is sized on an `AbstractMesh`."""
    _, shardings = _sharded_abstract("qwen3-vl-32b", "bfloat16", (2, 2, 8))
    assert isinstance(jax.tree.leaves(shardings)[0].mesh, jax.sharding.AbstractMesh)
    state = _abstract_params("qwen3-vl-32b", "bfloat16")
    full = per_device_bytes(state, {"data": 1, "fsdp": 1, "tensor": 1})
    split = per_device_bytes(state, {"data": 2, "fsdp": 2, "tensor": 8})
    assert full / 16 <= split < full / 8  # norms and biases stay replicated


# Parameter counts of the presets (billions), a sanity bound on the abstract models.
PARAMS_B = {"qwen3-vl-2b": (1.7, 2.5), "qwen3-vl-4b": (4.0, 5.0), "qwen3-vl-32b": (32.0, 35.0)}


def _role_memory(name: str) -> dict[str, dict[str, float]]:
    """GiB per device of each role, on the chips of each mesh."""
    cfg, module = _typed(name), _module(name)
    sapo = name.startswith("sapo")
    target_mesh, draft_mesh = cfg.target_mesh, cfg.draft_mesh
    dtypes = (
        (cfg.target_model.dtype, cfg.draft_model.dtype)
        if sapo
        else (cfg.target.dtype, cfg.draft.dtype)
    )
    roles = {}
    for role, section, dtype in (
        ("target", target_mesh, dtypes[0]),
        ("draft", draft_mesh, dtypes[1]),
    ):
        preset = module.MODELS[role]
        shape = (section.data, section.fsdp, section.tensor)
        _sharded_abstract(preset, dtype, shape)  # builds in the configured shardings
        state = _abstract_params(preset, dtype)
        count = sum(math.prod(v.shape) for v in jax.tree.leaves(state))
        low, high = PARAMS_B[preset]
        assert low * 1e9 <= count <= high * 1e9, (preset, count)
        params = per_device_bytes(state, _mesh_shape(section)) / GIB
        roles[role] = {"params": params}
        if role == "draft" and sapo:
            # The policy trains: gradients (param dtype) and AdamW's moments, sharded like
            # their parameters (`init_train_state`); the reference is a second copy.
            opt = jax.eval_shape(make_optimizer(cfg.sapo.optim).init, state)
            moments = [
                x for x in jax.tree.leaves(opt) if getattr(x, "shape", ()) and x.ndim and x.size > 1
            ]
            param_leaves = jax.tree.leaves(state)
            assert len(moments) == 2 * len(param_leaves)  # μ and ν per parameter
            ratio = sum(m.dtype.itemsize for m in moments) / sum(
                p.dtype.itemsize for p in param_leaves
            )
            roles["draft"] = {
                "policy params": params,
                "policy grads": params,
                "policy AdamW moments": params * ratio,
                "reference params": params,
            }
            if cfg.rollout_mesh != draft_mesh:  # the rollouts' copy, on the policy's chips
                assert cfg.rollout_mesh.first_device == draft_mesh.first_device
                r = cfg.rollout_mesh
                _sharded_abstract(preset, dtype, (r.data, r.fsdp, r.tensor))
                rollout = per_device_bytes(state, _mesh_shape(cfg.rollout_mesh)) / GIB
                roles["draft"]["rollout params"] = rollout
    return roles


@pytest.mark.parametrize("name", SAPO_CONFIGS + EVAL_CONFIGS)
def test_full_size_roles_fit_the_claimed_hbm(name, capsys):
    module = _module(name)
    memory = _role_memory(name)
    with capsys.disabled():
        print(f"\n{name} (HBM {module.HBM_GIB} GiB per chip):")
        for mesh, parts in memory.items():
            detail = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
            print(f"  {mesh} mesh, GiB per chip: {detail}; total {sum(parts.values()):.2f}")
    for mesh, parts in memory.items():
        total = sum(parts.values())
        # At least half of each chip stays free for KV caches and activations.
        assert total <= module.HBM_GIB / 2, (mesh, total)
    # The docstring states the target's per-chip parameter memory as measured here.
    assert f"{memory['target']['params']:.1f} GiB" in module.__doc__


# ------------------------------------------------- the checkpoint path at tiny scale


def test_make_prompts_reads_synthetic_and_imported_records_alike(tmp_path):
    tok_dir = builtin_checkpoint(tmp_path / "ckpt", "target", seed=0, dtype=jnp.float32)
    tok = load_tokenizer(tok_dir)
    image_cfg = ImageProcessorConfig.from_pretrained(tok_dir)
    record = Record(
        id="geo3k:1",
        images=(_png(),),
        question="Find x.",
        choices=("5.0", "6.0"),
        answer="B",
        answer_type="choice",
        steps=(),
        source="geo3k",
    )
    synth = synthetic.to_record(synthetic.make_example(0, "train"))
    prompts, qs = make_prompts([record, synth], tok, image_cfg)
    assert len(prompts.ids) == 2
    assert qs[0] == questions.from_imported(record)  # one code path with dreamr_jax.eval
    assert qs[0].question == "Find x. Options: (A) 5.0 (B) 6.0"
    assert "Options: (A) 5.0 (B) 6.0" in tok.decode(prompts.ids[0])
    assert qs[1].question == synth["question"] and qs[1].gold == synth["answer"]


TINY = (
    "stages=('data','sapo','export')",
    "data.max_patches=16",
    "sapo.steps=2",
    "sapo.prompts_per_step=2",
    "sapo.micro_batches=1",
    "sapo.rollout.group_size=2",
    "sapo.rollout.max_new_tokens=8",
    "sapo.rollout.max_step_tokens=4",
    "sapo.rollout.max_scored_steps=2",
    "sapo.reward.length_free=4",
    "sapo.reward.length_max=8",
    "sapo.optim.learning_rate=0.01",  # large enough that 2 updates change the weights
    "sapo.optim.warmup_steps=0",
    "sapo.optim.total_steps=2",
    "sapo.checkpoint.every_steps=1",
    "sapo.checkpoint.async_save=false",
)


def _geo3k_fixture(root: pathlib.Path) -> pathlib.Path:
    images = {str(i): _png(c, (12, 9)) for i, c in enumerate(("red", "blue", "white"), 1)}
    train_problems = {str(i): _geo_data(i, answer="ABC"[i - 1]) for i in (1, 2, 3)}
    _write_geo3k(root, "train", train_problems, images)
    _write_geo3k(root, "val", {"4": _geo_data(4), "5": _geo_data(5, answer="C")})
    return root


def test_sapo_from_checkpoints_on_imported_geo3k(tmp_path, monkeypatch):
    """The shipped 2B+32B config at tiny scale: tiny random checkpoints, Geo3K fixture,
    stages data, sapo, export (no SFT); rollouts on their own (tensor-parallel) mesh."""
    moved, move = [], sapo_lib.rollout_layout

    def spy(params, shardings):
        out = move(params, shardings)
        moved.append({x.sharding for x in jax.tree.leaves(out)})
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(out), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # a move, not a change
        return out

    monkeypatch.setattr(sapo_lib, "rollout_layout", spy)
    target = builtin_checkpoint(tmp_path / "target", "target", seed=0, dtype=jnp.float32)
    draft = builtin_checkpoint(tmp_path / "draft", "draft", seed=1, dtype=jnp.float32)
    source = _geo3k_fixture(tmp_path / "geometry3k")
    cfg = _typed(
        "sapo_qwen3vl_2b_32b",
        (
            *TINY,
            f"target_model.checkpoint={target}",
            f"draft_model.checkpoint={draft}",
            f"data.source_dir={source}",
        ),
    )
    workdir = tmp_path / "run"
    notes = train.run(cfg, workdir)
    assert set(notes["timings_s"]) == {"data", "sapo", "export"}
    # Each update's rollouts ran on the rollout mesh: the policy's chips 0-1, tensor-parallel.
    assert len(moved) == 2
    for shardings in moved:
        assert {sh.mesh.devices.flat[0].id for sh in shardings} == {0}
        assert {dict(sh.mesh.shape)["tensor"] for sh in shardings} == {2}
        assert any("tensor" in str(sh.spec) for sh in shardings)

    assert not (workdir / "tokenizer").exists()  # the checkpoint's tokenizer, not a trained one
    assert len(import_tfds.load("geo3k", workdir / "data", "train")) == 3
    lines = (workdir / "sapo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert all(np.isfinite(json.loads(x)["loss"]) for x in lines)
    effect = json.loads((workdir / "sapo" / "effect.json").read_text())
    assert effect["held_out_examples"] == 2 and set(effect) == {
        "held_out_examples",
        "before",
        "after",
    }

    # Only the trained draft is exported; the unchanged checkpoints stand for themselves.
    exported = workdir / "export" / "draft_sapo"
    assert (exported / "config.json").is_file()
    assert not (workdir / "export" / "target").exists()
    run = train.Run(cfg, workdir)
    assert run.export_dir("target") == target and run.export_dir("draft_sft") == draft
    assert run.finished("export")
    assert load_tokenizer(exported).get_vocab() == load_tokenizer(target).get_vocab()
    trained, _ = hf.load_pretrained(exported, dtype=jnp.float32)
    start, _ = hf.load_pretrained(draft, dtype=jnp.float32)
    assert trained.cfg == start.cfg
    diffs = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), nnx.state(trained), nnx.state(start)
    )
    assert max(jax.tree.leaves(diffs)) > 0  # SAPO trained the checkpoint's weights

    # A re-run reuses every finished stage.
    again = train.run(cfg, workdir)
    assert set(again["timings_s"]) == {"data", "sapo", "export"}
    assert len((workdir / "sapo" / "metrics.jsonl").read_text().splitlines()) == 2


def test_sft_draft_on_target_chains_from_checkpoints_on_imported_geo3k(tmp_path):
    """The shipped config's optional warm start at tiny scale: the target checkpoint
    answers Geo3K's training questions and the draft checkpoint trains on its chains (the
    SFT path of an imported set, which has no reference chains)."""
    target = builtin_checkpoint(tmp_path / "target", "target", seed=0, dtype=jnp.float32)
    draft = builtin_checkpoint(tmp_path / "draft", "draft", seed=1, dtype=jnp.float32)
    cfg = _typed(
        "sapo_qwen3vl_2b_32b",
        (
            "stages=('data','sft_draft')",
            "data.max_patches=16",
            f"target_model.checkpoint={target}",
            f"draft_model.checkpoint={draft}",
            f"data.source_dir={_geo3k_fixture(tmp_path / 'geometry3k')}",
            "sft_draft.steps=2",
            "sft_draft.batch_size=2",
            "sft_draft.micro_batches=1",
            "sft_draft.seq_len=256",
            "sft_draft.optim.learning_rate=0.01",
            "sft_draft.optim.warmup_steps=0",
            "sft_draft.optim.total_steps=2",
            "sft_draft.checkpoint.every_steps=1",
            "sft_draft.checkpoint.async_save=false",
            "sft_draft.chains.keep=all",  # random weights answer nothing right
            "sft_draft.chains.max_new_tokens=8",
            "sft_draft.chains.batch_size=2",
        ),
    )
    workdir = tmp_path / "run"
    notes = train.run(cfg, workdir)
    assert set(notes["timings_s"]) == {"data", "sft_draft"}
    chains = json.loads((workdir / "sft_draft" / "target_chains.json").read_text())
    assert chains["summary"]["asked"] == 3 and chains["summary"]["kept"] >= 1
    assert {c["record"] for c in chains["chains"]} <= {0, 1, 2}
    lines = (workdir / "sft_draft" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    trained = train.Run(cfg, workdir).model("draft_sft")  # bfloat16, on the draft mesh
    start, _ = hf.load_pretrained(draft, dtype=jnp.float32)
    f32 = lambda x: np.asarray(jax.device_get(x), np.float32)  # noqa: E731
    diffs = jax.tree.map(
        lambda a, b: float(np.max(np.abs(f32(a) - f32(b)))), nnx.state(trained), nnx.state(start)
    )
    assert max(jax.tree.leaves(diffs)) > 0  # the checkpoint's weights were trained


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ("target_model.checkpoint=", "draft_model.checkpoint="),
            r"data\.dataset='geo3k': needs target_model\.checkpoint",
        ),
        (
            ("target_model.checkpoint=", "data.dataset=synthetic"),
            r"draft_model\.checkpoint=.*needs target_model\.checkpoint too",
        ),
        (
            ("stages=('data','sft_draft','sapo')", "sft_draft.chains.source=reference"),
            r"\['sft_draft'\] train on the synthetic reference chains",
        ),
        (("stages=('data','sft_target','sapo')",), r"\['sft_target'\] train on the synthetic"),
        (("data.source_dir=",), r"data\.source_dir='': the data stage needs the geo3k files"),
        (("data.dataset=mmbench",), r"data\.dataset='mmbench': must be one of"),
    ],
)
def test_checkpoint_run_settings_are_checked(overrides, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        _typed("sapo_qwen3vl_2b_32b", overrides)


def test_image_budget_caps_the_checkpoint_processor(tmp_path):
    target = builtin_checkpoint(tmp_path / "target", "target", seed=0, dtype=jnp.float32)
    cfg = _typed(
        "sapo_qwen3vl_2b_32b", (f"target_model.checkpoint={target}", "data.max_patches=18")
    )
    run = train.Run(cfg, tmp_path / "run")
    model_cfg = hf.read_config(target)
    assert run.patches(model_cfg) == 16  # rounded down to whole 2x2 merge units
    image = run.image_cfg(model_cfg)
    assert image.max_pixels == 16 * model_cfg.vision.patch_size**2
    base = ImageProcessorConfig.from_pretrained(target)
    same = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    assert all(getattr(image, f) == getattr(base, f) for f in same)
    assert image.min_pixels <= image.max_pixels // 4
