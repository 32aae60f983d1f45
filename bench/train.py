"""SAPO training throughput on the demo models: rollout, scoring, update, MFU, devices.

Everything follows the demo (``configs/demo.py`` read with `dreamr_jax.config.load_config`):
the data stage (`train.Run.data`, ``data.train_size`` from ``--train_size``), the tokenizer,
the target and draft as `train.Run.init_model` builds them (fresh random weights: no SFT is
run, so a random draft rarely stops early and rollouts run to ``max_new_tokens``), and the
SAPO section (``sapo``: P prompts x G rollouts, K scored steps) with ``patches_per_row`` set
from the draft as `Run.sapo` does. The pieces are those `run_sapo` runs, timed one by one
after a warm-up step, ``block_until_ready`` on every device result:

1. rollout: `rl.rollout.sample_rollouts` (the draft samples G chains per prompt);
   tokens/s = generated completion tokens / s.
2. scoring: `rl.scoring.score_rollouts` (the frozen target's packed pass: prompt prefill,
   then every step + its verification question in one chunk); tokens/s = chunk tokens
   (scored step tokens + one verification suffix per scored step) / s, and with the
   prompt tokens counted too.
3. grading + rewards (host), then `sapo_batch` (training rows + old and reference
   log-probs: two draft forwards), then the update (`make_train_step` with
   `sapo_objective`, as `run_sapo`); train tokens/s = row tokens (prompt + completion,
   padding included: what the step computes on) / s.
4. MFU of the update: 6 * params * row tokens (the usual forward + backward estimate,
   ignoring attention and the vision tower's own cost) per step time, against this
   machine's measured float32 matmul peak (a jitted ``N x N`` matmul, best of several).
5. packed vs per-step scoring on ``--per_step_rollouts`` rollouts: the reference of
   tests/test_rl_rollout.py, one full target forward per (rollout, step) over prompt +
   steps <= k + the verification question (jitted, compiled in an untimed first pass), vs
   `score_rollouts` on the same rollouts.
6. XLA options: the target's SFT step (`make_step`, 10 steps a round on 4 pipeline batches)
   compiled with `training.step.CPU_COMPILER_OPTIONS` (what `make_train_step` uses on a CPU
   mesh) and with XLA's defaults, in ``--option_rounds`` alternating rounds; ratio of means.
7. devices: the target's SFT step (`bench/data.py`'s `make_step` on pipeline batches) and
   the SAPO update step, each in a subprocess on 1 and on 8 fake CPU devices
   (``XLA_FLAGS=--xla_force_host_platform_device_count=8``, mesh ``(8,1,1)`` if the batches
   divide, else ``(4,1,1)`` / ``(2,1,1)``). The fake devices share this machine's cores.

Usage: ``python bench/train.py [--quick]`` (~2.5 min; --quick is shorter, ~1.5 min on tiny
models, most of it the two device subprocesses compiling). Extra ``--override key=value``
entries change the config. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # `bench.data` and `dreamr_jax` when run as a script

from bench._common import add_config_args, make_parser, print_total, rounded  # noqa: E402
from bench.data import (  # noqa: E402
    build_stage,
    count_params,
    load_run,
    make_step,
    open_iterator,
    prepared,
    print_header,
    time_steps,
)
from dreamr_jax.training.loop import closing_iterator  # noqa: E402


def parse_args(argv=None):
    p = make_parser(__doc__, quick_help="small data, few steps (~1 min)")
    add_config_args(p, train_size_help="train examples (256; q 64)")
    p.add_argument("--steps", type=int, default=None, help="timed SAPO steps (3; quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--per_step_rollouts", type=int, default=None, help="(4; quick 2)")
    p.add_argument("--matmul", type=int, default=None, help="peak matmul side (2048; q 1024)")
    p.add_argument("--devices", default="1,8", help="device counts of the SFT/SAPO step")
    p.add_argument("--option_rounds", type=int, default=None, help="XLA options A/B (3; q 1)")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.train_size = args.train_size or (64 if args.quick else 256)
    args.steps = args.steps or (1 if args.quick else 3)
    args.per_step_rollouts = args.per_step_rollouts or (2 if args.quick else 4)
    args.matmul = args.matmul or (1024 if args.quick else 2048)
    args.option_rounds = args.option_rounds or (1 if args.quick else 3)
    args.devices = [int(d) for d in args.devices.split(",") if d]
    return args


def clock(fn, *a, **k):
    import jax

    t = time.perf_counter()
    out = jax.block_until_ready(fn(*a, **k))
    return out, time.perf_counter() - t


def matmul_peak(n: int, reps: int = 5) -> float:
    """FLOP/s of a jitted float32 ``n x n`` matmul (best of ``reps``)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    best = min(clock(f, a, b)[1] for _ in range(reps))
    return 2 * n**3 / best


