"""Speculative reasoning engines: wall-clock speedup over ``target_only``, measured and ideal.

Every engine of `dreamr_jax.spec.ENGINES` (plus ``fpsr`` with ``overlap=False``) runs on the
same draft/target pair and the same requests in one process:

* the pair: two random-weight Qwen3-VLs built here with `tiny_config` (sizes from flags;
  default target hidden 512 / 8 layers, draft hidden 128 / 2 layers, 50-90x cheaper per
  token on a 2-core CPU), the byte tokenizer, one fixed random image, a few questions whose
  prompts pad to one static length, greedy decoding;
* steps: by default (``--delimiter cap``) the delimiter is a 3-byte sequence random models
  never write, so every step is exactly S = ``--step-tokens`` tokens (the cap); ``auto``
  instead picks the character the target writes about every S/2 tokens (variable steps,
  as in tests/test_spec.py). End-of-sequence is switched off (the engine's stop tables are
  rebuilt without EOS ids) so every chain has exactly ``--steps`` steps in every engine;
* the verification question is ``--question`` ("OK?"): the byte tokenizer spells text one
  byte per token, so the default 9-word question would make a 64-token suffix where Qwen's
  BPE gives ~20; "OK?" gives a 24-token suffix, close to the real one;
* every engine runs with ``cache_length`` fixed to the ``fpsr`` engine's size, so all
  engines run the same compiled programs at the same attention length.

Mode A (model quality): the real CPN verifier at ``--alpha``. With random weights the
acceptance rate is whatever the pair gives; it says nothing about trained models.

Mode B (scheduler, "controlled acceptance (verifier override)"): ``forced_acceptance=r``
replaces each verifier decision with a seeded coin flip (seed = request index, so every
schedule sees the same decisions; the verification pass still runs).

Speedups. Measured speedup = wall(target_only) / wall(engine) summed over the timed
requests, engines interleaved request by request. A request's wall time runs until every
computation the engine dispatched has finished (``tail ms``: work still in flight when
``run`` returned, e.g. lookahead's K-row target step of the last round; it would otherwise
be charged to the next engine timed). The "ideal" and "ideal iid" speedups come from the
cost model in ``bench/_spec_cost.py``: each schedule's time with no host gaps, from
component times (a target / draft step, a verification pass, a prefill, ...) measured in
this process after compilation, before and after each mode (whose ideal uses the mean of
the two); "ideal" counts the run's own rounds and rejections, "ideal iid" their expectations
at an i.i.d. acceptance rate.

Usage: ``python bench/spec.py [--quick]`` (default ~3-5 min on 2 busy CPU cores, --quick ~1 min).
The last line printed is one JSON object.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import time

import numpy as np

# Run as ``python bench/<name>.py``: `bench` and `dreamr_jax` are found from the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import make_parser, print_machine, print_total, rounded  # noqa: E402
from bench._spec_cost import add_ideal, measure_components  # noqa: E402

GOAL_FRACTION = 0.9  # fpsr measured speedup / ideal speedup (mode B)
NEVER = "\x00\x01\x02"  # the "cap" delimiter: random models never write these three bytes
QUESTIONS = (
    "How many red squares?",
    "What colour is the top left?",
    "Is the image mostly dark?",
    "Which corner is the brightest?",
)
VARIANTS = {  # name -> (engine, overlap)
    "target_only": ("target_only", True),
    "draft_only": ("draft_only", True),
    "specreason": ("specreason", True),
    "lookahead": ("lookahead", True),
    "fpsr": ("fpsr", True),
    "fpsr_no_overlap": ("fpsr", False),
}
SPEC = ("specreason", "lookahead", "fpsr", "fpsr_no_overlap")


def parse_args(argv=None):
    p = make_parser(__doc__, quick_help="fewer steps/requests/rates (~1 min)")
    for role, h, layers, heads, kv, mlp in (
        ("target", 512, 8, 8, 4, 1536),
        ("draft", 128, 2, 4, 2, 384),
    ):
        p.add_argument(f"--{role}-hidden", type=int, default=h)
        p.add_argument(f"--{role}-layers", type=int, default=layers)
        p.add_argument(f"--{role}-heads", type=int, default=heads)
        p.add_argument(f"--{role}-kv-heads", type=int, default=kv)
        p.add_argument(f"--{role}-mlp", type=int, default=mlp)
    p.add_argument("--window", type=int, default=4, help="K")
    p.add_argument("--step-tokens", type=int, default=32, help="S = max_step_tokens")
    p.add_argument("--steps", type=int, default=None, help="N steps per chain (12; quick 6)")
    p.add_argument("--requests", type=int, default=None, help="timed requests (3; quick 2)")
    p.add_argument("--alpha", type=float, default=0.7, help="CPN threshold (mode A)")
    p.add_argument("--rates", default=None, help="forced acceptance rates (0.5,0.7,0.9)")
    p.add_argument("--delimiter", choices=("cap", "auto"), default="cap")
    p.add_argument("--question", default="OK?", help="verification question")
    p.add_argument("--reps", type=int, default=None, help="component timing reps (7; quick 3)")
    args = p.parse_args(argv)
    args.steps = args.steps or (6 if args.quick else 12)
    args.requests = args.requests or (2 if args.quick else 3)
    args.rates = [
        float(r) for r in (args.rates or ("0.5,0.9" if args.quick else "0.5,0.7,0.9")).split(",")
    ]
    args.reps = args.reps or (3 if args.quick else 7)
    if args.requests > len(QUESTIONS):
        p.error(f"--requests must be <= {len(QUESTIONS)}")
    return args


# ------------------------------------------------------------------------------ setup


@dataclasses.dataclass
class Setup:
    """The pair, the tokenizer, the requests and the engine settings shared by all runs."""

    tok: object
    draft: object  # Role
    target: object  # Role
    ipc: object
    image: np.ndarray
    base: object  # SpecConfig (engine, seed and overlap are set per run)
    verifier: object
    requests: list
    tables: object = None  # StepTables without EOS ids


def model_config(tok, hidden, layers, heads, kv, mlp):
    from dreamr_jax.models import config as mc

    ids = tok.convert_tokens_to_ids
    cfg = mc.tiny_config(
        vocab_size=-(-len(tok) // 64) * 64,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=hidden // heads,
        intermediate_size=mlp,
        deepstack=(0, 2)[: min(2, layers)],  # one DeepStack merger per early text layer
    )
    return dataclasses.replace(
        cfg,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    ).validate()


def count_params(model) -> dict:
    import jax
    from flax import nnx

    def size(tree):
        return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))

    total = size(nnx.state(model, nnx.Param))
    vision = size(nnx.state(model.visual, nnx.Param))
    return {"total": total, "text": total - vision, "vision": vision}


def build(args) -> tuple[Setup, dict]:
    from flax import nnx

    from dreamr_jax.models.qwen3_vl import Qwen3VL
    from dreamr_jax.processing.image import ImageProcessorConfig
    from dreamr_jax.processing.tokenizer import byte_tokenizer
    from dreamr_jax.spec import Role, SpecConfig, VerifierConfig

    tok = byte_tokenizer()
    models, params = {}, {}
    for role, seed in (("target", 0), ("draft", 1)):
        a = lambda n, role=role: getattr(args, f"{role}_{n}")  # noqa: E731
        cfg = model_config(tok, a("hidden"), a("layers"), a("heads"), a("kv_heads"), a("mlp"))
        models[role] = Qwen3VL(cfg, rngs=nnx.Rngs(seed))
        params[role] = count_params(models[role])
    v = models["target"].cfg.vision
    side = v.patch_size * v.spatial_merge_size
    ipc = ImageProcessorConfig.for_vision(v, min_pixels=(2 * side) ** 2, max_pixels=(3 * side) ** 2)
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    base = SpecConfig(
        window=args.window,
        max_step_tokens=args.step_tokens,
        max_steps=args.steps,
        delimiter=NEVER,
    )
    setup = Setup(
        tok,
        Role.of(models["draft"]),
        Role.of(models["target"]),
        ipc,
        image,
        base,
        VerifierConfig(alpha=args.alpha, question=args.question),
        [],
    )
    return setup, params


def finish_setup(s: Setup, args) -> None:
    """Requests, the cache length shared by every engine, the delimiter and EOS-free tables."""
    from dreamr_jax.inference.generate import bucket
    from dreamr_jax.spec import core

    probe = engine(s, "fpsr")
    s.requests = [probe.request(s.image, q) for q in QUESTIONS[: args.requests]]
    slots = {bucket(len(r.prompt_ids)) for r in s.requests}
    if len(slots) != 1:
        raise SystemExit(f"questions pad to different prompt lengths {slots}; shorten them.")
    s.base = dataclasses.replace(s.base, cache_length=probe.cache_length(slots.pop()))
    if args.delimiter == "auto":
        s.base = dataclasses.replace(s.base, delimiter=auto_delimiter(s, args))
    vocab = s.target.cfg.text.vocab_size
    s.tables = core.step_tables(s.tok, vocab, s.base.delimiter, ())


def engine(s: Setup, variant: str, seed: int = 0, forced: float | None = None):
    from dreamr_jax.spec import SpecEngine

    name, overlap = VARIANTS[variant]
    cfg = dataclasses.replace(s.base, engine=name, overlap=overlap, seed=seed)
    eng = SpecEngine(
        s.draft, s.target, s.tok, cfg, s.verifier, image_processor=s.ipc, forced_acceptance=forced
    )
    if s.tables is not None:  # EOS off: every chain has max_steps steps (benchmark only)
        eng.eos_ids = ()
        eng.tables = {"draft": s.draft.put(s.tables), "target": s.target.put(s.tables)}
    return eng


def auto_delimiter(s: Setup, args) -> str:
    """The character the target writes closest to once every S/2 tokens."""
    from dreamr_jax.spec import core

    s.tables = core.step_tables(s.tok, s.target.cfg.text.vocab_size, NEVER, ())
    text = s.tok.decode(engine(s, "target_only").run(s.requests[0]).tokens)
    counts = collections.Counter(text)
    want = len(text) / (args.step_tokens / 2)
    return min(counts, key=lambda c: abs(counts[c] - want))


# -------------------------------------------------------------------------------- runs


def compile_counter():
    """Counts XLA compilations (to show that timed runs compile nothing)."""
    import jax

    count = [0]

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    return count


class Drain:
    """Wraps the engine's `dreamr_jax.spec.core` (benchmark only) to record a small output of
    every jitted call, so a run can be charged for work it left in flight when ``run``
    returned (lookahead's unused K-row target step of the last round, fpsr's last
    speculative draft window); caches are donated onward, so only non-cache outputs are
    kept."""

    KEEP = {"write_step": lambda o: o[0].lengths, "verify_window": lambda o: o[0]}

    def __init__(self, module):
        self.module, self.pending = module, []

    def __getattr__(self, name):
        fn = getattr(self.module, name)
        if name not in self.KEEP and name != "append_chunk":
            return fn

        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.pending.append(out[0] if name == "append_chunk" else self.KEEP[name](out))
            return out

        return call

    def wait(self) -> None:
        import jax

        jax.block_until_ready(self.pending)
        self.pending.clear()

    @classmethod
    def install(cls) -> Drain:
        import dreamr_jax.spec.engine as engine_module

        if not isinstance(engine_module.core, cls):
            engine_module.core = cls(engine_module.core)
        return engine_module.core


def run_mode(s: Setup, forced: float | None, compiles) -> dict:
    """Every variant on every request, interleaved; returns per-variant aggregates."""
    from dreamr_jax.spec import aggregate

    metrics, walls, ps, early = collections.defaultdict(list), collections.Counter(), [], 0
    tails = collections.Counter()
    before, drain = compiles[0], Drain.install()
    for i, req in enumerate(s.requests):
        for variant in VARIANTS:
            eng = engine(s, variant, seed=i, forced=forced)
            drain.wait()
            t0 = time.perf_counter()
            res = eng.run(req)
            t1 = time.perf_counter()
            drain.wait()
            walls[variant] += time.perf_counter() - t0
            tails[variant] += time.perf_counter() - t1
            metrics[variant].append(res.metrics)
            early += sum(len(st.tokens) < s.base.max_step_tokens for st in res.steps)
            if variant == "fpsr":
                ps += [d.p for d in res.decisions]
    out = {}
    for variant, items in metrics.items():
        agg = aggregate(items)
        agg["wall_s"] = walls[variant]  # includes host batching inside run()
        agg["speedup"] = walls["target_only"] / walls[variant]
        agg["in_flight_at_return_s"] = tails[variant]
        out[variant] = agg
    out["_info"] = {
        "compiles_during_timed_runs": compiles[0] - before,
        "steps_shorter_than_cap": early,
        "p_quartiles": np.quantile(ps, [0.0, 0.25, 0.5, 0.75, 1.0]).tolist() if ps else None,
    }
    return out


def bracket(s: Setup, args, mode: dict, before: dict) -> dict:
    """Re-measures the components after a mode's runs; the mode's ideal uses the mean of the
    measurements before and after it (the shared CPU's speed drifts). Returns "after"."""
    after = measure_components(engine(s, "fpsr"), s.requests[0], args.reps)
    mode["_info"]["components"] = {key: (before[key] + after[key]) / 2 for key in before}
    mode["_info"]["target_step_ms_before_after"] = [
        before["step_target"] * 1e3,
        after["step_target"] * 1e3,
    ]
    return after


# ------------------------------------------------------------------------------ report


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def print_mode(title: str, mode: dict) -> None:
    info = mode["_info"]
    print(f"\n== {title}")
    print(
        f"   {'engine':<16}{'wall s':>8}{'speedup':>9}{'ideal':>8}{'meas/ideal':>11}"
        f"{'ideal iid':>10}{'accept':>8}{'rounds':>7}{'reject':>7}{'overlap':>8}{'tail ms':>8}"
    )
    for variant in VARIANTS:
        a = mode[variant]
        print(
            f"   {variant:<16}{a['wall_s']:>8.2f}{a['speedup']:>8.2f}x{a['ideal_speedup']:>7.2f}x"
            f"{a['measured_over_ideal']:>11.2f}{fmt(a.get('ideal_iid_speedup')):>9}x"
            f"{fmt(a['acceptance_rate'], '.0%'):>8}{a['verify_calls']:>7}{a['fallbacks']:>7}"
            f"{a['overlap_hits']:>8}{a['in_flight_at_return_s'] * 1e3:>8.0f}"
        )
    tokens = {mode[v]["output_tokens"] for v in VARIANTS}
    drift = info["target_step_ms_before_after"]
    print(
        f"   output tokens per engine (all requests): {sorted(tokens)}; target step "
        f"{drift[0]:.1f} ms before / {drift[1]:.1f} ms after this mode (ideal uses the mean)"
    )
    two = mode["fpsr"]["ideal_speedup_2dev"]
    print(
        "   fpsr ideal with the draft on its own device (paper setting, not this machine): "
        f"{two:.2f}x"
        f"; compilations during timed runs: {info['compiles_during_timed_runs']}; steps shorter "
        f"than the cap: {info['steps_shorter_than_cap']}"
    )


def check_goals(mode_b: dict) -> dict:
    goals = {}
    for r, mode in mode_b.items():
        sp = {v: mode[v]["speedup"] for v in SPEC}
        ideal = {v: mode[v]["ideal_speedup"] for v in SPEC}
        goals[r] = {
            "fpsr_fraction_of_ideal": mode["fpsr"]["measured_over_ideal"],
            "fpsr_at_least_0.9_of_ideal": mode["fpsr"]["measured_over_ideal"] >= GOAL_FRACTION,
            "order_measured": sp["fpsr"] > sp["lookahead"] > sp["specreason"],
            "order_ideal": ideal["fpsr"] > ideal["lookahead"] > ideal["specreason"],
        }
    return goals


def print_header(args, s: Setup, params: dict, comps: dict) -> None:
    print_machine(warning="other processes share the CPU, timings are noisy")
    for role in ("target", "draft"):
        t, p = getattr(s, role).cfg.text, params[role]
        step = comps[f"step_{role}"]
        print(
            f"{role}: hidden {t.hidden_size}, {t.num_layers} layers, heads {t.num_heads}/"
            f"{t.num_kv_heads}, mlp {t.intermediate_size}, vocab {t.vocab_size}; params "
            f"{p['total']:,} (text {p['text']:,}, vision {p['vision']:,}); decode "
            f"{step / s.base.max_step_tokens * 1e3:.3f} ms/token"
        )
    b = s.base
    delim = "cap (never-written 3-byte delimiter)" if b.delimiter == NEVER else repr(b.delimiter)
    print(
        f"settings: K={b.window}, S={b.max_step_tokens}, N={b.max_steps} steps, "
        f"{len(s.requests)} requests (prompt {len(s.requests[0].prompt_ids)} tokens), cache "
        f"{b.cache_length} slots, greedy, EOS off, delimiter {delim}, verification suffix "
        f"{len(engine(s, 'fpsr').verdict.suffix)} tokens (question {s.verifier.question!r})"
        + (" [--quick]" if args.quick else "")
    )
    print(
        "components (ms, median of "
        f"{args.reps}): "
        + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in comps.items())
        + f"; target/draft step cost {comps['step_target'] / comps['step_draft']:.1f}x"
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    t_start = time.perf_counter()
    compiles = compile_counter()
    s, params = build(args)
    finish_setup(s, args)
    comps = measure_components(engine(s, "fpsr"), s.requests[0], args.reps)
    print_header(args, s, params, comps)
    first = comps
    k, n_req = args.window, len(s.requests)
    for variant in VARIANTS:  # warm-up: compile every program, both accept and reject paths
        warm = engine(s, variant, forced=0.5)
        warm.precompile(s.requests[0])  # every packed-verification width (auto delimiter)
        warm.run(s.requests[0])
    mode_a = run_mode(s, None, compiles)
    comps = bracket(s, args, mode_a, comps)
    add_ideal(mode_a, mode_a["_info"]["components"], k, n_req, None)
    print_mode(
        f"mode A: real CPN verifier, alpha={args.alpha} "
        "(random weights: acceptance is whatever it is)",
        mode_a,
    )
    print(
        "   fpsr verifier scores p (min/q1/median/q3/max): "
        + fmt_list(mode_a["_info"]["p_quartiles"])
    )
    mode_b = {}
    for r in args.rates:
        mode = run_mode(s, r, compiles)
        comps = bracket(s, args, mode, comps)
        add_ideal(mode, mode["_info"]["components"], k, n_req, r)
        mode_b[str(r)] = mode
        print_mode(
            f"mode B: controlled acceptance (verifier override), forced_acceptance={r}", mode
        )
    goals = check_goals(mode_b)
    print("\ngoals (mode B): fpsr >= 0.9 of ideal; measured speedup fpsr > lookahead > specreason")
    for r, g in goals.items():
        print(
            f"   r={r}: fpsr {g['fpsr_fraction_of_ideal']:.2f} of ideal "
            f"({'MET' if g['fpsr_at_least_0.9_of_ideal'] else 'MISSED'}); order measured "
            f"{'MET' if g['order_measured'] else 'MISSED'}; order in the ideal model "
            f"{'holds' if g['order_ideal'] else 'does not hold'}"
        )
    load = print_total(t_start, suffix=f"; jax {jax.__version__}")
    result = {
        "settings": {
            "window": k,
            "step_tokens": args.step_tokens,
            "steps": args.steps,
            "requests": n_req,
            "alpha": args.alpha,
            "rates": args.rates,
            "delimiter": args.delimiter,
            "suffix_tokens": len(engine(s, "fpsr").verdict.suffix),
            "cache_length": s.base.cache_length,
            "quick": args.quick,
        },
        "params": params,
        "components_ms": {key: v * 1e3 for key, v in first.items()},  # as printed first
        "mode_a": slim(mode_a),
        "mode_b": {r: slim(m) for r, m in mode_b.items()},
        "goals": goals,
        "load_avg": [load[0]],
    }
    print(json.dumps(rounded(result)))
    return result


KEEP = (
    "wall_s",
    "speedup",
    "ideal_speedup",
    "measured_over_ideal",
    "ideal_iid_speedup",
    "ideal_speedup_2dev",
    "in_flight_at_return_s",
    "acceptance_rate",
    "verify_calls",
    "fallbacks",
    "overlap_hits",
    "steps",
    "output_tokens",
    "target_tokens",
    "draft_tokens",
)


def slim(mode: dict) -> dict:
    out = {
        v: {key: a[key] for key in KEEP if key in a}
        for v, a in mode.items()
        if not v.startswith("_")
    }
    info = dict(mode["_info"])
    info["components_ms"] = {k: v * 1e3 for k, v in info.pop("components").items()}
    out["info"] = info
    return out


def fmt_list(xs):
    return "-" if xs is None else " / ".join(f"{x:.3f}" for x in xs)


if __name__ == "__main__":
    main()
