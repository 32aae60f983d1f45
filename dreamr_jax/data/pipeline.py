"""grain pipelines turning reasoning examples into static-shape SFT / evaluation batches.

``make_dataset`` reads any random-access source of `synthetic.to_record`-shaped records
(`synthetic_tfds.load`, or a list) and yields dicts of NumPy arrays whose shapes depend on
the config only:

* ``input_ids``, ``attention_mask``, ``loss_mask``: int32 ``[b, t]`` (``t = seq_len``);
  ``loss_mask`` holds each token's loss weight (1 on chain tokens, ``verify_weight`` on a
  verification example's verdict, 0 elsewhere).
  Rows are RIGHT-padded: training needs no generation slot at the end, and right padding
  keeps a prompt's tokens at the same columns whatever its answer length. (Generation uses
  left padding instead: `inference.generate.make_batch`.)
* ``positions``: int32 ``[3, b, t]`` M-RoPE ids from `models.positions.rope_index`; padding
  columns hold 1, as the reference does.
* ``pixel_values``: float32 ``[p, patch_dim]`` (``p = num_patches``), the batch's images
  concatenated in row order, zero rows after ``num_valid_patches``; ``patch_mask`` int32
  ``[p]`` is 1 on real patches. Give the model ``pixel_values[:num_valid_patches]`` (or pass
  ``pad_to=p`` to `models.vision.vision_inputs`).
* ``image_grid_thw``: int32 ``[b, 3]`` (every example has exactly one image).
* ``num_valid_patches``: int32 ``[]``; ``id``: str ``[b]`` example ids (host-side only: drop
  it before `jax.device_put`).

Order of operations (grain 0.2.18): ``range(len(source)) -> [shard_index::shard_count] ->
shuffle -> repeat -> map_with_index(epoch) -> batch -> map(read the records) ->
map(TokenizeBatch) -> to_iter_dataset -> [mp_prefetch]`` (the read keeps up to
``cache_records`` records in memory for later epochs): indices are shuffled and batched,
the same order as over ``MapDataset.source(source)``, and the same iterator
states. Slicing before shuffling makes host shards disjoint and together cover the source;
``repeat`` reseeds the shuffle each epoch, and each index carries its epoch so that every
pass draws new verification examples (`row_rng`). Batching by index (before ``to_iter_dataset``)
makes batches independent of ``worker_count``: ``mp_prefetch`` gives each worker a strided
slice of what comes before ``to_iter_dataset``, so batching after it would batch within
each worker's slice. `TokenizeBatch` makes a batch's rows together (one tokenizer call,
one array operation for the images) and gives exactly `collate` of `TokenizeExample.map`'s
rows, the per-example definition. With ``skip_overlong`` the order is ``map(read) ->
map(TokenizeExample) -> filter -> to_iter_dataset -> batch(collate)`` instead (a dropped
example must not leave a hole), and batches then depend on ``worker_count``.

The iterator's ``get_state()`` is a small JSON-serialisable dict; `data.iterator_state`
saves and restores it with the training checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from dreamr_jax.data import verification
from dreamr_jax.data.steps import StepConfig, join_steps
from dreamr_jax.data.synthetic_tfds import as_record
from dreamr_jax.models.positions import rope_index
from dreamr_jax.processing.image import ImageProcessorConfig, preprocess_batch, preprocess_images
from dreamr_jax.processing.prompt import DEFAULT_IMAGE_TOKEN, ImageChatTemplate, build_prompt
from dreamr_jax.spec.verify import verification_suffix

# A row's role when `PipelineConfig.verify_pairs` assigns it (else the row draws its own).
ROLES = ("chain", "reference", "corrupted")
_VISION_START = "<|vision_start|>"
_END_OF_TURN = "<|im_end|>"


class ExampleTooLong(ValueError):
    """An example needs more tokens (or patches) than the batch's static shape holds."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How examples become batches.

    Attributes:
      batch_size: rows per batch b (per host, after sharding).
      seq_len: static token length t of every row; longer examples raise `ExampleTooLong`
        (or are dropped when ``skip_overlong``).
      num_patches: static patch count p per batch; must be a multiple of merge_size**2 and
        hold the patches of b images.
      shuffle: shuffle examples (with ``seed``; reshuffled each epoch).
      seed: shuffle seed; the same seed gives the same order on every run.
      num_epochs: passes over the data; None repeats forever (training).
      worker_count: grain worker processes; 0 processes in the calling process.
      drop_remainder: drop a last, smaller batch so every batch has exactly b rows (must be
        True: shapes are static; a final partial batch is not produced).
      skip_overlong: drop over-long examples with a logged warning instead of raising.
      step_delimiter: text joining the reference steps in the assistant answer.
      read_threads: grain read threads. Each element is a whole batch, so a few suffice;
        grain's default (16 threads, 500 prefetched) starves the training thread of the
        GIL (bench/data.py: 3.9x -> 16.8x the target's consumption rate).
      prefetch_batches: batches grain reads ahead.
      verify_fraction: share of examples turned into verification examples
        (`data.verification`: a reference or corrupted step, the verifier's question and
        the verdict word as the only trained token); 0 for plain chains.
      verify_weight: loss weight of a verification example's one trained token (the
        ``loss_mask`` value there; chain tokens weigh 1). A chain trains tens of tokens, so
        at weight 1 the verifier's task is a sliver of the loss and stays unlearned.
      verify_pairs: make verification examples in contrast pairs: rows ``2j`` and ``2j+1``
        of a batch are, with probability ``verify_fraction``, one record's same step once as
        written and once corrupted (in random order), else two chain rows. Two rows that
        differ only in the candidate step make the verdict's gradient the difference the
        verifier must see: on the demo target, 800 verification-only steps of pairs reached
        74% verdict accuracy on held-out steps, independent rows 62%. The second record of a
        verification pair is not read that epoch. Needs an even ``batch_size`` and
        ``skip_overlong=False``.
      verify_question: the verifier's question (must match the engine's `VerifierConfig`).
      verify_words: the (positive, negative) verdict words; their first tokens are trained.
      cache_records: keep up to this many records in host memory, decoded, after their
        first read (big_vision's ``cache_raw``); later epochs skip the record parsing and
        PNG decoding, a third or more of a batch's work (bench/data.py). Costs about the
        decoded images' bytes (the demo's 1,024 64 px records: 12.6 MB); each worker
        process holds its own. 0 caches nothing. Batches are the same either way.
    """

    batch_size: int = 8
    seq_len: int = 1024
    num_patches: int = 2048
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None
    worker_count: int = 0
    drop_remainder: bool = True
    skip_overlong: bool = False
    step_delimiter: str = "\n\n"
    read_threads: int = 2
    prefetch_batches: int = 8
    verify_fraction: float = 0.0
    verify_weight: int = 1
    verify_pairs: bool = False
    verify_question: str = "Is the last step correct? Answer Yes or No."
    verify_words: tuple[str, str] = ("Yes", "No")
    cache_records: int = 0

    def validate(self) -> PipelineConfig:
        """Returns self; raises ValueError naming the bad field."""
        for name in ("batch_size", "seq_len", "num_patches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an int >= 0.")
        if self.num_epochs is not None and (
            not isinstance(self.num_epochs, int) or self.num_epochs < 1
        ):
            raise ValueError(f"num_epochs={self.num_epochs!r} must be None or an int >= 1.")
        if not isinstance(self.worker_count, int) or self.worker_count < 0:
            raise ValueError(f"worker_count={self.worker_count!r} must be an int >= 0.")
        if self.drop_remainder is not True:
            raise ValueError(
                f"drop_remainder={self.drop_remainder!r} must be True: batches have static shapes."
            )
        if not isinstance(self.step_delimiter, str) or not self.step_delimiter:
            raise ValueError(f"step_delimiter={self.step_delimiter!r} must be a non-empty string.")
        for name in ("read_threads", "prefetch_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1.")
        c = self.cache_records
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise ValueError(f"cache_records={c!r} must be an int >= 0 (0: no cache).")
        if not 0.0 <= self.verify_fraction <= 1.0:
            raise ValueError(f"verify_fraction={self.verify_fraction!r} must be in [0, 1].")
        w = self.verify_weight
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise ValueError(f"verify_weight={w!r} must be an int >= 1.")
        if not isinstance(self.verify_pairs, bool):
            raise ValueError(f"verify_pairs={self.verify_pairs!r} must be True or False.")
        if self.verify_pairs and self.batch_size % 2:
            raise ValueError(
                f"verify_pairs=True needs an even batch_size (rows pair up), not {self.batch_size}."
            )
        if self.verify_pairs and self.skip_overlong:
            raise ValueError(
                "verify_pairs=True needs skip_overlong=False: skipping rows would split pairs."
            )
        if len(self.verify_words) != 2 or self.verify_words[0] == self.verify_words[1]:
            raise ValueError(f"verify_words={self.verify_words!r} must be two different words.")
        return self


def row_rng(seed: int, example_id: str, epoch: int) -> np.random.Generator:
    """The generator that makes example ``example_id``'s row in pass ``epoch`` over the data:
    whether it is a verification example, and which step and candidate it judges. The epoch
    is part of the key, so each pass draws new verification examples instead of repeating
    the first pass's (a target that sees one fixed corruption per example memorises it)."""
    return np.random.default_rng([seed, zlib.crc32(example_id.encode()), epoch])


