"""A toy training run for the fault-tolerance tests in test_checkpoint.py (not a test module).

A linear model trained with Adam on fixed random data, batches drawn from a grain
iterator, using the real `Checkpointer`, `PreemptionGuard` and `check_finite`. Output: one
JSON line per event, ``{"start": step}``, then ``{"step": s, "loss": l}`` per finished
step, and ``{"preempted": step}`` when stopped by SIGTERM.

Usage: python tests/toy_train_worker.py --workdir DIR --steps N [--every K] [--sleep S]
  [--nan-at K] [--sync]
"""

import argparse
import functools
import json
import pathlib
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamr_jax.training import (
    CheckpointConfig,
    Checkpointer,
    PreemptionGuard,
    check_finite,
    check_workdir,
)

NUM_EXAMPLES, BATCH, WIDTH = 64, 8, 4


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_EXAMPLES, WIDTH)).astype(np.float32)
    y = x @ rng.normal(size=(WIDTH, 1)).astype(np.float32) + 0.1 * rng.normal(
        size=(NUM_EXAMPLES, 1)
    ).astype(np.float32)
    return x, y


def batches():
    """Example indices, shuffled afresh each epoch."""
    ds = grain.MapDataset.range(NUM_EXAMPLES).shuffle(seed=0).repeat().batch(BATCH)
    return iter(ds)


TX = optax.adam(0.05)


def init_state() -> dict:
    params = {"w": jnp.zeros((WIDTH, 1)), "b": jnp.zeros((1,))}
    return {"params": params, "opt_state": TX.init(params)}


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state, x, y):
    def loss_fn(params):
        return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def run(args: argparse.Namespace) -> None:
    workdir = pathlib.Path(check_workdir(args.workdir))
    cfg = CheckpointConfig(every_steps=args.every, keep=3, async_save=not args.sync)
    x_all, y_all = data()
    it = batches()
    with Checkpointer(workdir / "ckpt", cfg) as ckpt, PreemptionGuard() as guard:
        restored = ckpt.restore(init_state(), iterator=it)
        step, state = restored if restored else (0, init_state())
        emit(start=step)
        while step < args.steps:
            idx = next(it)
            x, y = x_all[idx], y_all[idx]
            if step + 1 == args.nan_at:
                x = x * np.nan
            state, loss = train_step(state, x, y)
            step += 1
            check_finite(loss, step)
            emit(step=step, loss=float(loss))
            ckpt.save(step, state, iterator=it, config=vars(args))
            if guard.should_stop(step):
                ckpt.save(step, state, iterator=it, config=vars(args), force=True)
                emit(preempted=step)
                return
            time.sleep(args.sleep)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--nan-at", type=int, default=-1)
    parser.add_argument("--sync", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
