"""Built-in synthetic visual reasoning data: images that must be read, multi-step answers.

Every example is a pure function of ``(cfg.seed, split, index)``: a stable SHA-256 hash of
``f"{seed}/{split}/{index}"`` seeds a `np.random.default_rng`, so examples can be made in any
order, on any host, and the splits draw from disjoint seeds. Pure Python + NumPy + PIL.

Families (the answer always needs what is drawn, never the question alone):

* ``count``: coloured circles, squares and triangles; count one to three (colour, kind)
  types and add the counts.
* ``bars``: a bar chart with unit grid lines; pick the tallest bar (multiple choice),
  tallest minus shortest, or two bars added minus a third.
* ``digits``: digits drawn in boxes (PIL's built-in font); add them, or multiply the first
  two and add the third.
* ``position``: shapes on both sides of a horizontal line; count shapes above it, the
  shapes of one colour above it, or above minus below.

Difficulty 1..3 adds objects, terms and reasoning steps. Reference chains are 3-8 steps
joined by `steps.join_steps`: what is seen, each arithmetic or comparison step, then
``"Answer: X"`` (the format `grading.extract_answer` reads), X being the number or, for a
choice, the chosen option's text (graded against its letter).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import string
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dreamr_jax.data.steps import join_steps

FAMILIES = ("count", "bars", "digits", "position")
SPLITS = ("train", "validation", "test")
KINDS = ("circle", "square", "triangle")
# Exact RGB values (ImageDraw does not antialias shapes), far apart and far from white/black,
# so a reader (or a test) can segment the image by colour.
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 190, 0),
    "purple": (140, 40, 170),
    "orange": (245, 120, 0),
}
SHAPE_COLORS = ("red", "green", "blue", "yellow")
BACKGROUND = (255, 255, 255)
_GRID_GRAY = (200, 200, 200)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What the synthetic generator draws.

    Attributes:
      image_size: side S of the square RGB image in pixels, 64..224.
      seed: dataset seed; with the split and index it fixes every example.
      families: task families to draw from (subset of `FAMILIES`), uniformly.
      max_objects: most shapes in a ``count`` / ``position`` image, 4..16.
      grid: cells per side of the ``count`` / ``position`` shape grid, one shape per cell;
        0 = ``ceil(sqrt(max_objects)) + 1``. Choosing ``image_size / grid`` equal to the
        model's merged patch (16 px for the built-in models) puts each shape in one token.
      min_difficulty: lowest difficulty level drawn, 1..3.
      max_difficulty: highest difficulty level drawn, min_difficulty..3.
    """

    image_size: int = 96
    seed: int = 0
    families: tuple[str, ...] = FAMILIES
    max_objects: int = 9
    grid: int = 0
    min_difficulty: int = 1
    max_difficulty: int = 3

    def validate(self) -> SyntheticConfig:
        """Returns self; raises ValueError naming the bad field."""
        if not isinstance(self.image_size, int) or not 64 <= self.image_size <= 224:
            raise ValueError(f"image_size={self.image_size!r} must be an int in 64..224.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an int >= 0.")
        fams = self.families
        if not isinstance(fams, tuple) or not fams or any(f not in FAMILIES for f in fams):
            raise ValueError(f"families={fams!r} must be a non-empty tuple from {FAMILIES}.")
        if not isinstance(self.max_objects, int) or not 4 <= self.max_objects <= 16:
            raise ValueError(f"max_objects={self.max_objects!r} must be an int in 4..16.")
        if not isinstance(self.grid, int) or self.grid < 0:
            raise ValueError(f"grid={self.grid!r} must be an int >= 0 (0 = automatic).")
        if self.grid and self.grid**2 <= self.max_objects:
            raise ValueError(
                f"grid={self.grid} has {self.grid**2} cells: it needs more than "
                f"max_objects={self.max_objects}; raise grid or lower max_objects."
            )
        if self.grid and self.image_size // self.grid < 12:
            raise ValueError(
                f"grid={self.grid} makes {self.image_size // self.grid}-px cells in a "
                f"{self.image_size}-px image; cells need >= 12 px: lower grid or raise image_size."
            )
        if self.min_difficulty not in (1, 2, 3):
            raise ValueError(f"min_difficulty={self.min_difficulty!r} must be 1, 2 or 3.")
        if self.max_difficulty not in (1, 2, 3) or self.max_difficulty < self.min_difficulty:
            raise ValueError(
                f"max_difficulty={self.max_difficulty!r} must be in min_difficulty..3."
            )
        return self


