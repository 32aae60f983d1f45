"""The shared train step: optimizer, gradient accumulation, sharding, golden numbers.

* `OptimConfig` / `make_optimizer`: schedule values (warmup, peak, cosine midpoint and
  floor), weight decay only on rank >= 2 kernels and embeddings, global-norm clipping,
  validation errors.
* Gradient accumulation: ``k = 2, 4`` micro-batches give the loss, token count, metrics
  and gradients of one batch (SFT and SAPO): metrics within `RTOL` relative plus
  `METRIC_ATOL`, gradients within `RTOL` of each tensor's largest entry
  (`_assert_grads_close`); measured worst cases are about 5e-6 and 3e-6.
* Bad batches: rows not divisible into micro-batches, groups of G split across
  micro-batches, micro-batches not divisible over the data shards: clear errors before
  anything compiles.
* Sharded == unsharded on 8 fake CPU devices for meshes (8,1,1), (2,2,2) (with two
  micro-batches), (1,1,8), on the SAPO objective (whose metrics also reduce by min and
  max): loss, token count, metrics and gradients within `RTOL`; the parameter and
  optimizer state keep their shardings, and `init_train_state` creates AdamW's moments in
  their parameters' shardings.
* Golden numbers of one SFT and one SAPO step on the tiny config with fixed seeds (loss,
  grad norm, token count, the objective's metrics; for SFT also the loss after one AdamW
  update) in ``tests/golden/train_step.json``, compared at `RTOL`. After an intended
  change regenerate with
  ``DREAMR_REGEN_GOLDEN=1 /work/venv/bin/pytest tests/test_train_step.py -k golden``
  and review the diff.
* 30 AdamW SFT steps on one fixed batch cut the loss to under 5% (measured 0.15%); a
  fully masked SAPO batch (garbage at masked positions) gives finite metrics, loss 0 and
  gradient exactly 0; an SFT batch without loss tokens changes the parameters by AdamW's
  weight decay only.

The gradients come out of the step through `_capture_grads`, an "optimizer" that stores
the gradient it is given in its state and leaves the parameters alone.
"""

import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dreamr_jax.data.pipeline import collate
from dreamr_jax.models.config import tiny_config
from dreamr_jax.models.positions import rope_index
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import init_sharded, make_mesh, shard_model
from dreamr_jax.rl import group_advantages, token_logprobs
from dreamr_jax.training import objectives
from dreamr_jax.training.objectives import (
    forward_logits,
    prepare_batch,
    sapo_objective,
    sft_objective,
)
from dreamr_jax.training.optim import (
    OptimConfig,
    decay_mask,
    learning_rate_at,
    make_optimizer,
    make_schedule,
)
from dreamr_jax.training.step import (
    CPU_COMPILER_OPTIONS,
    TrainState,
    init_train_state,
    make_train_step,
)

GOLDEN = pathlib.Path(__file__).parent / "golden" / "train_step.json"
REGEN = os.environ.get("DREAMR_REGEN_GOLDEN") == "1"
# fp32 throughout; splitting sums over micro-batches or devices only reorders additions.
RTOL = 1e-5
# Metrics are token means of O(1) terms; SAPO's loss cancels to about -0.02 (advantages of
# both signs), so its relative error is magnified: compare metrics within RTOL + METRIC_ATOL.
METRIC_ATOL = 1e-6
B, T, G = 8, 24, 2  # rows, tokens per row, rollouts per prompt (SAPO)
PATCHES_PER_ROW = 16
GRIDS = [(1, 4, 4), (1, 2, 4), (1, 4, 2), (1, 2, 2)]  # one image per row, cycled
MESH_SHAPES = [(8, 1, 1), (2, 2, 2), (1, 1, 8)]
SAPO = functools.partial(sapo_objective, clip_eps=0.2, kl_beta=0.04, entropy=True)
OBJECTIVES = {"sft": sft_objective, "sapo": SAPO}
# The optimizer of the golden and training checks: no warmup so the first update moves.
ADAMW = OptimConfig(
    learning_rate=5e-3, warmup_steps=0, total_steps=30, min_lr_ratio=0.1, weight_decay=0.1
)


def _config():
    """Tiny config whose sharded dims divide 8: 8 heads, 8 kv heads, 8 vision heads."""
    return tiny_config(
        num_heads=8,
        num_kv_heads=8,
        vision_heads=8,
        vision_hidden=64,
        num_layers=1,
        vision_depth=1,
        deepstack=(0,),
    )


