"""One process of the 2-process training test in test_multihost.py (not a test module).

Usage: python tests/multihost_train_worker.py PROCESS_ID PORT OUT_DIR
"""

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from dreamr_jax.models import config as config_lib
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import init_sharded, make_mesh
from dreamr_jax.training.objectives import sft_objective
from dreamr_jax.training.optim import OptimConfig, make_optimizer, make_schedule
from dreamr_jax.training.step import init_train_state, make_train_step

ROWS, TOKENS, STEPS = 16, 12, 3
OPTIM = OptimConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10)


def global_batch() -> dict:
    """A fixed text-only SFT batch in `prepare_batch`'s row-major layout."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 200, (ROWS, TOKENS)).astype(np.int32)
    pos = np.broadcast_to(np.arange(TOKENS, dtype=np.int32), (ROWS, 3, TOKENS)).copy()
    loss = (rng.random((ROWS, TOKENS)) < 0.7).astype(np.int32)
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "positions": pos,
        "loss_mask": loss,
    }


def train_losses(batch: dict) -> list[float]:
    """``STEPS`` SFT updates of the tiny model on a (2, 2, 2) mesh with 2 micro-batches;
    ``batch`` holds this process's rows."""
    mesh = make_mesh((2, 2, 2))
    model = init_sharded(lambda: Qwen3VL(config_lib.tiny_config(), rngs=nnx.Rngs(0)), mesh)
    tx = make_optimizer(OPTIM)
    state = init_train_state(model, tx)
    step = make_train_step(
        nnx.graphdef(model),
        sft_objective,
        tx,
        mesh=mesh,
        learning_rate=make_schedule(OPTIM),
        micro_batches=2,
    )
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"].addressable_data(0)))
    return losses


def main(process_id: int, port: str, out: Path):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id
    )
    half = ROWS // 2
    rows = slice(process_id * half, (process_id + 1) * half)
    local = {k: v[rows] for k, v in global_batch().items()}
    losses = train_losses(local)
    if process_id == 0:
        (out / "train_losses.json").write_text(json.dumps(losses))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
