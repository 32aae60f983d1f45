"""The training stages and `python -m dreamr_jax.train` (smoke scale).

The loop's resume/NaN/SIGTERM semantics are tested on a tiny linear model (fast); the real
stages on the demo's smoke config: the whole pipeline once through the CLI, a killed run
resumed with the same losses, a re-run that reuses every finished stage, and bad input
refused before compute.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
from flax import nnx, struct
from tensorboardX.proto import event_pb2

from dreamr_jax import config as config_lib
from dreamr_jax import train
from dreamr_jax.models import hf
from dreamr_jax.models.sharding import ShardingError
from dreamr_jax.rl.rollout import chain_token_ids
from dreamr_jax.training import distill
from dreamr_jax.training.checkpoint import CheckpointConfig, NonFiniteLoss, WorkdirError
from dreamr_jax.training.loop import run_loop
from dreamr_jax.training.train_config import STAGES

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs/demo.py:smoke")


# ------------------------------------------------------------------ the loop (toy model)


@struct.dataclass
class Toy:
    w: jax.Array
    opt: optax.OptState


_TX = optax.adam(0.1)
_X = jax.random.normal(jax.random.key(0), (32, 4))
_Y = _X @ jnp.arange(1.0, 5.0)


def _toy_state() -> Toy:
    w = jnp.zeros(4)
    return Toy(w, _TX.init(w))


@jax.jit
def _toy_step(state: Toy, batch):
    def loss_fn(w):
        return jnp.mean((batch["x"] @ w - batch["y"]) ** 2) * batch["scale"]

    loss, g = jax.value_and_grad(loss_fn)(state.w)
    upd, opt = _TX.update(g, state.opt)
    return Toy(optax.apply_updates(state.w, upd), opt), {"loss": loss}


def _batch(step: int, nan_at: int | None = None):
    rows = (np.arange(8) + 8 * step) % 32
    scale = jnp.nan if step == nan_at else 1.0
    return {"x": _X[rows], "y": _Y[rows], "scale": jnp.asarray(scale)}


def _losses(stage_dir: Path) -> list[float]:
    lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


CKPT = CheckpointConfig(every_steps=3, keep=2, async_save=False)


def _loop(stage_dir, steps):
    return run_loop(
        stage_dir,
        _toy_state(),
        _toy_step,
        lambda step, state: _batch(step),
        steps=steps,
        checkpoint=CKPT,
        desc="toy",
    )


def test_loop_resumes_with_identical_losses(tmp_path):
    straight = _loop(tmp_path / "a", 9)
    assert straight.step == 9 and not straight.already_done
    _loop(tmp_path / "b", 7)  # stops after 7; the last checkpoint is step 7 (final)
    # A later run with a longer schedule continues from step 7, not from scratch.
    resumed = _loop(tmp_path / "b", 9)
    assert resumed.step == 9
    np.testing.assert_allclose(_losses(tmp_path / "b"), _losses(tmp_path / "a"), rtol=1e-6)
    np.testing.assert_allclose(resumed.state.w, straight.state.w, rtol=1e-6)
    again = _loop(tmp_path / "b", 9)
    assert again.already_done and again.step == 9


def test_loop_drops_log_lines_of_an_interrupted_run(tmp_path):
    _loop(tmp_path, 6)
    with (tmp_path / "metrics.jsonl").open("a") as f:  # as if killed after step 8's log
        f.write(json.dumps({"step": 7, "loss": 123.0}) + "\n")
        f.write(json.dumps({"step": 8, "loss": 456.0}) + "\n")
    _loop(tmp_path, 8)
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9)) and 123.0 not in _losses(tmp_path)


def _events(stage_dir: Path) -> list[list]:
    """Each TensorBoard event file's events (oldest file first), read from the TFRecord
    framing (length, its CRC, the record, its CRC) without TensorFlow."""
    files = sorted((stage_dir / "tensorboard").glob("events.out.tfevents.*"))
    out = []
    for path in sorted(files, key=lambda p: p.stat().st_mtime_ns):
        data, at, events = path.read_bytes(), 0, []
        while at < len(data):
            (n,) = np.frombuffer(data[at : at + 8], "<u8")
            events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + int(n)]))
            at += 12 + int(n) + 4
        out.append(events)
    return out


def _scalars(events) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for e in events:
        for v in e.summary.value:
            out.setdefault(v.tag, {})[e.step] = v.simple_value
    return out


def test_loop_writes_tensorboard_scalars_and_purges_on_resume(tmp_path):
    _loop(tmp_path, 6)
    (first,) = _events(tmp_path)
    losses = _scalars(first)["loss"]
    assert sorted(losses) == list(range(1, 7))
    np.testing.assert_allclose([losses[i] for i in range(1, 7)], _losses(tmp_path), rtol=1e-6)
    assert set(_scalars(first)) == {"loss", "step_s"}
    _loop(tmp_path, 9)  # resumes from the final checkpoint, step 6
    old, new = _events(tmp_path)
    assert old == first
    starts = [e for e in new if e.HasField("session_log")]
    # The START event at step 7 makes TensorBoard drop older points from step 7 on.
    assert [(e.step, e.session_log.status) for e in starts] == [(7, event_pb2.SessionLog.START)]
    resumed = _scalars(new)["loss"]
    assert sorted(resumed) == [7, 8, 9]
    np.testing.assert_allclose([resumed[i] for i in (7, 8, 9)], _losses(tmp_path)[6:], rtol=1e-6)


def test_loop_stops_at_nan_without_checkpointing_it(tmp_path):
    with pytest.raises(NonFiniteLoss, match="step 5"):
        run_loop(
            tmp_path,
            _toy_state(),
            _toy_step,
            lambda step, state: _batch(step, nan_at=5),
            steps=9,
            checkpoint=CKPT,
        )
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [3]


# ------------------------------------------------------------- the real stages (smoke)


def _cli(workdir: Path, *overrides: str, devices: int = 1) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dreamr_jax.train",
            f"--config={SMOKE}",
            f"--workdir={workdir}",
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    code, out, err = _finish(_cli(workdir))
    assert code == 0, err[-3000:]
    return workdir, out


def test_smoke_pipeline_writes_every_stage_and_the_report(smoke_run):
    workdir, out = smoke_run
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary["timings_s"]) >= set(STAGES)
    for name in train.EXPORTS:
        assert (workdir / "export" / name / "model.safetensors").exists()
        assert (workdir / "export" / name / "tokenizer.json").exists()
    report = json.loads((workdir / "report.json").read_text())
    assert {c["check"] for c in report["checks"]} >= {"target-only accuracy >= 90%"}
    assert set(report["evaluations"]) == {"draft_sft", "draft_sapo"}
    effect = json.loads((workdir / "sapo" / "effect.json").read_text())
    assert set(effect) == {"held_out_examples", "before", "after"}
    assert effect["held_out_examples"] == 4  # the smoke variant's data.validation_size
    md = (workdir / "report.md").read_text()
    assert "## Checks" in md and "fpsr" in md
    # SAPO's metrics reach TensorBoard as they reach metrics.jsonl (rewards by term, KL...).
    logged = json.loads((workdir / "sapo" / "metrics.jsonl").read_text().splitlines()[-1])
    want = {"loss", "kl", "entropy", "clip_frac", "grad_norm", "tokens_per_s"}
    assert want | {"reward_outcome", "reward_draft", "reward_length", "acceptance"} <= set(logged)
    (events,) = _events(workdir / "sapo")
    scalars = _scalars(events)
    assert set(scalars) == set(logged) - {"step"}
    for name, value in logged.items():
        if name != "step":
            assert scalars[name][logged["step"]] == pytest.approx(value, rel=1e-6), name
    for png in report["plots"]["draft_sapo"]:
        assert (workdir / png).exists()


def test_later_stages_use_the_refined_target(smoke_run):
    """Export (and so SAPO's scorer and the evaluation) takes refine_target's model, not
    the SFT target it started from."""
    workdir, _ = smoke_run
    summary = json.loads((workdir / "refine_target" / "candidates.json").read_text())["summary"]
    assert summary["steps"] > 0
    run = train.Run(_cfg(), workdir)
    exported, _ = hf.load_pretrained(workdir / "export" / "target", dtype=jnp.float32)
    leaves = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))  # noqa: E731
    refined, sft = leaves(run.model("target")), leaves(run.model("target_sft"))
    for a, b in zip(leaves(exported), refined, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    pairs = zip(refined, sft, strict=True)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)


def test_rerun_reuses_finished_stages(smoke_run):
    workdir, _ = smoke_run
    stamps = {p: p.stat().st_mtime_ns for p in workdir.rglob("*.safetensors")}
    logs = {p: p.read_text() for p in workdir.glob("*/metrics.jsonl")}
    code, out, err = _finish(_cli(workdir))
    assert code == 0, err[-3000:]
    for stage in ("sft_target", "sft_draft", "refine_target", "sapo"):
        assert f"stage {stage}: finished earlier, reused" in out
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*.safetensors")} == stamps
    assert {p: p.read_text() for p in workdir.glob("*/metrics.jsonl")} == logs


def test_killed_stage_resumes_with_the_same_losses(smoke_run, tmp_path):
    """SIGKILL in the middle of sft_target (after a checkpoint), then the same command:
    the stage continues from the checkpoint and its losses equal the uninterrupted run's."""
    reference, _ = smoke_run
    stages = "--config.stages=('data','sft_target')"
    steps = "--config.sft_target.steps=8"
    total = "--config.sft_target.optim.total_steps=8"
    proc = _cli(tmp_path, stages, steps, total, "--config.sft_target.checkpoint.every_steps=2")
    ckpt = tmp_path / "sft_target" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (ckpt / "4").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt / "4").is_dir() and not (ckpt / "8").is_dir(), "killed too late or too early"
    code, _, err = _finish(_cli(tmp_path, stages, steps, total))
    assert code == 0, err[-3000:]
    clean = tmp_path / "clean"
    code, _, err = _finish(_cli(clean, stages, steps, total))
    assert code == 0, err[-3000:]
    resumed = _losses(tmp_path / "sft_target")
    assert len(resumed) == 8
    np.testing.assert_allclose(resumed, _losses(clean / "sft_target"), rtol=1e-5)