@dataclasses.dataclass(frozen=True)
class Example:
    """One synthetic example.

    Attributes:
      id: unique within (seed, split): ``"{split}-{seed}-{index}"``.
      image: ``[S, S, 3]`` uint8 RGB.
      question: the prompt text (options included for choice questions).
      answer: gold answer: a number, or the option letter for ``"choice"``.
      answer_type: ``"number"`` or ``"choice"``.
      choices: option texts in letter order, or ``()``.
      steps: 3-8 reference steps; the last is exactly ``"Answer: X"``, X the answer or, for
        a choice, the text of the chosen option.
      family: one of `FAMILIES`.
      difficulty: 1..3.
    """

    id: str
    image: np.ndarray
    question: str
    answer: str
    answer_type: str
    choices: tuple[str, ...]
    steps: tuple[str, ...]
    family: str
    difficulty: int


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _plural(kind: str) -> str:
    return kind + "s"


# --- drawing -------------------------------------------------------------------------------


def _cells(rng: np.random.Generator, n: int, rows: range, grid: int) -> list[tuple[int, int]]:
    """n distinct (row, col) grid cells among `rows`, in random order."""
    all_cells = [(r, c) for r in rows for c in range(grid)]
    pick = rng.choice(len(all_cells), size=n, replace=False)
    return [all_cells[i] for i in pick]


def _draw_shape(draw, rng, cell, cell_px, kind, color) -> None:
    """Draws one shape inside its grid cell: cells never overlap, so shapes never touch."""
    size = int(cell_px * 0.62)
    slack = cell_px - size - 4  # >= 2 px from every cell edge (and from the position line)
    x0 = cell[1] * cell_px + 2 + int(rng.integers(0, slack + 1))
    y0 = cell[0] * cell_px + 2 + int(rng.integers(0, slack + 1))
    x1, y1 = x0 + size - 1, y0 + size - 1
    rgb = COLORS[color]
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=rgb)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=rgb)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=rgb)


def _grid(cfg: SyntheticConfig) -> tuple[int, int]:
    """(cells per side, cell size in px): room for max_objects with spare cells."""
    grid = cfg.grid or math.ceil(math.sqrt(cfg.max_objects)) + 1
    return grid, cfg.image_size // grid


def _canvas(cfg: SyntheticConfig):
    image = Image.new("RGB", (cfg.image_size, cfg.image_size), BACKGROUND)
    return image, ImageDraw.Draw(image)


# --- families ------------------------------------------------------------------------------


