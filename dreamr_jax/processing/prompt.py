"""Prompt building through a checkpoint directory's own tokenizer and chat template.

`build_prompt` reproduces what `Qwen3VLProcessor.__call__` does to text: render the chat with
the tokenizer's template, expand every `<|image_pad|>` into one token per merged patch block of
its image, then tokenize.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dreamr_jax.processing.image import num_image_tokens

DEFAULT_IMAGE_TOKEN = "<|image_pad|>"
DEFAULT_VIDEO_TOKEN = "<|video_pad|>"
# Generation prompts `ImageChatTemplate.encode` keeps tokenised, 4 bytes per token (all
# 32,768 of 300 tokens: 39 MB).
PROMPT_CACHE_SIZE = 1 << 15

# Any one of these makes a directory loadable by `AutoTokenizer` (fast or slow BPE, SentencePiece).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def _read_chat_template(path: Path) -> str | None:
    """Finds a chat template stored beside the tokenizer (processor-level files)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    as_json = path / "chat_template.json"
    if as_json.is_file():
        try:
            template = json.loads(as_json.read_text()).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{as_json} is not a JSON object with a 'chat_template': {e}") from e
        return template if isinstance(template, str) else None
    return None


def load_tokenizer(path: str | os.PathLike) -> Any:
    """Loads a checkpoint's tokenizer with `transformers.AutoTokenizer`, offline.

    If the tokenizer config has no chat template, one from `chat_template.jinja` or the
    processor's `chat_template.json` in the same directory is attached.

    Args:
        path: A checkpoint (or tokenizer) directory.

    Returns:
        A `transformers` tokenizer.

    Raises:
        FileNotFoundError: If the directory or its tokenizer files are missing.
        ValueError: If transformers cannot load the files.
    """
    import transformers  # Heavy import, kept out of module import time.

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer files in {path}: expected one of {', '.join(_TOKENIZER_FILES)} "
            "(plus tokenizer_config.json)"
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"could not load the tokenizer in {path}: {e}") from e
    if not getattr(tokenizer, "chat_template", None):
        template = _read_chat_template(path)
        if template:
            tokenizer.chat_template = template
    return tokenizer


def _refuse_video(tokenizer: Any, text: str) -> None:
    video_token = getattr(tokenizer, "video_token", None) or DEFAULT_VIDEO_TOKEN
    if video_token in text:
        raise ValueError(f"the prompt contains a video ({video_token}); videos are not supported")


def _check_messages(messages: Any):
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(
                f"message {i} must be a dict with 'role' and 'content', got {message!r}"
            )


def expand_image_tokens(text: str, counts: Sequence[int], image_token: str) -> str:
    """Replaces the i-th `image_token` in `text` with `counts[i]` copies of it.

    Args:
        text: Rendered prompt with one `image_token` per image.
        counts: Tokens per image, in order of appearance.
        image_token: The placeholder string, e.g. `<|image_pad|>`.

    Returns:
        The expanded text.
    """
    pieces = text.split(image_token)
    if len(pieces) - 1 != len(counts):
        raise ValueError(
            f"the prompt has {len(pieces) - 1} image placeholders ({image_token}) but "
            f"{len(counts)} images were given"
        )
    out = [pieces[0]]
    for count, piece in zip(counts, pieces[1:], strict=True):
        out.append(image_token * count + piece)
    return "".join(out)