def _examples(cfg, seed: int = 0) -> list[dict]:
    """``B`` tokenised examples shaped like `TokenizeExample`'s output (right-padded)."""
    rng = np.random.default_rng(seed)
    words = functools.partial(rng.integers, 1, cfg.vision_start_token_id)
    examples = []
    for row in range(B):
        grid = GRIDS[row % len(GRIDS)]
        n_patches = int(np.prod(grid))
        image = [cfg.vision_start_token_id, *[cfg.image_token_id] * (n_patches // 4)]
        prompt = [*words(2), *image, cfg.vision_end_token_id, *words(3)]
        tokens = prompt + list(words(4 + row % 4))
        ids = np.zeros(T, np.int32)
        ids[: len(tokens)] = tokens
        col = np.arange(T)
        mask = (col < len(tokens)).astype(np.int32)
        positions, _ = rope_index(ids[None], np.asarray([grid]), mask[None], cfg)
        examples.append(
            {
                "id": f"ex{row}",
                "input_ids": ids,
                "attention_mask": mask,
                "loss_mask": ((col >= len(prompt)) & (col < len(tokens))).astype(np.int32),
                "positions": positions[:, 0],
                "pixel_values": rng.standard_normal((n_patches, cfg.vision.patch_dim)),
                "image_grid_thw": np.asarray(grid, np.int32),
            }
        )
    return examples


def _capture_grads() -> optax.GradientTransformation:
    """Stores the gradient in the optimizer state; parameters stay unchanged."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


CAPTURE = _capture_grads()


def _flat(state) -> dict:
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(state)}


def _host(metrics) -> dict:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _single_mesh():
    return make_mesh((1, 1, 1), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def cfg():
    return _config()


@pytest.fixture(scope="module")
def reference(cfg):
    """The model on one device, fixed seed."""
    return init_sharded(lambda: Qwen3VL(cfg, rngs=nnx.Rngs(0)), _single_mesh())


@pytest.fixture(scope="module")
def sft_batch(cfg):
    return prepare_batch(collate(_examples(cfg), num_patches=B * PATCHES_PER_ROW), cfg)


@pytest.fixture(scope="module")
def sapo_batch(cfg, reference, sft_batch):
    """Rollouts of the SFT batch: old/ref log-probs near the model's own, G = 2 groups."""
    rng = np.random.default_rng(1)
    graphdef, params = nnx.split(reference)

    @jax.jit
    def logp(params, batch):
        logits = forward_logits(nnx.merge(graphdef, params), batch)[:, :-1]
        return token_logprobs(logits, batch["input_ids"][:, 1:])

    own = np.pad(np.asarray(logp(params, sft_batch)), ((0, 0), (1, 0)))
    batch = {k: v for k, v in sft_batch.items() if k != "loss_mask"}
    batch["mask"] = sft_batch["loss_mask"]
    batch["old_logp"] = (own + 0.2 * rng.standard_normal(own.shape)).astype(np.float32)
    batch["ref_logp"] = (own + 0.1 * rng.standard_normal(own.shape)).astype(np.float32)
    rewards = rng.integers(0, 3, (B // G, G)).astype(np.float32)
    batch["advantages"] = np.asarray(group_advantages(rewards)).reshape(-1)
    return batch


@pytest.fixture(scope="module")
def batches(sft_batch, sapo_batch):
    return {"sft": sft_batch, "sapo": sapo_batch}


def _mesh(shape):
    return _single_mesh() if shape == (1, 1, 1) else make_mesh(shape)


@pytest.fixture(scope="module")
def capture_step(reference):
    """``get(name, mesh_shape, micro_batches)``: a capture-gradient step, built once each."""

    @functools.cache
    def get(name, mesh_shape=(1, 1, 1), micro_batches=1):
        return make_train_step(
            nnx.graphdef(reference),
            OBJECTIVES[name],
            CAPTURE,
            mesh=_mesh(mesh_shape),
            learning_rate=0.0,
            micro_batches=micro_batches,
            group_size=G if name == "sapo" else 1,
            donate=False,
        )

    return get


def _run(step, model, batch):
    """One step: (host metrics, {path: gradient}, input state, output state)."""
    state = init_train_state(model, CAPTURE)
    new_state, metrics = jax.block_until_ready(step(state, batch))
    return _host(metrics), _flat(new_state.opt_state), state, new_state


@pytest.fixture(scope="module")
def unsharded(reference, batches, capture_step):
    """Metrics and gradients of one whole-batch step on one device, per objective."""
    return {name: _run(capture_step(name), reference, b)[:2] for name, b in batches.items()}


def _assert_metrics_close(got: dict, want: dict):
    assert got.keys() == want.keys()
    assert got["token_count"] == want["token_count"]
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=RTOL, atol=METRIC_ATOL, err_msg=key)
    worst = max((abs(got[k] - v) / max(abs(v), 1e-30), k) for k, v in want.items())
    print(f"metrics: worst relative deviation {worst[0]:.2e} ({worst[1]})")


def _assert_grads_close(got: dict, want: dict):
    """Each gradient tensor within RTOL of its own largest entry (elementwise relative
    error is meaningless for entries that are zero up to rounding)."""
    assert got.keys() == want.keys()
    assert any(np.abs(g).max() > 0 for g in want.values())
    worst = 0.0
    for path, g in want.items():
        scale = max(float(np.abs(g).max()), 1e-30)
        np.testing.assert_allclose(got[path], g, rtol=0, atol=RTOL * scale, err_msg=str(path))
        worst = max(worst, float(np.abs(got[path] - g).max()) / scale)
    print(f"gradients: worst deviation / tensor max {worst:.2e}")


# ------------------------------------------------------------------------------ optimizer


def test_schedule_warmup_peak_cosine_floor():
    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    expected = {
        0: 0.0,
        5: 5e-4,  # linear warmup
        10: 1e-3,  # peak
        60: (1e-3 + 1e-4) / 2,  # half way down the cosine
        110: 1e-4,  # floor
        1000: 1e-4,  # stays at the floor
    }
    for step, lr in expected.items():
        np.testing.assert_allclose(learning_rate_at(cfg, step), lr, rtol=1e-6, err_msg=step)
    lrs = [learning_rate_at(cfg, s) for s in range(0, 120)]
    assert np.all(np.diff(lrs[:11]) > 0) and np.all(np.diff(lrs[10:111]) < 0)
    no_warmup = OptimConfig(learning_rate=1e-3, warmup_steps=0, total_steps=10)
    assert learning_rate_at(no_warmup, 0) == pytest.approx(1e-3)


def test_weight_decay_mask_on_model(cfg):
    params = nnx.state(nnx.eval_shape(lambda: Qwen3VL(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    mask = {
        ".".join(map(str, p)): bool(v.get_value()) for p, v in nnx.to_flat_state(decay_mask(params))
    }
    decayed = {k for k, v in mask.items() if v}
    assert "language_model.embed_tokens.embedding" in decayed
    assert "language_model.layers.0.q_proj.kernel" in decayed  # rank 3
    assert "visual.blocks.0.qkv.kernel" in decayed  # rank 4
    assert "visual.pos_embed.embedding" in decayed and "lm_head.kernel" in decayed
    assert all(k.endswith((".kernel", ".embedding")) for k in decayed)
    kept = set(mask) - decayed
    assert "visual.blocks.0.qkv.bias" in kept  # a rank-3 bias is still a bias
    assert "language_model.norm.scale" in kept and "visual.blocks.0.norm1.bias" in kept
    assert all(k.endswith((".scale", ".bias")) for k in kept)


def test_optimizer_update_decay_clip_and_schedule():
    # A huge eps makes Adam's first update linear in the (clipped) gradient, so clipping,
    # the learning rate and the decay mask can all be read off one update.
    cfg = OptimConfig(
        learning_rate=0.1,
        warmup_steps=4,
        total_steps=8,
        weight_decay=0.5,
        eps=1e3,
        grad_clip_norm=1.0,
    )
    params = {
        "dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)},
        "norm": {"scale": jnp.full((3,), 2.0)},
    }
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 10.0), params)  # norm 10 * sqrt(12)
    tx = make_optimizer(cfg)
    update = jax.jit(tx.update)
    opt_state = tx.init(params)
    for _ in range(3):
        updates, opt_state = update(grads, opt_state, params)
    lr = learning_rate_at(cfg, 2)  # the third update, still in warmup
    assert lr == pytest.approx(0.05)
    g = 10.0 / (10.0 * np.sqrt(12))  # every entry after clipping to norm 1
    adam = g / (g + cfg.eps)  # m_hat / (sqrt(v_hat) + eps) with constant gradients
    np.testing.assert_allclose(updates["dense"]["kernel"], -lr * (adam + 0.5 * 2.0), rtol=1e-5)
    np.testing.assert_allclose(updates["dense"]["bias"], -lr * adam, rtol=1e-5)
    np.testing.assert_allclose(updates["norm"]["scale"], -lr * adam, rtol=1e-5)
    unclipped = make_optimizer(OptimConfig(**{**vars(cfg), "grad_clip_norm": None}))
    updates, _ = jax.jit(unclipped.update)(grads, unclipped.init(params), params)
    np.testing.assert_allclose(
        updates["norm"]["scale"], -learning_rate_at(cfg, 0) * 10.0 / (10.0 + 1e3), atol=1e-12
    )


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"learning_rate": 0.0}, "learning_rate=0.0 must be a number > 0"),
        ({"warmup_steps": 5, "total_steps": 5}, "total_steps=5 must be greater than warmup"),
        ({"warmup_steps": -1}, "warmup_steps=-1 must be an int >= 0"),
        ({"total_steps": 2.5}, "total_steps=2.5 must be an int"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio=1.5 must be in \[0, 1\]"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1 must be >= 0"),
        ({"b2": 1.0}, r"b2=1.0 must be in \[0, 1\)"),
        ({"eps": float("nan")}, "eps=nan must be a number > 0"),
        ({"grad_clip_norm": 0.0}, "grad_clip_norm=0.0 must be None"),
    ],
)
def test_optim_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(OptimConfig(**fields))


