"""Hugging Face interop: load and save Qwen3-VL checkpoints in the transformers format.

`load_pretrained` reads ``config.json`` (transformers 4.57 or 5.x layout) and single-file or
sharded safetensors, streaming tensor by tensor: each is memory-mapped, converted to our
layout, cast, and placed straight into its sharding, so host memory peaks at about one
tensor. `save_pretrained` writes the same format back, loadable by
``transformers.Qwen3VLForConditionalGeneration.from_pretrained``.

Layout conversion: a transformers ``nn.Linear`` weight ``[out, in]`` becomes our kernel
``[*in_dims, *out_dims]`` (heads split out, e.g. q ``[d, n, h]``); the vision patch
``Conv3d`` weight ``[D, C, T, P, P]`` becomes a ``[C*T*P*P, D]`` kernel.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dreamr_jax.models import config as config_lib
from dreamr_jax.models import safetensors_io
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import MESH_AXES, ShardingRules, param_shardings


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or tensors, or holds tensors that do not fit."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    """How one HF tensor maps to one of our parameters.

    Attributes:
      path: our parameter's path in the model state.
      n_in: for "linear", how many leading dims of our kernel are input dims.
      kind: "linear" (transpose + reshape) or "copy" (reshape only).
      hf_shape: the tensor's shape in the HF checkpoint.
    """

    path: tuple
    kind: str
    hf_shape: tuple[int, ...]
    n_in: int = 1


def param_map(cfg: config_lib.ModelConfig) -> dict[str, _Entry]:
    """HF tensor name -> `_Entry` for every parameter of a model with config ``cfg``."""
    t, v = cfg.text, cfg.vision
    d, n, k, h, mlp = t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim, t.intermediate_size
    out: dict[str, _Entry] = {}

    def linear(hf, path, out_dim, in_dim, n_in=1, bias=False):
        out[hf + ".weight"] = _Entry(path + ("kernel",), "linear", (out_dim, in_dim), n_in)
        if bias:
            out[hf + ".bias"] = _Entry(path + ("bias",), "copy", (out_dim,))

    def norm(hf, path, width, bias=False):
        out[hf + ".weight"] = _Entry(path + ("scale",), "copy", (width,))
        if bias:
            out[hf + ".bias"] = _Entry(path + ("bias",), "copy", (width,))

    vd, vi, vm = v.hidden_size, v.intermediate_size, v.hidden_size * v.spatial_merge_size**2
    pv = "model.visual."
    out[pv + "patch_embed.proj.weight"] = _Entry(
        ("visual", "patch_embed", "kernel"),
        "linear",
        (vd, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size),
    )
    out[pv + "patch_embed.proj.bias"] = _Entry(("visual", "patch_embed", "bias"), "copy", (vd,))
    out[pv + "pos_embed.weight"] = _Entry(
        ("visual", "pos_embed", "embedding"), "copy", (v.num_position_embeddings, vd)
    )
    for i in range(v.depth):
        hf, ours = f"{pv}blocks.{i}.", ("visual", "blocks", i)
        norm(hf + "norm1", ours + ("norm1",), vd, bias=True)
        norm(hf + "norm2", ours + ("norm2",), vd, bias=True)
        linear(hf + "attn.qkv", ours + ("qkv",), 3 * vd, vd, bias=True)
        linear(hf + "attn.proj", ours + ("proj",), vd, vd, n_in=2, bias=True)
        linear(hf + "mlp.linear_fc1", ours + ("fc1",), vi, vd, bias=True)
        linear(hf + "mlp.linear_fc2", ours + ("fc2",), vd, vi, bias=True)
    mergers = [("merger", ("merger",), vd)] + [
        (f"deepstack_merger_list.{j}", ("deepstack_mergers", j), vm)
        for j in range(len(v.deepstack_visual_indexes))
    ]
    for hf_name, ours, norm_width in mergers:
        hf, ours = pv + hf_name + ".", ("visual",) + ours
        norm(hf + "norm", ours + ("norm",), norm_width, bias=True)
        linear(hf + "linear_fc1", ours + ("fc1",), vm, vm, bias=True)
        linear(hf + "linear_fc2", ours + ("fc2",), v.out_hidden_size, vm, bias=True)
    pt = "model.language_model."
    out[pt + "embed_tokens.weight"] = _Entry(
        ("language_model", "embed_tokens", "embedding"), "copy", (t.vocab_size, d)
    )
    for i in range(t.num_layers):
        hf, ours = f"{pt}layers.{i}.", ("language_model", "layers", i)
        norm(hf + "input_layernorm", ours + ("input_norm",), d)
        norm(hf + "post_attention_layernorm", ours + ("post_attention_norm",), d)
        b = t.attention_bias
        linear(hf + "self_attn.q_proj", ours + ("q_proj",), n * h, d, bias=b)
        linear(hf + "self_attn.k_proj", ours + ("k_proj",), k * h, d, bias=b)
        linear(hf + "self_attn.v_proj", ours + ("v_proj",), k * h, d, bias=b)
        linear(hf + "self_attn.o_proj", ours + ("o_proj",), d, n * h, n_in=2, bias=b)
        norm(hf + "self_attn.q_norm", ours + ("q_norm",), h)
        norm(hf + "self_attn.k_norm", ours + ("k_norm",), h)
        linear(hf + "mlp.gate_proj", ours + ("gate_proj",), mlp, d)
        linear(hf + "mlp.up_proj", ours + ("up_proj",), mlp, d)
        linear(hf + "mlp.down_proj", ours + ("down_proj",), d, mlp)
    norm(pt + "norm", ("language_model", "norm"), d)
    if not t.tie_word_embeddings:
        linear("lm_head", ("lm_head",), t.vocab_size, d)
    return out


def _from_hf(x: np.ndarray, entry: _Entry, shape: tuple[int, ...]) -> np.ndarray:
    if entry.kind == "linear":
        return x.reshape(x.shape[0], -1).T.reshape(shape)
    return x.reshape(shape)


def _to_hf(x: np.ndarray, entry: _Entry) -> np.ndarray:
    if entry.kind == "linear":
        n_in = math.prod(x.shape[: entry.n_in])
        return x.reshape(n_in, -1).T.reshape(entry.hf_shape)
    return x.reshape(entry.hf_shape)


# Tensors transformers may store that carry no parameters of ours.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(path: str | os.PathLike) -> config_lib.ModelConfig:
    """Parses ``path/config.json`` into a validated `ModelConfig`."""
    file = Path(path) / "config.json"
    if not Path(path).is_dir():
        raise CheckpointError(
            f"{path}: not a directory; pass a Hugging Face model directory "
            "(config.json + *.safetensors)."
        )
    if not file.is_file():
        raise CheckpointError(
            f"{file}: missing; a Hugging Face model directory needs "
            "config.json next to its safetensors."
        )
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}).") from None
    return config_lib.from_hf_dict(raw, source=str(file))


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e}).") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {missing}.")
        return [path / f for f in files]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise CheckpointError(
            f"{path}: no model.safetensors, model.safetensors.index.json or "
            "*.safetensors files; only safetensors checkpoints are supported."
        )
    return found


def load_pretrained(
    path: str | os.PathLike,
    *,
    dtype=jnp.bfloat16,
    mesh: Mesh | None = None,
    rules: ShardingRules = ShardingRules(),
) -> tuple[Qwen3VL, config_lib.ModelConfig]:
    """Loads a Hugging Face Qwen3-VL directory into our model.

    Args:
      path: directory with ``config.json`` and safetensors (single or sharded + index).
      dtype: parameter dtype (``jnp.bfloat16``, ``jnp.float32`` or their names); tensors
        are cast.
      mesh: optional ``(data, fsdp, tensor)`` mesh; each tensor is placed straight into its
        sharding. Without a mesh, parameters go to the default device.
      rules: logical-axis rules for the mesh.

    Returns:
      ``(model, config)``.

    Raises:
      CheckpointError: missing files, missing / unexpected / mis-shaped tensors (named).
      ConfigError: an unsupported or inconsistent ``config.json``.
    """
    path = Path(path)
    dtype = jnp.dtype(dtype)
    cfg = read_config(path)
    files = [safetensors_io.SafetensorsFile(f) for f in _weight_files(path)]
    mapping = param_map(cfg)
    names = {name: f for f in files for name in f.keys()}
    # Check names before reading any data: a wrong checkpoint fails in milliseconds.
    skip = {n for n in names if n.endswith(_IGNORED_SUFFIXES)}
    if cfg.text.tie_word_embeddings:
        skip.add("lm_head.weight")  # tied: the head is the embedding; a stored copy is redundant
    unexpected = sorted(n for n in names if n not in mapping and n not in skip)
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensors not in a dense Qwen3-VL with this config: "
            f"{_short(unexpected)}."
        )
    missing = [n for n in mapping if n not in names]
    if missing:
        raise CheckpointError(f"{path}: missing tensors {_short(missing)}.")

    abstract = nnx.eval_shape(lambda: Qwen3VL(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)
    flat = dict(nnx.to_flat_state(state))
    shardings = dict(nnx.to_flat_state(param_shardings(state, mesh, rules)))
    for name, entry in mapping.items():
        file = names[name]
        raw = file.get(name)
        if tuple(raw.shape) != entry.hf_shape:
            raise CheckpointError(
                f"{file.path}: tensor {name} has shape {list(raw.shape)} but config.json "
                f"implies {list(entry.hf_shape)}; the weights do not belong to this config."
            )
        var = flat[entry.path]
        value = _from_hf(np.asarray(raw), entry, var.shape).astype(var.dtype)
        var.set_value(
            jax.make_array_from_callback(
                value.shape, shardings[entry.path], lambda idx, v=value: v[idx]
            )
        )
    return nnx.merge(graphdef, state), cfg


def _short(names: list[str], n: int = 8) -> str:
    more = f" ... and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def save_pretrained(
    model: Qwen3VL,
    cfg: config_lib.ModelConfig,
    path: str | os.PathLike,
    *,
    dtype=None,
    max_shard_bytes: int = 4 << 30,
) -> list[Path]:
    """Writes ``model`` as a Hugging Face Qwen3-VL directory.

    Files are written next to their final names and renamed into place, so an interrupted
    save never leaves a half-written ``config.json`` or shard behind a good one. In a
    multi-process run every process must call this (parameters spread over hosts are
    gathered tensor by tensor); only process 0 writes.

    Args:
      model: the model.
      cfg: its config.
      path: output directory (created if needed).
      dtype: optional dtype to store (e.g. ``jnp.bfloat16``); defaults to the params'.
      max_shard_bytes: split into ``model-0000i-of-0000n.safetensors`` + index beyond this.

    Returns:
      The weight files written.
    """
    path = Path(path)
    writer = jax.process_index() == 0
    if writer:
        path.mkdir(parents=True, exist_ok=True)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    entries = []
    for name, entry in param_map(cfg).items():
        var = flat[entry.path]
        store = np.dtype(dtype or var.dtype)
        entries.append((name, entry.hf_shape, store, entry, var))
    shards, current, size = [], [], 0
    for item in entries:
        nbytes = math.prod(item[1]) * item[2].itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(item)
        size += nbytes
    shards.append(current)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    by_name = {e[0]: e for e in entries}

    def produce(name):
        _, _, store, entry, var = by_name[name]
        value = var[...]
        if not value.is_fully_addressable:  # a collective: every process gets here in order
            value = multihost_utils.process_allgather(value, tiled=True)
        return _to_hf(np.asarray(jax.device_get(value)), entry).astype(store)

    written = [path / fname for fname in names]
    if not writer:
        for e in entries:
            produce(e[0])  # take part in the gathers; process 0 writes
        multihost_utils.sync_global_devices(f"save_pretrained {path}")
        return written
    for fname, shard in zip(names, shards, strict=True):
        safetensors_io.write_file(path / fname, [(e[0], e[1], e[2]) for e in shard], produce)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(math.prod(e[1]) * e[2].itemsize for e in entries)},
            "weight_map": {e[0]: f for f, s in zip(names, shards, strict=True) for e in s},
        }
        _write_json(path / "model.safetensors.index.json", index)
    else:
        (path / "model.safetensors.index.json").unlink(missing_ok=True)
    # Weight files of an earlier save in another layout would shadow the new ones
    # (transformers prefers model.safetensors, we prefer the index): remove them last.
    for old in [path / "model.safetensors", *path.glob("model-*-of-*.safetensors")]:
        if old.is_file() and old.name not in names:
            old.unlink()
    stored = np.dtype(dtype or entries[0][2])
    _write_json(path / "config.json", config_lib.to_hf_dict(cfg, dtype=_torch_dtype(stored)))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"save_pretrained {path}")
    return written


def _torch_dtype(dtype: np.dtype) -> str:
    return {"bfloat16": "bfloat16", "float32": "float32", "float16": "float16"}.get(
        np.dtype(dtype).name, "float32"
    )


def _write_json(file: Path, obj) -> None:
    tmp = file.with_suffix(file.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, file)