def _token_id(tokenizer, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"the tokenizer has no {token} token; is it a Qwen-VL tokenizer?")
    return int(tid)


class TokenizeExample(grain.transforms.Map):
    """One record -> fixed-length token rows, M-RoPE ids and its image's patches.

    The chat is ``user: [image, question]``, ``assistant: join_steps(steps)``. ``loss_mask``
    is 1 from the first answer token through the assistant's end-of-turn token (so the model
    learns to stop), 0 on the prompt, the newline after end-of-turn and padding.
    """

    def __init__(self, cfg: PipelineConfig, tokenizer, image_cfg: ImageProcessorConfig):
        self.cfg, self.tokenizer, self.image_cfg = cfg, tokenizer, image_cfg
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.end_id = _token_id(tokenizer, _END_OF_TURN)
        self.suffix = verification_suffix(tokenizer, cfg.verify_question)
        self.verdict_ids = [
            tokenizer.encode(w, add_special_tokens=False)[0] for w in cfg.verify_words
        ]
        # rope_index reads only these fields of a ModelConfig; taking them from the tokenizer
        # and image config keeps prompt and positions consistent by construction.
        self.rope_cfg = types.SimpleNamespace(
            vision=types.SimpleNamespace(spatial_merge_size=image_cfg.merge_size),
            vision_start_token_id=_token_id(tokenizer, _VISION_START),
            image_token_id=_token_id(
                tokenizer, getattr(tokenizer, "image_token", None) or DEFAULT_IMAGE_TOKEN
            ),
        )

    def plan(self, rec: Mapping, epoch: int, role: str | None) -> tuple[int, str, bool] | None:
        """What ``rec``'s row judges: None for a chain row, else ``(k, candidate, correct)``.

        ``role`` is None to draw it (a verification example with probability
        ``verify_fraction``), or one of `ROLES`, set by `verify_pairs`' pairing. A record
        with a ``draft_step`` ``(k, step, right)`` (`training.refine`) pairs the reference
        step k with the draft's, labelled ``right``; otherwise a pair's second step is a
        synthetic corruption.
        """
        if role is None:
            if not self.cfg.verify_fraction:  # chains only: no draws (the draft's SFT)
                return None
            rng = row_rng(self.cfg.seed, rec["id"], epoch)
            if not rng.random() < self.cfg.verify_fraction:
                return None
            return verification.choose(rec["steps"], rng)
        if role not in ROLES:
            raise ValueError(f"role={role!r} must be None or one of {ROLES}.")
        if role == "chain":
            return None
        draft = rec.get("draft_step")
        if draft is not None:
            k, step, right = draft
            return (k, rec["steps"][k], True) if role == "reference" else (k, step, right)
        pair = verification.choose_pair(rec["steps"], row_rng(self.cfg.seed, rec["id"], epoch))
        if pair is None:  # no step of this record can be corrupted
            return None
        k, wrong = pair
        return (k, rec["steps"][k], True) if role == "reference" else (k, wrong, False)

    def _verification(
        self, rec: Mapping, prompt: list[int], choice: tuple[int, str, bool]
    ) -> tuple[list[int], int, int]:
        """A verification example's ids and the span of its one trained token."""
        k, candidate, correct = choice
        ids = verification.verification_ids(
            prompt,
            rec["steps"],
            k,
            candidate,
            tokenizer=self.tokenizer,
            delimiter=self.cfg.step_delimiter,
            end_id=self.end_id,
            suffix=self.suffix,
            verdict_id=self.verdict_ids[0 if correct else 1],
        )
        return ids, len(ids) - 1, len(ids)

    def _tokenize(
        self, rec: Mapping, epoch: int, role: str | None
    ) -> tuple[list[int], int, int, int, np.ndarray, np.ndarray]:
        """``(ids, first trained index, end of trained span, its weight, pixels, grid)``."""
        pixels, grid = preprocess_images(rec["image"], self.image_cfg)
        user = {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": rec["question"]}],
        }
        merge = self.image_cfg.merge_size
        prompt, _ = build_prompt(self.tokenizer, [user], grid, merge_size=merge)
        choice = self.plan(rec, epoch, role)
        if choice is not None:
            ids, start, stop = self._verification(rec, prompt, choice)
            return ids, start, stop, self.cfg.verify_weight, pixels, grid
        answer = join_steps(rec["steps"], StepConfig(delimiter=self.cfg.step_delimiter))
        full, _ = build_prompt(
            self.tokenizer,
            [user, {"role": "assistant", "content": answer}],
            grid,
            merge_size=merge,
            add_generation_prompt=False,
        )
        if full[: len(prompt)] != prompt:
            raise ValueError(
                f"example {rec['id']!r}: the chat template's generation prompt is not a prefix of "
                "the rendered conversation, so answer tokens cannot be located."
            )
        ends = [i for i in range(len(prompt), len(full)) if full[i] == self.end_id]
        if not ends:
            raise ValueError(f"example {rec['id']!r}: no {_END_OF_TURN} after the answer.")
        return full, len(prompt), ends[0] + 1, 1, pixels, grid

    def map(self, element) -> dict[str, Any] | None:
        """The row of ``element``: a record, ``(record, epoch)`` or ``(record, epoch, role)``
        (a record alone is epoch 0; no role means `plan` draws one)."""
        record, epoch, role = _element(element)
        rec = as_record(record)
        ids, start, stop, weight, pixels, grid = self._tokenize(rec, epoch, role)
        t = self.cfg.seq_len
        problem = None
        if len(ids) > t:
            problem = f"example {rec['id']!r} has {len(ids)} tokens, more than seq_len={t}"
        elif len(pixels) > self.cfg.num_patches:
            problem = (
                f"example {rec['id']!r} has {len(pixels)} image patches, more than "
                f"num_patches={self.cfg.num_patches}"
            )
        if problem:
            if self.cfg.skip_overlong:
                logging.warning("Skipping %s.", problem)
                return None
            raise ExampleTooLong(f"{problem}; raise the limit or set skip_overlong=True.")
        n = len(ids)
        input_ids = np.full((t,), self.pad_id, np.int32)
        input_ids[:n] = ids
        attention_mask = (np.arange(t) < n).astype(np.int32)
        trained = (np.arange(t) >= start) & (np.arange(t) < stop)
        loss_mask = trained.astype(np.int32) * np.int32(weight)
        positions, _ = rope_index(input_ids[None], grid, attention_mask[None], self.rope_cfg)
        return {
            "id": rec["id"],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "loss_mask": loss_mask,
            "positions": positions[:, 0],
            "pixel_values": pixels,
            "image_grid_thw": grid[0].astype(np.int32),
        }