# ------------------------------------------------------------------- batch preparation


def test_prepare_batch_is_row_major(cfg, sft_batch):
    b = sft_batch
    assert b["positions"].shape == (B, 3, T)
    vis = b["vision"]
    assert vis.pixel_values.shape == (B, PATCHES_PER_ROW, cfg.vision.patch_dim)
    # Row 1's 2x4 image has 8 patches: the rest of its patch budget is padding.
    assert np.all(vis.segment_ids[0] == 0)
    assert np.all(vis.segment_ids[1, :8] == 0) and np.all(vis.segment_ids[1, 8:] == -1)
    assert "id" not in b and "pixel_values" not in b and "patch_mask" not in b
    collated = collate(_examples(cfg), num_patches=B * PATCHES_PER_ROW)
    with pytest.raises(ValueError, match="row 0 has an image of 16 patches.*patches_per_row=8"):
        prepare_batch(collated, cfg, patches_per_row=8)


# ----------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("micro_batches", [2, 4])
@pytest.mark.parametrize("name", ["sft", "sapo"])
def test_micro_batches_equal_one_batch(
    name, micro_batches, reference, batches, unsharded, capture_step
):
    step = capture_step(name, micro_batches=micro_batches)
    metrics, grads, _, _ = _run(step, reference, batches[name])
    want_metrics, want_grads = unsharded[name]
    assert want_metrics["token_count"] > 0 and want_metrics["grad_norm"] > 0
    _assert_metrics_close(metrics, want_metrics)
    _assert_grads_close(grads, want_grads)


