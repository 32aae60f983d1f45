r"""SAPO on a Qwen3-VL-4B draft against a frozen Qwen3-VL-32B target, from real checkpoints.

The 2B run (`configs/sapo_qwen3vl_2b_32b.py`, whose docstring explains the stages, the
meshes and the reference's placement) with the 4B draft, evaluated on MMBench::

    python -m dreamr_jax.train --config=configs/sapo_qwen3vl_4b_32b.py \
        --workdir=runs/sapo_4b_32b \
        --config.target_model.checkpoint=/ckpt/Qwen3-VL-32B-Instruct \
        --config.draft_model.checkpoint=/ckpt/Qwen3-VL-4B-Instruct \
        --config.data.source_dir=/data/geometry3k \
        --config.eval.source_dir=/data/MMBench

Hardware: one TPU v5p-8 host (4 chips, 95 GiB HBM each): policy and reference FSDP over
chips 0-1, rollouts tensor-parallel over the same chips (a copy of the policy's weights,
``rollout_mesh``), target tensor-parallel over chips 2-3. Per-chip parameter memory
(computed by `tests/test_real_configs.py`): target 31.1 GiB; policy 4.1 GiB of parameters,
about 16.5 GiB with gradients and AdamW's two bf16 moments, plus the reference 4.1 GiB and
the rollout copy 4.1 GiB: about 25 GiB.

Expected time: not measured (no TPU here); about twice the 2B run's draft compute (the
target's scoring is the same), and the paper reports about 74 h on 8x H200 per draft.

Expected result: **the paper's numbers, not ours** (arXiv 2605.28678, AWQ-INT4 target on
4x L40S, draft on 2x L40S): Qwen3-VL-32B + SAPO-trained 4B draft on MMBench, 89.44
accuracy at a 2.48x speedup, the paper's headline result. Our eval stage uses 200 MMBench
questions and a bf16 target on TPU, so its numbers are not directly comparable.
"""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).parent / "common" / "real_scale.py"))

# Model sizes (`dreamr_jax.models.config.PRESETS`) and the HBM per chip claimed above.
MODELS = _common["models"]("4b")
HBM_GIB = 95


def get_config(arg: str | None = None):
    """The SAPO run; no variants."""
    del arg
    return _common["sapo_config"]("4b", eval_dataset="mmbench")
