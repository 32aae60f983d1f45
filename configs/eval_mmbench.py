r"""MMBench: Qwen3-VL-32B target with a Qwen3-VL-4B draft, target-only vs FPSR.

Command (one TPU v6e-8 host; checkpoints and the MMBench dev TSV on local disk)::

    python -m dreamr_jax.eval --config=configs/eval_mmbench.py --workdir=runs/mmbench \
        --config.target.checkpoint=/ckpt/Qwen3-VL-32B-Instruct \
        --config.draft.checkpoint=/ckpt/Qwen3-VL-4B-Instruct \
        --config.eval.source_dir=/data/MMBench

A SAPO-trained draft is ``--config.draft.checkpoint=WORKDIR/export/draft_sapo`` of a
`configs/sapo_qwen3vl_4b_32b.py` run. Runs target_only and FPSR (α = 0.7, K = 4) on the
first 500 dev questions (``eval.num_examples``; the paper uses the whole split); options
are appended to each question as ``Options: (A) ...``.

Hardware: TPU v6e-8 (8 chips, 32 GiB HBM each): the target tensor-parallel over chips
0-3 (15.5 GiB of bf16 parameters per chip), the draft over chips 4-5 (4.1 GiB per chip).

Expected time: not measured (no TPU here); estimate: a few hours for 500 questions and
two engines (multiple-choice chains are shorter than MathVerse's).

Expected result: **the paper's numbers, not ours** (arXiv 2605.28678; AWQ-INT4 target on
4x L40S, SAPO-trained draft on 2x L40S): Qwen3-VL-32B + 4B draft 89.44 accuracy at a
2.48x speedup (the paper's headline). With length-heavy reward weights the paper's
acceptance on MMBench collapses to 38.78%.
"""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).parent / "common" / "real_scale.py"))

# Model sizes (`dreamr_jax.models.config.PRESETS`) and the HBM per chip claimed above.
MODELS = _common["models"]("4b")
HBM_GIB = 32


def get_config(arg: str | None = None):
    """The evaluation; no variants."""
    del arg
    return _common["eval_config"]("mmbench", draft="4b", engines=("target_only", "fpsr"))
