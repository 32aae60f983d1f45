"""Image preprocessing and prompt building against transformers' Qwen2-VL / Qwen3-VL processors."""

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import pytest
import transformers
from fixtures import make_tiny_tokenizer
from transformers.models.qwen2_vl import image_processing_qwen2_vl as hf_qwen2_vl

from dreamr_jax.models.config import VisionConfig
from dreamr_jax.processing import (
    ImageProcessorConfig,
    build_prompt,
    load_tokenizer,
    num_image_tokens,
    pad_batch,
    preprocess_images,
    smart_resize,
)
from dreamr_jax.processing.image import preprocess_batch
from dreamr_jax.processing.prompt import ImageChatTemplate

# Small pixel bounds keep the oracle fast and send the test images through all three branches
# of smart_resize (upscale to min_pixels, round only, downscale to max_pixels).
MIN_PIXELS, MAX_PIXELS = 32 * 32 * 4, 32 * 32 * 48
CFG = ImageProcessorConfig(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def _picture(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic uint8 HxWx3 picture: gradients, a disc, a bar and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 7 + y / 11)], -1)
    cy, cx, r = (
        rng.uniform(0.2, 0.8) * height,
        rng.uniform(0.2, 0.8) * width,
        min(height, width) / 4,
    )
    img[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = rng.integers(0, 256, 3)
    img[:, int(width * 0.6) : int(width * 0.7)] = rng.integers(0, 256, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _hf_image_processor(cfg: ImageProcessorConfig):
    return transformers.Qwen2VLImageProcessor(
        patch_size=cfg.patch_size,
        temporal_patch_size=cfg.temporal_patch_size,
        merge_size=cfg.merge_size,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
    )


class _ImageOnlyQwen3VLProcessor(transformers.Qwen3VLProcessor):
    """The real Qwen3VLProcessor without a video processor (that needs torchvision, absent)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


# --- smart_resize -------------------------------------------------------------------------------


def test_smart_resize_matches_transformers():
    rng = np.random.default_rng(0)
    sizes = [(1, 1), (1, 150), (31, 33), (32, 32), (48, 80), (240, 320), (1080, 1920)]
    sizes += [tuple(s) for s in rng.integers(1, 3000, (300, 2)) if max(s) / min(s) <= 200]
    bounds = [(MIN_PIXELS, MAX_PIXELS), (65536, 16777216), (56 * 56, 28 * 28 * 1280)]
    for h, w in sizes:
        for lo, hi in bounds:
            for factor in (28, 32):
                want = hf_qwen2_vl.smart_resize(int(h), int(w), factor, lo, hi)
                got = smart_resize(int(h), int(w), factor=factor, min_pixels=lo, max_pixels=hi)
                assert got == want, (h, w, lo, hi, factor)


def test_smart_resize_bad_input():
    with pytest.raises(ValueError, match=r"0x64 .*too small"):
        smart_resize(0, 64, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    with pytest.raises(ValueError, match=r"10x2500 .*aspect ratio 250.0.*limit of 200"):
        smart_resize(10, 2500, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        smart_resize(64, 64, min_pixels=10, max_pixels=5)


# --- preprocess_images --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [
        [(20, 30)],  # upscaled to min_pixels
        [(100, 150)],  # rounded only
        [(480, 640)],  # downscaled to max_pixels
        [(700, 90), (64, 64)],  # tall, then square
        [(45, 333), (301, 257)],  # odd sizes, wide
    ],
)
def test_preprocess_matches_hf_slow_processor(sizes):
    images = [_picture(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    # Feed one as PIL and the others as arrays: both paths must agree with HF.
    inputs = [PIL.Image.fromarray(images[0])] + images[1:]
    want = _hf_image_processor(CFG)(images=inputs, return_tensors="np")
    pixel_values, grid_thw = preprocess_images(inputs, CFG)
    assert pixel_values.dtype == np.float32 and grid_thw.dtype == np.int64
    np.testing.assert_array_equal(grid_thw, want["image_grid_thw"])
    assert pixel_values.shape == want["pixel_values"].shape
    np.testing.assert_allclose(pixel_values, want["pixel_values"], rtol=0, atol=1e-5)


def test_preprocess_default_config_and_image_modes():
    """Qwen3-VL defaults; grayscale and RGBA PIL images are converted to RGB like HF does."""
    rgb = _picture(120, 90, seed=7)
    images = [PIL.Image.fromarray(rgb).convert("L"), PIL.Image.fromarray(rgb).convert("RGBA")]
    cfg = ImageProcessorConfig()
    want = _hf_image_processor(cfg)(images=images, return_tensors="np")
    pixel_values, grid_thw = preprocess_images(images, cfg)
    np.testing.assert_array_equal(grid_thw, want["image_grid_thw"])
    np.testing.assert_allclose(pixel_values, want["pixel_values"], rtol=0, atol=1e-5)
    assert (grid_thw[:, 1] * grid_thw[:, 2] * 16 * 16 >= cfg.min_pixels).all()


def test_preprocess_single_image_file_and_empty_list(tmp_path):
    rgb = _picture(64, 96, seed=3)
    PIL.Image.fromarray(rgb).save(tmp_path / "a.png")
    from_file = preprocess_images(str(tmp_path / "a.png"), CFG)
    from_array = preprocess_images(rgb, CFG)
    np.testing.assert_array_equal(from_file[0], from_array[0])
    np.testing.assert_array_equal(from_file[1], [[1, 4, 6]])
    pixel_values, grid_thw = preprocess_images([], CFG)
    assert pixel_values.shape == (0, 3 * 2 * 16 * 16) and grid_thw.shape == (0, 3)


def test_num_image_tokens():
    assert num_image_tokens(np.array([[1, 4, 6], [1, 8, 8]])) == [6, 16]
    assert num_image_tokens([[2, 4, 4]], merge_size=1) == [32]
    with pytest.raises(ValueError, match=r"shape \[num_images, 3\]"):
        num_image_tokens([1, 4, 6])
    with pytest.raises(ValueError, match="2x2 blocks"):
        num_image_tokens([[1, 3, 4]])


@pytest.mark.parametrize(
    "image, error, match",
    [
        (42, ValueError, "image 0 has unsupported type int"),
        ({"path": "x.png"}, ValueError, "unsupported type dict"),
        (np.zeros((0, 10, 3), np.uint8), ValueError, r"image 0 is empty: size 0x10"),
        (np.zeros((10, 10, 2), np.uint8), ValueError, r"shape \(10, 10, 2\).*HxWx3"),
        (np.zeros((3, 40, 40), np.uint8), ValueError, r"shape \(3, 40, 40\).*channels last"),
        (np.zeros((4, 10, 10, 3), np.uint8), ValueError, r"shape \(4, 10, 10, 3\)"),
        (np.zeros((10, 10, 3), np.float32), ValueError, "dtype float32: expected uint8"),
        (PIL.Image.new("RGB", (0, 5)), ValueError, "is empty: size 5x0"),
        (np.zeros((8, 2000, 3), np.uint8), ValueError, r"8x2000 .*aspect ratio 250.0"),
    ],
)
def test_preprocess_bad_input(image, error, match):
    with pytest.raises(error, match=match):
        preprocess_images([image], CFG)


def test_preprocess_bad_files_and_pixel_limit(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"could not read image file .*corrupt\.png"):
        preprocess_images([corrupt], CFG)
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*missing\.png"):
        preprocess_images([tmp_path / "missing.png"], CFG)
    big = tmp_path / "big.png"
    PIL.Image.fromarray(_picture(200, 300, seed=1)).save(big)
    with pytest.raises(ValueError, match=r"200x300 .*60000 pixels.*max_input_pixels=50000"):
        preprocess_images([big], CFG, max_input_pixels=50_000)
    with pytest.raises(ValueError, match=r"image 1 has size 200x300"):
        preprocess_images([_picture(10, 10, 0), _picture(200, 300, 0)], max_input_pixels=50_000)
    with pytest.raises(ValueError, match="must be an image or a sequence"):
        preprocess_images(iter([_picture(10, 10, 0)]), CFG)


# --- ImageProcessorConfig -----------------------------------------------------------------------

# The shape of a released Qwen3-VL preprocessor_config.json, with extra keys that are ignored.
QWEN3_VL_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
}


def test_config_from_pretrained(tmp_path):
    assert ImageProcessorConfig.from_pretrained(tmp_path) == ImageProcessorConfig()
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(QWEN3_VL_PREPROCESSOR))
    cfg = ImageProcessorConfig.from_pretrained(tmp_path)
    assert cfg == ImageProcessorConfig()
    assert (cfg.min_pixels, cfg.max_pixels, cfg.factor, cfg.patch_dim) == (
        65536,
        16777216,
        32,
        1536,
    )

    qwen2_style = {
        "min_pixels": 3136,
        "max_pixels": 1003520,
        "patch_size": 14,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "do_resize": True,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(qwen2_style))
    cfg = ImageProcessorConfig.from_pretrained(tmp_path)
    assert (cfg.patch_size, cfg.min_pixels, cfg.max_pixels) == (14, 3136, 1003520)
    assert cfg.image_mean == (0.48145466, 0.4578275, 0.40821073)
    # Top-level min/max_pixels win over size, as in the fast HF processor.
    override = {**QWEN3_VL_PREPROCESSOR, "max_pixels": 1 << 20}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(override))
    assert ImageProcessorConfig.from_pretrained(tmp_path).max_pixels == 1 << 20


def test_config_for_vision_copies_patching_and_applies_overrides():
    # Values unlike ImageProcessorConfig's defaults (16, 2, 2), so a missed copy shows.
    vision = VisionConfig(patch_size=14, temporal_patch_size=3, spatial_merge_size=4)
    cfg = ImageProcessorConfig.for_vision(vision)
    assert (cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size) == (14, 3, 4)
    assert cfg == ImageProcessorConfig(patch_size=14, temporal_patch_size=3, merge_size=4)
    cfg = ImageProcessorConfig.for_vision(vision, min_pixels=56 * 56, max_pixels=112 * 112)
    assert (cfg.merge_size, cfg.min_pixels, cfg.max_pixels) == (4, 56 * 56, 112 * 112)
    assert ImageProcessorConfig.for_vision(vision, merge_size=1).merge_size == 1
    with pytest.raises(TypeError, match="spatial_merge_size"):
        ImageProcessorConfig.for_vision(vision, spatial_merge_size=1)  # a VisionConfig name


def test_config_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint path not found"):
        ImageProcessorConfig.from_pretrained(tmp_path / "nope")
    file = tmp_path / "preprocessor_config.json"
    file.write_text("{not json")
    with pytest.raises(ValueError, match=r"preprocessor_config\.json is not valid JSON"):
        ImageProcessorConfig.from_pretrained(tmp_path)
    file.write_text(json.dumps({"patch_size": 0}))
    with pytest.raises(ValueError, match="patch_size must be a positive integer, got 0"):
        ImageProcessorConfig.from_pretrained(tmp_path)
    file.write_text(json.dumps({"size": {"shortest_edge": 100, "longest_edge": 10}}))
    with pytest.raises(ValueError, match=r"min_pixels \(100\) must not exceed max_pixels \(10\)"):
        ImageProcessorConfig.from_pretrained(file)
    with pytest.raises(ValueError, match="image_mean needs 3 values"):
        ImageProcessorConfig(image_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="image_std must be non-zero"):
        ImageProcessorConfig(image_std=(0.5, 0.0, 0.5))


# --- batched preprocessing ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 96), (100, 150), (20, 30), (480, 640)])
def test_preprocess_batch_is_preprocess_images_bit_for_bit(size):
    # 64x96 keeps its size (no PIL); the others are rounded, upscaled and downscaled.
    images = [_picture(*size, seed=i) for i in range(3)]
    images.append(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8))
    for cfg in (
        CFG,
        ImageProcessorConfig(8, 2, 2, 32 * 32, 96 * 96, (0.1, 0.4, 0.7), (0.3, 0.2, 0.9)),
    ):
        want, want_grid = preprocess_images(images, cfg)
        got, grid = preprocess_batch(images, cfg)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert grid.dtype == want_grid.dtype and np.array_equal(grid, want_grid)
        padded, _ = preprocess_batch(images, cfg, pad_to=len(want) + 12)
        assert padded.shape == (len(want) + 12, cfg.patch_dim)
        assert np.array_equal(padded[: len(want)], want) and not padded[len(want) :].any()


def test_preprocess_batch_other_inputs_and_errors():
    mixed = [_picture(64, 64, 0), _picture(100, 150, 1), PIL.Image.new("L", (40, 30), 7)]
    for images in (mixed, [], [_picture(64, 64, 0).astype(np.float32) / 255]):
        try:
            want = preprocess_images(images, CFG)
        except ValueError as e:  # preprocess_batch gives the same error
            with pytest.raises(ValueError, match=re.escape(str(e))):
                preprocess_batch(images, CFG)
            continue
        got = preprocess_batch(images, CFG)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(ValueError, match=r"image 0: image size 8x2000 .*aspect ratio 250.0"):
        preprocess_batch([np.zeros((8, 2000, 3), np.uint8)] * 2, CFG)
    with pytest.raises(ValueError, match="hold 96 patches, more than pad_to=64"):
        preprocess_batch([_picture(64, 96, 0)] * 4, CFG, pad_to=64)


# --- prompts ------------------------------------------------------------------------------------


def _messages(num_images: int) -> list[dict]:
    content = [{"type": "text", "text": "Look at these."}]
    content += [{"type": "image"} for _ in range(num_images)]
    content += [{"type": "text", "text": "What colour is the square?"}]
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": content},
    ]


@pytest.mark.parametrize("sizes", [[(100, 150)], [(20, 30), (480, 640)]])
def test_build_prompt_matches_qwen3vl_processor(tokenizer, sizes):
    images = [_picture(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    messages = _messages(len(images))
    processor = _ImageOnlyQwen3VLProcessor(
        image_processor=_hf_image_processor(CFG), tokenizer=tokenizer
    )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = processor(text=text, images=images)

    _, grid_thw = preprocess_images(images, CFG)
    input_ids, expanded = build_prompt(tokenizer, messages, grid_thw)
    assert input_ids == want["input_ids"][0]
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert input_ids.count(image_id) == sum(num_image_tokens(grid_thw)) > len(images)
    assert tokenizer.decode(input_ids) == expanded
    assert expanded.endswith("<|im_start|>assistant\n")


def test_build_prompt_text_only(tokenizer):
    messages = [{"role": "user", "content": "What is 6 x 7?"}]
    input_ids, text = build_prompt(tokenizer, messages, add_generation_prompt=False)
    assert text == "<|im_start|>user\nWhat is 6 x 7?<|im_end|>\n"
    assert input_ids == tokenizer(text)["input_ids"]


def test_build_prompt_bad_input(tokenizer):
    grid = np.array([[1, 4, 4], [1, 2, 2]])
    with pytest.raises(ValueError, match=r"1 image placeholders \(<\|image_pad\|>\) but 2 images"):
        build_prompt(tokenizer, _messages(1), grid)
    with pytest.raises(ValueError, match="2 image placeholders .* but 0 images"):
        build_prompt(tokenizer, _messages(2))
    with pytest.raises(ValueError, match="videos are not supported"):
        build_prompt(tokenizer, [{"role": "user", "content": [{"type": "video"}]}])
    with pytest.raises(ValueError, match="message 0 must be a dict with 'role' and 'content'"):
        build_prompt(tokenizer, [{"text": "hi"}])
    with pytest.raises(ValueError, match="non-empty list"):
        build_prompt(tokenizer, "hi")
    no_template = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="has no chat template"):
        build_prompt(no_template, _messages(0))


def test_load_tokenizer_fallback_template_and_errors(tokenizer_dir, tmp_path):
    other = make_tiny_tokenizer(tmp_path / "tok")
    template = (other / "chat_template.jinja").read_text()
    (other / "chat_template.jinja").unlink()
    (other / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    assert load_tokenizer(other).chat_template == template

    with pytest.raises(FileNotFoundError, match=r"tokenizer directory not found: .*nope"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer files in .*empty: expected"):
        load_tokenizer(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{broken")
    (broken / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"could not load the tokenizer in .*broken"):
        load_tokenizer(broken)


def test_pad_batch():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=9, length=5, side="right")
    np.testing.assert_array_equal(ids, [[5, 6, 7, 9, 9], [8, 9, 9, 9, 9]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"id_lists": [[1, 2, 3], [4]], "length": 2},
            "prompt 0 has 3 tokens, longer than length=2",
        ),
        ({"id_lists": [[1]], "side": "middle"}, "side must be 'left' or 'right', got 'middle'"),
        ({"id_lists": []}, "empty batch"),
        ({"id_lists": [[1], []]}, "prompt 1 is empty"),
    ],
)
def test_pad_batch_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pad_batch(pad_id=0, **kwargs)


# Contents with surrounding whitespace, blank lines, tags (rendered with Jinja), non-ASCII.
QUESTIONS = [
    "What colour is the square?",
    " both ends \n",
    "a\n\nb",
    "ünïcödé ✓ 3+4",
    "<b>x</b>",
    "",
]
ANSWERS = ["Look.\n\nCount: 3.\n\nAnswer: B", "\n lead", "trail \n\n", "x</think>y", ""]


def _chat(question, answer):
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    return [user] if answer is None else [user, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize("strip", [False, True])
def test_image_chat_template_is_build_prompt(tokenizer_dir, strip):
    tokenizer = load_tokenizer(tokenizer_dir)
    if strip:  # a template that edits contents cannot be spliced: every prompt is rendered
        template = tokenizer.chat_template.replace("item['text']", "item['text'] | trim")
        assert template != tokenizer.chat_template
        tokenizer.chat_template = template
    chat = ImageChatTemplate(tokenizer, merge_size=2)
    assert (chat._pieces is None) == strip
    assert chat._expand_ids  # the image token is an added special token
    chats, want_ids = [], []
    for q in QUESTIONS:
        for a in (None, *ANSWERS):
            grid = np.array([[1, 4, 6]]) if len(chats) % 2 else np.array([[1, 2, 2]])
            ids, text = build_prompt(tokenizer, _chat(q, a), grid, add_generation_prompt=a is None)
            assert chat.render(q, grid, a) == text, (q, a)
            chats.append((q, grid, a))
            want_ids.append(ids)
    assert chat.encode(chats) == want_ids
    # Generation prompts are now remembered by question: the same ids again, and at
    # another image size.
    assert set(chat._prompts) == set(QUESTIONS)
    assert chat.encode(chats) == want_ids
    other = np.array([[1, 6, 4]])
    prompts = [(q, other, None) for q in QUESTIONS]
    want = [
        build_prompt(tokenizer, _chat(q, None), g, add_generation_prompt=True)[0]
        for q, g, _ in prompts
    ]
    assert chat.encode(prompts) == want
    chat._expand_ids = False  # the expanded texts' tokenisation: the same ids
    assert chat.encode(chats) == want_ids


def test_image_chat_template_split_image_token(tokenizer_dir):
    """A tokenizer that splits the image token: ids are not repeated, and `encode` raises
    `build_prompt`'s error."""
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.split_special_tokens = True
    tokenizer.backend_tokenizer.encode_special_tokens = True
    chat = ImageChatTemplate(tokenizer, merge_size=2)
    assert not chat._expand_ids
    with pytest.raises(ValueError, match="the tokenizer split <\\|image_pad\\|>"):
        chat.encode([("Q?", np.array([[1, 2, 2]]), None)])


def test_image_chat_template_bad_input(tokenizer):
    no_template = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="has no chat template"):
        ImageChatTemplate(no_template)
    chat = ImageChatTemplate(tokenizer)
    with pytest.raises(ValueError, match="videos are not supported"):
        chat.render("<|video_pad|>", np.array([[1, 2, 2]]))
    with pytest.raises(ValueError, match="2 image placeholders"):
        chat.render("and <|image_pad|>", np.array([[1, 2, 2]]))
