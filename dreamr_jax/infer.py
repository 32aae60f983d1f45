r"""Speculative multimodal reasoning on one question, printed step by step as it is written.

    python -m dreamr_jax.infer --config=configs/demo.py
    python -m dreamr_jax.infer --config=configs/demo.py --image=cat.png --question="..." \
        --config.target.checkpoint=/ckpt/Qwen3-VL-32B-Instruct \
        --config.draft.checkpoint=/ckpt/Qwen3-VL-2B-Instruct --config.target.dtype=bfloat16

Each step is marked as an accepted draft step or a target step (a fallback for a rejected
draft step, with the verifier's score). Without checkpoints, tiny random-weight models with a
byte-level tokenizer are written to ``WORKDIR/target`` and ``WORKDIR/draft`` in Hugging Face
format and loaded back through the same path real checkpoints take: the text is noise, but
every stage (config, image preprocessing, chat template, sharded load, jitted drafting,
packed verification) is the real one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from dreamr_jax import config as config_lib
from dreamr_jax.data import synthetic
from dreamr_jax.spec import SpecConfig, Step, VerifierConfig
from dreamr_jax.spec.roles import (
    MeshSection,
    ModelSection,
    build_engine,
    check_request,
    load_roles,
    prepare,
)

DEMO_QUESTION = "How much taller is the tallest bar than the shortest bar?"


@dataclasses.dataclass(frozen=True)
class PromptSection:
    """The request: an image file (empty = a built-in picture) and a question."""

    question: str = DEMO_QUESTION
    image: str = ""


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """The whole run: both models, their meshes, the engine, the verifier, the request."""

    target: ModelSection = ModelSection()
    draft: ModelSection = ModelSection(seed=1)
    spec: SpecConfig = SpecConfig()
    verifier: VerifierConfig = VerifierConfig()
    prompt: PromptSection = PromptSection()
    target_mesh: MeshSection = MeshSection()
    draft_mesh: MeshSection = MeshSection()


SECTIONS = tuple(f.name for f in dataclasses.fields(InferConfig))


def demo_image(size: int = 64) -> np.ndarray:
    """The built-in picture: a ``[size, size, 3]`` uint8 bar chart from the synthetic set
    (the demo's task; `DEMO_QUESTION` asks about it; the answer is 6)."""
    cfg = synthetic.SyntheticConfig(
        image_size=size, families=("bars",), min_difficulty=2, max_difficulty=2
    )
    return synthetic.make_example(0, "test", cfg).image


def step_label(step: Step) -> str:
    """``draft ok p=0.91`` / ``target fallback p=0.42`` / ``target bonus`` / ``target`` /
    ``draft_only`` for display."""
    if step.source == "draft":
        return f"draft ok p={step.p:.2f}"
    if step.p is not None:
        return f"target fallback p={step.p:.2f}"
    if step.source == "target" and step.window_pos is not None:
        return "target bonus"
    return step.source


def run(cfg: InferConfig, workdir: str | os.PathLike, *, printer=None) -> dict:
    """Answers the prompt; writes and returns ``generation.json``'s dict.

    Args:
      printer: called with each finished step's display line (e.g. `print`), live.
    """
    workdir = Path(workdir)
    models = {"target": cfg.target}
    if cfg.spec.engine != "target_only":
        models["draft"] = cfg.draft
    meshes = {"target": cfg.target_mesh, "draft": cfg.draft_mesh}
    # Everything cheap is checked before any weight is read: configs, meshes, tokenizers,
    # image, prompt and cache size.
    prep = prepare(models, meshes, workdir)
    image = cfg.prompt.image or demo_image()
    request = check_request(prep, cfg.spec, cfg.verifier, image, cfg.prompt.question)
    t0 = time.perf_counter()
    roles = load_roles(prep, models)
    load_s = time.perf_counter() - t0
    engine = build_engine(prep, roles, cfg.spec, cfg.verifier)
    tok = prep.tokenizer

    def show(step: Step):
        if printer is not None:
            text = tok.decode(step.tokens, skip_special_tokens=True)
            printer(f"[{step_label(step)}] {text.strip()}")

    result = engine.run(request, on_step=show)
    steps = [
        {
            "text": tok.decode(s.tokens, skip_special_tokens=True),
            "source": s.source,
            "window_pos": s.window_pos,
            "p": s.p,
            "tokens": len(s.tokens),
        }
        for s in result.steps
    ]
    out = {
        "checkpoints": {role: str(path) for role, path in prep.paths.items()},
        "engine": cfg.spec.engine,
        "question": cfg.prompt.question,
        "prompt_tokens": len(request.prompt_ids),
        "answer": tok.decode(result.tokens, skip_special_tokens=True),
        "steps": steps,
        "metrics": result.metrics.to_dict(),
        "load_s": round(load_s, 3),
    }
    (workdir / "generation.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def main(argv, flag_values: dict) -> None:
    """Answers the configured question from parsed flags, printing steps as they come."""
    del argv
    raw = flag_values["config"].value
    if flag_values["image"].value is not None:
        raw.prompt.image = flag_values["image"].value
    if flag_values["question"].value is not None:
        raw.prompt.question = flag_values["question"].value
    workdir = flag_values["workdir"].value or raw.get("workdir") or "runs/infer"
    cfg = config_lib.to_dataclass(InferConfig, {k: raw[k] for k in SECTIONS if k in raw})
    config_lib.write_resolved(raw, workdir, spec=config_lib.flag_spec())
    print(f"question: {cfg.prompt.question}")
    result = run(cfg, workdir, printer=lambda line: print(line, flush=True))
    m = result["metrics"]
    rate = m["acceptance_rate"]
    print(
        f"{cfg.spec.engine}: {m['steps']} steps, {m['output_tokens']} tokens in "
        f"{m['wall_s']:.2f} s (incl. compile)"
        + (f", {m['accepted']}/{m['judged']} draft steps accepted ({rate:.0%})" if rate else "")
    )
    print(f"wrote {Path(workdir) / 'generation.json'}", file=sys.stdout)


def _cli() -> None:
    # Flags are defined here, not at import, so entry points can be imported side by side.
    flag_values = {
        "config": config_lib.define_config_flag(),
        "workdir": flags.DEFINE_string(
            "workdir", None, "Run directory (default: the config's workdir)."
        ),
        "image": flags.DEFINE_string("image", None, "Image file (overrides prompt.image)."),
        "question": flags.DEFINE_string("question", None, "Question (overrides prompt.question)."),
    }
    app.run(lambda argv: main(argv, flag_values))


if __name__ == "__main__":
    _cli()