def collate(examples: Sequence[Mapping[str, Any]], num_patches: int) -> dict[str, np.ndarray]:
    """Stacks tokenised examples into one batch with ``num_patches`` padded patch rows.

    Raises:
      ExampleTooLong: the batch's images hold more than ``num_patches`` patches.
    """
    pixels = np.concatenate([e["pixel_values"] for e in examples], axis=0)
    n = pixels.shape[0]
    if n > num_patches:
        raise ExampleTooLong(
            f"the batch of examples {[e['id'] for e in examples]} has {n} image patches, more "
            f"than num_patches={num_patches}; raise num_patches."
        )
    padded = np.zeros((num_patches, pixels.shape[1]), np.float32)
    padded[:n] = pixels
    batch = {
        k: np.stack([e[k] for e in examples])
        for k in ("input_ids", "attention_mask", "loss_mask", "image_grid_thw")
    }
    batch["positions"] = np.stack([e["positions"] for e in examples], axis=1)
    batch["pixel_values"] = padded
    batch["patch_mask"] = (np.arange(num_patches) < n).astype(np.int32)
    batch["num_valid_patches"] = np.asarray(n, np.int32)
    batch["id"] = np.asarray([e["id"] for e in examples])
    return batch


class TokenizeBatch(grain.transforms.Map):
    """b records -> one batch: `collate` of `TokenizeExample.map`'s rows, bit for bit.

    The per-row work is done for the whole batch at once: one `preprocess_batch` call for
    the images (written straight into the padded ``pixel_values``), the chat template
    rendered once (`ImageChatTemplate`), one tokenizer call for every text, and the M-RoPE
    ids of one-image rows as array operations (`_one_image_positions`). A batch this path
    leaves (an overlong row, a prompt the template tokenises differently inside the chat)
    or fails on (bad input) is made by `TokenizeExample`, so every error is the
    reference's, with its message; a failure on a batch the reference makes is a bug of this
    path and is logged (once per instance) with its exception.
    """

    def __init__(self, cfg: PipelineConfig, tokenizer, image_cfg: ImageProcessorConfig):
        self.cfg, self.image_cfg = cfg, image_cfg
        self.example = TokenizeExample(cfg, tokenizer, image_cfg)
        self.chat = ImageChatTemplate(tokenizer, merge_size=image_cfg.merge_size)
        self.reported = False  # a fast-path failure on good input was logged

    def map(self, elements: Sequence) -> dict[str, Any]:
        """The batch of ``elements``, each as `TokenizeExample.map` takes it."""
        try:
            batch, failure = self.fast(elements), None
        except Exception as e:  # bad input: the reference below raises the real error
            batch, failure = None, e
        if batch is not None:
            return batch
        rows = [self.example.map(e) for e in elements]
        if failure is not None and not self.reported:
            self.reported = True
            logging.warning(
                "TokenizeBatch: the batched path failed on a batch the per-example path "
                "makes (%s: %s); such batches are made per example, correct but slower. "
                "This is a bug: please report it.",
                type(failure).__name__,
                failure,
            )
        return collate(rows, self.cfg.num_patches)

    def fast(self, elements: Sequence) -> dict[str, Any] | None:
        """The batch, or None where the reference path must make it (an overlong row)."""
        elements = [_element(e) for e in elements]
        recs = [as_record(r) for r, *_ in elements]
        pixels, grid = preprocess_batch(
            [r["image"] for r in recs], self.image_cfg, pad_to=self.cfg.num_patches
        )
        plans = [
            self.example.plan(rec, e, role)
            for rec, (_, e, role) in zip(recs, elements, strict=True)
        ]
        rows = self.token_rows(recs, plans, grid)
        if rows is None:
            return None
        return self.assemble(recs, rows, pixels, grid)

    def token_rows(self, recs: Sequence[Mapping], plans: Sequence, grid: np.ndarray) -> list | None:
        """Each row's ``(ids, first trained index, end of trained span, weight)``, as
        `TokenizeExample._tokenize` for `TokenizeExample.plan`'s ``plans``; None if a row is
        too long (the reference raises)."""
        cfg, grids = self.cfg, [g[None] for g in grid]
        verify = [p is not None for p in plans]
        chats = [(r["question"], g, None) for r, g in zip(recs, grids, strict=True)]
        chains = [i for i, v in enumerate(verify) if not v]
        delimiter = StepConfig(delimiter=cfg.step_delimiter)
        for i in chains:
            chats.append((recs[i]["question"], grids[i], join_steps(recs[i]["steps"], delimiter)))
        ids = self.chat.encode(chats)
        full = dict(zip(chains, ids[len(recs) :], strict=True))
        rows = []
        for i, (rec, prompt) in enumerate(zip(recs, ids[: len(recs)], strict=True)):
            if verify[i]:
                rows.append((*self.example._verification(rec, prompt, plans[i]), cfg.verify_weight))
                continue
            answer = full[i][len(prompt) :]
            if full[i][: len(prompt)] != prompt or self.example.end_id not in answer:
                return None
            stop = len(prompt) + answer.index(self.example.end_id) + 1
            rows.append((full[i], len(prompt), stop, 1))
        # (preprocess_batch already refused more patches than num_patches)
        return None if max(len(r[0]) for r in rows) > cfg.seq_len else rows

    def assemble(self, recs, rows, pixels: np.ndarray, grid: np.ndarray) -> dict[str, Any]:
        """`collate`'s dict from the rows of `token_rows` and `preprocess_batch`'s output."""
        b, t = len(rows), self.cfg.seq_len
        input_ids = np.full((b, t), self.example.pad_id, np.int32)
        for row, (ids, *_) in zip(input_ids, rows, strict=True):
            row[: len(ids)] = ids
        spans = np.asarray([(len(ids), *span) for ids, *span in rows], np.int64)
        n, start, stop, weight = spans.T[:, :, None]  # each [b, 1]
        columns = np.arange(t)
        attention_mask = (columns < n).astype(np.int32)
        trained = (columns >= start) & (columns < stop)
        loss_mask = trained.astype(np.int32) * weight.astype(np.int32)
        valid = int(grid.prod(axis=1).sum())
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "loss_mask": loss_mask,
            "image_grid_thw": grid.astype(np.int32),
            "positions": _one_image_positions(
                input_ids, attention_mask, grid, self.example.rope_cfg
            ),
            "pixel_values": pixels,
            "patch_mask": (np.arange(self.cfg.num_patches) < valid).astype(np.int32),
            "num_valid_patches": np.asarray(valid, np.int32),
            "id": np.asarray([r["id"] for r in recs]),
        }


