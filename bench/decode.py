"""Greedy decode throughput: our jitted loop vs transformers' PyTorch ``generate`` (CPU).

Both sides run the SAME random-weight model (built with ``Qwen3VL(cfg, rngs=nnx.Rngs(0))``,
written with `hf.save_pretrained`, read by ``Qwen3VLForConditionalGeneration.from_pretrained``
in float32) on the same text prompts, greedily, for a fixed number of new tokens (no stop
tokens; HF gets ``eos_token_id=None`` and ``min_new_tokens``), at batch 1 and 8, for

* ``tiny``: `tiny_config()`;
* ``m100``: a ~100M-parameter text decoder (hidden 768, 12 layers, 12/4 heads, head_dim 64,
  MLP 2048, vocab 32000, tied embeddings) with a small vision tower.

Timing: the headline tokens/s is end to end (prefill + all decode steps, new tokens * batch /
seconds), best of ``--reps`` runs after a warm-up call; our compile time is the first call
minus a steady call. Both sides are also split into prefill and per-step decode time (ours
with the jitted `prefill` / `decode` entries, HF as a prompt forward and as
``(T(n new tokens) - T(1)) / (n - 1)``).

The bandwidth bound is ``bandwidth / weight bytes read per decode step``, counting the
decoder layers, the final norm and the LM head matrix (the embedding table once when tied);
the embedding lookup (one row), the KV cache and the vision tower are not counted. It is
compared with our steady decode rate at batch 1 (per-step decode time, no prefill).

Usage: ``python bench/decode.py [--quick]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import warnings

import numpy as np

# Run as ``python bench/<name>.py``: `bench` and `dreamr_jax` are found from the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import machine, make_parser, rounded  # noqa: E402

GOAL_TINY = 3.0  # ours / HF tokens/s on the tiny config
GOAL_M100 = 1.0  # ours / HF tokens/s on the ~100M config
GOAL_BW = 0.60  # ours at batch 1 / bandwidth bound (~100M config)
PROMPT_LEN = 32
BATCHES = (1, 8)


def parse_args(argv=None):
    p = make_parser(__doc__, quick_help="few tokens, one rep (smoke run)")
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens per row")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (best is kept)")
    p.add_argument("--configs", default="tiny,m100", help="comma-separated: tiny,m100")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ helpers


def best_time(fn, reps):
    """Best wall time of ``reps`` calls of ``fn`` (which must block) and the last result."""
    best, out = math.inf, None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure_bandwidth(nbytes: int, reps: int = 5) -> dict:
    """Copy bandwidth in GB/s (bytes read + bytes written per second), best of ``reps``.

    Two measurements: ``np.copyto`` (single thread) and a jitted, donated in-place
    ``x + 1`` in XLA (all cores); the larger is the machine's figure.
    """
    import jax
    import jax.numpy as jnp

    n = nbytes // 4

    def numpy_copy():
        src = np.ones(n, np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)  # fault the pages in
        return best_time(lambda: np.copyto(dst, src), reps)[0]

    t_np = numpy_copy()
    bump = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    x = bump(jnp.ones(n, jnp.float32)).block_until_ready()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        x = bump(x)
        x.block_until_ready()
        best = min(best, time.perf_counter() - t0)
    del x
    np_bw, jax_bw = 2 * nbytes / t_np / 1e9, 2 * nbytes / best / 1e9
    return {"numpy": np_bw, "jax": jax_bw, "best": max(np_bw, jax_bw)}


def m100_config():
    from dreamr_jax.models.config import tiny_config

    return tiny_config(
        vocab_size=32000,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        num_kv_heads=4,
        head_dim=64,
        intermediate_size=2048,
        tie_word_embeddings=True,
        vision_depth=2,
        vision_hidden=64,
        vision_heads=2,
        deepstack=(0, 1),
        patch_size=16,
        num_position_embeddings=64,
    )


def count_params(model) -> dict:
    """Parameter counts and the weight bytes one decode step reads."""
    from flax import nnx

    def size(tree):
        leaves = jax_leaves(tree)
        return (
            sum(int(x.size) for x in leaves),
            sum(int(x.size) * x.dtype.itemsize for x in leaves),
        )

    total, _ = size(nnx.state(model, nnx.Param))
    vision, _ = size(nnx.state(model.visual, nnx.Param))
    lm = model.language_model
    embed, embed_bytes = size(nnx.state(lm.embed_tokens, nnx.Param))
    layers, layers_bytes = size(nnx.state(lm.layers, nnx.Param))
    norm, norm_bytes = size(nnx.state(lm.norm, nnx.Param))
    if model.lm_head is None:
        head, head_bytes = embed, embed_bytes  # tied: the head reads the embedding table
    else:
        head, head_bytes = size(nnx.state(model.lm_head, nnx.Param))
    return {
        "total": total,
        "vision": vision,
        "embed": embed,
        "layers": layers,
        "norm": norm,
        "head": head,
        "tied": model.lm_head is None,
        "text": embed + layers + norm + (0 if model.lm_head is None else head),
        "step_bytes": layers_bytes + norm_bytes + head_bytes,
    }


def jax_leaves(tree):
    import jax

    return [x.value if hasattr(x, "value") else x for x in jax.tree_util.tree_leaves(tree)]


# ----------------------------------------------------------------------------- ours


def run_ours(model, cfg, prompts, n_new, reps):
    import jax
    from flax import nnx

    from dreamr_jax.inference import SamplingConfig, bucket, decode, generate, make_batch, prefill
    from dreamr_jax.models import KVCache

    batch = make_batch(cfg, prompts.tolist())
    sampling = SamplingConfig(max_new_tokens=n_new)
    b = prompts.shape[0]
    graphdef, state = nnx.split(model)  # once, as a serving loop would

    def e2e():
        out = generate((graphdef, state), batch, sampling)
        return jax.block_until_ready(out.tokens)

    t0 = time.perf_counter()
    tokens = np.asarray(e2e())
    first = time.perf_counter() - t0
    t_e2e, _ = best_time(e2e, reps)

    # Split: prefill and decode as separately jitted programs (same cache length).
    cache_len = bucket(batch.input_ids.shape[1] + n_new)
    key = jax.random.key(0)

    def fresh_cache():
        return jax.block_until_ready(KVCache.init(cfg.text, b, cache_len, model.dtype))

    def run_prefill(cache):
        return jax.block_until_ready(prefill(graphdef, state, batch, cache))

    def run_decode(cache, logits):
        return jax.block_until_ready(decode(graphdef, state, cache, logits, key, sampling))

    logits, cache = run_prefill(fresh_cache())  # warm-up (compile)
    run_decode(cache, logits)
    t_pre, t_dec = math.inf, math.inf
    for _ in range(reps):
        c = fresh_cache()
        t0 = time.perf_counter()
        logits, c = run_prefill(c)
        t_pre = min(t_pre, time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_decode(c, logits)
        t_dec = min(t_dec, time.perf_counter() - t0)
    step = t_dec / max(1, n_new - 1)  # the first new token comes from the prefill logits
    return {
        "tokens": tokens,
        "e2e_s": t_e2e,
        "tok_s": n_new * b / t_e2e,
        "compile_s": max(0.0, first - t_e2e),
        "prefill_s": t_pre,
        "step_s": step,
        "decode_tok_s": b / step,
        "cache_len": cache_len,
    }


# ------------------------------------------------------------------------------ HF


def run_hf(tm, prompts, n_new, reps):
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    mask = torch.ones_like(ids)
    b, t = ids.shape

    def gen(n):
        with torch.inference_mode():
            return tm.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                temperature=None,
                top_p=None,
                top_k=None,
            )

    def fwd():
        with torch.inference_mode():
            return tm(input_ids=ids, attention_mask=mask, use_cache=True)

    tokens = gen(n_new)[:, t:].numpy()  # warm-up
    t_e2e, _ = best_time(lambda: gen(n_new), reps)
    gen(1)
    t_one, _ = best_time(lambda: gen(1), reps)
    fwd()
    t_pre, _ = best_time(fwd, reps)
    step = max(t_e2e - t_one, 1e-9) / max(1, n_new - 1)
    return {
        "tokens": tokens,
        "e2e_s": t_e2e,
        "tok_s": n_new * b / t_e2e,
        "prefill_s": t_pre,
        "gen1_s": t_one,
        "step_s": step,
        "decode_tok_s": b / step,
    }


# ------------------------------------------------------------------------------ main


def main(argv=None) -> dict:
    args = parse_args(argv)
    n_new = args.new_tokens or (8 if args.quick else 128)
    reps = args.reps or (1 if args.quick else 3)
    bw_bytes = (256 if args.quick else 1024) << 20

    import jax.numpy as jnp
    import torch
    import transformers
    from flax import nnx
    from transformers import Qwen3VLForConditionalGeneration

    from dreamr_jax.models import Qwen3VL, hf
    from dreamr_jax.models.config import tiny_config

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    cores = os.cpu_count()
    torch.set_num_threads(cores)
    print(
        f"machine: {machine()}, torch {torch.__version__} "
        f"(torch.set_num_threads({cores}) -> {torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}"
    )
    print(
        f"settings: prompt {PROMPT_LEN} tokens, {n_new} new tokens (greedy, no stop), "
        f"batches {BATCHES}, best of {reps} after a warm-up{' [--quick]' if args.quick else ''}"
    )

    load0 = os.getloadavg()
    print(
        f"load average at start (1/5/15 min): {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
        + (
            f"  WARNING: other processes are using these {cores} cores; timings (HF's "
            "multi-threaded OpenMP kernels especially) will be pessimistic"
            if load0[0] > 0.5 * cores
            else ""
        )
    )
    bw = measure_bandwidth(bw_bytes)
    print(
        f"memory bandwidth ({bw_bytes >> 20} MiB copy, read+write): numpy {bw['numpy']:.1f} "
        f"GB/s (1 thread), XLA {bw['jax']:.1f} GB/s -> {bw['best']:.1f} GB/s"
    )
    results = {
        "new_tokens": n_new,
        "prompt_len": PROMPT_LEN,
        "reps": reps,
        "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "bandwidth_gb_s": bw["best"],
        "bandwidth_numpy_gb_s": bw["numpy"],
        "bandwidth_xla_gb_s": bw["jax"],
    }
    configs = {"tiny": tiny_config, "m100": m100_config}
    goals = {"tiny": GOAL_TINY, "m100": GOAL_M100}
    misses = []
    for name in args.configs.split(","):
        cfg = configs[name]()
        t = cfg.text
        model = Qwen3VL(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0))
        counts = count_params(model)
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(model, cfg, d)
            tm = Qwen3VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
        hf_params = sum(p.numel() for p in tm.parameters())  # unique tensors (tied once)
        print(
            f"\n== {name}: hidden {t.hidden_size}, {t.num_layers} layers, heads {t.num_heads}"
            f"/{t.num_kv_heads}, head_dim {t.head_dim}, mlp {t.intermediate_size}, vocab "
            f"{t.vocab_size}, tied={t.tie_word_embeddings}; vision depth {cfg.vision.depth} "
            f"width {cfg.vision.hidden_size}"
        )
        print(
            f"   params: total {counts['total']:,} (HF {hf_params:,}) = text "
            f"{counts['text']:,} [embed {counts['embed']:,}, layers {counts['layers']:,}, "
            f"norm {counts['norm']:,}, head {'tied' if counts['tied'] else counts['head']}] "
            f"+ vision {counts['vision']:,}"
        )
        bound = bw["best"] * 1e9 / counts["step_bytes"]
        print(
            f"   weight bytes per decode step (layers + final norm + LM head, f32): "
            f"{counts['step_bytes']:,} -> bandwidth bound {bound:,.0f} tok/s at batch 1"
        )
        results.update(
            {
                f"{name}_params": counts["total"],
                f"{name}_text_params": counts["text"],
                f"{name}_step_weight_bytes": counts["step_bytes"],
                f"{name}_bw_bound_tok_s": bound,
            }
        )
        rng = np.random.default_rng(0)
        prompts_all = rng.integers(0, t.vocab_size - 4, (max(BATCHES), PROMPT_LEN))
        for b in BATCHES:
            prompts = prompts_all[:b]
            ours = run_ours(model, cfg, prompts, n_new, reps)
            ref = run_hf(tm, prompts, n_new, reps)
            ratio = ours["tok_s"] / ref["tok_s"]
            match = float(np.mean(ours["tokens"] == ref["tokens"]))
            key = f"{name}_b{b}"
            ok = ratio >= goals[name]
            if not ok:
                misses.append(f"{key} ratio {ratio:.2f} < {goals[name]}")
            print(
                f"   batch {b}: ours {ours['tok_s']:,.1f} tok/s | HF {ref['tok_s']:,.1f} tok/s"
                f" | ours/HF {ratio:.2f}x (goal >= {goals[name]:g}x: "
                f"{'PASS' if ok else 'MISS'}) | greedy tokens equal: {match:.0%}"
            )
            print(
                f"      ours: compile {ours['compile_s']:.2f} s, e2e {ours['e2e_s'] * 1e3:.1f} ms"
                f", prefill {ours['prefill_s'] * 1e3:.2f} ms, decode "
                f"{ours['step_s'] * 1e3:.3f} ms/step ({ours['decode_tok_s']:,.1f} tok/s; "
                f"cache {ours['cache_len']} slots)"
            )
            print(
                f"      HF:   e2e {ref['e2e_s'] * 1e3:.1f} ms, prefill (forward) "
                f"{ref['prefill_s'] * 1e3:.2f} ms, generate(1) {ref['gen1_s'] * 1e3:.2f} ms, "
                f"decode {ref['step_s'] * 1e3:.3f} ms/step ({ref['decode_tok_s']:,.1f} tok/s)"
                f"; decode-only ours/HF {ours['decode_tok_s'] / ref['decode_tok_s']:.2f}x"
            )
            results.update(
                {
                    f"{key}_ours_tok_s": ours["tok_s"],
                    f"{key}_hf_tok_s": ref["tok_s"],
                    f"{key}_ratio": ratio,
                    f"{key}_tokens_equal": match,
                    f"{key}_ours_compile_s": ours["compile_s"],
                    f"{key}_ours_prefill_ms": ours["prefill_s"] * 1e3,
                    f"{key}_ours_step_ms": ours["step_s"] * 1e3,
                    f"{key}_ours_decode_tok_s": ours["decode_tok_s"],
                    f"{key}_hf_prefill_ms": ref["prefill_s"] * 1e3,
                    f"{key}_hf_step_ms": ref["step_s"] * 1e3,
                    f"{key}_hf_decode_tok_s": ref["decode_tok_s"],
                    f"{key}_decode_ratio": ours["decode_tok_s"] / ref["decode_tok_s"],
                }
            )
            if b == 1:
                frac = ours["decode_tok_s"] / bound
                results[f"{key}_bw_fraction"] = frac
                results[f"{key}_bw_fraction_e2e"] = ours["tok_s"] / bound
                ok = frac >= GOAL_BW
                if name == "m100" and not ok:
                    misses.append(f"{key} bandwidth fraction {frac:.2f} < {GOAL_BW}")
                print(
                    f"      ours decode at batch 1 = {frac:.1%} of the bandwidth bound "
                    f"({ours['decode_tok_s']:,.1f} / {bound:,.1f} tok/s; e2e "
                    f"{ours['tok_s'] / bound:.1%})"
                    + (
                        f" (goal >= {GOAL_BW:.0%}: {'PASS' if ok else 'MISS'})"
                        if name == "m100"
                        else " (weights fit in cache; informational)"
                    )
                )
        del model, tm
    load1 = os.getloadavg()
    results["load_avg_start"], results["load_avg_end"] = load0[0], load1[0]
    print(f"\nload average at end (1/5/15 min): {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(
        "goals: "
        + ("all met" if not misses else "MISSED: " + "; ".join(misses))
        + (
            f"  [--quick: only {n_new} new tokens, so fixed per-call costs (prefill, host "
            "overhead) dominate; judge the goals on the full run]"
            if args.quick
            else ""
        )
    )
    results["goals_met"] = not misses
    print(json.dumps(rounded(results)))
    return results


if __name__ == "__main__":
    main()
