r"""RealWorldQA: Qwen3-VL-32B target with a Qwen3-VL-2B draft, target-only vs FPSR.

Command (one TPU v6e-8 host; checkpoints and RealWorldQA's files on local disk)::

    python -m dreamr_jax.eval --config=configs/eval_realworldqa.py --workdir=runs/rwqa \
        --config.target.checkpoint=/ckpt/Qwen3-VL-32B-Instruct \
        --config.draft.checkpoint=/ckpt/Qwen3-VL-2B-Instruct \
        --config.eval.source_dir=/data/realworldqa

Runs target_only and FPSR (α = 0.7, K = 4) on the first 500 of the 765 test questions
(``eval.num_examples``). A 4B draft: ``--config.draft.checkpoint=/ckpt/Qwen3-VL-4B-...``.

Hardware: TPU v6e-8 (8 chips, 32 GiB HBM each): the target tensor-parallel over chips
0-3 (15.5 GiB of bf16 parameters per chip), the draft over chips 4-5 (2.0 GiB per chip).

Expected time: not measured (no TPU here); estimate: a few hours for 500 questions and
two engines.

Expected result: the paper (arXiv 2605.28678) reports RealWorldQA among its benchmarks;
its per-benchmark RealWorldQA numbers are not restated here (we could not check them).
What to expect from the method: accuracy close to target_only's (DREAM-R is not
distribution-preserving, so it is measured, not assumed) at a wall-clock speedup; the
paper's headline speedups on other benchmarks are 2.38x (MathVerse) and 2.48x (MMBench).
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
    return _common["eval_config"]("realworldqa", draft="2b", engines=("target_only", "fpsr"))
