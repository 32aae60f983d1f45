"""Image preprocessing equivalent to the Qwen3-VL processor.

Qwen3-VL has no image processor of its own in transformers: checkpoints configure the Qwen2-VL one
(`Qwen2VLImageProcessor`) with patch 16 and mean/std 0.5. This module reproduces the *slow* (PIL)
processor bit for bit up to float rounding: resize each image with PIL bicubic to a size
divisible by `patch_size * merge_size` (`smart_resize`), rescale to [0, 1], normalise, repeat the
single frame `temporal_patch_size` times and cut it into flattened patches ordered so that every
`merge_size x merge_size` block of patches is contiguous (the vision tower's merger relies on it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

#: transformers refuses images whose long side is more than this many times the short side.
MAX_ASPECT_RATIO = 200

#: Defaults of the released Qwen3-VL `preprocessor_config.json` (every size: 2B to 235B).
QWEN3_VL_MIN_PIXELS = 256 * 256  # size.shortest_edge = 65536
QWEN3_VL_MAX_PIXELS = 4096 * 4096  # size.longest_edge = 16777216

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

_RESAMPLE_NAMES = {int(r): r.name.lower() for r in PIL.Image.Resampling}


def smart_resize(
    height: int,
    width: int,
    *,
    factor: int = 32,
    min_pixels: int,
    max_pixels: int,
) -> tuple[int, int]:
    """Picks the resized image size, identical to transformers' Qwen2-VL `smart_resize`.

    Both sides become multiples of `factor`, the area is brought into `[min_pixels,
    max_pixels]` (approximately: rounding to `factor` can overshoot slightly) and the aspect
    ratio is kept as closely as possible. Python's round-half-to-even is part of the contract.

    Args:
        height: Input image height in pixels.
        width: Input image width in pixels.
        factor: `patch_size * merge_size` (32 for Qwen3-VL, 28 for Qwen2/2.5-VL).
        min_pixels: Lower bound on the resized area (`size.shortest_edge` in HF configs).
        max_pixels: Upper bound on the resized area (`size.longest_edge` in HF configs).

    Returns:
        `(resized_height, resized_width)`, both positive multiples of `factor`.

    Raises:
        ValueError: If a side is smaller than one pixel, the aspect ratio exceeds
            `MAX_ASPECT_RATIO`, or the pixel bounds are not positive and ordered.
    """
    if height < 1 or width < 1:
        raise ValueError(
            f"image size {height}x{width} (HxW) is too small: height and width must be >= 1 pixel"
        )
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    if not 1 <= min_pixels <= max_pixels:
        raise ValueError(
            f"need 1 <= min_pixels <= max_pixels, got min_pixels={min_pixels}, "
            f"max_pixels={max_pixels}"
        )
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image size {height}x{width} (HxW) has aspect ratio {ratio:.1f}, above the limit "
            f"of {MAX_ASPECT_RATIO}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """Image preprocessing settings, the fields of a transformers `preprocessor_config.json`.

    Attributes:
        patch_size: Spatial patch side P in pixels (16 for Qwen3-VL).
        temporal_patch_size: Frames per temporal patch T; a still image is repeated T times.
        merge_size: Side of the square block of patches merged into one LLM token.
        min_pixels: Lower bound on the resized image area (HF `size.shortest_edge`).
        max_pixels: Upper bound on the resized image area (HF `size.longest_edge`).
        image_mean: Per-channel mean subtracted after rescaling to [0, 1].
        image_std: Per-channel standard deviation divided by after subtracting the mean.
        resample: PIL resampling filter code (3 = bicubic, as in HF).
    """

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = QWEN3_VL_MIN_PIXELS
    max_pixels: int = QWEN3_VL_MAX_PIXELS
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: int = int(PIL.Image.Resampling.BICUBIC)

    def __post_init__(self):
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})"
            )
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} needs 3 values (RGB), got {len(value)}")
            object.__setattr__(self, name, value)
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must be non-zero, got {self.image_std}")
        if self.resample not in _RESAMPLE_NAMES:
            raise ValueError(
                f"resample must be a PIL resampling code {sorted(_RESAMPLE_NAMES)}, "
                f"got {self.resample!r}"
            )

    @property
    def factor(self) -> int:
        """Side multiple of resized images: `patch_size * merge_size`."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: `3 * T * P * P`."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def for_vision(cls, vision_cfg, **overrides: Any) -> ImageProcessorConfig:
        """The patching a model's vision tower expects, other fields from ``overrides``.

        Args:
            vision_cfg: the model's `VisionConfig` (``model_cfg.vision``); its
                ``patch_size``, ``temporal_patch_size`` and ``spatial_merge_size`` become
                ``patch_size``, ``temporal_patch_size`` and ``merge_size``.
            **overrides: any other fields (e.g. ``min_pixels``, ``max_pixels``); they win
                over the tower's values too.
        """
        patching = {
            "patch_size": vision_cfg.patch_size,
            "temporal_patch_size": vision_cfg.temporal_patch_size,
            "merge_size": vision_cfg.spatial_merge_size,
        }
        return cls(**{**patching, **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageProcessorConfig:
        """Builds a config from a transformers image-processor dict, ignoring unknown keys.

        `size = {shortest_edge, longest_edge}` sets the pixel bounds; top-level `min_pixels` /
        `max_pixels` override it, as in `Qwen2VLImageProcessorFast` (which real checkpoints load).
        """
        kwargs: dict[str, Any] = {}
        for key in ("patch_size", "temporal_patch_size", "merge_size", "resample"):
            if d.get(key) is not None:
                kwargs[key] = d[key]
        for key in ("image_mean", "image_std"):
            if d.get(key) is not None:
                value = d[key]
                kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
        size = d.get("size") or {}
        if not isinstance(size, dict):
            raise ValueError(f"'size' must be a dict with shortest_edge/longest_edge, got {size!r}")
        for key, size_key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            value = d.get(key) if d.get(key) is not None else size.get(size_key)
            if value is not None:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ImageProcessorConfig:
        """Reads `preprocessor_config.json` from a checkpoint directory.

        Args:
            path: A checkpoint directory (or the JSON file itself).

        Returns:
            The config; Qwen3-VL defaults when the directory has no `preprocessor_config.json`.

        Raises:
            FileNotFoundError: If `path` does not exist.
            ValueError: If the file is not valid JSON or holds invalid values.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint path not found: {path}")
        file = path / PREPROCESSOR_CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            return cls()
        try:
            d = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{file} must hold a JSON object, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"invalid image processor config in {file}: {e}") from e


def _open_image_file(path: str | os.PathLike, max_input_pixels: int | None) -> PIL.Image.Image:
    """Opens an image file like transformers' `load_image` (EXIF orientation applied)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = PIL.Image.open(path)
        _check_input_size(image.height, image.width, max_input_pixels, f"image file {path}")
        image = PIL.ImageOps.exif_transpose(image)
        image.load()
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as e:
        raise ValueError(f"could not read image file {path}: {e}") from e
    return image


def _check_input_size(height: int, width: int, max_input_pixels: int | None, what: str):
    if height < 1 or width < 1:
        raise ValueError(f"{what} is empty: size {height}x{width} (HxW)")
    if max_input_pixels is not None and height * width > max_input_pixels:
        raise ValueError(
            f"{what} has size {height}x{width} (HxW) = {height * width} pixels, above the "
            f"limit max_input_pixels={max_input_pixels}"
        )


def _to_pil_rgb(image: Any, index: int, max_input_pixels: int | None) -> PIL.Image.Image:
    """Validates one input image and returns it as an RGB PIL image."""
    what = f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        image = _open_image_file(image, max_input_pixels)
    if isinstance(image, PIL.Image.Image):
        _check_input_size(image.height, image.width, max_input_pixels, what)
        return image if image.mode == "RGB" else image.convert("RGB")
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"{what} has unsupported type {type(image).__name__}: expected a PIL image, an "
            "HxWx3 uint8 numpy array or an image file path"
        )
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(
            f"{what} has shape {image.shape}: expected HxWx3 (channels last, RGB), HxWx4 (RGBA) "
            "or HxW (grayscale)"
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"{what} has dtype {image.dtype}: expected uint8 pixels in [0, 255] "
            "(convert floats in [0, 1] with (x * 255).round().astype(np.uint8))"
        )
    _check_input_size(image.shape[0], image.shape[1], max_input_pixels, what)
    return PIL.Image.fromarray(np.ascontiguousarray(image)).convert("RGB")


def normalize_image(image: PIL.Image.Image, cfg: ImageProcessorConfig) -> np.ndarray:
    """Resizes an RGB image to its `smart_resize` size, rescales and normalises it.

    The arithmetic follows transformers: uint8 -> float64 * (1/255) -> float32, then
    `(x - mean) / std` in float32.

    Args:
        image: An RGB PIL image.
        cfg: Preprocessing settings.

    Returns:
        float32 array [3, H', W'] with H', W' multiples of `cfg.factor`.
    """
    height, width = smart_resize(
        image.height,
        image.width,
        factor=cfg.factor,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
    )
    resized = image.resize((width, height), resample=cfg.resample, reducing_gap=None)
    pixels_hwc = (np.asarray(resized).astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(cfg.image_mean, np.float32)
    std = np.asarray(cfg.image_std, np.float32)
    return ((pixels_hwc - mean) / std).transpose(2, 0, 1)


def patchify(image_chw: np.ndarray, cfg: ImageProcessorConfig) -> tuple[np.ndarray, tuple]:
    """Cuts one normalised image into flattened patches in the HF Qwen2-VL order.

    The frame is repeated to `T = temporal_patch_size`. Patches are ordered row-major over
    `merge_size x merge_size` blocks, then row-major inside a block; each patch flattens as
    (channel, time, row, column).

    Args:
        image_chw: float32 [3, H, W] with H and W multiples of `patch_size * merge_size`.
        cfg: Preprocessing settings.

    Returns:
        `(patches, (t, h, w))`: patches float32 [t*h*w, 3*T*P*P] and the patch grid sizes.
    """
    c, height, width = image_chw.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    if height % (p * m) or width % (p * m):
        raise ValueError(f"image size {height}x{width} is not a multiple of {p * m}")
    grid_t, grid_h, grid_w = 1, height // p, width // p
    frames = np.broadcast_to(image_chw[None], (tp, c, height, width))
    # Axes: (t, T, c, block row, row in block, P, block col, col in block, P).
    blocks = frames.reshape(grid_t, tp, c, grid_h // m, m, p, grid_w // m, m, p)
    blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    patches = blocks.reshape(grid_t * grid_h * grid_w, c * tp * p * p)
    return patches, (grid_t, grid_h, grid_w)


def preprocess_images(
    images: Any,
    cfg: ImageProcessorConfig | None = None,
    *,
    max_input_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Turns images into Qwen3-VL vision-tower inputs, like `Qwen2VLImageProcessor` (slow).

    Args:
        images: One image or a sequence of images. Each is a PIL image (any mode, converted to
            RGB), a uint8 numpy array HxWx3 (HxW and HxWx4 are converted to RGB) or a path to
            an image file (EXIF orientation applied).
        cfg: Preprocessing settings; Qwen3-VL defaults when None.
        max_input_pixels: If set, refuse input images with more pixels than this (before
            resizing; for files, checked before decoding).

    Returns:
        `(pixel_values, image_grid_thw)`: float32 [p, 3*T*P*P] with the patches of all images
        concatenated in order, and int64 [num_images, 3] holding each image's (t, h, w) grid.

    Raises:
        ValueError: On an unsupported object, an empty image, a wrong shape, channel count or
            dtype, an unreadable file, an image above `max_input_pixels`, or an extreme aspect
            ratio. The message names the image index and the problem.
        FileNotFoundError: If a path does not exist.
    """
    cfg = ImageProcessorConfig() if cfg is None else cfg
    if isinstance(images, (PIL.Image.Image, np.ndarray, str, os.PathLike)):
        images = [images]
    if not isinstance(images, Sequence):
        raise ValueError(
            f"images must be an image or a sequence of images, got {type(images).__name__}"
        )
    all_patches, grids = [np.zeros((0, cfg.patch_dim), np.float32)], []
    for i, image in enumerate(images):
        rgb = _to_pil_rgb(image, i, max_input_pixels)
        try:
            patches, grid = patchify(normalize_image(rgb, cfg), cfg)
        except ValueError as e:
            raise ValueError(f"image {i}: {e}") from e
        all_patches.append(patches)
        grids.append(grid)
    pixel_values = np.concatenate(all_patches, axis=0).astype(np.float32, copy=False)
    return pixel_values, np.asarray(grids, np.int64).reshape(-1, 3)


def num_image_tokens(image_grid_thw: Any, merge_size: int = 2) -> list[int]:
    """LLM placeholder tokens per image: `t * h * w / merge_size**2`.

    Args:
        image_grid_thw: int [num_images, 3] patch grids from `preprocess_images`.
        merge_size: Side of the merged patch block.

    Returns:
        One token count per image.
    """
    grid = np.asarray(image_grid_thw, np.int64)
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape [num_images, 3], got {grid.shape}")
    if (grid < 1).any():
        raise ValueError(f"image_grid_thw entries must be positive, got {grid.tolist()}")
    if (grid[:, 1:] % merge_size).any():
        raise ValueError(
            f"image grids {grid.tolist()} do not divide into {merge_size}x{merge_size} blocks"
        )
    return (grid.prod(axis=1) // merge_size**2).tolist()


def preprocess_batch(
    images: Sequence[Any], cfg: ImageProcessorConfig, *, pad_to: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`preprocess_images` for many images at once: the same arrays, bit for bit.

    Images that are all uint8 ``[H, W, 3]`` arrays of one size (a training batch) are
    normalised and cut into patches with one array operation each (PIL only resizes, and
    only when `smart_resize` changes the size); anything else goes through
    `preprocess_images`, which also gives every error its message.

    Args:
        images: the images, as `preprocess_images` takes them.
        cfg: Preprocessing settings.
        pad_to: if set, ``pixel_values`` gets zero rows up to this many patches (the
            pipeline's static ``num_patches``), written in place rather than copied.

    Returns:
        `(pixel_values, image_grid_thw)` as `preprocess_images` returns them, ``pixel_values``
        float32 ``[pad_to or p, 3*T*P*P]``.

    Raises:
        ValueError: as `preprocess_images`, or the images hold more than ``pad_to`` patches.
    """
    size = _batch_size(images, cfg)
    if size is None:
        pixels, grid = preprocess_images(images, cfg)
        return _pad_rows(pixels, pad_to), grid
    pixels_bhwc = np.stack(images)
    if size != pixels_bhwc.shape[1:3]:  # PIL's resize only copies an image it keeps
        pixels_bhwc = np.stack([_resize(x, size, cfg) for x in images])
    return _patchify_batch(pixels_bhwc, cfg, pad_to)


def _batch_size(images: Sequence[Any], cfg: ImageProcessorConfig) -> tuple[int, int] | None:
    """The resized ``(H', W')`` of images that are all valid uint8 ``[H, W, 3]`` arrays of one
    size, else None (`preprocess_images` then handles them, or names what is wrong)."""
    if not isinstance(images, Sequence) or not images or not isinstance(images[0], np.ndarray):
        return None
    shape = images[0].shape
    if len(shape) != 3 or shape[-1] != 3 or min(shape[:2]) < 1:
        return None
    if not all(
        isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape == shape for x in images
    ):
        return None
    try:
        return smart_resize(
            shape[0],
            shape[1],
            factor=cfg.factor,
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
        )
    except ValueError:
        return None


def _resize(image: np.ndarray, size: tuple[int, int], cfg: ImageProcessorConfig) -> np.ndarray:
    pil = PIL.Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    return np.asarray(pil.resize(size[::-1], resample=cfg.resample, reducing_gap=None))


def _pad_rows(pixels: np.ndarray, pad_to: int | None) -> np.ndarray:
    if pad_to is None:
        return pixels
    if len(pixels) > pad_to:
        raise ValueError(f"the images hold {len(pixels)} patches, more than pad_to={pad_to}")
    out = np.zeros((pad_to, pixels.shape[1]), np.float32)
    out[: len(pixels)] = pixels
    return out


def _patchify_batch(
    pixels_bhwc: np.ndarray, cfg: ImageProcessorConfig, pad_to: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """`normalize_image` + `patchify` of same-size uint8 images, as one array operation."""
    b, height, width, c = pixels_bhwc.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    grid_h, grid_w = height // p, width // p
    n = b * grid_h * grid_w
    if pad_to is not None and n > pad_to:
        raise ValueError(f"the images hold {n} patches, more than pad_to={pad_to}")
    # patchify's order, (b, block row, block col, row in block, col in block, c, P, P),
    # taken on the uint8 pixels (a quarter of the bytes of float32 ones).
    order = pixels_bhwc.reshape(b, grid_h // m, m, p, grid_w // m, m, p, c)
    order = np.ascontiguousarray(order.transpose(0, 1, 4, 2, 5, 7, 3, 6)).reshape(n, c, p * p)
    out = np.zeros((n if pad_to is None else pad_to, c * tp * p * p), np.float32)
    patches = out[:n].reshape(n, c, tp, p * p)
    # normalize_image's float64 -> float32 -> (x - mean) / std, done once per uint8 level
    # and channel and looked up; the frame is repeated over T.
    lut = _normalize_table(cfg)
    for ch in range(c):
        values = lut[:, ch].take(order[:, ch])
        for frame in range(tp):
            patches[:, ch, frame] = values
    return out, np.tile(np.asarray([[1, grid_h, grid_w]], np.int64), (b, 1))


@functools.lru_cache(maxsize=8)
def _normalize_table(cfg: ImageProcessorConfig) -> np.ndarray:
    """float32 ``[256, 3]``: `normalize_image`'s value of each uint8 level in each channel."""
    levels = (np.arange(256, dtype=np.float64)[:, None] * (1 / 255)).astype(np.float32)
    mean = np.asarray(cfg.image_mean, np.float32)
    return (levels - mean) / np.asarray(cfg.image_std, np.float32)
