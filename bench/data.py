"""Training-data pipeline throughput vs the rate one SFT train step consumes examples.

Everything follows the demo (``configs/demo.py`` read with `dreamr_jax.config.load_config`,
so the bench follows the config): the ``data`` stage builds the synthetic TFDS split and
trains the BPE tokenizer (`train.Run.data`, in a temporary directory or ``--workdir``, with
``data.train_size`` set by ``--train_size`` to keep generation short), the models are the
demo's target and draft (`train.Run.init_model`), and the pipeline is the one `run_sft`
builds for the stage (``PipelineConfig`` from the stage's ``SFTConfig``, ``worker_count``
0 as in the demo, also 1 and 2 with ``--workers``).

Measured in one process:

1. pipeline: examples/s of ``next(iter(make_dataset(...)))`` plus `prepare_batch` (the
   host work the train loop does per batch), after ``--warmup`` batches, over
   ``--batches`` batches, for each worker count. The iterator is closed afterwards so its
   prefetch threads stop competing for the CPU. With the stage's record cache on
   (``cache_records``, as in the demo) it is timed twice: in the first epoch, where every
   record is read and decoded, and after it, from the cache (every later epoch: the demo's
   SFT stages read their 1,024 records 5-25 times); the latter is the rate of a training run.
2. where the time goes: the same work for ``--profile_examples`` examples run stage by
   stage in this thread (no grain threads), a batch at a time as `TokenizeBatch` does it:
   record read + PNG decode, `as_record`, image preprocessing (`preprocess_batch`), prompt
   rendering + tokenisation (`TokenizeBatch.token_rows`), padding / masks / M-RoPE ids
   (`TokenizeBatch.assemble`) and `prepare_batch`, in ms per example; and, for
   comparison, the per-example path it replaced (`TokenizeExample.map` + `collate`).
3. consumption: examples/s of the stage's jitted train step (`make_train_step` with
   `sft_objective`, as `run_sft`) at the stage's batch size, on prepared pipeline batches,
   after compilation and ``--warmup`` steps, ``block_until_ready`` after each step; for the
   target and the draft. Timed ``--rounds`` times, each round followed by (1) for the
   stage's own pipeline: the goal's ratio is the median of the rounds' pipeline / step
   ratios, each of two rates measured seconds apart (other jobs' load comes and goes).
4. end to end: the same step fed live from a worker-0 iterator as `run_sft` does
   (``prepare_batch(next(it))`` then the step), so the pipeline's threads share the CPU
   with the step as in a training run; its examples/s against (3) shows whether data
   slows training down.

Goal (issue 3): pipeline examples/s >= 10x the examples/s of the target's step and of the
draft's (the pipeline is never the bottleneck of either SFT stage); the first epoch's ratio
is printed beside it.

Usage: ``python bench/data.py [--quick]`` (default ~2 min on 2 busy CPU cores, --quick
~1 min). Extra ``--override key=value`` entries change the config (as ``--config.key=v``).
The last line printed is one JSON object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

# Run as ``python bench/<name>.py``: `bench` and `dreamr_jax` are found from the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (  # noqa: E402
    add_config_args,
    make_parser,
    print_machine,
    print_total,
    rounded,
)
from dreamr_jax.training.loop import closing_iterator  # noqa: E402

GOAL_RATIO = 10.0  # pipeline examples/s over the target step's examples/s


def parse_args(argv=None):
    p = make_parser(__doc__, quick_help="small data, few batches (~1 min)")
    add_config_args(p, train_size_help="train examples (1024; q 256)")
    p.add_argument("--workers", default=None, help="worker counts to time (0,1,2; quick 0)")
    p.add_argument("--batches", type=int, default=None, help="timed batches (40; quick 10)")
    p.add_argument("--steps", type=int, default=None, help="timed target steps (10; quick 3)")
    p.add_argument(
        "--read_options",
        default=None,
        help="diagnostic: worker-0 pipelines re-read with grain.ReadOptions(num_threads/"
        "prefetch_buffer_size), e.g. 2/8,16/32 (default 2/8,16/32; quick 2/8)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed batches / steps first")
    p.add_argument("--rounds", type=int, default=None, help="step + pipeline rounds (3; q 2)")
    p.add_argument("--profile_examples", type=int, default=None, help="(64; quick 32)")
    args = p.parse_args(argv)
    args.train_size = args.train_size or (256 if args.quick else 1024)
    args.workers = [int(w) for w in (args.workers or ("0" if args.quick else "0,1,2")).split(",")]
    reads = args.read_options or ("2/8" if args.quick else "2/8,16/32")
    args.read_options = [tuple(int(x) for x in r.split("/")) for r in reads.split(",") if r]
    args.batches = args.batches or (10 if args.quick else 40)
    args.steps = args.steps or (3 if args.quick else 10)
    args.profile_examples = args.profile_examples or (32 if args.quick else 64)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return args


@dataclasses.dataclass
class Stage:
    """One SFT stage as the demo builds it: model, mesh, settings, pipeline inputs."""

    role: str
    model: object
    mesh: object
    sft: object  # SFTConfig with patches_per_row set from the model (as Run.sft does)
    pipe: object  # PipelineConfig as run_sft builds it
    image_cfg: object


def build_stage(run, role: str):
    from dreamr_jax.training.sft import pipeline_config

    model, mesh = run.init_model(role)
    sec = run.cfg.sft_target if role == "target" else run.cfg.sft_draft
    sec = dataclasses.replace(sec, patches_per_row=run.patches(model.cfg))
    image_cfg = run.image_cfg(model.cfg)
    pipe = pipeline_config(sec, image_cfg, run.cfg.verifier)  # run_sft's; worker_count 0
    return Stage(role, model, mesh, sec, pipe, image_cfg)


def variant_name(workers: int, read: tuple[int, int] | None = None) -> str:
    name = f"worker_count={workers}"
    return name if read is None else f"{name}, ReadOptions({read[0]}, {read[1]})"


def open_iterator(stage: Stage, source, tokenizer, workers: int, read=None):
    """``iter(make_dataset(...))`` at ``workers``; with ``read = (threads, buffer)`` (worker
    count 0 only) its last step, ``to_iter_dataset`` with the config's ``read_threads`` and
    ``prefetch_batches``, is redone with those options: a diagnostic of a change."""
    import grain

    from dreamr_jax.data.pipeline import make_dataset

    pipe = dataclasses.replace(stage.pipe, worker_count=workers)
    ds = make_dataset(source, pipe, tokenizer, stage.image_cfg)
    if read is not None:
        (batched,) = ds.parents  # the MapDataset of batches before to_iter_dataset
        options = grain.ReadOptions(num_threads=read[0], prefetch_buffer_size=read[1])
        ds = batched.to_iter_dataset(options)
    return iter(ds)


def prepared(stage: Stage, batch):
    from dreamr_jax.training.objectives import prepare_batch

    return prepare_batch(batch, stage.model.cfg, patches_per_row=stage.sft.patches_per_row)


def past_first_epoch(stage: Stage, it, records: int, done: int) -> None:
    """With the stage's record cache on, draws the rest of the first epoch from ``it``
    (``done`` batches were drawn), so that what follows reads cached records, as every
    epoch after the first does in training (worker processes each cache the records of
    their own batches, so there the cache fills over a few epochs instead)."""
    if stage.pipe.cache_records:
        for _ in range(records // stage.pipe.batch_size - done):
            next(it)


def time_pipeline(stage: Stage, source, tokenizer, workers: int, read, args) -> dict:
    """Examples/s of next + prepare_batch over ``args.batches`` after a warm-up. With the
    record cache on (`PipelineConfig.cache_records`), once in the first epoch
    (``first_epoch_examples_per_s``: every record read and decoded) and once after it
    (``examples_per_s``: records from the cache, the rate of every later epoch)."""

    def timed(it) -> float:
        t = time.perf_counter()
        for _ in range(args.batches):
            prepared(stage, next(it))
        return args.batches * stage.pipe.batch_size / (time.perf_counter() - t)

    t0 = time.perf_counter()
    with closing_iterator(open_iterator(stage, source, tokenizer, workers, read)) as it:
        for _ in range(args.warmup):
            prepared(stage, next(it))
        startup = time.perf_counter() - t0
        rate = first = timed(it)
        if stage.pipe.cache_records:
            past_first_epoch(stage, it, len(source), args.warmup + args.batches)
            rate = timed(it)
    return {
        "examples_per_s": rate,
        "first_epoch_examples_per_s": first,
        "startup_s": startup,
        "examples": args.batches * stage.pipe.batch_size,
    }


def profile_stages(stage: Stage, source, tokenizer, n: int) -> dict:
    """Milliseconds per example of each pipeline stage, run one after another here, batch
    by batch as `TokenizeBatch` runs them; ``reference_map`` is the per-example path
    (`TokenizeExample.map` + `collate`, as before batching) on other records."""
    from dreamr_jax.data.pipeline import TokenizeBatch, collate
    from dreamr_jax.data.synthetic_tfds import as_record
    from dreamr_jax.processing.image import preprocess_batch

    b, pipe = stage.pipe.batch_size, stage.pipe
    n = max(n, b) // b * b  # whole batches
    tok = TokenizeBatch(pipe, tokenizer, stage.image_cfg)
    names = ("read", "as_record", "image", "tokenize", "assemble", "prepare_batch", "reference")
    clock = dict.fromkeys(names, 0.0)

    def timed(key, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        clock[key] += time.perf_counter() - t
        return out

    def read(ids):
        return [source[i % len(source)] for i in ids]

    def reference(raw):
        return collate([tok.example.map(r) for r in raw], pipe.num_patches)

    prepared(stage, tok.map(read(range(b))))  # first calls fill caches
    for start in range(0, n, b):
        raw = timed("read", read, range(start, start + b))
        recs = timed("as_record", lambda rs: [as_record(r) for r in rs], raw)
        images = [r["image"] for r in recs]
        pixels, grid = timed(
            "image", preprocess_batch, images, stage.image_cfg, pad_to=pipe.num_patches
        )
        # (each row draws its own role here; verify_pairs' pairing costs the same)
        plans = timed("tokenize", lambda rs: [tok.example.plan(r, 0, None) for r in rs], recs)
        rows = timed("tokenize", tok.token_rows, recs, plans, grid)
        if rows is None:
            raise RuntimeError(f"records {start}..{start + b - 1}: too long for TokenizeBatch.")
        batch = timed("assemble", tok.assemble, recs, rows, pixels, grid)
        timed("prepare_batch", prepared, stage, batch)
    for start in range(n, 2 * n, b):  # other records: a repeat would hit the BPE word cache
        timed("reference", reference, read(range(start, start + b)))
    ms = {k: v * 1e3 / n for k, v in clock.items()}
    out = {
        "read_decode": ms["read"],
        "as_record": ms["as_record"],
        "image_preprocess": ms["image"],
        "prompt_tokenize": ms["tokenize"],
        "pad_masks_rope": ms["assemble"],
        "prepare_batch": ms["prepare_batch"],
    }
    out["total"] = sum(out.values())
    out["reference_map"] = ms["reference"]  # as_record .. collate, example by example
    return out


def make_step(stage: Stage, compiler_options=None):
    """The stage's jitted train step and initial state, as `run_sft` makes them
    (``compiler_options`` as `make_train_step`'s)."""
    from flax import nnx

    from dreamr_jax.training.objectives import sft_objective
    from dreamr_jax.training.optim import make_optimizer, make_schedule
    from dreamr_jax.training.step import init_train_state, make_train_step

    tx = make_optimizer(stage.sft.optim)
    step = make_train_step(
        nnx.graphdef(stage.model),
        sft_objective,
        tx,
        mesh=stage.mesh,
        learning_rate=make_schedule(stage.sft.optim),
        micro_batches=stage.sft.micro_batches,
        compiler_options=compiler_options,
    )
    return step, init_train_state(stage.model, tx)


def time_steps(step, state, next_batch, n: int, warmup: int):
    """Seconds of ``n`` steps (each blocked on) after ``warmup``; returns (state, s)."""
    import jax

    for _ in range(warmup):
        state, metrics = step(state, next_batch())
        jax.block_until_ready((state, metrics))
    t = time.perf_counter()
    for _ in range(n):
        state, metrics = step(state, next_batch())
        jax.block_until_ready((state, metrics))
    return state, time.perf_counter() - t


def time_training(stage: Stage, source, tokenizer, steps: int, live, args) -> dict:
    """Step alone on fixed prepared batches, ``args.rounds`` times, each followed by the
    stage's own demo pipeline (so each ratio compares rates measured under the same load:
    other jobs on a shared machine come and go); then the step fed live from each
    ``(workers, read)`` pipeline of ``live`` as `run_sft` feeds it."""
    import itertools

    import jax

    step, state = make_step(stage)
    with closing_iterator(open_iterator(stage, source, tokenizer, 0)) as it:
        fixed = [prepared(stage, next(it)) for _ in range(3)]
    t = time.perf_counter()
    state, metrics = step(state, fixed[0])
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t
    cycle = itertools.cycle(fixed)
    b = stage.pipe.batch_size
    rounds = []  # (step alone s, this stage's demo pipeline examples/s timed right after)
    for _ in range(args.rounds):
        state, alone = time_steps(step, state, lambda: next(cycle), steps, args.warmup)
        rounds.append((alone, time_pipeline(stage, source, tokenizer, 0, None, args)))
    ratios = [p["examples_per_s"] * alone / (b * steps) for alone, p in rounds]
    firsts = [p["first_epoch_examples_per_s"] * alone / (b * steps) for alone, p in rounds]
    alone = statistics.median(a for a, _ in rounds)
    out = {
        "batch_size": b,
        "compile_s": compile_s,
        "step_ms": alone / steps * 1e3,
        "examples_per_s": b * steps / alone,
        "steps": steps,
        "rounds": [
            {
                "step_examples_per_s": b * steps / a,
                "pipeline_examples_per_s": p["examples_per_s"],
                "pipeline_first_epoch_examples_per_s": p["first_epoch_examples_per_s"],
            }
            for a, p in rounds
        ],
        "ratio_adjacent": statistics.median(ratios),
        "ratio_adjacent_first_epoch": statistics.median(firsts),
        "live": {},
    }
    for workers, read in live:
        with closing_iterator(open_iterator(stage, source, tokenizer, workers, read)) as it:
            past_first_epoch(stage, it, len(source), 0)
            feed = lambda: prepared(stage, next(it))  # noqa: E731
            state, s = time_steps(step, state, feed, steps, args.warmup)
        out["live"][variant_name(workers, read)] = {
            "step_ms": s / steps * 1e3,
            "examples_per_s": b * steps / s,
            "fraction_of_alone": alone / s,
        }
    return out


def count_params(model) -> int:
    import jax
    from flax import nnx

    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def load_run(args, workdir: str):
    """The demo's `train.Run` on ``workdir`` with the data stage done (built once)."""
    from dreamr_jax import config as config_lib
    from dreamr_jax import train as train_lib

    overrides = [f"data.train_size={args.train_size}", *args.override]
    raw = config_lib.load_config(args.config, overrides)
    sections = {k: raw[k] for k in train_lib.SECTIONS if k in raw}
    cfg = config_lib.to_dataclass(train_lib.TrainConfig, sections)
    run = train_lib.Run(cfg, workdir)
    t = time.perf_counter()
    run.data()
    return run, time.perf_counter() - t


def print_header(args, run, data_s: float) -> list[float]:
    load = print_machine(warning="other processes share the CPU")
    d = run.cfg.data
    print(
        f"config {args.config} {' '.join(args.override)}: train_size {d.train_size}, image "
        f"{d.synthetic.image_size}px, tokenizer vocab {d.tokenizer_vocab} "
        f"({len(run.tokenizer())} tokens); data stage {data_s:.1f} s"
        + (" [--quick]" if args.quick else "")
    )
    return load


def measure(args, run) -> dict:
    source, tokenizer = run.source("train"), run.tokenizer()
    stages = {role: build_stage(run, role) for role in ("target", "draft")}
    out = {"pipeline": {}, "models": {}}
    for role, stage in stages.items():
        p, s = stage.pipe, stage.sft
        print(
            f"{role}: {count_params(stage.model):,} params; batch {p.batch_size}, seq_len "
            f"{p.seq_len}, {s.patches_per_row} patches/row, num_patches {p.num_patches}, "
            f"record cache {p.cache_records}"
        )
    target = stages["target"]
    if stages["draft"].pipe != target.pipe or stages["draft"].sft.patches_per_row != (
        target.sft.patches_per_row
    ):
        print("note: the draft's pipeline differs; the target's is timed")
    prof = profile_stages(target, source, tokenizer, args.profile_examples)
    out["profile_ms_per_example"] = prof
    print(
        f"where the time goes (ms/example, one thread, {args.profile_examples} examples): "
        + ", ".join(f"{k} {v:.2f}" for k, v in prof.items())
        + f" -> {1e3 / prof['total']:.0f} examples/s on one thread"
    )
    variants = [(w, None) for w in args.workers] + [(0, r) for r in args.read_options]
    for workers, read in variants:
        r = time_pipeline(target, source, tokenizer, workers, read, args)
        name = variant_name(workers, read)
        out["pipeline"][name] = r
        cached = (
            f" after the first epoch (record cache; {r['first_epoch_examples_per_s']:.1f} in it)"
            if target.pipe.cache_records
            else ""
        )
        print(
            f"pipeline {name}{'' if read is None else ' [diagnostic]'}: "
            f"{r['examples_per_s']:.1f} examples/s{cached} over {r['examples']} examples "
            f"(startup + warm-up {r['startup_s']:.1f} s)"
        )
    live = [(0, None)] + [(0, r) for r in args.read_options[:1]]
    for role, stage in stages.items():
        steps = args.steps if role == "target" else 2 * args.steps
        r = time_training(stage, source, tokenizer, steps, live, args)
        out["models"][role] = {"params": count_params(stage.model), **r}
        print(
            f"{role} train step: {r['step_ms']:.1f} ms = {r['examples_per_s']:.1f} examples/s "
            f"(median of {args.rounds} rounds; compile {r['compile_s']:.1f} s); the {role}'s "
            "pipeline right after each round: "
            + ", ".join(
                f"{x['pipeline_examples_per_s']:.0f} examples/s "
                f"({x['pipeline_examples_per_s'] / x['step_examples_per_s']:.2f}x the step's "
                f"{x['step_examples_per_s']:.0f})"
                for x in r["rounds"]
            )
            + "; fed live from the pipeline, "
            + "; ".join(
                f"{name}: {v['step_ms']:.1f} ms = {v['examples_per_s']:.1f} examples/s "
                f"({v['fraction_of_alone']:.2f} of alone)"
                for name, v in r["live"].items()
            )
        )
    return out


def check_goal(out: dict) -> dict:
    """Per role: ``ratio_demo``, the median over rounds of the demo pipeline's examples/s over
    the step's measured right before it (the goal's ratio); the other ratios divide the
    pipeline table's rates (measured earlier) by the median step rate."""
    pipes = out["pipeline"]
    demo = pipes.get(variant_name(0), next(iter(pipes.values())))["examples_per_s"]
    made = [r["examples_per_s"] for k, r in pipes.items() if "ReadOptions" not in k]
    goal = {}
    for role, m in out["models"].items():
        goal[role] = {
            "ratio_demo": m["ratio_adjacent"],
            "ratio_demo_first_epoch": m["ratio_adjacent_first_epoch"],
            "ratio_table_demo": demo / m["examples_per_s"],
            "ratio_best_worker_count": max(made) / m["examples_per_s"],
            "ratio_best_incl_diagnostic": max(r["examples_per_s"] for r in pipes.values())
            / m["examples_per_s"],
        }
        goal[role]["met"] = goal[role]["ratio_demo"] >= GOAL_RATIO
    goal["met"] = all(goal[role]["met"] for role in out["models"])
    return goal


def main(argv=None) -> dict:
    args = parse_args(argv)
    from absl import flags
    from absl import logging as absl_logging

    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    absl_logging.set_verbosity(absl_logging.ERROR)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory())
        run, data_s = load_run(args, workdir)
        load0 = print_header(args, run, data_s)
        out = measure(args, run)
    goal = check_goal(out)
    print(f"\ngoal: pipeline examples/s >= {GOAL_RATIO:.0f}x each train step's")
    for role in ("target", "draft"):
        g = goal[role]
        print(
            f"   {role}: pipeline / step = {g['ratio_demo']:.2f}x as the demo runs it "
            f"(worker_count=0, median of the rounds; {'met' if g['met'] else 'NOT MET'}; "
            f"first epoch {g['ratio_demo_first_epoch']:.2f}x); "
            f"from the pipeline table: {g['ratio_table_demo']:.2f}x at worker_count=0, "
            f"{g['ratio_best_worker_count']:.2f}x at the best worker count, "
            f"{g['ratio_best_incl_diagnostic']:.2f}x with the best diagnostic ReadOptions"
        )
    print(f"   {'MET' if goal['met'] else 'NOT MET'} (target and draft, worker_count=0)")
    load1 = print_total(t0)
    result = {
        "settings": {
            "config": args.config,
            "override": args.override,
            "train_size": args.train_size,
            "workers": args.workers,
            "read_options": args.read_options,
            "batches": args.batches,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "quick": args.quick,
        },
        **out,
        "goal": goal,
        "load_avg": [load0[0], load1[0]],
        "data_stage_s": data_s,
    }
    print(json.dumps(rounded(result)))
    return result


if __name__ == "__main__":
    main()
