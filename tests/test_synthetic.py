"""Synthetic visual reasoning data: determinism, reference chains, image content, bad configs."""

from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np
import pytest

from dreamr_jax.data import grading
from dreamr_jax.data.steps import join_steps, split_steps
from dreamr_jax.data.synthetic import (
    COLORS,
    FAMILIES,
    KINDS,
    SyntheticConfig,
    generate,
    make_example,
    reference_chain,
    to_record,
)

CFG = SyntheticConfig()


@pytest.fixture(scope="module")
def examples():
    return list(generate(200, "train", CFG))


def test_same_seed_gives_identical_records():
    a = [to_record(ex) for ex in generate(50, "train", CFG)]
    b = [to_record(make_example(i, "train", SyntheticConfig())) for i in range(50)]
    assert a == b
    assert all(isinstance(r["image"], bytes) and r["image"][:4] == b"\x89PNG" for r in a)


@pytest.mark.parametrize(
    "other", [dict(split="validation"), dict(split="test"), dict(cfg=SyntheticConfig(seed=1))]
)
def test_other_seed_or_split_differs(other):
    base = [to_record(ex) for ex in generate(20, "train", CFG)]
    alt = [to_record(ex) for ex in generate(20, other.get("split", "train"), other.get("cfg", CFG))]
    same_images = sum(x["image"] == y["image"] for x, y in zip(base, alt, strict=True))
    assert same_images == 0
    assert {r["id"] for r in base}.isdisjoint(r["id"] for r in alt)


def test_example_fields(examples):
    assert {ex.family for ex in examples} == set(FAMILIES)
    assert {ex.difficulty for ex in examples} == {1, 2, 3}
    for ex in examples:
        assert ex.image.dtype == np.uint8 and ex.image.shape == (96, 96, 3)
        assert ex.answer_type in ("number", "choice")
        assert bool(ex.choices) == (ex.answer_type == "choice")


def test_reference_chains_grade_correct_and_round_trip(examples):
    for ex in examples:
        assert 3 <= len(ex.steps) <= 8, ex.steps
        # A choice is answered with its option's text (graded against the letter).
        final = ex.choices["ABCDEFGH".index(ex.answer)] if ex.choices else ex.answer
        assert ex.steps[-1] == f"Answer: {final}"
        assert split_steps(join_steps(ex.steps)) == list(ex.steps)
        chain = reference_chain(ex)
        choices = ex.choices or None
        assert grading.grade(chain, ex.answer, answer_type=ex.answer_type, choices=choices)
        wrong = chain.rsplit("Answer:", 1)[0] + "Answer: " + _wrong_answer(ex)
        assert not grading.grade(wrong, ex.answer, answer_type=ex.answer_type, choices=choices)
        if ex.choices:  # the letter itself grades too, another option's text does not
            letter = chain.rsplit("Answer:", 1)[0] + "Answer: " + ex.answer
            assert grading.grade(letter, ex.answer, answer_type="choice", choices=choices)
            other = next(c for c in ex.choices if c != final)
            text = chain.rsplit("Answer:", 1)[0] + "Answer: " + other
            assert not grading.grade(text, ex.answer, answer_type="choice", choices=choices)


def _wrong_answer(ex) -> str:
    if ex.answer_type == "choice":
        return next(ch for ch in "ABCDEFGH" if ch != ex.answer)
    return str(int(ex.answer) + 1)


def test_question_does_not_determine_answer(examples):
    by_question = collections.defaultdict(set)
    by_family = collections.defaultdict(set)
    for ex in examples:
        by_question[ex.family, ex.question].add(ex.answer)
        by_family[ex.family].add(ex.answer)
    repeated = {k: v for k, v in by_question.items() if k[0] != "count"}
    # Families with fixed question templates must vary their answer under each template.
    assert any(len(v) > 1 for v in repeated.values())
    for (family, question), answers in by_question.items():
        count = sum(ex.question == question for ex in examples)
        if count >= 4:
            assert len(answers) > 1, (family, question)
    assert all(len(v) >= 3 for v in by_family.values())


