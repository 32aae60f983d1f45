"""The cost model of ``bench/spec.py``: its component times, measured, and the ideal times
and speedups of each schedule derived from them.

Not a bench itself: ``bench/spec.py`` imports it as ``bench._spec_cost``.

Cost model (one device, time-shared; ideal = no host gaps, each call as timed alone).
Component times, measured in this process after compilation (median of ``--reps``; measured
before and after each mode, whose ideal uses the mean of the two):
``t`` / ``d`` one target / draft step (S tokens), ``v_K`` / ``v_1`` one packed verification
pass for a window of K / 1 steps, ``a`` the draft appending the target's step, ``rows`` the
lookahead target round (fork to K rows, K-row step, take one row), ``P_t`` / ``P_d`` a
request's host batching plus prefill. A request has N steps; a schedule does R rounds
(verification passes), F of them ending in a rejection (a fallback target step):

    target_only   P_t + N t                 draft_only  P_d + N d
    specreason    P_t + P_d + R (d + v_1)       + F (t + a)
    lookahead     P_t + P_d + R (K d + v_K + rows) + F a
    fpsr, no overlap P_t + P_d + R (K d + v_K) + F (t + a)
    fpsr, overlap P_t + P_d + R v_K + (R + F) K d + F (t + a)   (one device: the
                  speculative window w+1 is drafted every round and redrafted on rejection)
    fpsr, draft on its own device (the paper's setting, not this machine):
                  P_t + P_d + R max(v_K, K d) + F (t + a + K d)

With i.i.d. acceptance r and a window of K, a round accepts d_1..d_{j-1} up to the first
rejection j and then takes the target's step (no bonus step), so

    E[steps per round] = sum_{i<K} r^i = (1 - r^K) / (1 - r),   P(rejection) = 1 - r^K,

giving R ~ N (1 - r) / (1 - r^K) and F ~ R (1 - r^K) (specreason: K = 1, R = N,
F = N (1 - r)). The "ideal" column uses the run's own R and F (exact decisions, same for
every schedule); "ideal iid" uses these expectations at r (N -> infinity). Ideal speedup =
ideal(target_only) / ideal(engine). Edge effects (a last window drafted and not used) are up
to K d per request and not modelled. ``v_K`` is the pass at full steps (``S`` slots each, as
with the cap delimiter); the engines pack a window of shorter steps in ``W < S`` slots each
(`core.step_width`), timed as ``verify_K_wW`` but not used by the model.
"""

from __future__ import annotations

import statistics
import time

# ------------------------------------------------------------------------- components


def median_time(setup, call, reps: int) -> float:
    """Median seconds of ``call(*setup())`` (setup untimed, everything blocked)."""
    import jax

    times = []
    for i in range(reps + 1):  # the first call compiles / warms up
        args = jax.block_until_ready(setup())
        t0 = time.perf_counter()
        jax.block_until_ready(call(*args))
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_components(eng, req, reps: int) -> dict:
    """Seconds per component of the cost model (module docstring), timed with the models,
    tables and settings of the engine ``eng`` (a `dreamr_jax.spec.SpecEngine`) on the
    request ``req`` (median of ``reps`` calls after a warm-up call)."""
    import jax
    import jax.numpy as jnp

    from dreamr_jax.inference.generate import make_batch, prefill
    from dreamr_jax.models.text import KVCache
    from dreamr_jax.spec import core

    k, n, cache_length = eng.cfg.window, eng.cfg.max_step_tokens, eng.cfg.cache_length
    key, on = jax.random.key(0), jnp.ones((1,), bool)
    out = {}

    def batch():
        return make_batch(
            eng.target.cfg,
            [req.prompt_ids],
            pixel_values=req.pixel_values,
            image_grid_thw=req.image_grid_thw,
            pad_id=eng.pad_id,
        )

    def fresh(role):
        cache = KVCache.init(role.cfg.text, 1, cache_length, role.dtype)
        return prefill(role.graphdef, role.state, batch(), cache)

    out["host_batch"] = median_time(lambda: (), batch, reps)
    for name, role in (("target", eng.target), ("draft", eng.draft)):
        out[f"prefill_{name}"] = median_time(
            lambda role=role: (KVCache.init(role.cfg.text, 1, cache_length, role.dtype),),
            lambda c, role=role: prefill(role.graphdef, role.state, batch(), c),
            reps,
        )
        out[f"step_{name}"] = median_time(
            lambda role=role: fresh(role)[::-1],
            lambda c, logits, role=role, name=name: core.write_step(
                role.graphdef, role.state, c, logits, key, 1, on, eng.tables[name], dec=eng.dec
            ),
            reps,
        )
    for kk in sorted({1, k}):
        out[f"verify_{kk}"] = median_time(
            lambda: (fresh(eng.target)[1],), lambda c, kk=kk: verify(eng, c, kk), reps
        )
    for w in core.step_widths(n)[:-1]:  # K steps of w tokens, packed in w slots each
        out[f"verify_{k}_w{w}"] = median_time(
            lambda: (fresh(eng.target)[1],), lambda c, w=w: verify(eng, c, k, w), reps
        )
    chunk, length = jnp.ones((1, n), jnp.int32), jnp.full((1,), n, jnp.int32)
    out["append_draft"] = median_time(
        lambda: (fresh(eng.draft)[1],),
        lambda c: core.append_chunk(eng.draft.graphdef, eng.draft.state, c, chunk, length),
        reps,
    )
    out["lookahead_rows"] = median_time(
        lambda: verified(eng, fresh, k, n), lambda *a: rows(eng, k, n, *a), reps
    )
    return out