@pytest.mark.parametrize("name", ["sft", "sapo"])
def test_cpu_compiler_options_change_kernels_not_the_update(name, reference, batches, unsharded):
    """The CPU mesh's default `CPU_COMPILER_OPTIONS` against XLA's defaults (``{}``)."""
    assert CPU_COMPILER_OPTIONS  # what the default step (``unsharded``) compiled with
    step = make_train_step(
        nnx.graphdef(reference),
        OBJECTIVES[name],
        CAPTURE,
        mesh=_single_mesh(),
        learning_rate=0.0,
        group_size=G if name == "sapo" else 1,
        donate=False,
        compiler_options={},
    )
    metrics, grads, _, _ = _run(step, reference, batches[name])
    want_metrics, want_grads = unsharded[name]
    _assert_metrics_close(metrics, want_metrics)
    _assert_grads_close(grads, want_grads)


def _step(reference, *, micro_batches=1, group_size=1, mesh=None):
    return make_train_step(
        nnx.graphdef(reference),
        sft_objective,
        CAPTURE,
        mesh=mesh or _single_mesh(),
        learning_rate=0.0,
        micro_batches=micro_batches,
        group_size=group_size,
    )


def test_group_split_across_micro_batches_is_an_error(reference, sapo_batch):
    step = _step(reference, micro_batches=4, group_size=4)  # 8 rows -> micro-batches of 2
    state = init_train_state(reference, CAPTURE)
    with pytest.raises(
        ValueError, match=r"micro-batch of 2 rows .* not a multiple of group_size G=4"
    ):
        step(state, sapo_batch)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"micro_batches": 3}, "batch of 8 rows does not split into micro_batches=3"),
        ({"micro_batches": 2, "mesh_shape": (8, 1, 1)}, "does not split over 8 data-parallel"),
    ],
)
def test_indivisible_batch_is_an_error(reference, sft_batch, kwargs, match):
    mesh = make_mesh(kwargs.pop("mesh_shape")) if "mesh_shape" in kwargs else None
    step = _step(reference, mesh=mesh, **kwargs)
    state = init_train_state(reference, CAPTURE)
    with pytest.raises(ValueError, match=match):
        step(state, sft_batch)