def _one_image_positions(input_ids, attention_mask, grid, rope_cfg) -> np.ndarray:
    """`rope_index`'s positions ``[3, b, t]`` for right-padded rows holding one image each
    (``grid`` ``[b, 3]``), as array operations over the batch rather than a loop over rows.

    Rows with text ``[0, s)``, the image's run of ``c`` tokens from ``s`` (right after the
    vision-start token) and text after it get ``j``, ``s + (t, h, w)`` of the token's
    merged patch, and ``j - (s + c) + s + max(t, h, w extents)``; padding holds 1. Any other
    layout goes to `rope_index` itself.
    """
    ids = np.asarray(input_ids)
    b, t = ids.shape
    columns = np.arange(t)[None]
    n = attention_mask.sum(axis=1, keepdims=True)
    m = rope_cfg.vision.spatial_merge_size
    gt, gh, gw = (np.asarray(grid, np.int64) // (1, m, m)).T[:, :, None]  # each [b, 1]
    count = gt * gh * gw
    image = (ids == rope_cfg.image_token_id) & (columns < n)
    s = np.argmax(image, axis=1)[:, None]
    in_image = (columns >= s) & (columns < s + count)
    before = np.take_along_axis(ids, np.maximum(s - 1, 0), axis=1)
    simple = (
        np.array_equal(attention_mask, (columns < n).astype(attention_mask.dtype))
        and (s >= 1).all()
        and (before == rope_cfg.vision_start_token_id).all()
        and (s + count <= n).all()
        and np.array_equal(image, in_image)
    )
    if not simple:
        return rope_index(ids, grid, attention_mask, rope_cfg)[0]
    k = np.where(in_image, columns - s, 0)
    text = np.where(columns < s, columns, columns - count + np.maximum(gt, np.maximum(gh, gw)))
    positions = np.stack([k // (gh * gw), k // gw % gh, k % gw]) + s
    positions = np.where(in_image, positions, text)
    return np.where(columns < n, positions, 1).astype(np.int32)


def _element(element) -> tuple[Mapping, int, str | None]:
    """``(record, epoch, role)`` of a record, ``(record, epoch)`` or ``(record, epoch, role)``."""
    if not isinstance(element, tuple):
        return element, 0, None
    return element if len(element) == 3 else (*element, None)


class _PairUp(grain.transforms.Map):
    """A batch's ``(index, epoch)`` items -> ``(index, epoch, role)``, rows in contrast
    pairs (`PipelineConfig.verify_pairs`)."""

    def __init__(self, seed: int, fraction: float):
        self.seed, self.fraction = seed, fraction

    def map(self, items: list) -> list:
        out = []
        for (a, epoch_a), (b, epoch_b) in zip(items[::2], items[1::2], strict=True):
            rng = np.random.default_rng([self.seed, a, epoch_a, 1])
            if rng.random() < self.fraction:
                first = ("reference", "corrupted")[int(rng.integers(2))]
                second = "corrupted" if first == "reference" else "reference"
                out += [(a, epoch_a, first), (a, epoch_a, second)]
            else:
                out += [(a, epoch_a, "chain"), (b, epoch_b, "chain")]
        return out


class _Epoch(grain.transforms.MapWithIndex):
    """A source index at position ``i`` of the repeated order -> ``(index, i // per_epoch)``."""

    def __init__(self, per_epoch: int):
        self.per_epoch = per_epoch

    def map_with_index(self, i: int, index: int) -> tuple[int, int]:
        return index, i // self.per_epoch


class _Read(grain.transforms.Map):
    """An ``(index, epoch[, role])`` item (or a list of them) -> the same with the record
    in place of the index; the first ``cache_records`` distinct records read are kept
    (`PipelineConfig.cache_records`)."""

    def __init__(self, source: Sequence, cache_records: int = 0):
        self.source, self.cache_records = source, cache_records
        self.cache: dict[int, Any] = {}  # per process: workers fill their own

    def record(self, index: int):
        rec = self.cache.get(index)
        if rec is None:
            rec = self.source[index]
            if len(self.cache) < self.cache_records:  # read threads may both insert: harmless
                self.cache[index] = rec
        return rec

    def map(self, item):
        if isinstance(item, list):  # a verification pair names its record twice: read once
            # (one read per record: array_record's batched read, tfds' `__getitems__`,
            # starts a thread pool per call, which costs more than 16 reads in a row)
            records = {i[0]: self.record(i[0]) for i in item}
            return [(records[i[0]], *i[1:]) for i in item]
        return (self.record(item[0]), *item[1:])


def _is_kept(example) -> bool:
    return example is not None


def make_dataset(
    source: Sequence,
    cfg: PipelineConfig,
    tokenizer,
    image_cfg: ImageProcessorConfig,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.IterDataset:
    """The batch pipeline over this host's shard of ``source`` (see the module docstring).

    Args:
      source: random-access records (``len``, ``[i]``) in `synthetic.to_record`'s shape.
      cfg: batching settings.
      tokenizer: the checkpoint's tokenizer (with chat template; `prompt.load_tokenizer`).
      image_cfg: the checkpoint's image processor settings.
      shard_index, shard_count: this host reads records ``shard_index::shard_count``.

    Returns:
      A `grain.IterDataset`; ``iter(ds)`` is a checkpointable iterator of batches.
    """
    cfg.validate()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count}).")
    unit = image_cfg.merge_size**2
    if cfg.num_patches % unit:
        raise ValueError(
            f"num_patches={cfg.num_patches} must be a multiple of merge_size**2={unit}."
        )
    # Indices, not MapDataset.source(source): the same records in the same order, without
    # grain's source wrapper measuring each record it reads (bench/data.py: 10% faster).
    ds = grain.MapDataset.range(len(source))[shard_index::shard_count]
    if len(ds) < cfg.batch_size:
        raise ValueError(
            f"shard {shard_index}/{shard_count} has {len(ds)} examples, fewer than "
            f"batch_size={cfg.batch_size}: no full batch can be made."
        )
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs).map_with_index(_Epoch(len(ds)))
    read = grain.ReadOptions(
        num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch_batches
    )
    if cfg.skip_overlong:
        # Dropped examples would leave holes in index-based batches: batch after filtering.
        # Then each worker batches its own slice, so batches depend on worker_count.
        it = ds.map(_Read(source, cfg.cache_records)).map(
            TokenizeExample(cfg, tokenizer, image_cfg)
        )
        it = it.filter(_is_kept)
        it = it.to_iter_dataset(read).batch(
            cfg.batch_size,
            drop_remainder=cfg.drop_remainder,
            batch_fn=functools.partial(collate, num_patches=cfg.num_patches),
        )
    else:
        # Batching by index keeps every batch the same whatever worker_count is: workers
        # take whole batches (mp_prefetch slices the dataset right before to_iter_dataset).
        # Records are batched first and tokenised a batch at a time (TokenizeBatch).
        ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder, batch_fn=list)
        if cfg.verify_pairs:
            ds = ds.map(_PairUp(cfg.seed, cfg.verify_fraction))
        ds = ds.map(_Read(source, cfg.cache_records)).map(TokenizeBatch(cfg, tokenizer, image_cfg))
        it = ds.to_iter_dataset(read)
    if cfg.worker_count > 0:
        it = it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(cfg.worker_count))
    return it
