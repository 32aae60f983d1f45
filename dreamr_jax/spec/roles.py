"""Draft and target from config: checkpoints (or built-in tiny models), meshes, engine.

Shared by ``python -m dreamr_jax.infer`` and ``python -m dreamr_jax.eval``. Everything cheap
is checked before any weight is read: both ``config.json`` files, the two tokenizers and
image processors against each other, and both meshes against the devices.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from dreamr_jax import config as config_lib
from dreamr_jax.inference.generate import bucket
from dreamr_jax.models import config as model_config
from dreamr_jax.models import hf
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import make_mesh
from dreamr_jax.processing import ImageProcessorConfig, load_tokenizer
from dreamr_jax.processing.tokenizer import save_byte_tokenizer
from dreamr_jax.spec.engine import (
    Request,
    Role,
    SpecConfig,
    SpecEngine,
    SpecSetupError,
    cache_slots,
    check_pair,
    make_request,
)
from dreamr_jax.spec.verify import VerifierConfig, verdict_tokens

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Built-in random models: a target and a smaller draft with the same vision patching.
BUILTIN_SIZES = {
    "target": {},
    "draft": {"hidden_size": 32, "num_layers": 2, "intermediate_size": 64, "head_dim": 8},
}


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which model to run for one role.

    Attributes:
      checkpoint: a Hugging Face Qwen3-VL directory; empty = the built-in tiny model of
        this role (random weights, written once under the workdir).
      dtype: parameter dtype, "float32" or "bfloat16".
      seed: random-init seed of the built-in model.
    """

    checkpoint: str = ""
    dtype: str = "float32"
    seed: int = 0

    def validate(self):
        config_lib.require(
            self.dtype in DTYPES, "dtype", self.dtype, f"must be one of {sorted(DTYPES)}"
        )


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """A role's ``(data, fsdp, tensor)`` mesh over ``data*fsdp*tensor`` devices starting at
    device ``first_device``. Two roles on disjoint device ranges run concurrently (the
    paper's 2 + 4 GPU split); overlapping ranges time-share."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    first_device: int = 0

    def validate(self):
        for name in ("data", "fsdp", "tensor"):
            config_lib.require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        config_lib.require(
            self.first_device >= 0, "first_device", self.first_device, "must be >= 0"
        )

    def mesh(self, role: str) -> jax.sharding.Mesh:
        """The mesh; raises `ShardingError` naming the role when devices are missing."""
        shape = (self.data, self.fsdp, self.tensor)
        devices = jax.devices()
        end = self.first_device + math.prod(shape)
        if end > len(devices):
            from dreamr_jax.models.sharding import ShardingError

            raise ShardingError(
                f"the {role} mesh {shape} from device {self.first_device} needs devices "
                f"up to #{end - 1} but only {len(devices)} exist; shrink the mesh or move "
                f"{role}_mesh.first_device."
            )
        return make_mesh(shape, devices[self.first_device : end])


def builtin_config(tokenizer, role: str = "target", **sizes) -> model_config.ModelConfig:
    """The tiny Qwen3-VL config of a built-in ``role`` for ``tokenizer`` (its special ids;
    vocabulary padded to a multiple of 64, as Qwen does, so it shards over any mesh)."""
    ids = tokenizer.convert_tokens_to_ids
    return dataclasses.replace(
        model_config.tiny_config(
            vocab_size=-(-len(tokenizer) // 64) * 64, **{**BUILTIN_SIZES[role], **sizes}
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    ).validate()


def builtin_checkpoint(path: Path, role: str = "target", *, seed: int, dtype) -> Path:
    """Writes a tiny random model of ``role``, its byte tokenizer and image settings (once).

    ``config.json`` is written last (by `hf.save_pretrained`), so its presence marks a
    complete directory and an interrupted first run is simply redone.
    """
    if (path / "config.json").is_file():
        return path
    cfg = builtin_config(save_byte_tokenizer(path), role)
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


def checkpoint_path(section: ModelSection, role: str, workdir: str | os.PathLike) -> Path:
    """The role's checkpoint directory, writing the built-in model when none is given."""
    if section.checkpoint:
        return Path(section.checkpoint)
    return builtin_checkpoint(
        Path(workdir) / role, role, seed=section.seed, dtype=DTYPES[section.dtype]
    )


def check_tokenizers(draft_tok, target_tok) -> None:
    """The two checkpoints must tokenise identically (same vocabulary and ids)."""
    if draft_tok.get_vocab() != target_tok.get_vocab():
        raise SpecSetupError(
            f"the draft tokenizer ({len(draft_tok)} tokens) differs from the target's "
            f"({len(target_tok)} tokens): speculative reasoning needs one tokenizer; pick "
            "checkpoints of the same model family."
        )


@dataclasses.dataclass
class Prepared:
    """Everything checked and ready except the weights."""

    paths: dict[str, Path]
    configs: dict[str, model_config.ModelConfig]
    meshes: dict[str, jax.sharding.Mesh]
    tokenizer: object
    image_processor: ImageProcessorConfig


def prepare(
    models: dict[str, ModelSection],
    meshes: dict[str, MeshSection],
    workdir: str | os.PathLike,
) -> Prepared:
    """Resolves paths, reads configs and tokenizers, builds meshes; no weights read.

    Args:
      models: ``{"target": ..., "draft": ...}`` (``draft`` may be absent for a target-only
        run).
      meshes: a `MeshSection` per role.
    """
    paths = {role: checkpoint_path(sec, role, workdir) for role, sec in models.items()}
    configs = {role: hf.read_config(path) for role, path in paths.items()}
    built = {role: meshes[role].mesh(role) for role in models}
    tokenizers = {role: load_tokenizer(path) for role, path in paths.items()}
    if "draft" in models:
        check_pair(configs["draft"], configs["target"])
        check_tokenizers(tokenizers["draft"], tokenizers["target"])
    processor = ImageProcessorConfig.from_pretrained(paths["target"])
    return Prepared(paths, configs, built, tokenizers["target"], processor)


def check_request(
    prep: Prepared, spec: SpecConfig, verifier: VerifierConfig, image, question: str
) -> Request:
    """Tokenises a request and checks it fits the cache, before any weight is read."""
    target = prep.configs["target"]
    request = make_request(prep.tokenizer, prep.image_processor, target, image, question)
    suffix = len(verdict_tokens(prep.tokenizer, verifier).suffix)
    slots = bucket(len(request.prompt_ids))
    cache_slots(spec, suffix, slots, target.text.max_position_embeddings)
    return request


def load_roles(prep: Prepared, models: dict[str, ModelSection]) -> dict[str, Role]:
    """Loads each role's weights straight into its mesh."""
    roles = {}
    for role, sec in models.items():
        model, _ = hf.load_pretrained(
            prep.paths[role], dtype=DTYPES[sec.dtype], mesh=prep.meshes[role]
        )
        roles[role] = Role.of(model, prep.meshes[role])
    return roles


def build_engine(
    prep: Prepared, roles: dict[str, Role], spec: SpecConfig, verifier: VerifierConfig
) -> SpecEngine:
    """A `SpecEngine`; a target-only setup uses the target as its own draft (unused)."""
    draft = roles.get("draft", roles["target"])
    return SpecEngine(
        draft, roles["target"], prep.tokenizer, spec, verifier, image_processor=prep.image_processor
    )
