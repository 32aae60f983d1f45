r"""SAPO on a Qwen3-VL-2B draft against a frozen Qwen3-VL-32B target, from real checkpoints.

Command (on the TPU VM, after `launch/create.sh` and `launch/setup.sh` with
``ACCELERATOR_TYPE=v5p-8``; checkpoints and data copied to the VM's disk first)::

    python -m dreamr_jax.train --config=configs/sapo_qwen3vl_2b_32b.py \
        --workdir=runs/sapo_2b_32b \
        --config.target_model.checkpoint=/ckpt/Qwen3-VL-32B-Instruct \
        --config.draft_model.checkpoint=/ckpt/Qwen3-VL-2B-Instruct \
        --config.data.source_dir=/data/geometry3k \
        --config.eval.source_dir=/data/MathVerse
    # or from a laptop: launch/run.sh configs/sapo_qwen3vl_2b_32b.py --config....=...

Stages ``data, sapo, export, eval`` (no SFT: both models start from their checkpoints).
``data`` imports Geometry3K's train and val splits (`dreamr_jax.data.import_tfds`);
``sapo`` runs GRPO-style SAPO with the paper's settings (AdamW, lr 1e-6, 64 rollouts per
update, bf16, at most 8192 tokens, α = 0.7, w1:w2:w3 = 1:1:1) and measures the draft's
acceptance on 64 held-out Geo3K problems before and after (``WORKDIR/sapo/effect.json``);
``export`` writes ``WORKDIR/export/draft_sapo`` (Hugging Face format; the unchanged
checkpoints are not copied); ``eval`` runs target_only and FPSR on the first 200 MathVerse
questions with the starting and the SAPO draft.

Hardware: one TPU v5p-8 host (4 chips, 95 GiB HBM each). The policy (the draft being
trained) is FSDP-sharded over chips 0-1; the frozen **reference** shares the policy's mesh
(it is the starting draft, a second copy of the policy's parameters in the same sharding);
the frozen target is tensor-parallel over chips 2-3, so rollouts and target scoring use
separate chips. Rollouts decode tensor-parallel over chips 0-1 (``rollout_mesh``; FSDP would
gather every weight for every sampled token), from a copy of the policy's weights moved
there before each update (`training.sapo.rollout_layout`). Per-chip parameter memory
(`tests/test_real_configs.py` computes it from the configured shardings): target 31.1 GiB;
policy 2.0 GiB of parameters, plus gradients and AdamW's two moments (bf16, like the
parameters) about 8 GiB, plus the reference 2.0 GiB and the rollout copy 2.0 GiB: about 12
GiB. The rest of the 95 GiB holds rollout KV caches and the training activations (8 rows of
up to 8192 tokens per micro-batch); lower ``sapo.rollout.max_new_tokens`` if a step runs out
of memory. Multi-host slices need the same per-host layout and are not tested.

Expected time: not measured (no TPU here). The paper trains each draft for about 74 h on
8x H200; a v5p-8 has roughly a quarter of that peak bf16 compute, so budget days, not
hours, for the 500 steps set here (about two passes over Geo3K's 2,101 problems; the
paper does not say how many steps it ran).

Expected result: the draft's held-out acceptance rises from its starting value (see
``effect.json``). **The paper's numbers, not ours** (arXiv 2605.28678, AWQ-INT4 target on
4x L40S, draft on 2x L40S): Qwen3-VL-32B + SAPO-trained 2B draft on MathVerse, 75.98
accuracy versus 76.00 for the target alone, at a 2.38x speedup; step acceptance 52.61%
versus 14.60% for SpecReason. Our eval stage uses 200 questions and a bf16 target on TPU,
so its numbers are not directly comparable.
"""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).parent / "common" / "real_scale.py"))

# Model sizes (`dreamr_jax.models.config.PRESETS`) and the HBM per chip claimed above.
MODELS = _common["models"]("2b")
HBM_GIB = 95


def get_config(arg: str | None = None):
    """The SAPO run; no variants."""
    del arg
    return _common["sapo_config"]("2b", eval_dataset="mathverse")