def test_run_stopped_inside_sapo_resumes_to_the_same_draft(smoke_run, tmp_path):
    """A copy of the finished smoke run cut back to where a kill after SAPO's step-1
    checkpoint leaves it (step 2's checkpoint, SAPO's held-out effect and everything after
    SAPO removed; step 2's metrics line left behind, as a kill after logging leaves it). The
    same command reuses the earlier stages and resumes SAPO from step 1, with its prompt
    iterator and sampling key restored: step 2 logs the same metrics, the held-out effect
    is the same and the exported SAPO draft is bit-identical (one machine, one device)."""
    reference, _ = smoke_run
    work = tmp_path / "run"
    shutil.copytree(reference, work)
    shutil.rmtree(work / "sapo" / "checkpoints" / "2")
    (work / "sapo" / "effect.json").unlink()
    for name in ("export", "eval_draft_sft", "eval_draft_sapo", "report_plots"):
        shutil.rmtree(work / name)
    stages = "--config.stages=('data','sft_target','sft_draft','refine_target','sapo','export')"
    code, out, err = _finish(_cli(work, stages))
    assert code == 0, err[-3000:]
    for stage in ("sft_target", "sft_draft", "refine_target"):
        assert f"stage {stage}: finished earlier, reused" in out
    assert "stage sapo: finished earlier" not in out

    def metrics(stage_dir: Path) -> list[dict]:
        lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        return [{k: v for k, v in r.items() if k not in ("step_s", "tokens_per_s")} for r in rows]

    assert metrics(work / "sapo") == metrics(reference / "sapo")
    effect = json.loads((work / "sapo" / "effect.json").read_text())
    assert effect == json.loads((reference / "sapo" / "effect.json").read_text())
    ours, theirs = (
        safetensors.numpy.load_file(d / "export" / "draft_sapo" / "model.safetensors")
        for d in (work, reference)
    )
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)