def verified(eng, fresh, k, n):
    """A target cache after one packed verification of K full steps (lookahead's input)."""
    import jax.numpy as jnp

    logits, cache = fresh(eng.target)
    base = int(cache.index)
    _, _, step_logits, cache = verify(eng, cache, k)
    return cache, logits, step_logits[0], jnp.full((k,), n, jnp.int32), base


def verify(eng, cache, k, width=None):
    """One packed verification of K full steps (dummy tokens: the cost is the same), or of
    K steps of ``width`` tokens packed in ``width`` slots each (`core.step_width`)."""
    import jax.numpy as jnp

    from dreamr_jax.spec import core

    n = eng.cfg.max_step_tokens
    toks, lens = jnp.ones((1, k, n), jnp.int32), jnp.full((1, k), width or n, jnp.int32)
    return core.verify_window(
        eng.target.graphdef,
        eng.target.state,
        cache,
        toks,
        lens,
        verdict=eng.verdict,
        verifier=eng.verifier,
        width=width,
    )


def rows(eng, k, n, cache, logits, step_logits, lengths_k, base):
    """Lookahead's target round as the engine runs it: fork K rows, write, take a row."""
    import jax
    import jax.numpy as jnp

    from dreamr_jax.spec import core

    forked = core.fork_rows(cache, base, base, lengths_k, n)
    logits = jnp.concatenate([logits, step_logits[: k - 1]])
    out, cache = core.write_step(
        eng.target.graphdef,
        eng.target.state,
        forked,
        logits,
        jax.random.key(0),
        1,
        jnp.ones((k,), bool),
        eng.tables["target"],
        dec=eng.dec,
    )
    return out, core.take_row(cache, 0)


# ---------------------------------------------------------------------------- ideal times


def ideal_time(
    variant: str, c: dict, k: int, n_req: int, steps: int, rounds: float, fallbacks: float
) -> float:
    """Ideal seconds of a schedule (module docstring) over ``n_req`` requests."""
    p_t = n_req * (c["host_batch"] + c["prefill_target"])
    p_d = n_req * (c["host_batch"] + c["prefill_draft"])
    t, d, a, v = c["step_target"], c["step_draft"], c["append_draft"], c[f"verify_{k}"]
    if variant == "target_only":
        return p_t + steps * t
    if variant == "draft_only":
        return p_d + steps * d
    per = {
        "specreason": rounds * (d + c["verify_1"]) + fallbacks * (t + a),
        "lookahead": rounds * (k * d + v + c["lookahead_rows"]) + fallbacks * a,
        "fpsr_no_overlap": rounds * (k * d + v) + fallbacks * (t + a),
        "fpsr": rounds * v + (rounds + fallbacks) * k * d + fallbacks * (t + a),
        "fpsr_2dev": rounds * max(v, k * d) + fallbacks * (t + a + k * d),
    }
    return p_t + p_d + per[variant]


def iid_counts(variant: str, r: float, k: int, steps: float) -> tuple[float, float]:
    """Expected (rounds R, rejections F) for N steps at i.i.d. acceptance r."""
    if variant in ("target_only", "draft_only"):
        return 0.0, 0.0
    k = 1 if variant == "specreason" else k
    per_round = k if r >= 1 else (1 - r**k) / (1 - r)
    rounds = steps / per_round
    return rounds, rounds * (1 - r**k)


def add_ideal(mode: dict, comps: dict, k: int, n_req: int, r: float | None) -> None:
    """Adds ideal and iid-ideal speedups and measured / ideal to each variant's entry."""
    steps = mode["target_only"]["steps"]
    base = ideal_time("target_only", comps, k, n_req, steps, 0, 0)
    for variant, agg in mode.items():
        if variant.startswith("_"):
            continue
        kk = 1 if variant == "specreason" else k
        ideal = ideal_time(
            variant, comps, kk, n_req, agg["steps"], agg["verify_calls"], agg["fallbacks"]
        )
        agg["ideal_s"] = ideal
        agg["ideal_speedup"] = base / ideal
        agg["measured_over_ideal"] = agg["speedup"] / agg["ideal_speedup"]
        agg["measured_over_ideal_time"] = ideal / agg["wall_s"]
        rate = r if r is not None else agg["acceptance_rate"]
        if rate is not None or variant in ("target_only", "draft_only"):
            rr, ff = iid_counts(variant, rate or 0.0, k, steps)
            agg["ideal_iid_speedup"] = base / ideal_time(variant, comps, kk, n_req, steps, rr, ff)
        if variant == "fpsr":
            two = ideal_time(
                "fpsr_2dev", comps, k, n_req, agg["steps"], agg["verify_calls"], agg["fallbacks"]
            )
            agg["ideal_speedup_2dev"] = base / two