def _components(image: np.ndarray, rgb) -> list[tuple[int, int]]:
    """(pixel count, bounding-box area) of each 4-connected component of colour `rgb`."""
    mask = np.all(image == np.asarray(rgb, np.uint8), axis=-1)
    seen = np.zeros_like(mask)
    found = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]:
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        ys, xs = np.asarray(pixels).T
        found.append((len(pixels), (np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    return found


def _kind(n_pixels: int, box_area: int) -> str:
    fill = n_pixels / box_area
    return "square" if fill > 0.95 else "circle" if fill > 0.68 else "triangle"


def test_count_answers_are_read_from_pixels():
    cfg = SyntheticConfig(families=("count",), seed=3)
    checked = 0
    for ex in generate(20, "test", cfg):
        asked = re.findall(rf"({'|'.join(COLORS)}) ({'|'.join(KINDS)})s", ex.question)
        assert asked and len(asked) == ex.difficulty
        total = 0
        for color, kind in asked:
            comps = _components(ex.image, COLORS[color])
            assert all(n > 20 for n, _ in comps)  # whole shapes, no stray pixels
            total += sum(_kind(n, a) == kind for n, a in comps)
        assert str(total) == ex.answer, (ex.question, ex.answer, total)
        checked += 1
    assert checked == 20


def test_bar_readings_match_pixels():
    cfg = SyntheticConfig(families=("bars",), seed=5)
    for ex in generate(20, "test", cfg):
        (n,) = re.fullmatch(r"The chart has (\d+) bars\.", ex.steps[0]).groups()
        readings = re.findall(r"(\w+) is (\d+)", ex.steps[1].removeprefix("Reading the heights: "))
        assert len(readings) == int(n), ex.steps
        unit = (ex.image.shape[0] - 12) / 8  # 8 grid units between the chart's top and base
        for color, height in readings:
            rows = np.flatnonzero(np.all(ex.image == COLORS[color], axis=-1).any(axis=1))
            assert round((rows.max() - rows.min() + 1) / unit) == int(height), (color, ex.steps)


def test_image_size_is_respected():
    for size in (64, 224):
        cfg = SyntheticConfig(image_size=size, max_objects=16)
        for ex in generate(12, "validation", cfg):
            assert ex.image.shape == (size, size, 3)
            assert grading.grade(
                reference_chain(ex),
                ex.answer,
                answer_type=ex.answer_type,
                choices=ex.choices or None,
            )


@pytest.mark.parametrize(
    "field,value",
    [
        ("image_size", 32),
        ("image_size", 300),
        ("seed", -1),
        ("families", ("count", "nope")),
        ("families", ()),
        ("max_objects", 2),
        ("min_difficulty", 0),
        ("max_difficulty", 4),
    ],
)
def test_invalid_config_names_field(field, value):
    cfg = dataclasses.replace(CFG, **{field: value})
    with pytest.raises(ValueError, match=field):
        cfg.validate()
    with pytest.raises(ValueError, match=field):
        make_example(0, "train", cfg)


def test_invalid_split_and_index():
    with pytest.raises(ValueError, match="split"):
        make_example(0, "dev", CFG)
    with pytest.raises(ValueError, match="index"):
        make_example(-1, "train", CFG)
    with pytest.raises(ValueError, match="max_difficulty"):
        SyntheticConfig(min_difficulty=3, max_difficulty=2).validate()


def test_grid_places_one_shape_per_cell():
    """``grid`` fixes the cell lattice: no shape straddles an edge of the ``S/grid`` cells
    (the automatic grid for 4 objects would be 3 cells of 21 px, not 4 of 16)."""
    cfg = SyntheticConfig(image_size=64, grid=4, max_objects=4, families=("count", "position"))
    for ex in generate(20, "train", cfg):
        for rgb in (COLORS[c] for c in ("red", "green", "blue", "yellow")):
            mask = np.all(ex.image == np.asarray(rgb, np.uint8), axis=-1)
            for edge in (16, 32, 48):
                assert not (mask[:, edge - 1] & mask[:, edge]).any(), (ex.id, edge)
                assert not (mask[edge - 1, :] & mask[edge, :]).any(), (ex.id, edge)
    for bad, match in (({"grid": 2}, "needs more than"), ({"grid": 6}, "cells need >= 12")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(cfg, **bad).validate()
