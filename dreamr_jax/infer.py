r"""Multimodal generation from a Hugging Face Qwen3-VL directory or the built-in tiny model.

    python -m dreamr_jax.infer --config=configs/demo.py [--config.prompt.question="..."]
    python -m dreamr_jax.infer --config=configs/demo.py \
        --config.model.checkpoint=/path/to/Qwen3-VL-2B-Instruct --config.model.dtype=bfloat16

Without a checkpoint, a tiny random-weight Qwen3-VL with a byte-level tokenizer is written
to ``WORKDIR/model`` in Hugging Face format and loaded back through the same path real
checkpoints take, so its answer is noise but every stage (config, image preprocessing, chat
template, sharded load, jitted prefill and decode) is the real one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from dreamr_jax import config as config_lib
from dreamr_jax.inference import SamplingConfig, generate, make_batch, truncate_at_stop
from dreamr_jax.models import config as model_config
from dreamr_jax.models import hf
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import make_mesh
from dreamr_jax.processing import (
    ImageProcessorConfig,
    build_prompt,
    load_tokenizer,
    preprocess_images,
)
from dreamr_jax.processing.tokenizer import save_byte_tokenizer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which model to run.

    Attributes:
      checkpoint: a Hugging Face Qwen3-VL directory; empty = the built-in tiny model.
      dtype: parameter dtype, "float32" or "bfloat16".
      seed: random-init seed of the built-in model.
    """

    checkpoint: str = ""
    dtype: str = "float32"
    seed: int = 0

    def validate(self):
        config_lib.require(
            self.dtype in _DTYPES, "dtype", self.dtype, f"must be one of {sorted(_DTYPES)}"
        )


@dataclasses.dataclass(frozen=True)
class GenerateSection:
    """Decoding settings (see `SamplingConfig`); ``stop_strings`` end generation too."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()

    def validate(self):
        config_lib.require(
            self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1"
        )
        config_lib.require(
            self.temperature >= 0, "temperature", self.temperature, "must be >= 0 (0 = greedy)"
        )
        config_lib.require(self.top_k >= 0, "top_k", self.top_k, "must be >= 0 (0 = off)")
        config_lib.require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class PromptSection:
    """The request: an image file (empty = a built-in picture) and a question."""

    question: str = "How many red squares are in the picture?"
    image: str = ""


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """``(data, fsdp, tensor)`` mesh sizes; their product must equal the device count."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """The whole run: model, request, decoding and mesh."""

    model: ModelSection = ModelSection()
    prompt: PromptSection = PromptSection()
    generate: GenerateSection = GenerateSection()
    mesh: MeshSection = MeshSection()


def demo_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A ``[size, size, 3]`` uint8 picture of coloured squares on white."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    colors = np.array([[220, 30, 30], [30, 160, 40], [40, 60, 220]], np.uint8)
    side = size // 6
    for _ in range(5):
        y, x = rng.integers(0, size - side, 2)
        img[y : y + side, x : x + side] = colors[rng.integers(0, 3)]
    return img


def builtin_checkpoint(path: Path, *, seed: int, dtype) -> Path:
    """Writes the tiny random model, its byte tokenizer and image settings (once).

    ``config.json`` is written last (by `hf.save_pretrained`), so its presence marks a
    complete directory and an interrupted first run is simply redone.
    """
    if (path / "config.json").is_file():
        return path
    tok = save_byte_tokenizer(path)
    ids = tok.convert_tokens_to_ids
    # Pad the vocabulary to a multiple of 64, as Qwen does, so it shards over any mesh.
    cfg = dataclasses.replace(
        model_config.tiny_config(vocab_size=-(-len(tok) // 64) * 64),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    ).validate()
    v = cfg.vision
    side = v.patch_size * v.spatial_merge_size
    processor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "merge_size": v.spatial_merge_size,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
        "size": {"shortest_edge": (2 * side) ** 2, "longest_edge": (4 * side) ** 2},
    }
    (path / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    hf.save_pretrained(Qwen3VL(cfg, dtype=dtype, rngs=nnx.Rngs(seed)), cfg, path)
    return path


def run(cfg: InferConfig, workdir: str | os.PathLike) -> dict:
    """Loads the model, answers the prompt, writes ``generation.json``; returns its dict."""
    workdir = Path(workdir)
    dtype = _DTYPES[cfg.model.dtype]
    path = (
        Path(cfg.model.checkpoint)
        if cfg.model.checkpoint
        else builtin_checkpoint(workdir / "model", seed=cfg.model.seed, dtype=dtype)
    )
    # Everything cheap is checked before any weight is read: config, mesh, image, prompt.
    mcfg = hf.read_config(path)
    shape = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    # Like a serving engine's parallel size: the mesh may use a prefix of the devices.
    mesh = make_mesh(shape, jax.devices()[: min(math.prod(shape), jax.device_count())])
    tok = load_tokenizer(path)
    image = cfg.prompt.image or demo_image()
    pixels, grid = preprocess_images([image], ImageProcessorConfig.from_pretrained(path))
    content = [{"type": "image"}, {"type": "text", "text": cfg.prompt.question}]
    messages = [{"role": "user", "content": content}]
    ids, _ = build_prompt(tok, messages, grid, merge_size=mcfg.vision.spatial_merge_size)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batch = make_batch(mcfg, [ids], pixel_values=pixels, image_grid_thw=grid, pad_id=pad)
    t0 = time.perf_counter()
    model, _ = hf.load_pretrained(path, dtype=dtype, mesh=mesh)
    load_s = time.perf_counter() - t0
    g = cfg.generate
    stops = tuple(tuple(tok.encode(s, add_special_tokens=False)) for s in g.stop_strings)
    sampling = SamplingConfig(
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        stop_token_ids=tuple(t for t in (tok.eos_token_id,) if t is not None),
        stop_sequences=stops,
        pad_id=pad,
    )
    t0 = time.perf_counter()
    out = jax.block_until_ready(generate(model, batch, sampling))
    gen_s = time.perf_counter() - t0
    n = int(out.lengths[0])
    tokens = np.asarray(out.tokens[0, :n]).tolist()
    text = truncate_at_stop(tok.decode(tokens, skip_special_tokens=True), g.stop_strings)
    result = {
        "checkpoint": str(path),
        "question": cfg.prompt.question,
        "image_grid_thw": np.asarray(grid).tolist(),
        "prompt_tokens": len(ids),
        "answer": text,
        "answer_tokens": n,
        "load_s": round(load_s, 3),
        "generate_s_incl_compile": round(gen_s, 3),
    }
    (workdir / "generation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


_CONFIG = config_lib.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: the config's workdir).")


def main(argv):
    del argv
    raw = _CONFIG.value
    workdir = _WORKDIR.value or raw.get("workdir") or "runs/infer"
    sections = {k: raw[k] for k in ("model", "prompt", "generate", "mesh") if k in raw}
    cfg = config_lib.to_dataclass(InferConfig, sections)
    config_lib.write_resolved(raw, workdir, spec=config_lib.flag_spec())
    result = run(cfg, workdir)
    print(f"model: {result['checkpoint']}")
    print(f"question: {result['question']}")
    print(
        f"answer ({result['answer_tokens']} tokens, "
        f"{result['generate_s_incl_compile']} s incl. compile): {result['answer']!r}"
    )
    print(f"wrote {Path(workdir) / 'generation.json'}")


if __name__ == "__main__":
    app.run(main)
