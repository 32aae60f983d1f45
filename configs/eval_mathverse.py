r"""MathVerse: Qwen3-VL-32B target with a Qwen3-VL-2B draft, target-only vs speculative engines.

Command (one TPU v6e-8 host; checkpoints and MathVerse's testmini files on local disk)::

    python -m dreamr_jax.eval --config=configs/eval_mathverse.py --workdir=runs/mathverse \
        --config.target.checkpoint=/ckpt/Qwen3-VL-32B-Instruct \
        --config.draft.checkpoint=/ckpt/Qwen3-VL-2B-Instruct \
        --config.eval.source_dir=/data/MathVerse

A SAPO-trained draft is ``--config.draft.checkpoint=WORKDIR/export/draft_sapo`` of a
`configs/sapo_qwen3vl_2b_32b.py` run. Runs target_only, then SpecReason-style,
Lookahead-style and FPSR engines at the paper's α = 0.7 and window K = 4 on the first 500
questions of testmini (``eval.num_examples``; the paper uses the whole split), and writes
accuracy, step acceptance and speedup over target_only to ``WORKDIR/eval/summary.json``.

Hardware: TPU v6e-8 (8 chips, 32 GiB HBM each). The target is tensor-parallel over chips
0-3 (15.5 GiB of bf16 parameters per chip), the draft over chips 4-5 (2.0 GiB per chip),
as the paper splits 4 + 2 GPUs; the rest of each chip's HBM holds the KV caches.

Expected time: not measured (no TPU here). Estimate: tens of seconds per question and
engine for the 32B target's chains, so several hours for 500 questions and four engines.

Expected result: **the paper's numbers, not ours** (arXiv 2605.28678; AWQ-INT4 target on
4x L40S, SAPO-trained draft on 2x L40S, full MathVerse): Qwen3-VL-32B + 2B draft 75.98
accuracy versus 76.00 for the target alone, at a 2.38x speedup; engine ablation: a
SpecReason-style sequential engine about 1.18x, a Lookahead-style engine about 1.5x, FPSR
1.86x; step acceptance 52.61% (SAPO draft) versus 14.60% (SpecReason). A bf16 target on
TPU with an untrained draft will not reproduce these exactly.
"""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).parent / "common" / "real_scale.py"))

# Model sizes (`dreamr_jax.models.config.PRESETS`) and the HBM per chip claimed above.
MODELS = _common["models"]("2b")
HBM_GIB = 32


def get_config(arg: str | None = None):
    """The evaluation; no variants."""
    del arg
    engines = ("target_only", "specreason", "lookahead", "fpsr")  # the paper's ablation
    return _common["eval_config"]("mathverse", draft="2b", engines=engines)