class Sapo:
    """The demo's SAPO pieces on fresh demo models (what `run_sapo` builds)."""

    def __init__(self, run):
        import functools

        import jax
        import jax.numpy as jnp
        from flax import nnx

        from dreamr_jax.training.objectives import sapo_objective
        from dreamr_jax.training.optim import make_optimizer, make_schedule
        from dreamr_jax.training.sapo import Scorer, prompt_iterator
        from dreamr_jax.training.step import init_train_state, make_train_step

        self.target, _ = run.init_model("target")
        self.draft, self.mesh = run.init_model("draft")
        self.cfg = dataclasses.replace(run.cfg.sapo, patches_per_row=run.patches(self.draft.cfg))
        self.image_cfg = run.image_cfg(self.draft.cfg)
        self.tokenizer = run.tokenizer()
        self.graphdef, self.ref_params = nnx.split(self.draft, nnx.Param)
        trainee = nnx.merge(self.graphdef, jax.tree.map(jnp.copy, self.ref_params))
        tx = make_optimizer(self.cfg.optim)
        self.state = init_train_state(trainee, tx)
        objective = functools.partial(
            sapo_objective, clip_eps=self.cfg.clip_eps, kl_beta=self.cfg.kl_beta
        )
        self.step_fn = make_train_step(
            self.graphdef,
            objective,
            tx,
            mesh=self.mesh,
            learning_rate=make_schedule(self.cfg.optim),
            micro_batches=self.cfg.micro_batches,
            group_size=self.cfg.rollout.group_size,
        )
        self.scorer = Scorer(self.target, self.tokenizer, self.image_cfg, self.cfg)
        self.iterator = prompt_iterator(run.source("train"), self.cfg)

    def one_step(self, i: int) -> dict:
        """One SAPO update as `run_sapo` runs it, each part timed; returns seconds, counts."""
        import jax
        import numpy as np
        from flax import nnx

        from dreamr_jax.rl.rollout import sample_rollouts
        from dreamr_jax.rl.scoring import score_rollouts
        from dreamr_jax.training.sapo import Scored, make_prompts, sapo_batch

        sc, cfg, t = self.scorer, self.cfg, {}
        policy = nnx.merge(self.graphdef, self.state.params)
        rng = jax.random.fold_in(jax.random.key(cfg.seed), i)
        t0 = time.perf_counter()
        prompts, qs = make_prompts(next(self.iterator), self.tokenizer, self.image_cfg)
        t["prompts"] = time.perf_counter() - t0
        out, t["rollout"] = clock(
            sample_rollouts,
            policy,
            prompts,
            cfg.rollout,
            self.tokenizer,
            rng,
            eos_ids=sc.eos_ids,
            pad_id=sc.pad_id,
        )
        (p, ok), t["scoring"] = clock(
            score_rollouts,
            sc.target_graphdef,
            sc.target_state,
            sc.target_cfg,
            out,
            sc.verdict,
            cfg.verifier,
            pad_id=sc.pad_id,
            dtype=sc.target_dtype,
        )
        t0 = time.perf_counter()
        correct, total, terms = sc.reward(out, qs, ok, cfg.rollout.group_size)
        scored = Scored(out, p, ok, correct, total, terms)
        t["grade_rewards"] = time.perf_counter() - t0
        batch, t["batch_logprobs"] = clock(
            sapo_batch,
            scored,
            self.graphdef,
            self.state.params,
            self.ref_params,
            cfg,
            self.draft.cfg,
        )
        (self.state, _), t["update"] = clock(self.step_fn, self.state, batch)
        steps = out.step_lengths > 0
        suffix = len(sc.verdict.suffix)
        return {
            "seconds": t,
            "rows": int(out.tokens.shape[0]),
            "rollout_tokens": int(out.lengths.sum()),
            "scored_chunk_tokens": int(out.step_lengths.sum() + steps.sum() * suffix),
            "prompt_tokens": int(sum(len(x) for x in out.prompts.ids)),
            "row_tokens": int(np.prod(batch["input_ids"].shape)),
            "trained_tokens": int(np.asarray(batch["mask"]).sum()) if "mask" in batch else None,
            "rollouts": out,
            "batch": batch,
        }