def build_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    image_grid_thw: Any = None,
    *,
    merge_size: int = 2,
    add_generation_prompt: bool = True,
) -> tuple[list[int], str]:
    """Renders a chat with the tokenizer's template and tokenizes it as Qwen3VLProcessor does.

    Args:
        tokenizer: A transformers tokenizer with a chat template (see `load_tokenizer`).
        messages: HF chat messages; content is a string or a list of `{"type": "image"}` and
            `{"type": "text", "text": ...}` items.
        image_grid_thw: int [num_images, 3] from `preprocess_images`, in the order the images
            appear in `messages`; None for a text-only prompt.
        merge_size: Side of the merged patch block (`num_image_tokens`).
        add_generation_prompt: Whether to end with the assistant turn header.

    Returns:
        `(input_ids, text)`: the token ids and the expanded text they encode (each image
        placeholder repeated `t*h*w/merge_size**2` times).

    Raises:
        ValueError: If the tokenizer has no chat template, the messages are malformed, the
            number of image placeholders differs from the number of images, the prompt asks
            for a video, or the tokenizer does not keep the image token whole.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no chat template: load it from a checkpoint "
            "directory that has one (tokenizer_config.json, chat_template.jinja or .json)"
        )
    _check_messages(messages)
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    _refuse_video(tokenizer, text)
    image_token = getattr(tokenizer, "image_token", None) or DEFAULT_IMAGE_TOKEN
    counts = [] if image_grid_thw is None else num_image_tokens(image_grid_thw, merge_size)
    text = expand_image_tokens(text, counts, image_token)
    input_ids = list(tokenizer(text)["input_ids"])
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    if input_ids.count(image_token_id) != sum(counts):
        raise ValueError(
            f"the tokenizer split {image_token} (id {image_token_id}): found "
            f"{input_ids.count(image_token_id)} image tokens, expected {sum(counts)}; is it "
            "registered as a special token?"
        )
    return input_ids, text


def pad_batch(
    id_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    length: int | None = None,
    side: str = "left",
) -> tuple[np.ndarray, np.ndarray]:
    """Pads token id lists into one batch.

    Args:
        id_lists: b non-empty lists of token ids.
        pad_id: Id written into padding positions.
        length: Output length L; the longest prompt's length when None.
        side: "left" (prompts end at the same column, for generation) or "right".

    Returns:
        `(ids, attention_mask)`, both int32 [b, L]; the mask is 1 on real tokens.

    Raises:
        ValueError: On an empty batch or prompt, a bad `side`, or a prompt longer than `length`.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if len(id_lists) == 0:
        raise ValueError("cannot pad an empty batch of prompts")
    lengths = [len(ids) for ids in id_lists]
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"prompt {i} is empty")
    length = max(lengths) if length is None else length
    for i, n in enumerate(lengths):
        if n > length:
            raise ValueError(f"prompt {i} has {n} tokens, longer than length={length}")
    ids_bt = np.full((len(id_lists), length), pad_id, np.int32)
    mask_bt = np.zeros((len(id_lists), length), np.int32)
    for i, (ids, n) in enumerate(zip(id_lists, lengths, strict=True)):
        start = length - n if side == "left" else 0
        ids_bt[i, start : start + n] = np.asarray(ids, np.int32)
        mask_bt[i, start : start + n] = 1
    return ids_bt, mask_bt


