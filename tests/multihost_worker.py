"""One process of the 2-process test in test_multihost.py (not a test module itself).

Usage: python tests/multihost_worker.py PROCESS_ID PORT OUT_DIR
"""

import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from dreamr_jax.models import config as config_lib
from dreamr_jax.models import hf
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import init_sharded, make_mesh


def tiny():
    return config_lib.tiny_config()


def batch_arrays(cfg):
    """A fixed text batch: ids, positions and mask, ``[8, 12]``."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 200, (8, 12)).astype(np.int32)
    pos = np.broadcast_to(np.arange(12, dtype=np.int32), (3, 8, 12)).copy()
    return ids, pos, np.ones_like(ids)


def main(process_id: int, port: str, out: Path):
    # Before the backend starts (jax creates it lazily, at first use).
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id
    )
    cfg = tiny()
    mesh = make_mesh((2, 2, 2))  # 8 devices over 2 processes
    model = init_sharded(lambda: Qwen3VL(cfg, rngs=nnx.Rngs(0)), mesh)
    hf.save_pretrained(model, cfg, out / "saved")
    loaded, _ = hf.load_pretrained(out / "saved", dtype=jnp.float32, mesh=mesh)
    graphdef, state = nnx.split(loaded)

    @jax.jit
    def logits(state, ids, pos, mask):
        return nnx.merge(graphdef, state).forward(ids, pos, mask).logits

    ids, pos, mask = batch_arrays(cfg)
    value = multihost_utils.process_allgather(logits(state, ids, pos, mask), tiled=True)
    if jax.process_index() == 0:
        np.save(out / "logits.npy", np.asarray(value))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