def _count(rng, cfg, difficulty):
    types = [(c, k) for c in SHAPE_COLORS for k in KINDS]
    picked = [types[i] for i in rng.choice(len(types), size=difficulty, replace=False)]
    others = [t for t in types if t not in picked]
    grid, cell_px = _grid(cfg)
    n = int(rng.integers(max(3, cfg.max_objects // 2), cfg.max_objects + 1))
    objects = [
        picked[rng.integers(len(picked))]
        if rng.random() < 0.6
        else others[rng.integers(len(others))]
        for _ in range(n)
    ]
    image, draw = _canvas(cfg)
    for cell, (color, kind) in zip(_cells(rng, n, range(grid), grid), objects, strict=True):
        _draw_shape(draw, rng, cell, cell_px, kind, color)
    counts = [objects.count(t) for t in picked]
    names = [f"{c} {_plural(k)}" for c, k in picked]
    total = sum(counts)
    if difficulty == 1:
        question = f"How many {names[0]} are in the image?"
    else:
        question = f"How many {' plus '.join(names)} are in the image in total?"
    steps = [f"I see {n} shapes in the image."]
    steps += [f"Counting the {nm}: there are {ct}." for nm, ct in zip(names, counts, strict=True)]
    running = counts[0]
    for ct in counts[1:]:
        steps.append(f"Adding: {running} + {ct} = {running + ct}.")
        running += ct
    if difficulty == 1:
        steps.append(f"So the number of {names[0]} is {total}.")
    return image, question, str(total), (), steps


def _bars(rng, cfg, difficulty):
    n = difficulty + 2
    colors = [list(COLORS)[i] for i in rng.choice(len(COLORS), size=n, replace=False)]
    heights = [int(h) + 1 for h in rng.choice(8, size=n, replace=False)]  # distinct, 1..8
    s = cfg.image_size
    image, draw = _canvas(cfg)
    base, top, left = s - 6, 6, 6
    unit = (base - top) / 8
    for u in range(9):  # unit grid lines so heights can be read off
        y = round(base - u * unit)
        draw.line((left, y, s - 4, y), fill=_GRID_GRAY if u else (0, 0, 0))
    slot = (s - 4 - left) / n
    for i, (color, h) in enumerate(zip(colors, heights, strict=True)):
        x0 = round(left + i * slot + slot * 0.2)
        x1 = round(left + (i + 1) * slot - slot * 0.2)
        draw.rectangle((x0, round(base - h * unit), x1, base - 1), fill=COLORS[color])
    seen = [
        f"The chart has {n} bars.",
        "Reading the heights: "
        + ", ".join(f"{c} is {h}" for c, h in zip(colors, heights, strict=True))
        + ".",
    ]
    hmax, hmin = max(heights), min(heights)
    tallest, shortest = colors[heights.index(hmax)], colors[heights.index(hmin)]
    if difficulty == 1:
        order = [colors[i] for i in rng.permutation(n)]
        letters = string.ascii_uppercase[:n]
        opts = " ".join(f"({ch}) {c}" for ch, c in zip(letters, order, strict=True))
        letter = letters[order.index(tallest)]
        question = f"Which bar in the chart is the tallest? Options: {opts}"
        steps = seen + [f"The largest height is {hmax}, the {tallest} bar."]
        return image, question, letter, tuple(order), steps
    if difficulty == 2:
        question = "How much taller is the tallest bar than the shortest bar?"
        steps = seen + [
            f"The tallest bar is {tallest} with height {hmax}.",
            f"The shortest bar is {shortest} with height {hmin}.",
            f"Subtracting: {hmax} - {hmin} = {hmax - hmin}.",
        ]
        return image, question, str(hmax - hmin), (), steps
    (a, b, c), (ha, hb, hc) = colors[:3], heights[:3]
    question = f"What is the height of the {a} bar plus the {b} bar, minus the {c} bar?"
    steps = seen + [
        f"Adding: {ha} + {hb} = {ha + hb}.",
        f"Subtracting: {ha + hb} - {hc} = {ha + hb - hc}.",
    ]
    return image, question, str(ha + hb - hc), (), steps


def _digits(rng, cfg, difficulty):
    n = 2 if difficulty == 1 else 3
    digits = [int(d) for d in rng.integers(1, 10, size=n)]
    s = cfg.image_size
    image, draw = _canvas(cfg)
    font = ImageFont.load_default(size=max(12, s // 4))
    box = s // (n + 1)
    gap = (s - n * box) / (n + 1)
    y0 = int(rng.integers(4, s - box - 4))
    for i, d in enumerate(digits):
        x0 = round(gap + i * (box + gap))
        draw.rectangle((x0, y0, x0 + box, y0 + box), outline=(90, 90, 90), width=2)
        draw.text((x0 + box / 2, y0 + box / 2), str(d), fill=(0, 0, 0), font=font, anchor="mm")
    listed = ", ".join(map(str, digits))
    steps = [f"There are {n} digits in boxes; from left to right they are {listed}."]
    if difficulty == 3:
        a, b, c = digits
        question = "Multiply the first two digits (from the left) and add the third digit."
        steps += [f"Multiplying: {a} x {b} = {a * b}.", f"Adding: {a * b} + {c} = {a * b + c}."]
        return image, question, str(a * b + c), (), steps
    question = "What is the sum of the digits shown in the boxes?"
    running = digits[0]
    for d in digits[1:]:
        steps.append(f"Adding: {running} + {d} = {running + d}.")
        running += d
    return image, question, str(running), (), steps


def _position(rng, cfg, difficulty):
    grid, cell_px = _grid(cfg)
    split_row = int(rng.integers(1, grid))  # the line runs between rows split_row-1 and split_row
    n = int(rng.integers(max(3, cfg.max_objects // 2), cfg.max_objects + 1))
    cells = _cells(rng, n, range(grid), grid)
    colors = [SHAPE_COLORS[i] for i in rng.integers(len(SHAPE_COLORS), size=n)]
    image, draw = _canvas(cfg)
    for cell, color in zip(cells, colors, strict=True):
        _draw_shape(draw, rng, cell, cell_px, KINDS[rng.integers(len(KINDS))], color)
    y = split_row * cell_px
    draw.line((0, y, cfg.image_size - 1, y), fill=(0, 0, 0), width=1)
    above = [c for (r, _), c in zip(cells, colors, strict=True) if r < split_row]
    n_above, n_below = len(above), n - len(above)
    steps = [f"There are {n} shapes and a horizontal black line."]
    if difficulty == 2:
        target = SHAPE_COLORS[rng.integers(len(SHAPE_COLORS))]
        k = above.count(target)
        question = f"How many {target} shapes are above the line?"
        steps += [
            f"Above the line there are {n_above} shapes: " + ", ".join(above or ["none"]) + ".",
            f"Of these, {k} are {target}.",
        ]
        return image, question, str(k), (), steps
    steps += [f"Above the line there are {n_above} shapes.", f"Below the line there are {n_below}."]
    if difficulty == 1:
        question = "How many shapes are above the line?"
        return image, question, str(n_above), (), steps
    question = "How many shapes are above the line minus how many are below it?"
    steps.append(f"Subtracting: {n_above} - {n_below} = {n_above - n_below}.")
    return image, question, str(n_above - n_below), (), steps


_BUILDERS = {"count": _count, "bars": _bars, "digits": _digits, "position": _position}


# --- public API ----------------------------------------------------------------------------


def make_example(index: int, split: str, cfg: SyntheticConfig = SyntheticConfig()) -> Example:
    """The example at `index` of `split`: a pure function of (cfg, split, index).

    Raises:
      ValueError: for an invalid config, an unknown split or a negative index.
    """
    cfg.validate()
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}.")
    if not isinstance(index, int | np.integer) or index < 0:
        raise ValueError(f"index={index!r} must be an int >= 0.")
    rng = _rng(cfg.seed, split, int(index))
    family = cfg.families[int(rng.integers(len(cfg.families)))]
    difficulty = int(rng.integers(cfg.min_difficulty, cfg.max_difficulty + 1))
    image, question, answer, choices, steps = _BUILDERS[family](rng, cfg, difficulty)
    # A choice is answered with the option's text, which the chain has just read off the
    # image; the grader maps it to its letter (copying a letter from the options is a
    # separate skill that small models learn far later).
    final = choices[string.ascii_uppercase.index(answer)] if choices else answer
    return Example(
        id=f"{split}-{cfg.seed}-{int(index)}",
        image=np.asarray(image, dtype=np.uint8),
        question=question,
        answer=answer,
        answer_type="choice" if choices else "number",
        choices=tuple(choices),
        steps=(*steps, f"Answer: {final}"),
        family=family,
        difficulty=difficulty,
    )


def generate(
    n: int, split: str, cfg: SyntheticConfig = SyntheticConfig(), start: int = 0
) -> Iterator[Example]:
    """Examples ``start .. start + n - 1`` of `split`, in order."""
    for index in range(start, start + n):
        yield make_example(index, split, cfg)


def reference_chain(example: Example) -> str:
    """The reference reasoning chain as text (steps joined by the default delimiter)."""
    return join_steps(example.steps)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``[S, S, 3]`` uint8 image; fixed settings, no metadata: deterministic."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def to_record(example: Example) -> dict:
    """A flat dict for the TFDS builder: image as PNG bytes, sequences as lists of str."""
    return {
        "id": example.id,
        "image": encode_png(example.image),
        "question": example.question,
        "answer": example.answer,
        "answer_type": example.answer_type,
        "choices": list(example.choices),
        "steps": list(example.steps),
        "family": example.family,
        "difficulty": example.difficulty,
    }