# Draft, target and SAPO's rollouts on three disjoint sets of 8 devices: the draft data
# parallel on 0-1, the target fsdp x tensor on 2-5, rollouts data parallel on 6-7.
DISJOINT = (
    "--config.draft_mesh.data=2",
    "--config.target_mesh.first_device=2",
    "--config.target_mesh.fsdp=2",
    "--config.target_mesh.tensor=2",
    "--config.rollout_mesh.first_device=6",
    "--config.rollout_mesh.data=2",
)
TIMING = ("wall_s", "tokens_per_s")


def _requests(workdir: Path) -> list[dict]:
    out = []
    for path in sorted(workdir.glob("eval_*/eval/requests.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def test_disjoint_device_sets_give_the_one_device_run(smoke_run, tmp_path):
    """The whole pipeline with each model on its own mesh (sharded data / fsdp / tensor,
    weights moved to the rollout devices each SAPO update, engines across device sets)
    trains to the same losses and evaluates to the same chains as on one device. Sharding
    only reorders float32 sums: losses agree to 1e-5 (relative; 1e-6 absolute for SAPO's
    ~0 loss), CPN probabilities to 1e-5, and every token count, decision and answer is
    equal."""
    reference, _ = smoke_run
    code, _, err = _finish(_cli(tmp_path, *DISJOINT, devices=8))
    assert code == 0, err[-3000:]
    for stage in ("sft_target", "sft_draft", "refine_target", "sapo"):
        ours, theirs = _losses(tmp_path / stage), _losses(reference / stage)
        assert len(ours) == len(theirs) > 0, stage
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=stage)
    ours, theirs = _requests(tmp_path), _requests(reference)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        for metrics in (a["metrics"], b["metrics"]):
            for key in TIMING:
                metrics.pop(key)
        # None (a step nobody verified) becomes NaN, which must match NaN.
        probs = [np.array([s.pop("p") for s in r["steps"]], float) for r in (a, b)]
        np.testing.assert_allclose(*probs, atol=1e-5, err_msg=a["id"])
        assert a == b


def _cfg(*overrides: str) -> train.TrainConfig:
    raw = config_lib.load_config(SMOKE, overrides)
    return config_lib.to_dataclass(train.TrainConfig, {k: raw[k] for k in train.SECTIONS})


def test_sft_draft_on_target_chains(tmp_path):
    """``sft_draft.chains.source=target``: the SFT target writes the chains once (kept in
    sft_draft/target_chains.json), the draft trains on them, a re-run reuses both."""
    cfg = _cfg(
        "stages=('data','sft_target','sft_draft')",
        "sft_draft.chains.source=target",
        "sft_draft.chains.keep=all",  # a 4-step target answers nothing right
        "sft_draft.chains.temperature=1.0",  # (greedy, it ends every chain at once)
        "sft_draft.chains.records=8",
        "sft_draft.chains.max_new_tokens=16",
    )
    notes = train.run(cfg, tmp_path)
    assert {"sft_target", "sft_draft"} <= set(notes["timings_s"])
    path = tmp_path / "sft_draft" / "target_chains.json"
    written = json.loads(path.read_text())
    assert written["summary"]["asked"] == 8 and written["summary"]["kept"] >= 1
    # Written by the SFT target: the same call with that model gives the same chains.
    run = train.Run(cfg, tmp_path)
    target, tok = run.model("target_sft"), run.tokenizer()
    source = run.source("train")
    eos_ids, pad_id = chain_token_ids(tok)
    again = distill.target_chains(
        target,
        [source[i] for i in range(8)],
        tok,
        run.image_cfg(target.cfg),
        cfg.sft_draft.chains,
        delimiter=cfg.spec.delimiter,
        eos_ids=eos_ids,
        pad_id=pad_id,
    )
    assert distill.load_chains(path) == again
    assert len((tmp_path / "sft_draft" / "metrics.jsonl").read_text().splitlines()) == 2
    stamp = path.stat().st_mtime_ns
    train.run(cfg, tmp_path)
    assert path.stat().st_mtime_ns == stamp


def test_missing_previous_stage_is_named(tmp_path):
    with pytest.raises(train.StageError, match="stage 'data'"):
        train.run(_cfg("stages=('sft_target',)"), tmp_path)
    train.run(_cfg("stages=('data',)"), tmp_path)
    with pytest.raises(train.StageError, match="stage 'sft_target'"):
        train.run(_cfg("stages=('sapo',)"), tmp_path)


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("sapo.micro_batches=3", config_lib.ConfigError, r"micro_batches=3: must divide"),
        ("stages=('data','finetune')", config_lib.ConfigError, r"unknown \['finetune'\]"),
        ("sft_target.optimizer.lr=1", config_lib.ConfigError, r"unknown key 'optimizer'"),
    ],
)
def test_bad_config_is_refused(override, error, match):
    with pytest.raises(error, match=match):
        _cfg(override)


def test_verification_pairs_need_an_even_batch():
    with pytest.raises(config_lib.ConfigError, match="verify_pairs=True: needs an even batch"):
        _cfg("sft_target.verify_pairs=True", "sft_target.batch_size=3")


def test_bad_mesh_and_workdir_are_refused_before_compute(tmp_path):
    cfg = _cfg("target_mesh.data=16")
    train.run(_cfg("stages=('data',)"), tmp_path)
    with pytest.raises(ShardingError, match="target mesh"):
        train.run(cfg, tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WorkdirError, match="file"):
        train.run(_cfg(), blocker / "run")