def measure_sapo(args, sapo: Sapo, peak: float) -> dict:
    import numpy as np

    for i in range(args.warmup):
        sapo.one_step(i)
    runs = [sapo.one_step(args.warmup + i) for i in range(args.steps)]
    parts = list(runs[0]["seconds"])
    sec = {k: float(np.mean([r["seconds"][k] for r in runs])) for k in parts}
    mean = lambda k: float(np.mean([r[k] for r in runs]))  # noqa: E731
    total = sum(sec.values())
    params = count_params(sapo.draft)
    flops = 6 * params * mean("row_tokens")
    out = {
        "draft_params": params,
        "target_params": count_params(sapo.target),
        "rows": runs[0]["rows"],
        "step_s": total,
        "seconds": sec,
        "fraction": {k: v / total for k, v in sec.items()},
        "tokens_per_step": {
            k: mean(k)
            for k in ("rollout_tokens", "scored_chunk_tokens", "prompt_tokens", "row_tokens")
        },
        "rollout_tokens_per_s": mean("rollout_tokens") / sec["rollout"],
        "scoring_tokens_per_s": mean("scored_chunk_tokens") / sec["scoring"],
        "scoring_tokens_per_s_incl_prompt": (mean("scored_chunk_tokens") + mean("prompt_tokens"))
        / sec["scoring"],
        "train_tokens_per_s": mean("row_tokens") / sec["update"],
        "update_flops_6nd": flops,
        "update_flops_per_s": flops / sec["update"],
        "matmul_peak_flops_per_s": peak,
        "mfu": flops / sec["update"] / peak,
    }
    return out, runs[-1]


def per_step_vs_packed(sapo: Sapo, rollouts, n: int) -> dict:
    """Seconds of per-step full forwards vs `score_rollouts` on the first ``n`` rollouts."""
    import numpy as np

    from dreamr_jax.rl.rollout import Prompts, Rollouts

    sc = sapo.scorer
    n = min(n, rollouts.tokens.shape[0])
    pr = rollouts.prompts
    sub = Rollouts(
        Prompts(pr.ids[:n], pr.pixel_values[:n], pr.image_grid_thw[:n]),
        rollouts.tokens[:n],
        rollouts.lengths[:n],
        rollouts.step_tokens[:n],
        rollouts.step_lengths[:n],
        rollouts.num_steps[:n],
    )

    def forward(ids, pixels, grid):  # host work + a forward compiled once per shape
        return sapo.target(ids, pixels, grid).logits[0, -1]

    def per_step():
        outs = []
        for r in range(n):
            prefix = list(sub.prompts.ids[r])
            for k in range(sub.step_lengths.shape[1]):
                m = int(sub.step_lengths[r, k])
                if m == 0:
                    continue
                prefix += sub.step_tokens[r, k, :m].tolist()
                ids = np.asarray([prefix + list(sc.verdict.suffix)])
                outs.append(
                    forward(ids, sub.prompts.pixel_values[r], sub.prompts.image_grid_thw[r])
                )
        return outs

    def packed():
        return sc.score(sub)

    _, per_step_compile = clock(per_step)  # compiles one forward per length
    _, packed_compile = clock(packed)
    outs, per_step_s = clock(per_step)
    _, packed_s = clock(packed)
    return {
        "rollouts": n,
        "forwards": len(outs),
        "per_step_s": per_step_s,
        "packed_s": packed_s,
        "speedup": per_step_s / packed_s,
        "first_pass_s": {"per_step": per_step_compile, "packed": packed_compile},
    }


