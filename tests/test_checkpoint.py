"""Checkpointer, PreemptionGuard, check_finite and check_workdir; the fault-tolerance tests
run tests/toy_train_worker.py as a subprocess, kill it and resume it."""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dreamr_jax.training import (
    CheckpointConfig,
    Checkpointer,
    CheckpointError,
    NonFiniteLoss,
    PreemptionGuard,
    WorkdirError,
    check_finite,
    check_workdir,
)
from dreamr_jax.training.checkpoint import UNREADABLE_SUFFIX

WORKER = pathlib.Path(__file__).with_name("toy_train_worker.py")
EVERY_STEP = CheckpointConfig(every_steps=1, keep=None, async_save=False)
# A failed tensorstore read leaves a callback that fires after Orbax closed its event loop.
ASYNC_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((2, 4), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def small_state(seed: float = 0.0) -> dict:
    return {
        "params": {"w": jnp.arange(32.0).reshape(8, 4) + seed, "b": jnp.full((4,), seed)},
        "step": jnp.asarray(int(seed), jnp.int32),
    }


def assert_trees_equal(want, got):
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(g))


def corrupt(step_dir: pathlib.Path) -> None:
    """Truncates every array data file of the step's state item."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data files under {step_dir}"
    for p in files:
        with open(p, "r+b") as f:
            f.truncate(p.stat().st_size // 2)


# ---------------------------------------------------------------------------------------
# Checkpointer


@pytest.mark.parametrize("async_save", [False, True])
def test_sharded_state_restores_into_the_requested_shardings(mesh, tmp_path, async_save):
    state = {
        "w": jax.device_put(jnp.arange(64.0).reshape(8, 8), NamedSharding(mesh, P("a", "b"))),
        "v": jax.device_put(jnp.arange(8, dtype=jnp.bfloat16), NamedSharding(mesh, P("b"))),
        "key": jax.random.key_data(jax.random.key(3)),
        "step": jnp.asarray(7, jnp.int32),
    }
    want = jax.tree.map(np.asarray, state)
    cfg = CheckpointConfig(every_steps=1, async_save=async_save)
    with Checkpointer(tmp_path, cfg) as ckpt:
        assert ckpt.save(7, state)
    targets = {"w": P("b", None), "v": P(), "key": P(), "step": P()}  # differ from the saved
    abstract = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=NamedSharding(mesh, targets[k]))
        for k, v in want.items()
    }
    with Checkpointer(tmp_path, cfg) as ckpt:
        step, got = ckpt.restore(abstract)
    assert step == 7
    assert_trees_equal(want, got)
    for k, spec in targets.items():
        assert got[k].sharding == NamedSharding(mesh, spec), k
        assert got[k].dtype == want[k].dtype, k


def test_restore_without_checkpoints_returns_none_and_a_missing_step_raises(tmp_path):
    with Checkpointer(tmp_path / "ckpt", EVERY_STEP) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.restore(small_state()) is None
        ckpt.save(1, small_state(1))
        with pytest.raises(CheckpointError, match=r"step 5 .*saved steps: \[1\]"):
            ckpt.restore(small_state(), step=5)


def test_keeps_the_newest_n(tmp_path):
    cfg = CheckpointConfig(every_steps=1, keep=2, async_save=True)
    with Checkpointer(tmp_path, cfg) as ckpt:
        for step in range(1, 6):
            assert ckpt.save(step, small_state(step))
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "5"]


@pytest.mark.parametrize("async_save", [False, True])
def test_saves_every_n_steps_unless_forced(tmp_path, async_save):
    cfg = CheckpointConfig(every_steps=3, keep=None, async_save=async_save)
    with Checkpointer(tmp_path, cfg) as ckpt:
        saved = [s for s in range(1, 11) if ckpt.save(s, small_state(s))]
        assert saved == [3, 6, 9]
        assert ckpt.save(10, small_state(10), force=True)
        assert not ckpt.save(10, small_state(10), force=True), "a step is saved once"
        assert ckpt.all_steps() == [3, 6, 9, 10]
        assert ckpt.latest_step() == 10


@ASYNC_NOISE
def test_unreadable_newest_falls_back_and_is_kept(tmp_path, caplog):
    with Checkpointer(tmp_path, EVERY_STEP) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, small_state(step))
    corrupt(tmp_path / "3")
    files_before = sorted(p.relative_to(tmp_path / "3") for p in (tmp_path / "3").rglob("*"))
    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path, EVERY_STEP) as ckpt:
        step, got = ckpt.restore(small_state())
        assert step == 2
        assert_trees_equal(small_state(2), got)
        assert str(tmp_path / "3") in caplog.text and "unreadable" in caplog.text
        # Kept, set aside where Orbax does not see it; training on can save step 3 again.
        kept = tmp_path / f"3{UNREADABLE_SUFFIX}"
        assert sorted(p.relative_to(kept) for p in kept.rglob("*")) == files_before
        assert ckpt.all_steps() == [1, 2]
        assert ckpt.save(3, small_state(30))
        assert_trees_equal(small_state(30), ckpt.restore(small_state())[1])
    assert kept.is_dir()


@ASYNC_NOISE
def test_no_readable_checkpoint_raises_and_deletes_nothing(tmp_path):
    with Checkpointer(tmp_path, EVERY_STEP) as ckpt:
        for step in (1, 2):
            ckpt.save(step, small_state(step))
    for step in (1, 2):
        corrupt(tmp_path / str(step))
    with Checkpointer(tmp_path, EVERY_STEP) as ckpt:
        with pytest.raises(
            CheckpointError, match=r"(?s)no readable checkpoint.*step 2: .*OUT_OF_RANGE.*step 1: "
        ):
            ckpt.restore(small_state())
        with pytest.raises(CheckpointError, match="step 1: "):
            ckpt.restore(small_state(), step=1)  # an explicit step: no fallback
        assert ckpt.all_steps() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def _iterator():
    return iter(grain.MapDataset.range(40).shuffle(seed=3).repeat().batch(4))


@pytest.mark.parametrize("async_save", [False, True])
def test_iterator_position_round_trips(tmp_path, async_save):
    cfg = CheckpointConfig(every_steps=1, async_save=async_save)
    it = _iterator()
    for _ in range(7):
        next(it)
    with Checkpointer(tmp_path, cfg) as ckpt:
        ckpt.save(7, small_state(), iterator=it)
        # Drawn right away: an async save must still store the position at save time.
        expected = [next(it) for _ in range(8)]  # crosses an epoch boundary
    fresh = _iterator()
    with Checkpointer(tmp_path, cfg) as ckpt:
        assert ckpt.restore(small_state(), iterator=fresh)[0] == 7
    for want, got in zip(expected, [next(fresh) for _ in range(8)], strict=True):
        np.testing.assert_array_equal(want, got)


def test_iterator_restore_needs_a_saved_iterator(tmp_path):
    with Checkpointer(tmp_path, EVERY_STEP) as ckpt:
        ckpt.save(1, small_state())
        with pytest.raises(CheckpointError, match="data_iterator"):
            ckpt.restore(small_state(), iterator=_iterator())


def test_config_is_stored_as_json(tmp_path):
    config = {"lr": 1e-6, "stage": "sapo", "mesh": [1, 8]}
    with Checkpointer(tmp_path, EVERY_STEP) as ckpt:
        ckpt.save(1, small_state(), config=config)
        ckpt.save(2, small_state())
        assert ckpt.restore_config(1) == config
        assert ckpt.restore_config() is None  # step 2 has none
        with pytest.raises(CheckpointError, match="JSON"):
            ckpt.save(3, small_state(), config={"bad": object()})


def test_config_is_validated():
    with pytest.raises(ValueError, match="every_steps"):
        CheckpointConfig(every_steps=0).validate()
    with pytest.raises(ValueError, match="keep"):
        CheckpointConfig(keep=0).validate()


# ---------------------------------------------------------------------------------------
# check_finite, check_workdir, PreemptionGuard


def test_check_finite_names_the_step_and_the_metric():
    check_finite(jnp.float32(1.5), step=3)
    check_finite({"loss": 1.0, "grad_norm": np.ones(3)}, step=3)
    with pytest.raises(NonFiniteLoss, match="at step 12") as e:
        check_finite(jnp.float32(jnp.nan), step=12)
    assert e.value.step == 12
    with pytest.raises(NonFiniteLoss, match=r"\['grad_norm'\].*at step 4"):
        check_finite({"loss": 1.0, "grad_norm": jnp.array([1.0, jnp.inf])}, step=4)


def test_check_workdir_creates_and_checks(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_workdir(target) == str(target)
    assert target.is_dir() and not list(target.iterdir()), "the write test leaves nothing"
    assert check_workdir("gs://bucket/run") == "gs://bucket/run"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WorkdirError, match=f"{blocker}/run.*writable --workdir"):
        check_workdir(blocker / "run")


def test_preemption_guard_sets_a_flag_and_restores_the_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.requested and not guard.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not guard.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.requested and guard.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is previous


# ---------------------------------------------------------------------------------------
# Fault tolerance of a toy training loop (subprocesses).

STEPS = 12


def _command(workdir, *extra):
    return [sys.executable, str(WORKER), "--workdir", str(workdir), "--steps", str(STEPS), *extra]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device: the toy model is not sharded
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parents[1]), env.get("PYTHONPATH", "")])
    return env


def _records(log: pathlib.Path) -> list[dict]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


def _losses(records) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "step" in r}


def _run(cmd, log: pathlib.Path, timeout=120) -> subprocess.CompletedProcess:
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=_env(),
                              timeout=timeout)  # fmt: skip
    return proc


def _start(cmd, log: pathlib.Path) -> subprocess.Popen:
    """Starts the worker with stdout in ``log`` and stderr in ``log.err`` (no pipe to fill)."""
    with open(log, "w") as out, open(_err(log), "w") as err:
        return subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=_env())


def _err(log: pathlib.Path) -> pathlib.Path:
    return log.with_suffix(".err")


def _wait_for(predicate, proc, log, timeout=90.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}): {_err(log).read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the worker")
        time.sleep(0.02)


def _steps_saved(ckpt_dir: pathlib.Path) -> list[int]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory) -> dict[int, float]:
    """Losses of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = _run(_command(tmp / "work"), tmp / "log")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(tmp / "log")
    assert records[0] == {"start": 0}
    losses = _losses(records)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert _steps_saved(tmp / "work" / "ckpt") == [6, 9, 12]  # every 3, keep 3
    return losses