class ImageChatTemplate:
    """`build_prompt` for the chat ``user: [image, question]`` (and ``assistant: answer``),
    rendering the chat template once instead of once per prompt.

    The template is rendered with sentinel contents; a prompt is that text with the
    sentinels replaced by the question and answer. That is exact when the template writes
    contents verbatim, which construction checks on probe contents with surrounding
    whitespace and newlines (else every prompt is rendered). Contents holding ``<`` (tags a
    template may parse, e.g. ``</think>``) are always rendered.

    `encode` tokenises each chat with one image token and repeats that token's id, instead
    of cutting every copy out of the expanded text. That is exact when the tokenizer cuts
    the text at the image token (an added special token), so the text around it is
    tokenised the same whatever the count; construction checks it on a probe chat, else
    `encode` tokenises the expanded text. On that path it also remembers the ids of up to
    `PROMPT_CACHE_SIZE` generation prompts by question.

    Args:
        tokenizer: A transformers tokenizer with a chat template.
        merge_size: Side of the merged patch block (`num_image_tokens`).

    Raises:
        ValueError: If the tokenizer has no chat template.
    """

    _PROBES = (
        ("\x00question\x00", "\x00answer\x00"),
        ("Q?", "A."),
        (" \n q \n\n", "\n a\n\n b \n"),
    )

    def __init__(self, tokenizer: Any, merge_size: int = 2):
        self.tokenizer, self.merge_size = tokenizer, merge_size
        self.image_token = getattr(tokenizer, "image_token", None) or DEFAULT_IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self._counts: dict[bytes, list[int]] = {}
        self._prompts: dict[str, np.ndarray] = {}  # question -> prompt ids (one image token)
        self._pieces = self._find_pieces()
        self._expand_ids = self._ids_expand_exactly()

    def _ids_expand_exactly(self) -> bool:
        """Whether tokenising with one image token and repeating its id equals tokenising
        the expanded text, on a probe chat with whitespace around the question and answer."""
        question, answer = self._PROBES[2]
        text = self._jinja(question, answer)
        if text.count(self.image_token) != 1:
            return False
        one, three = self._tokenize([text, expand_image_tokens(text, [3], self.image_token)])
        return one.count(self.image_token_id) == 1 and self._repeat([one], [3]) == [three]

    def _repeat(self, ids: list[list[int]], counts: Sequence[int]) -> list[list[int]]:
        """Each row's (one) image token id repeated ``counts[row]`` times."""
        image, out = self.image_token_id, []
        for row, count in zip(ids, counts, strict=True):
            at = row.index(image)
            out.append(row[:at] + [image] * count + row[at + 1 :])
        return out

    def _find_pieces(self) -> tuple[str, ...] | None:
        """``(p0, p1, f0, f1, f2)``: the prompt is ``p0 Q p1``, the chat ``f0 Q f1 A f2``."""
        question, answer = self._PROBES[0]
        prompt, full = self._jinja(question, None), self._jinja(question, answer)
        if prompt.count(question) != 1 or full.count(question) != 1 or full.count(answer) != 1:
            return None
        f0, rest = full.split(question)
        if answer not in rest:
            return None
        self._pieces = (*prompt.split(question), f0, *rest.split(answer))
        for q, a in self._PROBES[1:]:
            for reply in (None, a):
                if self._splice(q, reply) != self._jinja(q, reply):
                    return None
        return self._pieces

    def _jinja(self, question: str, answer: str | None) -> str:
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        messages = [user] if answer is None else [user, {"role": "assistant", "content": answer}]
        if not getattr(self.tokenizer, "chat_template", None):
            build_prompt(self.tokenizer, messages)  # raises its error
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=answer is None
        )

    def _splice(self, question: str, answer: str | None) -> str:
        p0, p1, f0, f1, f2 = self._pieces
        return p0 + question + p1 if answer is None else f0 + question + f1 + answer + f2

    def render(self, question: str, image_grid_thw: Any, answer: str | None = None) -> str:
        """`build_prompt`'s text for the chat, the generation prompt when ``answer`` is None.

        Args:
            question: The user's text after the image.
            image_grid_thw: int ``[1, 3]``, the image's grid from `preprocess_images`.
            answer: The assistant's reply, or None for the prompt ending in its header.

        Returns:
            The rendered text with the image placeholder expanded, as `build_prompt`.
        """
        return expand_image_tokens(
            self._render(question, answer), self.image_tokens(image_grid_thw), self.image_token
        )

    def _render(self, question: str, answer: str | None) -> str:
        """The chat's text with one image token (`render` before expansion)."""
        spliced = self._pieces is not None and "<" not in question + (answer or "")
        text = self._splice(question, answer) if spliced else self._jinja(question, answer)
        _refuse_video(self.tokenizer, text)
        if text.count(self.image_token) != 1:  # the question or answer holds one
            expand_image_tokens(text, [1], self.image_token)  # raises its error
        return text

    def image_tokens(self, image_grid_thw: Any) -> list[int]:
        """`num_image_tokens`, remembered per grid (a batch's images share a few sizes)."""
        key = np.asarray(image_grid_thw, np.int64).tobytes()
        if key not in self._counts:
            self._counts[key] = num_image_tokens(image_grid_thw, self.merge_size)
        return self._counts[key]

    def encode(self, chats: Sequence[tuple[str, Any, str | None]]) -> list[list[int]]:
        """`build_prompt`'s ids of each ``(question, image_grid_thw, answer)`` chat (as
        `render`'s arguments), in one tokenizer call.

        Raises:
            ValueError: If the tokenizer splits the image token (as `build_prompt` checks),
                or a chat is bad input for `render`.
        """
        chats = list(chats)
        counts = [self.image_tokens(grid) for _, grid, _ in chats]  # one image per chat
        if self._expand_ids:
            # A generation prompt's ids (one image token) depend on its question only: ids
            # tokenised before are reused (a training set's questions recur every epoch).
            rows = [
                self._prompts[q].tolist() if a is None and q in self._prompts else None
                for q, _, a in chats
            ]
            todo = [i for i, row in enumerate(rows) if row is None]
            texts = [self._render(chats[i][0], chats[i][2]) for i in todo]
            ids = self._tokenize(texts) if texts else []
            if all(row.count(self.image_token_id) == 1 for row in ids):
                for i, row in zip(todo, ids, strict=True):
                    rows[i] = row
                    question, _, answer = chats[i]
                    if answer is None and len(self._prompts) < PROMPT_CACHE_SIZE:
                        self._prompts[question] = np.asarray(row, np.int32)
                return self._repeat(rows, [sum(c) for c in counts])
        texts = [self._render(question, answer) for question, _, answer in chats]
        image = self.image_token
        texts = [expand_image_tokens(t, c, image) for t, c in zip(texts, counts, strict=True)]
        ids = self._tokenize(texts)
        for row, count in zip(ids, counts, strict=True):
            want, found = sum(count), row.count(self.image_token_id)
            if found != want:
                raise ValueError(
                    f"the tokenizer split {self.image_token} (id {self.image_token_id}): found "
                    f"{found} image tokens, expected {want}; is it registered as a special token?"
                )
        return ids

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """``tokenizer(texts)["input_ids"]``. For a fast tokenizer whose batch call would only
        run its Rust tokenizer (no truncation, padding or special-token splitting set, the
        base class's batch encoding) that tokenizer is called directly, without the
        character offsets transformers computes and drops here: 30% less time."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        direct = getattr(backend, "encode_batch_fast", None) is not None and (
            type(self.tokenizer)._batch_encode_plus is _fast_batch_encode_plus()
            and backend.truncation is None
            and backend.padding is None
            and backend.encode_special_tokens
            == getattr(self.tokenizer, "split_special_tokens", None)
        )
        if direct:
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=True)]
        return [list(x) for x in self.tokenizer(texts)["input_ids"]]


def _fast_batch_encode_plus():
    import transformers  # Heavy import, kept out of module import time.

    return transformers.PreTrainedTokenizerFast._batch_encode_plus
