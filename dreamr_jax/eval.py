r"""Engines over a dataset split: accuracy, step acceptance and speedup, measured in one run.

    python -m dreamr_jax.eval --config=configs/demo.py
    python -m dreamr_jax.eval --config=configs/demo.py --config.eval.dataset=mmbench \
        --config.eval.source_dir=/data/MMBench --config.eval.num_examples=200 \
        --config.target.checkpoint=/ckpt/Qwen3-VL-32B-Instruct \
        --config.draft.checkpoint=/ckpt/Qwen3-VL-2B-Instruct

The models are loaded once; every chosen engine (one run per α for the speculative ones)
answers the first ``num_examples`` questions of the split, each answer is graded with
`grading.grade`, and speedups are over ``target_only``'s wall time on the same requests in
the same process (it always runs first). Before an engine's first run one request of
every distinct input shape is run untimed (``warmup`` times), so compilation is not timed;
its runs at other α reuse what that compiled (α is an argument of the compiled
verification pass, not a constant of it).

Writes ``WORKDIR/eval/requests.jsonl`` (one line per engine, α and request),
``summary.json`` (`aggregate` per engine and α, plus the config) and three PNG plots, each
file atomically; an earlier run's set is moved to ``eval/old/<run id>/``, never deleted.
Every input (config, dataset, split, images, prompt lengths, gold answers) is checked
before any weight is read.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from absl import app, flags
from tqdm import tqdm

from dreamr_jax import config as config_lib
from dreamr_jax.data import grading, import_tfds, questions, synthetic, synthetic_tfds
from dreamr_jax.inference.generate import bucket
from dreamr_jax.spec import ENGINES, SpecConfig, SpecEngine, VerifierConfig, aggregate, report
from dreamr_jax.spec.roles import (
    MeshSection,
    ModelSection,
    build_engine,
    check_request,
    load_roles,
    prepare,
)

DATASETS = ("synthetic", *import_tfds.IMPORTERS)
SPECULATIVE = tuple(e for e in ENGINES if e not in report.BASELINES)


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """What to evaluate and how.

    Attributes:
      dataset: "synthetic" (built-in, generated deterministically) or an importer name
        of `import_tfds.IMPORTERS` (mmbench, mathverse, realworldqa, mmmu, ...).
      split: the split to read; "" = the dataset's default ("test" for synthetic, the
        importer's first split otherwise).
      num_examples: N, evaluate the split's first N usable examples.
      data_dir: the TFDS data directory; "" = ``WORKDIR/data``. A synthetic split is
        built there when missing, an imported one from ``source_dir``.
      source_dir: imported datasets: the raw files in their published layout, built into
        ``data_dir`` once (not needed when the split is already built there).
      synthetic: the synthetic generator's settings (seed, image size, families,
        difficulty); a training run evaluates with its own.
      engines: engines to run (of `ENGINES`); ``target_only`` is always run, first,
        because every speedup is measured against it in the same run.
      alphas: α values; each speculative engine of ``sweep_engines`` runs once per α,
        the baselines once.
      sweep_engines: the speculative engines run at every α of ``alphas``; the other
        speculative engines run once, at ``verifier.alpha``. Default: all of them. (A
        sweep costs a full pass over the split per α; the demo sweeps only ``fpsr``.)
      warmup: untimed passes before each engine's first run, to keep compilation out of
        the timings. A pass runs one request of every distinct input shape (padded prompt
        length, image patches and grid: what the jitted steps compile for); speculative
        engines run it also with every draft step accepted and with every one rejected,
        so that both decision paths are compiled whatever α does.
      plots: write the PNG plots.
    """

    dataset: str = "synthetic"
    split: str = ""
    num_examples: int = 8
    data_dir: str = ""
    source_dir: str = ""
    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig(image_size=64)
    engines: tuple[str, ...] = ENGINES
    alphas: tuple[float, ...] = (0.7,)
    sweep_engines: tuple[str, ...] = SPECULATIVE
    warmup: int = 1
    plots: bool = True

    def validate(self) -> EvalSection:
        require = config_lib.require
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {DATASETS}")
        splits = self.splits()
        require(
            not self.split or self.split in splits,
            "split",
            self.split,
            f"{self.dataset} has the splits {splits}",
        )
        require(self.num_examples >= 1, "num_examples", self.num_examples, "must be >= 1")
        require(bool(self.engines), "engines", self.engines, f"is empty; pick from {ENGINES}")
        bad = [e for e in self.engines if e not in ENGINES]
        require(not bad, "engines", self.engines, f"unknown {bad}; pick from {ENGINES}")
        require(len(set(self.engines)) == len(self.engines), "engines", self.engines, "has repeats")
        if any(e in SPECULATIVE for e in self.engines):
            require(bool(self.alphas), "alphas", self.alphas, "is empty; give at least one α")
        require(
            all(0.0 <= a <= 1.0 for a in self.alphas), "alphas", self.alphas, "must be in [0, 1]"
        )
        require(len(set(self.alphas)) == len(self.alphas), "alphas", self.alphas, "has repeats")
        bad = [e for e in self.sweep_engines if e not in SPECULATIVE]
        require(
            not bad, "sweep_engines", self.sweep_engines, f"unknown {bad}; pick from {SPECULATIVE}"
        )
        require(self.warmup >= 0, "warmup", self.warmup, "must be >= 0")
        self.synthetic.validate()
        return self

    def splits(self) -> tuple[str, ...]:
        """The dataset's split names."""
        if self.dataset == "synthetic":
            return synthetic.SPLITS
        return import_tfds.IMPORTERS[self.dataset].splits

    @property
    def split_name(self) -> str:
        """The split actually read."""
        default = "test" if self.dataset == "synthetic" else self.splits()[0]
        return self.split or default

    def runs(self, alpha: float) -> list[tuple[str, float | None]]:
        """``(engine, α)`` in run order: target_only first, baselines with α None, engines
        outside ``sweep_engines`` at ``alpha`` (the verifier's) only."""
        engines = ["target_only", *(e for e in self.engines if e != "target_only")]

        def alphas(engine):
            if engine not in SPECULATIVE:
                return (None,)
            return self.alphas if engine in self.sweep_engines else (alpha,)

        return [(e, a) for e in engines for a in alphas(e)]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The whole evaluation: both models, their meshes, the engine and verifier settings
    shared by every run (``spec.engine`` and ``verifier.alpha`` are set per run), and what
    to evaluate."""

    target: ModelSection = ModelSection()
    draft: ModelSection = ModelSection(seed=1)
    spec: SpecConfig = SpecConfig()
    verifier: VerifierConfig = VerifierConfig()
    target_mesh: MeshSection = MeshSection()
    draft_mesh: MeshSection = MeshSection()
    eval: EvalSection = EvalSection()


SECTIONS = tuple(f.name for f in dataclasses.fields(EvalConfig))


# One question to ask: shared with SAPO's prompts so a record reads the same in both.
Item = questions.Question


# --------------------------------------------------------------------------------- data


def load_items(sec: EvalSection, workdir: str | os.PathLike) -> tuple[list[Item], dict]:
    """The first N usable examples of the split (built first when needed) and data notes.

    Imported records without an image are skipped (the engines need one); of several
    images only the first is used. Both are listed in the returned notes.

    Raises:
      ConfigError: a real dataset that is neither built in ``data_dir`` nor given a
        ``source_dir``, a missing ``source_dir``, or a split with fewer than N examples.
      ValueError: a gold answer the grader cannot read (naming the record).
    """
    data_dir = Path(sec.data_dir or Path(workdir) / "data")
    if sec.dataset == "synthetic":
        items, notes = _synthetic_items(sec, data_dir), {}
    else:
        items, notes = _imported_items(sec, data_dir)
    for item in items:  # a gold answer the grader cannot read would fail after hours
        grading.check_gold(item)
    return items, {"data_dir": str(data_dir), **notes}


def _synthetic_items(sec: EvalSection, data_dir: Path) -> list[Item]:
    cfg = sec.synthetic
    sizes = {sec.split_name: sec.num_examples}  # example i never depends on the sizes
    synthetic_tfds.build(str(data_dir), cfg, sizes)
    src = synthetic_tfds.load(str(data_dir), cfg, sec.split_name, sizes)
    return [questions.from_synthetic(src[i]) for i in range(sec.num_examples)]


def _imported_items(sec: EvalSection, data_dir: Path) -> tuple[list[Item], dict]:
    where = "config.eval.source_dir"
    if sec.source_dir:
        if not Path(sec.source_dir).exists():
            raise config_lib.ConfigError(f"{where}={sec.source_dir!r}: no such directory.")
        import_tfds.build(sec.dataset, sec.source_dir, data_dir, sec.split_name)
    try:
        src = import_tfds.load(sec.dataset, data_dir, sec.split_name)
    except FileNotFoundError as e:
        raise config_lib.ConfigError(
            f"{where}='': {sec.dataset} split {sec.split_name!r} is not built in "
            f"{str(data_dir)!r}; set eval.source_dir to the raw files to import them ({e})"
        ) from e
    items, no_image, first_only = [], [], []
    for i in range(len(src)):
        if len(items) == sec.num_examples:
            break
        rec = import_tfds.as_record(src[i])
        if not rec.images:
            no_image.append(rec.id)
            continue
        if len(rec.images) > 1:
            first_only.append(rec.id)
        items.append(questions.from_imported(rec))
    if len(items) < sec.num_examples:
        raise config_lib.ConfigError(
            f"config.eval.num_examples={sec.num_examples}: {sec.dataset} split "
            f"{sec.split_name!r} has only {len(items)} usable examples ({len(no_image)} "
            "without an image skipped); lower num_examples."
        )
    return items, {"skipped_without_image": no_image, "first_image_only": first_only}


# ---------------------------------------------------------------------------------- run


def _row(item: Item, engine: str, alpha: float | None, result, tokenizer) -> dict:
    answer = tokenizer.decode(result.tokens, skip_special_tokens=True)
    result.metrics.correct = grading.grade(
        answer, item.gold, answer_type=item.answer_type, choices=item.choices
    )
    steps = [
        {"source": s.source, "p": s.p, "window_pos": s.window_pos, "tokens": len(s.tokens)}
        for s in result.steps
    ]
    return {
        "id": item.id,
        "engine": engine,
        "alpha": alpha,
        "answer": answer,
        "gold": item.gold,
        "answer_type": item.answer_type,
        "correct": result.metrics.correct,
        "steps": steps,
        "metrics": result.metrics.to_dict(),
    }


def check_requests(prep, cfg: EvalConfig, items: list[Item]) -> list:
    """Tokenises every item and checks it fits the cache (no weights needed).

    Raises:
      ValueError: (e.g. `CacheTooShort`, a bad image) with a note naming the record.
    """
    spec = dataclasses.replace(cfg.spec, engine="target_only")  # the widest window K
    requests = []
    for item in items:
        try:
            requests.append(check_request(prep, spec, cfg.verifier, item.image, item.question))
        except ValueError as e:
            e.add_note(f"in eval record {item.id!r}")
            raise
    return requests


def shape_representatives(requests: list) -> list[int]:
    """Indices of the first request of each distinct compiled input shape."""
    first = {}
    for i, r in enumerate(requests):
        pixels = None if r.pixel_values is None else r.pixel_values.shape
        grid = None if r.image_grid_thw is None else r.image_grid_thw.tolist()
        first.setdefault(repr((bucket(len(r.prompt_ids)), pixels, grid)), i)
    return list(first.values())


def _warmup_engines(engine: SpecEngine) -> list[SpecEngine]:
    """``engine``, plus for a speculative one copies whose verifier decisions are forced to
    all-accept and all-reject (the benchmark override; the verification pass still runs):
    a path that α takes only on some request (the first fallback step, say) would
    otherwise compile inside a timed request."""
    if engine.cfg.engine in report.BASELINES:
        return [engine]
    e = engine
    forced = [
        SpecEngine(
            e.draft,
            e.target,
            e.tokenizer,
            e.cfg,
            e.verifier,
            image_processor=e.image_processor,
            forced_acceptance=rate,
        )
        for rate in (0.0, 1.0)
    ]
    return [engine, *forced]


def _run_engine(engine, alpha, items, requests, warm: list[int], bar, tokenizer):
    """Runs the warmup requests ``warm`` untimed, then answers every request; returns
    (JSONL rows, metrics)."""
    name = engine.cfg.engine
    label = name if alpha is None else f"{name} α={alpha:g}"
    bar.set_description(f"{label} (warmup)")
    for i in warm:
        engine.precompile(requests[i])  # every packed-verification width
        for warm_engine in _warmup_engines(engine):
            warm_engine.run(requests[i])
        bar.update()
    bar.set_description(label)
    rows, metrics = [], []
    for item, request in zip(items, requests, strict=True):
        result = engine.run(request)
        rows.append(_row(item, name, alpha, result, tokenizer))
        metrics.append(result.metrics)
        bar.update()
    return rows, metrics


def run(cfg: EvalConfig, workdir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Evaluates every (engine, α) of ``cfg.eval`` and writes ``workdir/eval``.

    Args:
      progress: show a progress bar over all (engine, α, request) runs on stderr.

    Returns:
      The ``summary.json`` dict: ``run_id`` (the start time, UTC), dataset, split,
      requests, ``data`` notes, ``results`` (per run: `aggregate` plus ``alpha``, with
      ``speedup`` over target_only) and the config.
    """
    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    workdir, sec = Path(workdir), cfg.eval
    runs = sec.runs(cfg.verifier.alpha)
    items, notes = load_items(sec, workdir)
    models = {"target": cfg.target}
    if any(engine != "target_only" for engine, _ in runs):
        models["draft"] = cfg.draft
    prep = prepare(models, {"target": cfg.target_mesh, "draft": cfg.draft_mesh}, workdir)
    requests = check_requests(prep, cfg, items)
    roles = load_roles(prep, models)  # the first weight read: all inputs are checked

    warm = shape_representatives(requests) * sec.warmup
    rows, results, baseline, warmed = [], [], None, set()
    total = len({name for name, _ in runs}) * len(warm) + len(runs) * len(items)
    with tqdm(total=total, unit="req", file=sys.stderr, disable=not progress) as bar:
        for name, alpha in runs:
            verifier = cfg.verifier if alpha is None else replace(cfg.verifier, alpha=alpha)
            engine = build_engine(prep, roles, replace(cfg.spec, engine=name), verifier)
            new_rows, metrics = _run_engine(
                engine,
                alpha,
                items,
                requests,
                [] if name in warmed else warm,
                bar,
                prep.tokenizer,
            )
            warmed.add(name)
            rows += new_rows
            if name == "target_only":  # runs first: the baseline of every speedup
                baseline = sum(m.wall_s for m in metrics)
            results.append({"alpha": alpha, **aggregate(metrics, baseline)})

    out_dir = workdir / "eval"
    summary = {
        "run_id": run_id,
        "dataset": sec.dataset,
        "split": sec.split_name,
        "requests": len(items),
        "data": notes,
        "results": results,
        "out_dir": str(out_dir),
        "config": dataclasses.asdict(cfg),
    }
    summary = json.loads(json.dumps(summary))  # as written: tuples become lists
    files = {
        "requests.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode(),
        "summary.json": (json.dumps(summary, indent=2) + "\n").encode(),
    }
    if sec.plots:
        files.update(report.plots(results))
    report.publish(out_dir, files, run_id)
    return summary


def main(argv, config_flag: flags.FlagHolder, workdir_flag: flags.FlagHolder) -> None:
    """Runs the evaluation from parsed flags; prints the table, then one JSON line."""
    del argv
    raw = config_flag.value
    workdir = workdir_flag.value or raw.get("workdir") or "runs/eval"
    cfg = config_lib.to_dataclass(EvalConfig, {k: raw[k] for k in SECTIONS if k in raw})
    config_lib.write_resolved(raw, workdir, spec=config_lib.flag_spec())
    summary = run(cfg, workdir)
    print(report.table(summary["results"]))
    print(f"wrote {summary['out_dir']}")
    print(json.dumps(report.headline(summary)), flush=True)


def _cli() -> None:
    # Flags are defined here, not at import: importing this module next to another entry
    # point (as a test session does) must not define ``--config`` twice.
    config_flag = config_lib.define_config_flag()
    workdir_flag = flags.DEFINE_string(
        "workdir", None, "Run directory (default: the config's workdir)."
    )
    app.run(lambda argv: main(argv, config_flag, workdir_flag))


if __name__ == "__main__":
    _cli()