def pipeline_batches(stage, run, n: int) -> list:
    """The first ``n`` train batches of ``stage``'s pipeline, prepared for its step."""
    with closing_iterator(open_iterator(stage, run.source("train"), run.tokenizer(), 0)) as it:
        return [prepared(stage, next(it)) for _ in range(n)]


def child(args, run) -> dict:
    """In a subprocess on ``args.child`` devices: SFT (target) and SAPO update step times."""
    import jax

    from dreamr_jax.training.sapo import sapo_batch  # noqa: F401  (import check)

    out = {"devices": jax.device_count(), "mesh": [run.cfg.target_mesh.data, 1, 1]}
    stage = build_stage(run, "target")
    step, state = make_step(stage)
    cyc = iter(pipeline_batches(stage, run, 2) * (args.warmup + args.steps + 2))
    _, s = time_steps(step, state, lambda: next(cyc), args.steps, args.warmup + 1)
    out["sft_target_step_ms"] = s / args.steps * 1e3
    out["sft_batch"] = stage.pipe.batch_size
    del state, step
    sapo = Sapo(run)
    one = sapo.one_step(0)
    batch = one["batch"]
    st = sapo.state
    for _ in range(args.warmup):
        st, m = sapo.step_fn(st, batch)
        jax.block_until_ready((st, m))
    t = time.perf_counter()
    for _ in range(args.steps):
        st, m = sapo.step_fn(st, batch)
        jax.block_until_ready((st, m))
    out["sapo_update_step_ms"] = (time.perf_counter() - t) / args.steps * 1e3
    out["sapo_rows"] = one["rows"]
    return out


OPTION_STEPS = 10  # timed steps of each round of `xla_options`


def xla_options(args, run) -> dict:
    """The target's SFT step compiled with `CPU_COMPILER_OPTIONS` (ours, the default on a
    CPU mesh) and with XLA's defaults, timed in alternating rounds on the same batches."""
    import jax
    import jax.numpy as jnp

    from dreamr_jax.training.step import CPU_COMPILER_OPTIONS

    stage = build_stage(run, "target")
    cyc = itertools.cycle(pipeline_batches(stage, run, 4))
    step_ours, state = make_step(stage, compiler_options=CPU_COMPILER_OPTIONS)
    step_xla, _ = make_step(stage, compiler_options={})
    states = {"ours": state, "xla": jax.tree.map(jnp.copy, state)}  # each step donates its own
    steps = {"ours": step_ours, "xla": step_xla}
    seconds = {k: [] for k in steps}
    for r in range(args.option_rounds):
        for k in steps:
            warmup = 2 if r == 0 else 0  # the first round compiles
            states[k], s = time_steps(steps[k], states[k], lambda: next(cyc), OPTION_STEPS, warmup)
            seconds[k].append(s / OPTION_STEPS)
    mean = {k: sum(v) / len(v) for k, v in seconds.items()}
    return {
        "options": CPU_COMPILER_OPTIONS,
        "step_s": seconds,
        "mean_step_s": mean,
        "speedup": mean["xla"] / mean["ours"],
    }


def pick_mesh(devices: int, rows: list[int]) -> int:
    for d in (devices, 4, 2, 1):
        if d <= devices and all(r % d == 0 for r in rows):
            return d
    return 1


