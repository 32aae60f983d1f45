"""Checkpoints and fault tolerance for the training stages (sft_target, sft_draft, sapo).

A `Checkpointer` keeps step-numbered Orbax checkpoints in one directory, each holding up to
three items:

* ``"state"``: any pytree of arrays (params, optimizer state, ``jax.random.key_data``, the
  step), restored straight into the shardings of an abstract target tree;
* ``"data_iterator"``: the grain iterator's position (`iterator_state.ITEM`, the same item
  `iterator_state.save_iterator` writes), so a resumed run sees the batches it would have seen;
* ``"config"``: the resolved run config as JSON, to see later what produced a checkpoint.

Orbax writes each step to a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoints intact and the partial one is ignored (and
cleaned up by the next manager). Reading falls back from an unreadable newest checkpoint
to an older one; the unreadable ones are kept, renamed to ``<step>.unreadable``, never
deleted.

A train loop uses the pieces like this::

    check_workdir(workdir)  # before any compute
    with Checkpointer(workdir / "checkpoints", cfg.checkpoint) as ckpt, PreemptionGuard() as guard:
        restored = ckpt.restore(abstract_state, iterator=it)
        step, state = restored if restored else (0, init_state)
        while step < cfg.steps:
            state, loss = train_step(state, next(it))
            step += 1
            check_finite(loss, step)  # before saving: a NaN never reaches a checkpoint
            ckpt.save(step, state, iterator=it, config=config)
            if guard.should_stop(step):
                ckpt.save(step, state, iterator=it, config=config, force=True)
                break
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from dreamr_jax.data import iterator_state

STATE = "state"
CONFIG = "config"
ITEMS = (STATE, iterator_state.ITEM, CONFIG)
UNREADABLE_SUFFIX = ".unreadable"


class CheckpointError(RuntimeError):
    """No checkpoint could be read (or saved); the message names the directory and why."""


class NonFiniteLoss(FloatingPointError):
    """A loss or metric became NaN/inf; ``step`` is the step that produced it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class WorkdirError(OSError):
    """The run directory cannot be created or written."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When checkpoints are written and how many are kept.

    Attributes:
      every_steps: save when ``step % every_steps == 0`` (``save(..., force=True)`` saves at
        any step, e.g. on preemption or at the end of training).
      keep: keep the newest ``keep`` checkpoints and delete older ones; None keeps all.
        Checkpoints set aside as unreadable are not counted and never deleted.
      async_save: write in a background thread. ``save`` still returns only after arrays
        are copied off the device and the data iterator's position is taken, so the
        caller may donate the state and draw the next batch at once; `Checkpointer.wait`
        (or ``close``) blocks until the files are complete.
    """

    every_steps: int = 1000
    keep: int | None = 3
    async_save: bool = True

    def validate(self) -> CheckpointConfig:
        """Returns self; raises ValueError naming the bad field."""
        if not isinstance(self.every_steps, int) or self.every_steps < 1:
            raise ValueError(f"every_steps={self.every_steps!r} must be an int >= 1.")
        if self.keep is not None and (not isinstance(self.keep, int) or self.keep < 1):
            raise ValueError(f"keep={self.keep!r} must be None or an int >= 1.")
        if not isinstance(self.async_save, bool):
            raise ValueError(f"async_save={self.async_save!r} must be a bool.")
        return self


def _is_remote(path: str) -> bool:
    return "://" in path  # gs://, s3://, ...: no local file system checks


def _config_dict(config: Any) -> dict:
    """A ConfigDict, dataclass or mapping as a JSON-ready dict (raises CheckpointError)."""
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
        config = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise CheckpointError(f"config must be a mapping, got {type(config).__name__}.")
    try:
        return json.loads(json.dumps(config))
    except TypeError as e:
        raise CheckpointError(f"config cannot be stored as JSON: {e}") from e