def test_bad_step_arguments(reference, sft_batch):
    with pytest.raises(ValueError, match="micro_batches=0 must be an int >= 1"):
        _step(reference, micro_batches=0)
    with pytest.raises(ValueError, match="group_size=2.0 must be an int >= 1"):
        _step(reference, group_size=2.0)
    ragged = {**sft_batch, "loss_mask": sft_batch["loss_mask"][:4]}
    with pytest.raises(ValueError, match="rows b as its leading axis"):
        _step(reference)(init_train_state(reference, CAPTURE), ragged)


# ---------------------------------------------------------------------------- sharding

# SAPO (whose metrics also reduce by min and max); two micro-batches on the mixed mesh, so
# sharding and accumulation are checked together.
SHARDED_CASES = [((8, 1, 1), 1), ((2, 2, 2), 2), ((1, 1, 8), 1)]


@pytest.mark.parametrize(
    "shape, micro_batches",
    SHARDED_CASES,
    ids=[f"{'x'.join(map(str, s))}-k{k}" for s, k in SHARDED_CASES],
)
def test_sharded_equals_unsharded(
    shape, micro_batches, reference, sapo_batch, unsharded, capture_step
):
    model = shard_model(nnx.clone(reference), make_mesh(shape))
    step = capture_step("sapo", shape, micro_batches)
    # A device array laid out differently (here: on one device) is resharded by the step.
    batch = {**sapo_batch, "old_logp": jax.device_put(sapo_batch["old_logp"], jax.devices()[0])}
    metrics, grads, state, new_state = _run(step, model, batch)
    want_metrics, want_grads = unsharded["sapo"]
    _assert_metrics_close(metrics, want_metrics)
    _assert_grads_close(grads, want_grads)
    # The optimizer state (here: the gradient) is sharded like the parameters, in and out.
    q_path = ("language_model", "layers", 0, "q_proj", "kernel")
    q = dict(nnx.to_flat_state(state.params))[q_path][...]
    assert len(q.sharding.device_set) == 8
    for tree in (state.opt_state, new_state.opt_state, new_state.params):
        assert dict(nnx.to_flat_state(tree))[q_path][...].sharding == q.sharding


def test_init_train_state_shards_optimizer_state(reference):
    mesh = make_mesh((1, 2, 4))
    model = shard_model(nnx.clone(reference), mesh)
    state = init_train_state(model, make_optimizer(ADAMW))
    adam = state.opt_state[1][0]  # chain(clip, adamw): adamw = (scale_by_adam, ...)
    for moment in (adam.mu, adam.nu):
        for path, var in nnx.to_flat_state(moment):
            param = dict(nnx.to_flat_state(state.params))[path][...]
            assert var[...].sharding == param.sharding, path
    q = model.language_model.layers[0].q_proj.kernel[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert adam.count.sharding.spec == jax.sharding.PartitionSpec()
    assert state.step.sharding.spec == jax.sharding.PartitionSpec() and int(state.step) == 0


def test_init_train_state_rejects_non_param_state():
    class WithStats(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((2, 2)))
            self.mean = nnx.BatchStat(jnp.zeros(2))

    with pytest.raises(ValueError, match=r"non-Param variables \['mean'\]"):
        init_train_state(WithStats(), CAPTURE)


# --------------------------------------------------------------- golden and training


@pytest.fixture(scope="module")
def adamw_sft_step(reference):
    """The AdamW SFT train step on one device (donating its input state)."""
    return make_train_step(
        nnx.graphdef(reference),
        sft_objective,
        make_optimizer(ADAMW),
        mesh=_single_mesh(),
        learning_rate=make_schedule(ADAMW),
    )


def _fresh_state(reference) -> TrainState:
    """An AdamW state on copies of the reference parameters (a donating step consumes it)."""
    model = nnx.clone(reference)
    nnx.update(model, jax.tree.map(jnp.copy, nnx.state(model)))
    return init_train_state(model, make_optimizer(ADAMW))


@pytest.mark.parametrize("name", ["sft", "sapo"])
def test_golden_one_step(name, reference, batches, unsharded, adamw_sft_step):
    got = {k: v for k, v in unsharded[name][0].items() if k != "learning_rate"}
    if name == "sft":  # also pin the AdamW update: the loss after one step
        state, _ = adamw_sft_step(_fresh_state(reference), batches[name])
        got["loss_after_adamw_step"] = _host(adamw_sft_step(state, batches[name])[1])["loss"]
        assert got["loss_after_adamw_step"] < got["loss"]
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if REGEN:
        golden[name] = got
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert name in golden, (
        f"{GOLDEN} has no {name!r} entry; generate it with DREAMR_REGEN_GOLDEN=1 "
        "pytest tests/test_train_step.py -k golden"
    )
    want = golden[name]
    assert got.keys() == want.keys()
    assert got["token_count"] == want["token_count"]
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=RTOL, atol=1e-7, err_msg=key)