def run_devices(args, run, workdir: str) -> dict:
    sft_rows = run.cfg.sft_target.batch_size
    sapo_rows = run.cfg.sapo.prompts_per_step * run.cfg.sapo.rollout.group_size
    out = {}
    for n in args.devices:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        if n > 1:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        d = pick_mesh(n, [sft_rows, sapo_rows])
        mesh = [f"{r}_mesh.data={d}" for r in ("target", "draft")]
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n)]
        cmd += ["--workdir", workdir, "--train_size", str(args.train_size), "--config", args.config]
        cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--override", *args.override, *mesh]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{n}-device run failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out[str(n)] = r
        print(
            f"{n} device(s), mesh ({d},1,1): SFT target step {r['sft_target_step_ms']:.1f} ms "
            f"(batch {r['sft_batch']}), SAPO update step {r['sapo_update_step_ms']:.1f} ms "
            f"({r['sapo_rows']} rows)",
            flush=True,
        )
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    from absl import flags
    from absl import logging as absl_logging

    flags.FLAGS.mark_as_parsed()
    absl_logging.set_verbosity(absl_logging.ERROR)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory())
        run, data_s = load_run(args, workdir)
        if args.child:
            print(json.dumps(rounded(child(args, run))))
            return {}
        load0 = print_header(args, run, data_s)
        peak = matmul_peak(args.matmul)
        print(
            f"float32 matmul peak ({args.matmul}^2, jitted): {peak / 1e9:.1f} GFLOP/s", flush=True
        )
        sapo = Sapo(run)
        c = sapo.cfg
        print(
            f"SAPO: P {c.prompts_per_step} x G {c.rollout.group_size} rollouts, "
            f"max_new_tokens {c.rollout.max_new_tokens}, K {c.rollout.max_scored_steps} x S "
            f"{c.rollout.max_step_tokens}; draft {count_params(sapo.draft):,} params, target "
            f"{count_params(sapo.target):,}",
            flush=True,
        )
        res, last = measure_sapo(args, sapo, peak)
        sec = res["seconds"]
        print(
            f"one SAPO step {res['step_s']:.2f} s: "
            + ", ".join(f"{k} {v:.3f} s ({res['fraction'][k]:.0%})" for k, v in sec.items())
        )
        print(
            f"rollout {res['rollout_tokens_per_s']:.0f} tokens/s, scoring "
            f"{res['scoring_tokens_per_s']:.0f} chunk tokens/s "
            f"({res['scoring_tokens_per_s_incl_prompt']:.0f} with prompts), update "
            f"{res['train_tokens_per_s']:.0f} row tokens/s; MFU (6*params*tokens) "
            f"{res['mfu']:.2%} of {peak / 1e9:.1f} GFLOP/s",
            flush=True,
        )
        ps = per_step_vs_packed(sapo, last["rollouts"], args.per_step_rollouts)
        print(
            f"scoring {ps['rollouts']} rollouts: per-step {ps['forwards']} forwards "
            f"{ps['per_step_s']:.3f} s vs packed {ps['packed_s']:.3f} s = {ps['speedup']:.1f}x",
            flush=True,
        )
        del sapo
        xo = xla_options(args, run)
        print(
            f"target SFT step ({OPTION_STEPS} steps x {args.option_rounds} alternating rounds): "
            f"CPU_COMPILER_OPTIONS {xo['mean_step_s']['ours'] * 1e3:.1f} ms, XLA defaults "
            f"{xo['mean_step_s']['xla'] * 1e3:.1f} ms = {xo['speedup']:.2f}x",
            flush=True,
        )
        devices = run_devices(args, run, workdir)
    load1 = print_total(t0)
    result = {
        "settings": {
            "config": args.config,
            "override": args.override,
            "train_size": args.train_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "per_step_rollouts": args.per_step_rollouts,
            "matmul": args.matmul,
            "option_rounds": args.option_rounds,
            "devices": args.devices,
            "quick": args.quick,
        },
        "sapo": res,
        "packed_vs_per_step": ps,
        "xla_options": xo,
        "devices": devices,
        "load_avg": [load0[0], load1[0]],
        "data_stage_s": data_s,
    }
    print(json.dumps(rounded(result)))
    return result


if __name__ == "__main__":
    main()