def _abstract(tree: Any) -> Any:
    """Arrays -> ShapeDtypeStructs keeping their sharding; other leaves pass through."""

    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Step-numbered training checkpoints under ``directory`` (see the module docstring).

    Call every method on every process of a multi-host run (Orbax synchronises them).

    Args:
      directory: where step directories ``<step>/`` live; created if missing. Local or
        a ``gs://`` path.
      cfg: save frequency, retention and async settings.
    """

    def __init__(self, directory: str | os.PathLike, cfg: CheckpointConfig = CheckpointConfig()):
        self.cfg = cfg.validate()
        directory = os.fspath(directory)
        self.directory = epath.Path(
            directory if _is_remote(directory) else os.path.abspath(directory)
        )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            enable_async_checkpointing=cfg.async_save,
            create=True,
            cleanup_tmp_directories=True,  # partial saves of a killed run
        )
        self._manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending (unreadable ones set aside excluded)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        *,
        iterator: Any = None,
        config: Any = None,
        force: bool = False,
    ) -> bool:
        """Saves a checkpoint at ``step`` if it is due (``step % every_steps == 0``) or forced.

        The checkpoint appears atomically: Orbax writes a temporary directory and renames it
        when every item is written. A step that already has a checkpoint is not written
        again (e.g. a forced save right after the periodic one).

        Args:
          step: the number of finished training steps the state reflects.
          state: a pytree of arrays (sharded or not) and scalars.
          iterator: a grain iterator whose position is stored (taken now, even if the
            write is async).
          config: the resolved run config (ConfigDict, dataclass or mapping), stored as JSON.
          force: save even if the step is not a multiple of ``every_steps``.

        Returns:
          Whether a save was started.
        """
        if not force and step % self.cfg.every_steps:
            return False
        if step in self._manager.all_steps():
            logging.info("Checkpoint for step %d already exists in %s.", step, self.directory)
            return False
        items = {STATE: ocp.args.StandardSave(state)}
        if iterator is not None:
            items[iterator_state.ITEM] = iterator_state.iterator_save_args(iterator)
        if config is not None:
            items[CONFIG] = ocp.args.JsonSave(_config_dict(config))
        return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(
        self, abstract_state: Any, *, iterator: Any = None, step: int | None = None
    ) -> tuple[int, Any] | None:
        """Restores the newest readable checkpoint (or ``step``).

        If the newest checkpoint cannot be read (a truncated or missing file, bad JSON...)
        a warning names its directory and the error, and the previous one is tried. Once
        one reads, the unreadable newer ones are renamed ``<step>.unreadable`` (kept for
        inspection; training on from the older step can then save those steps again).

        Args:
          abstract_state: the state's structure: ``jax.ShapeDtypeStruct`` leaves (with
            ``.sharding`` to place shards) or concrete arrays (their shape, dtype and
            sharding are used).
          iterator: a fresh iterator of the same grain pipeline; its position is set in
            place. The checkpoint must then hold a data iterator item.
          step: restore exactly this step, with no fallback.

        Returns:
          ``(step, state)``, or None when the directory holds no checkpoint.

        Raises:
          CheckpointError: ``step`` is missing or unreadable, or no checkpoint is readable;
            the message lists each step's error.
        """
        self.wait()
        self._manager.reload()  # another process (a previous run) may have written
        steps = sorted(self._manager.all_steps(), reverse=True)
        if step is not None and step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (saved steps: {steps[::-1]})."
            )
        if not steps:
            return None
        target = _abstract(abstract_state)
        errors: list[tuple[int, BaseException]] = []
        for s in [step] if step is not None else steps:
            try:
                state = self._restore_step(s, target, iterator)
            except Exception as e:  # any read failure: try the previous checkpoint
                logging.warning(
                    "Checkpoint %s is unreadable (%s: %s); trying the previous one.",
                    self.directory / str(s),
                    type(e).__name__,
                    str(e)[:800],
                )
                errors.append((s, e))
                continue
            if errors:
                self._set_aside([bad for bad, _ in errors])
            return s, state
        listing = "\n".join(f"  step {s}: {type(e).__name__}: {str(e)[:500]}" for s, e in errors)
        raise CheckpointError(
            f"no readable checkpoint in {self.directory}; nothing was deleted. Errors:\n{listing}"
        ) from errors[0][1]

    def _restore_step(self, step: int, target: Any, iterator: Any) -> Any:
        items = {STATE: ocp.args.StandardRestore(target)}
        if iterator is not None:
            if not (self.directory / str(step) / iterator_state.ITEM).exists():
                raise CheckpointError(
                    f"step {step} has no {iterator_state.ITEM!r} item (saved without an iterator?)."
                )
            items[iterator_state.ITEM] = iterator_state.iterator_restore_args(iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))[STATE]

    def _set_aside(self, steps: list[int]) -> None:
        """Renames unreadable step directories so Orbax ignores them; deletes nothing."""
        if jax.process_index() == 0:
            for s in steps:
                src = self.directory / str(s)
                dst = self.directory / f"{s}{UNREADABLE_SUFFIX}"
                n = 1
                while dst.exists():
                    n += 1
                    dst = self.directory / f"{s}{UNREADABLE_SUFFIX}.{n}"
                src.rename(dst)
                logging.warning("Kept unreadable checkpoint %s as %s.", src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("dreamr_jax checkpoint set aside")
        self._manager.reload()

    def restore_config(self, step: int | None = None) -> dict | None:
        """The config stored with ``step`` (default: the newest), or None if none was stored."""
        step = self.latest_step() if step is None else step
        if step is None or not (self.directory / str(step) / CONFIG).exists():
            return None
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            CONFIG
        ]

    def wait(self) -> None:
        """Blocks until pending async saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()