def test_sft_training_reduces_loss(reference, sft_batch, adamw_sft_step):
    state = _fresh_state(reference)
    losses = []
    for i in range(30):
        old = state
        state, metrics = adamw_sft_step(state, sft_batch)
        losses.append(metrics["loss"])
        if i % 4 == 0:  # bound in-flight work (jax <= 0.10 CPU collectives)
            jax.block_until_ready(metrics)
    losses = [float(x) for x in losses]
    assert int(state.step) == 30
    assert jax.tree.leaves(old.params)[0].is_deleted()  # the state was donated
    assert all(np.isfinite(losses))
    print(f"SFT loss {losses[0]:.4f} -> {losses[-1]:.4f} in 30 steps")
    assert losses[-1] < 0.05 * losses[0], losses


def test_fully_masked_sapo_batch_is_nan_free(reference, sapo_batch, capture_step):
    batch = dict(sapo_batch)
    batch["mask"] = np.zeros_like(batch["mask"])
    batch["old_logp"] = np.full_like(batch["old_logp"], -np.inf)  # garbage where masked
    batch["ref_logp"] = np.full_like(batch["ref_logp"], np.nan)
    metrics, grads, _, _ = _run(capture_step("sapo"), reference, batch)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert metrics["loss"] == 0 and metrics["token_count"] == 0 and metrics["grad_norm"] == 0
    assert all(np.all(g == 0) for g in grads.values())


def test_no_tokens_leaves_only_weight_decay(reference, sft_batch, adamw_sft_step):
    batch = {**sft_batch, "loss_mask": np.zeros_like(sft_batch["loss_mask"])}
    state = _fresh_state(reference)
    before = _flat(state.params)
    new_state, metrics = adamw_sft_step(state, batch)
    metrics = _host(metrics)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert metrics["loss"] == 0 and metrics["token_count"] == 0 and metrics["grad_norm"] == 0
    # A zero gradient leaves only AdamW's weight decay: p * (1 - lr * λ) on weight matrices.
    shrink = 1 - learning_rate_at(ADAMW, 0) * ADAMW.weight_decay
    for path, p in _flat(new_state.params).items():
        decays = path[-1] in ("kernel", "embedding")
        np.testing.assert_allclose(p, before[path] * (shrink if decays else 1), rtol=1e-6)


def test_sft_loss_weights_tokens_by_loss_mask(reference, sft_batch):
    """A ``loss_mask`` value w counts its token w times: the loss of a weighted batch
    equals the loss of the same batch with that token repeated w times."""
    weighted = dict(sft_batch)
    mask = np.asarray(sft_batch["loss_mask"]).copy()
    row, col = 0, int(np.flatnonzero(mask[0])[-1])
    mask[row, col] = 5
    weighted["loss_mask"] = mask
    loss1, count1, m1 = jax.jit(sft_objective)(reference, sft_batch)
    loss5, count5, m5 = jax.jit(sft_objective)(reference, weighted)
    assert int(count5) == int(count1) + 4
    logits, targets, logp = (np.asarray(x) for x in _token_logp(reference, sft_batch))
    np.testing.assert_allclose(float(loss5), float(loss1) - 4 * logp[row, col - 1], rtol=1e-5)
    hit = float(np.argmax(logits[row, col - 1]) == targets[row, col - 1])
    np.testing.assert_allclose(float(m5["accuracy_sum"]), float(m1["accuracy_sum"]) + 4 * hit)


def _token_logp(model, batch):
    return jax.jit(objectives._next_token_logprobs)(model, batch)
