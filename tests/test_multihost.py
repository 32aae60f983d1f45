"""Two real processes x 4 CPU devices: save_pretrained gathers parameters spread over hosts
and only process 0 writes; load_pretrained places tensors into a multi-process mesh."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from multihost_train_worker import global_batch, train_losses
from multihost_worker import batch_arrays, tiny

from dreamr_jax.models import hf, safetensors_io
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import init_sharded, make_mesh

WORKER = Path(__file__).with_name("multihost_worker.py")
TRAIN_WORKER = Path(__file__).with_name("multihost_train_worker.py")
ATOL = 1e-6  # same seeded init, jitted in one process or two


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two_processes(worker: Path, out: Path) -> None:
    """Runs ``worker`` as processes 0 and 1 of one 2-process JAX job writing into ``out``."""
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(i), port, str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]


def test_two_processes_save_and_load_like_one(tmp_path):
    _run_two_processes(WORKER, tmp_path)

    cfg = tiny()
    ref = init_sharded(lambda: Qwen3VL(cfg, rngs=nnx.Rngs(0)), make_mesh((2, 2, 2)))
    hf.save_pretrained(ref, cfg, tmp_path / "ref")
    got = safetensors_io.SafetensorsFile(tmp_path / "saved" / "model.safetensors")
    want = safetensors_io.SafetensorsFile(tmp_path / "ref" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want.keys():
        np.testing.assert_allclose(got.get(name), want.get(name), rtol=0, atol=ATOL, err_msg=name)
    assert not list((tmp_path / "saved").glob("*.tmp")), "no temporary file may be left"

    loaded, _ = hf.load_pretrained(tmp_path / "saved", dtype=jnp.float32)
    ids, pos, mask = batch_arrays(cfg)
    one = jax.jit(lambda m: m.forward(ids, pos, mask).logits)
    np.testing.assert_allclose(
        np.load(tmp_path / "logits.npy"), np.asarray(one(loaded)), rtol=0, atol=1e-5
    )


def test_two_processes_train_like_one(tmp_path):
    """2 processes x 4 devices, each feeding its own half of the rows, give the losses of
    1 process x 8 devices fed the whole batch (same mesh shape, 2 micro-batches)."""
    _run_two_processes(TRAIN_WORKER, tmp_path)
    two = json.loads((tmp_path / "train_losses.json").read_text())
    one = train_losses(global_batch())
    assert len(two) == len(one) == 3 and one[2] < one[0]
    np.testing.assert_allclose(two, one, rtol=1e-5)