class PreemptionGuard:
    """Turns SIGTERM (a preemption notice, ``kill``, Ctrl-\\ from a scheduler) into a flag.

    On one host the handler only sets `requested`; the train loop polls `should_stop` after
    each step, saves with ``force=True`` and returns normally. The previous handlers come
    back on exit. In a multi-host run (``jax.process_count() > 1``) hosts must stop at the
    same step, so no Python handler is installed: JAX's preemption service (started by
    ``jax.distributed.initialize``) catches the signal, and `should_stop` asks it whether
    all hosts reached the agreed sync point.

    Args:
      signals: the signals to catch.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self._requested = threading.Event()
        self._previous: dict[int, Any] = {}
        self._multihost = False

    def __enter__(self) -> PreemptionGuard:
        self._multihost = jax.process_count() > 1
        if not self._multihost:
            for s in self.signals:  # must run in the main thread (Python's rule)
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        del frame
        logging.warning("Received %s: stopping after this step.", signal.Signals(signum).name)
        self._requested.set()

    @property
    def requested(self) -> bool:
        """Whether a caught signal asked this process to stop."""
        return self._requested.is_set()

    def should_stop(self, step: int) -> bool:
        """Whether to save and exit after ``step`` (the same answer on every host)."""
        if self._multihost:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


def check_finite(value: Any, step: int) -> None:
    """Raises `NonFiniteLoss` naming ``step`` (and the leaf) if any value is NaN or inf.

    Args:
      value: a loss, or a pytree of metrics (jax or NumPy arrays, floats). Fetching it
        blocks until the step is computed.
      step: the step that produced ``value``.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(value):
        arr = np.asarray(jax.device_get(leaf))
        if not np.all(np.isfinite(arr)):
            where = jax.tree_util.keystr(path) or "loss"
            shown = arr if arr.size <= 8 else f"{np.sum(~np.isfinite(arr))} non-finite values"
            raise NonFiniteLoss(
                f"{where} is {shown} at step {step}; stopping without saving this step. "
                "Resume from the last checkpoint (e.g. with a lower learning rate).",
                step,
            )


def check_workdir(path: str | os.PathLike) -> str:
    """Creates ``path`` if needed and checks a file can be written there, before any compute.

    Remote paths (``gs://...``) are returned unchecked: there is no local write test.

    Returns:
      ``path`` as a string.

    Raises:
      WorkdirError: the directory cannot be created or written; the message names the
        path, the OS error and the fix.
    """
    path = os.fspath(path)
    if _is_remote(path):
        return path
    try:
        pathlib.Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_") as f:
            f.write(b"ok")
            f.flush()
    except OSError as e:
        raise WorkdirError(
            f"workdir {path!r} cannot be written: {e.strerror or e} ({e.filename or path}). "
            "Pass a writable --workdir, or fix the permissions (is a part of the path a file, "
            "or the file system read-only or full?)."
        ) from e
    return path
