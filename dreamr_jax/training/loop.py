"""The resumable loop every training stage runs.

    result = run_loop(stage_dir, state, step_fn, next_batch, steps=..., checkpoint=...)

* Resuming is the default: the newest readable checkpoint in ``stage_dir/checkpoints`` is
  restored (state and, if given, the data iterator), and the loop continues from its step;
  a finished stage returns at once.
* Metrics are fetched one step late (the host never waits for the step it just
  dispatched), except when a checkpoint is due: then the step's loss is checked first, so
  a NaN stops the run, naming the step, before it can reach a checkpoint.
* ``metrics.jsonl`` gets one line per step; on resume, lines past the restored step (from
  the interrupted run) are dropped so the file reads like an uninterrupted run.
* The same scalars go to TensorBoard event files in ``tensorboard/`` (process 0 only:
  ``tensorboard --logdir WORKDIR`` shows every stage). A resumed run starts a new file
  that purges the interrupted run's points past the restored step, as the log does.
* SIGTERM (preemptible TPUs) saves the current step and returns with ``preempted`` set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from dreamr_jax.training.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    PreemptionGuard,
    check_finite,
)


@dataclasses.dataclass
class LoopResult:
    """``state`` after the last step run, the ``step`` reached, whether the stage had
    already finished (nothing ran), whether SIGTERM stopped it, and the last metrics."""

    state: Any
    step: int
    already_done: bool = False
    preempted: bool = False
    last_metrics: dict | None = None


@contextlib.contextmanager
def closing_iterator(iterator):
    """Yields ``iterator`` and closes it on exit, if it can be closed: a grain iterator's
    prefetch threads (or worker processes) stop, and what its transforms hold (a record
    cache) is freed, instead of living on through the stages after it."""
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def abstract_like(tree):
    """Shape/dtype/sharding structs of a pytree of arrays (a restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _host(metrics: Mapping[str, Any]) -> dict:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def _trim_log(path: Path, last_step: int) -> None:
    """Drops log lines of steps after ``last_step`` (written by an interrupted run)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


class _TensorBoard:
    """Scalars to TensorBoard event files (tensorboardX: no TensorFlow needed)."""

    def __init__(self, logdir: Path, start: int):
        from tensorboardX import SummaryWriter  # Heavy import, only when a stage trains.

        # purge_step: TensorBoard drops the earlier files' points from this step on. The
        # suffix keeps two runs started in one second (tensorboardX names files by the
        # second) from truncating each other's file.
        self.writer = SummaryWriter(
            str(logdir),
            purge_step=start + 1 if start else None,
            filename_suffix=f".{time.time_ns()}.{os.getpid()}",
        )

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            if name != "step":
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


def run_loop(
    stage_dir: str | os.PathLike,
    state,
    step_fn: Callable,
    next_batch: Callable[[int, Any], Any],
    *,
    steps: int,
    checkpoint: CheckpointConfig,
    iterator=None,
    config: Mapping | None = None,
    desc: str = "train",
    extra_metrics: Callable[[int], Mapping[str, float]] | None = None,
) -> LoopResult:
    """Runs ``state, metrics = step_fn(state, next_batch(step))`` up to ``steps``.

    Args:
      stage_dir: the stage's directory (``checkpoints/``, ``metrics.jsonl`` and
        ``tensorboard/`` inside).
      state: the initial state (used when no checkpoint exists; also the restore target).
      step_fn: the jitted train step (donates ``state``).
      next_batch: ``(step, state) -> batch``; reads ``iterator`` if the stage has one
        (SAPO samples its batch with the current policy ``state.params``).
      steps: the stage's total number of updates.
      checkpoint: periodic save settings; the final step is always saved.
      iterator: a checkpointable data iterator saved and restored with the state; closed
        when the loop returns or raises (`closing_iterator`).
      config: the resolved config, stored in each checkpoint.
      desc: progress-bar label.
      extra_metrics: ``step -> {name: value}`` host metrics of the batch just used (e.g.
        SAPO rewards), logged with the step's metrics.

    Raises:
      NonFiniteLoss: a step's loss is NaN or infinite (nothing is saved for it).
    """
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    log_path = stage_dir / "metrics.jsonl"
    # The stage's pipeline stops with the loop (positions are taken at each save).
    with closing_iterator(iterator), Checkpointer(stage_dir / "checkpoints", checkpoint) as ckpt:
        restored = ckpt.restore(abstract_like(state), iterator=iterator)
        start = 0
        if restored is not None:
            start, state = restored
            logging.info("%s: resumed from step %d", desc, start)
        if start >= steps:
            return LoopResult(state, start, already_done=True)
        _trim_log(log_path, start)
        result = LoopResult(state, start)
        tb = _TensorBoard(stage_dir / "tensorboard", start) if jax.process_index() == 0 else None
        pending: tuple[int, Any, dict] | None = None
        t_last = time.perf_counter()
        with (
            PreemptionGuard() as guard,
            log_path.open("a") as log,
            contextlib.closing(tb) if tb is not None else contextlib.nullcontext(),
            tqdm(total=steps, initial=start, desc=desc, dynamic_ncols=True) as bar,
        ):

            def flush():
                nonlocal pending, t_last
                if pending is None:
                    return
                step, metrics, extra = pending
                host = _host(metrics)
                check_finite(host["loss"], step)
                now = time.perf_counter()
                host.update(extra, step=step, step_s=round(now - t_last, 4))
                if "token_count" in host and now > t_last:  # throughput of trained tokens
                    host["tokens_per_s"] = round(host["token_count"] / (now - t_last), 2)
                t_last = now
                log.write(json.dumps(host) + "\n")
                log.flush()
                if tb is not None:
                    tb.write(step, host)
                bar.set_postfix(loss=f"{host['loss']:.4f}")
                result.last_metrics = host
                pending = None

            for step in range(start + 1, steps + 1):
                batch = next_batch(step, state)
                extra = dict(extra_metrics(step)) if extra_metrics else {}
                state, metrics = step_fn(state, batch)
                flush()  # the previous step's metrics, one step late
                pending = (step, metrics, extra)
                bar.update(1)
                stop = guard.should_stop(step)
                if stop or step == steps or step % checkpoint.every_steps == 0:
                    flush()  # a NaN must never reach a checkpoint
                    ckpt.save(step, state, iterator=iterator, config=config, force=True)
                result.state, result.step = state, step
                if stop:
                    logging.warning("%s: SIGTERM, saved step %d; re-run to resume.", desc, step)
                    result.preempted = True
                    break
            flush()
        ckpt.wait()
    return result