def test_killed_run_resumes_with_identical_losses(tmp_path, reference_losses):
    cmd = _command(tmp_path / "work", "--sleep", "0.15")
    proc = _start(cmd, tmp_path / "log1")
    ckpt_dir = tmp_path / "work" / "ckpt"

    def ready():
        done = _losses(_records(tmp_path / "log1"))
        return len(done) >= 5 and _steps_saved(ckpt_dir)

    _wait_for(ready, proc, tmp_path / "log1")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    first = _losses(_records(tmp_path / "log1"))
    saved = _steps_saved(ckpt_dir)
    assert proc.returncode == -signal.SIGKILL and max(first) < STEPS
    assert {s: reference_losses[s] for s in first} == first

    second = _run(cmd, tmp_path / "log2")
    assert second.returncode == 0, second.stderr[-3000:]
    records = _records(tmp_path / "log2")
    start = records[0]["start"]
    assert max(saved) <= start <= max(first), (saved, start, max(first))
    resumed = _losses(records)
    assert sorted(resumed) == list(range(start + 1, STEPS + 1))
    assert resumed == {s: reference_losses[s] for s in resumed}  # exactly equal


def test_sigterm_saves_the_last_finished_step_and_exits_cleanly(tmp_path, reference_losses):
    cmd = _command(tmp_path / "work", "--sleep", "0.15", "--every", "100")
    proc = _start(cmd, tmp_path / "log1")
    _wait_for(lambda: len(_losses(_records(tmp_path / "log1"))) >= 4, proc, tmp_path / "log1")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, _err(tmp_path / "log1").read_text()[-3000:]
    records = _records(tmp_path / "log1")
    last = max(_losses(records))
    assert records[-1] == {"preempted": last}
    assert _steps_saved(tmp_path / "work" / "ckpt") == [last]

    second = _run(cmd, tmp_path / "log2")  # and the run goes on from there
    assert second.returncode == 0, second.stderr[-3000:]
    records = _records(tmp_path / "log2")
    assert records[0] == {"start": last}
    assert _losses(records) == {s: reference_losses[s] for s in range(last + 1, STEPS + 1)}


def test_nan_stops_the_run_before_it_is_saved(tmp_path, reference_losses):
    k = 5
    proc = _run(_command(tmp_path / "work", "--every", "1", "--nan-at", str(k)), tmp_path / "log")
    assert proc.returncode != 0
    assert "NonFiniteLoss" in proc.stderr and f"at step {k}" in proc.stderr, proc.stderr[-3000:]
    losses = _losses(_records(tmp_path / "log"))
    assert losses == {s: reference_losses[s] for s in range(1, k)}
    saved = _steps_saved(tmp_path / "work" / "ckpt")
    assert saved and max(saved) == k - 1, saved
