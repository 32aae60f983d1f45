"""Checkpointing a data iterator's position (a `pipeline.make_dataset` iterator).

The iterator's ``get_state()`` is a small JSON-serialisable dict (`state_to_bytes` /
`state_from_bytes`) to store with the training checkpoint; `save_iterator` /
`restore_iterator` do so with an Orbax ``CheckpointManager`` under the item name `ITEM`,
using grain's Orbax handler
(``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore``, one JSON file per process).
`iterator_save_args` / `iterator_restore_args` build that item's arguments for any
manager, e.g. the training `Checkpointer` that stores it beside the model state.
"""

from __future__ import annotations

import json
import os

import grain
import orbax.checkpoint as ocp


def state_to_bytes(iterator) -> bytes:
    """The iterator's position as JSON bytes, to store beside a training checkpoint."""
    return json.dumps(iterator.get_state(), sort_keys=True).encode()


def state_from_bytes(iterator, state: bytes) -> None:
    """Moves a fresh iterator of the same pipeline to a position from `state_to_bytes`."""
    iterator.set_state(json.loads(state.decode()))


# The CheckpointManager item holding the data iterator. A training checkpoint stores it beside
# model / optimizer items in one manager: save with
# ``ocp.args.Composite(**{ITEM: iterator_save_args(it), ...})`` and restore with
# ``ocp.args.Composite(**{ITEM: iterator_restore_args(it), ...})`` (`training.checkpoint` does).
ITEM = "data_iterator"


class _StateSnapshot:
    """An iterator's state frozen when the save was asked for.

    grain's handler reads ``get_state()`` when Orbax writes the item. Orbax 0.12.8 does
    that before an async ``save`` returns, but nothing promises it; with the snapshot the
    saved position is the one at the call even if the loop draws the next batch while the
    write runs. grain writes a non-`DatasetIterator`'s state as the bytes ``get_state``
    returns: the same JSON it writes for the live iterator, restored the same way.
    """

    def __init__(self, state: bytes):
        self._state = state

    def get_state(self) -> bytes:
        return self._state


def iterator_save_args(iterator) -> grain.checkpoint.CheckpointSave:
    """Orbax save args for item `ITEM`: the iterator's position as of this call."""
    state = iterator.get_state()
    if not isinstance(state, bytes):  # DatasetIterator: a dict; DataLoaderIterator: bytes
        state = state_to_bytes(iterator)
    return grain.checkpoint.CheckpointSave(_StateSnapshot(state))


def iterator_restore_args(iterator) -> grain.checkpoint.CheckpointRestore:
    """Orbax restore args for item `ITEM`: sets ``iterator``'s state in place."""
    return grain.checkpoint.CheckpointRestore(iterator)


def _manager(directory) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, item_names=(ITEM,))


def save_iterator(iterator, directory, step: int) -> None:
    """Saves the iterator's position as item `ITEM` of step ``step`` under ``directory``."""
    with _manager(directory) as manager:
        manager.save(step, args=ocp.args.Composite(**{ITEM: iterator_save_args(iterator)}))
        manager.wait_until_finished()


def restore_iterator(iterator, directory, step: int | None = None) -> int:
    """Moves ``iterator`` (fresh, same pipeline) to the position saved at ``step``.

    Args:
      iterator: an iterator of the pipeline that was saved; its state is set in place.
      directory: the CheckpointManager directory given to `save_iterator`.
      step: the step to restore; None restores the latest.

    Returns:
      The restored step.

    Raises:
      FileNotFoundError: ``directory`` holds no checkpoint (or not ``step``).
    """
    if not os.path.isdir(directory):  # checked first: a manager would create it
        raise FileNotFoundError(f"no data iterator checkpoint: {directory} does not exist.")
    with _manager(directory) as manager:
        steps = manager.all_steps()
        if step is None:
            step = manager.latest_step()
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no data iterator checkpoint"
                f"{'' if step is None else f' for step {step}'} in {directory} "
                f"(saved steps: {sorted(steps)})."
            )
        manager.restore(step, args=ocp.args.Composite(**{ITEM: iterator_restore_args(iterator)}))
    return step
