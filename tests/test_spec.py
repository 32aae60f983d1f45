"""Speculative reasoning: the CPN verifier, the packed verification pass and the engines.

Models are tiny random-weight Qwen3-VLs with the byte tokenizer; decoding is greedy. A
random model rarely writes a blank line, so the step delimiter is chosen as a character the
target actually writes often: then steps end by delimiter, by the cap and (where a test
makes a frequent token the end-of-sequence) by EOS, and the verifier both accepts and
rejects.
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamr_jax.config import ConfigError, to_dataclass
from dreamr_jax.inference.generate import CacheTooShort, make_batch, prefill
from dreamr_jax.models import config as mc
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import make_mesh, shard_model
from dreamr_jax.models.text import KVCache
from dreamr_jax.processing.image import ImageProcessorConfig
from dreamr_jax.processing.tokenizer import byte_tokenizer
from dreamr_jax.spec import Role, SpecConfig, SpecEngine, SpecSetupError, VerifierConfig, core
from dreamr_jax.spec.roles import builtin_config
from dreamr_jax.spec.verify import cpn_probability, verdict_tokens

S, K, STEPS = 6, 3, 6
SPEC_ENGINES = ("specreason", "lookahead", "fpsr")


# ---------------------------------------------------------------------------- CPN


def _cpn_reference(logits, pos, neg):
    x = np.asarray(logits, np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    sp, sn = e[..., pos].sum(-1), e[..., neg].sum(-1)
    with np.errstate(invalid="ignore"):
        return np.where(sp + sn > 0, sp / (sp + sn), 0.5)


def test_cpn_matches_float64_reference_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (64, 50)).astype(np.float32)
    pos, neg = [3, 7], [11]
    got = np.asarray(cpn_probability(jnp.asarray(logits), pos, neg))
    np.testing.assert_allclose(got, _cpn_reference(logits, pos, neg), rtol=0, atol=1e-6)


def test_cpn_is_stable_on_extreme_logits():
    rows = np.zeros((6, 8), np.float32)
    rows[0, [1, 2]] = [1e4, -1e4]  # certain yes
    rows[1, [1, 2]] = [-1e4, 1e4]  # certain no
    rows[2, :] = -1e30
    rows[2, [1, 2]] = [-1e30, -1e30 + 2e23]  # tiny probabilities, ratio still defined
    rows[3, [1, 2]] = [-np.inf, 0.0]
    rows[4, [1, 2]] = [-np.inf, -np.inf]  # both impossible: no evidence
    rows[5, [1, 2]] = [88.0, 87.0]  # exp would overflow in float32
    got = np.asarray(cpn_probability(jnp.asarray(rows), [1], [2]))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _cpn_reference(rows, [1], [2]), atol=1e-6)
    assert got[0] == 1.0 and got[1] == 0.0 and got[3] == 0.0 and got[4] == 0.5


def test_cpn_ignores_non_verdict_logits():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 30)).astype(np.float32)
    b = a.copy()
    b[:, 5:] = rng.normal(0, 50, (4, 25))
    np.testing.assert_allclose(
        cpn_probability(jnp.asarray(a), [0, 1], [2]),
        cpn_probability(jnp.asarray(b), [0, 1], [2]),
        atol=1e-6,
    )


def test_window_layout_matches_brute_force():
    lengths = np.array([2, 0, 3])  # position 2 unused
    s, v = 4, 2
    real, offset, mask = map(np.asarray, core.window_layout(jnp.asarray(lengths), v, s))
    slots = []  # (kind, step, i) per chunk slot
    slots += [("d", k, i) for k in range(3) for i in range(s)]
    slots += [("v", k, i) for k in range(3) for i in range(v)]
    ends = np.cumsum(lengths)
    for q, (kind, k, i) in enumerate(slots):
        is_real = i < lengths[k] if kind == "d" else lengths[k] > 0
        assert real[q] == is_real
        if is_real:
            assert offset[q] == (ends[k] - lengths[k] + i if kind == "d" else ends[k] + i)
        for c, (kind2, k2, i2) in enumerate(slots):
            want = bool(real[c]) and c <= q or (kind == "v" and kind2 == "d" and real[c])
            if kind == "d":
                want = kind2 == "d" and c <= q and bool(real[c])
            elif kind2 == "d":
                want = k2 <= k and bool(real[c])
            else:
                want = k2 == k and i2 <= i and bool(real[c])
            assert mask[q, c] == want, (q, c)


# ----------------------------------------------------------------------- fixtures


@dataclasses.dataclass
class Pair:
    tok: object
    cfg: mc.ModelConfig
    draft: Qwen3VL
    target: Qwen3VL
    ipc: ImageProcessorConfig
    image: np.ndarray
    delimiter: str


@pytest.fixture(scope="module")
def pair() -> Pair:
    tok = byte_tokenizer()
    cfg = builtin_config(tok)
    v = cfg.vision
    side = v.patch_size * v.spatial_merge_size
    ipc = ImageProcessorConfig.for_vision(v, min_pixels=(2 * side) ** 2, max_pixels=(3 * side) ** 2)
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    target = Qwen3VL(cfg, rngs=nnx.Rngs(0))
    draft = Qwen3VL(cfg, rngs=nnx.Rngs(1))
    p = Pair(tok, cfg, draft, target, ipc, image, delimiter="\x00")
    # The delimiter: the character the target writes most often without a delimiter.
    out = _engine(p, "target_only", max_steps=3).run(_request(p)).tokens
    text = tok.decode(out)
    p.delimiter = collections.Counter(text).most_common(1)[0][0]
    return p


def _engine(
    p: Pair, engine: str, *, alpha=0.5, same=False, draft_role=None, target_role=None, **kw
) -> SpecEngine:
    cfg = SpecConfig(
        engine=engine,
        window=kw.pop("window", K),
        max_step_tokens=kw.pop("max_step_tokens", S),
        max_steps=kw.pop("max_steps", STEPS),
        delimiter=p.delimiter,
        **kw,
    )
    target = target_role or Role.of(p.target)
    draft = target if same else (draft_role or Role.of(p.draft))
    return SpecEngine(draft, target, p.tok, cfg, VerifierConfig(alpha=alpha), image_processor=p.ipc)


def _request(p: Pair, question: str = "How many red squares?"):
    return _engine(p, "target_only").request(p.image, question)


def _run(p: Pair, engine: str, **kw):
    return _engine(p, engine, **kw).run(_request(p))


@pytest.fixture(scope="module")
def mid_alpha(pair) -> float:
    """An α between the verifier's scores, so that both decisions occur."""
    res = _run(pair, "specreason", alpha=0.0)
    ps = sorted(d.p for d in res.decisions)
    return float(np.median(ps))


# --------------------------------------------------------------- core pieces


def _prefix_cache(p: Pair, model: Qwen3VL, ids: list[int], length=512):
    req = _request(p)
    batch = make_batch(
        p.cfg, [ids], pixel_values=req.pixel_values, image_grid_thw=req.image_grid_thw
    )
    graphdef, state = nnx.split(model)
    cache = KVCache.init(p.cfg.text, 1, length)
    logits, cache = prefill(graphdef, state, batch, cache)
    return graphdef, state, cache, logits, batch


def _full_logits(p: Pair, model: Qwen3VL, ids: list[int]):
    req = _request(p)
    out = model(np.asarray([ids]), req.pixel_values, req.image_grid_thw)
    return np.asarray(out.logits[0])


def test_verify_window_matches_uncached_forward(pair):
    """Each p and each step's next-token logits equal a full forward over the plain
    sequence (prompt + d_<k + d_k + suffix): the packed mask and positions are right."""
    prompt = _request(pair).prompt_ids
    rng = np.random.default_rng(3)
    lengths = [4, 1, 0]  # third window position unused
    steps = [rng.integers(0, 200, n).tolist() for n in lengths]
    verdict = verdict_tokens(pair.tok, VerifierConfig())
    graphdef, state, cache, _, batch = _prefix_cache(pair, pair.target, prompt)
    tokens = np.zeros((3, S), np.int32)
    for k, st in enumerate(steps):
        tokens[k, : len(st)] = st
    p, ok, step_logits, _ = core.verify_window(
        graphdef,
        state,
        cache,
        jnp.asarray(tokens)[None],
        jnp.asarray(lengths, jnp.int32)[None],
        verdict=verdict,
        verifier=VerifierConfig(alpha=0.5),
    )
    p, ok, step_logits = p[0], ok[0], step_logits[0]
    for k in range(2):
        prefix = prompt + sum(steps[: k + 1], [])
        full = _full_logits(pair, pair.target, prefix + list(verdict.suffix))
        want = cpn_probability(jnp.asarray(full[-1]), verdict.positive, verdict.negative)
        np.testing.assert_allclose(p[k], want, atol=1e-5)
        assert bool(ok[k]) == bool(want > 0.5)
        np.testing.assert_allclose(step_logits[k], full[len(prefix) - 1], atol=1e-4)
    assert not bool(ok[2])  # an unused position is never accepted


def test_verify_window_alpha_sweep_compiles_once(pair):
    """α is a value of the compiled verification pass: windows verified at several α
    share one compilation, and each α's decisions are exactly ``p > α`` of the same p."""
    prompt = _request(pair).prompt_ids
    verdict = verdict_tokens(pair.tok, VerifierConfig())
    graphdef, state, cache, _, _ = _prefix_cache(pair, pair.target, prompt)
    tokens = np.arange(2 * S, dtype=np.int32).reshape(1, 2, S) % 150 + 40
    lengths = jnp.asarray([[S, S // 2]], jnp.int32)

    def verify(alpha):
        return core.verify_window(
            graphdef,
            state,
            jax.tree.map(jnp.copy, cache),
            jnp.asarray(tokens),
            lengths,
            verdict=verdict,
            verifier=VerifierConfig(alpha=alpha),
        )

    verify(0.5)  # compiles for this shape (any α)
    compiled = core._verify_window._cache_size()
    ps = []
    for alpha in (0.0, 0.3, 0.7, 1.0):
        p, ok, _, _ = verify(alpha)
        np.testing.assert_array_equal(np.asarray(ok), np.asarray(p) > alpha)
        ps.append(np.asarray(p))
    assert core._verify_window._cache_size() == compiled
    for p in ps[1:]:
        np.testing.assert_array_equal(p, ps[0])
    assert np.asarray(ok).sum() == 0 and (ps[0] > 0.0).all()  # α = 1 rejects, α = 0 accepts


def test_step_widths():
    assert core.step_widths(32) == (8, 16, 32)
    assert core.step_widths(100) == (8, 16, 32, 64, 100)
    assert core.step_widths(8) == (8,) and core.step_widths(6) == (6,)
    assert [core.step_width(n, 32) for n in (0, 1, 8, 9, 16, 17, 32)] == [8, 8, 8, 16, 16, 32, 32]
    assert core.step_width(5, 6) == 6
    for bad in (-1, 33):
        with pytest.raises(ValueError, match="max_step_tokens=32"):
            core.step_width(bad, 32)


def test_narrow_packing_gives_the_same_verdicts_and_cache(pair):
    """Steps packed in W < S slots: the same p, decisions and step logits as in S slots,
    and after accepting d_1 (rewind to its W-slot region) the same next step."""
    s, w = 16, 8
    prompt = _request(pair).prompt_ids
    rng = np.random.default_rng(5)
    lengths = [5, 8, 0]
    tokens = np.zeros((1, 3, s), np.int32)
    for k, n in enumerate(lengths):
        tokens[0, k, :n] = rng.integers(40, 200, n)
    verdict = verdict_tokens(pair.tok, VerifierConfig())
    eng = _engine(pair, "target_only")
    args = (jax.random.key(0), 1, jnp.ones((1,), bool), eng.tables["target"])
    got = {}
    for width in (None, w):
        graphdef, state, cache, _, _ = _prefix_cache(pair, pair.target, prompt)
        base, pos = int(cache.index), int(cache.next_pos[0])
        p, ok, step_logits, cache = core.verify_window(
            graphdef,
            state,
            cache,
            jnp.asarray(tokens),
            jnp.asarray([lengths], jnp.int32),
            verdict=verdict,
            verifier=VerifierConfig(alpha=0.5),
            width=width,
        )
        cache = core.rewind(cache, base + (width or s), [pos + lengths[0]])
        out, _ = core.write_step(graphdef, state, cache, step_logits[:, 0], *args, dec=eng.dec)
        got[width] = (p, ok, step_logits[:, :2], out.tokens, out.lengths)
    (p1, ok1, l1, t1, n1), (p2, ok2, l2, t2, n2) = got[None], got[w]
    np.testing.assert_allclose(p2, p1, atol=1e-5)
    np.testing.assert_array_equal(ok2, ok1)
    np.testing.assert_allclose(l2, l1, atol=1e-4)
    np.testing.assert_array_equal(t2, t1)
    np.testing.assert_array_equal(n2, n1)
    with pytest.raises(ValueError, match="width=17"):
        core.verify_window(
            None,
            None,
            None,
            jnp.asarray(tokens),
            None,
            verdict=verdict,
            verifier=VerifierConfig(),
            width=17,
        )


def test_rewind_then_decode_equals_fresh_prefix(pair):
    """Accepting d_1 of a verified window by rewinding gives the same next step as a cache
    prefilled with prompt + d_1 from scratch."""
    prompt = _request(pair).prompt_ids
    steps = [[65, 66, 67], [68, 69]]
    verdict = verdict_tokens(pair.tok, VerifierConfig())
    graphdef, state, cache, _, batch = _prefix_cache(pair, pair.target, prompt)
    base, pos = int(cache.index), int(cache.next_pos[0])
    tokens = np.zeros((2, S), np.int32)
    tokens[0, :3], tokens[1, :2] = steps
    _, _, step_logits, cache = core.verify_window(
        graphdef,
        state,
        cache,
        jnp.asarray(tokens)[None],
        jnp.asarray([[3, 2]], jnp.int32),
        verdict=verdict,
        verifier=VerifierConfig(),
    )
    cache = core.rewind(cache, base + S, [pos + 3])
    eng = _engine(pair, "target_only")
    args = (jax.random.key(0), 1, jnp.ones((1,), bool), eng.tables["target"])
    out, _ = core.write_step(graphdef, state, cache, step_logits[:, 0], *args, dec=eng.dec)
    g2, s2, fresh, logits, _ = _prefix_cache(pair, pair.target, prompt + steps[0])
    want, _ = core.write_step(g2, s2, fresh, logits, *args, dec=eng.dec)
    np.testing.assert_array_equal(out.tokens, want.tokens)
    assert int(out.lengths[0]) == int(want.lengths[0]) > 0


# -------------------------------------------------------------- engine invariants


def test_steps_end_at_delimiter_or_cap(pair):
    res = _run(pair, "target_only")
    assert len(res.steps) == STEPS
    for st in res.steps:
        text = pair.tok.decode(st.tokens)
        assert 1 <= len(st.tokens) <= S
        if len(st.tokens) < S:
            assert text.endswith(pair.delimiter)
        assert pair.delimiter not in text[:-1]
    assert any(len(st.tokens) < S for st in res.steps), "no step ended at the delimiter"


@pytest.mark.parametrize("engine", SPEC_ENGINES)
def test_same_model_gives_target_only_output(pair, engine):
    want = _run(pair, "target_only").tokens
    assert _run(pair, engine, same=True).tokens == want


@pytest.mark.parametrize("engine", SPEC_ENGINES)
def test_alpha_extremes(pair, engine):
    """α = 0 accepts every draft step (draft-only output), α = 1 none (target-only)."""
    assert _run(pair, engine, alpha=0.0).tokens == _run(pair, "draft_only").tokens
    res = _run(pair, engine, alpha=1.0)
    assert res.tokens == _run(pair, "target_only").tokens
    assert res.metrics.accepted == 0 and res.metrics.fallbacks == len(res.steps)


def test_long_fallback_chains_stay_in_the_cache(pair):
    """Every lookahead round falls back (α = 1) for many steps: the chosen row's step must
    take the slots the other engines use, or the cache overflows and the text goes wrong."""
    eng = _engine(pair, "lookahead", alpha=1.0, max_steps=24)
    req = _request(pair)
    res = eng.run(req)
    assert len(res.steps) > 16 and res.metrics.fallbacks == len(res.steps)
    assert res.tokens == _run(pair, "target_only", max_steps=24).tokens


def test_schedules_agree_on_text_and_decisions(pair, mid_alpha):
    runs = {
        name: _run(pair, engine, alpha=mid_alpha, **kw)
        for name, engine, kw in [
            ("specreason", "specreason", {}),
            ("lookahead", "lookahead", {}),
            ("fpsr", "fpsr", {}),
            ("fpsr_no_overlap", "fpsr", {"overlap": False}),
        ]
    }
    ref = runs["specreason"]
    verdicts = [d.accepted for d in ref.decisions]
    assert any(verdicts) and not all(verdicts), "α should give both decisions"
    for name, res in runs.items():
        assert res.tokens == ref.tokens, name
        assert [(d.index, d.tokens, d.accepted) for d in res.decisions] == [
            (d.index, d.tokens, d.accepted) for d in ref.decisions
        ], name
        np.testing.assert_allclose(
            [d.p for d in res.decisions], [d.p for d in ref.decisions], atol=1e-5
        )
    # Cost differs: lookahead writes K target steps per rejected window, fpsr one.
    assert runs["lookahead"].metrics.target_tokens > runs["fpsr"].metrics.target_tokens


def test_engines_pack_steps_narrower_than_the_cap(pair, monkeypatch):
    """With S = 16, windows of short steps are verified in 8 slots a step
    (`core.step_width`) and every invariant still holds: the same model gives target_only's
    text, α = 0 / 1 give draft_only's / target_only's, the schedules agree on text and
    decisions, and each decision equals the uncached verifier."""
    s, widths, verify = 16, [], core.verify_window

    def spy(*args, **kw):
        widths.append(kw["width"])
        return verify(*args, **kw)

    monkeypatch.setattr(core, "verify_window", spy)
    run = lambda engine, **kw: _run(pair, engine, max_step_tokens=s, **kw)  # noqa: E731
    target, draft = run("target_only").tokens, run("draft_only").tokens
    ps = sorted(d.p for d in run("specreason", alpha=0.0).decisions)
    alpha = float(np.median(ps))
    ref = run("specreason", alpha=alpha)
    assert any(d.accepted for d in ref.decisions) and not all(d.accepted for d in ref.decisions)
    for engine in SPEC_ENGINES:
        assert run(engine, same=True).tokens == target, engine
        assert run(engine, alpha=0.0).tokens == draft, engine
        assert run(engine, alpha=1.0).tokens == target, engine
        res = run(engine, alpha=alpha)
        assert res.tokens == ref.tokens, engine
        assert [(d.index, d.tokens, d.accepted) for d in res.decisions] == [
            (d.index, d.tokens, d.accepted) for d in ref.decisions
        ], engine
    assert min(widths) == 8 < s, widths
    _check_against_uncached(pair, ref, alpha)


def test_precompile_covers_every_width(pair):
    """`SpecEngine.precompile` compiles the pass at each width, so no run compiles one."""
    eng = _engine(pair, "fpsr", alpha=0.0, window=2, max_step_tokens=16)
    req = _request(pair)
    before = core._verify_window._cache_size()
    eng.precompile(req)
    compiled = core._verify_window._cache_size()
    assert compiled - before == len(core.step_widths(16)) == 2
    for alpha in (0.0, 1.0):
        _engine(pair, "fpsr", alpha=alpha, window=2, max_step_tokens=16).run(req)
    assert core._verify_window._cache_size() == compiled
    _engine(pair, "target_only").precompile(req)  # a baseline: nothing to compile
    assert core._verify_window._cache_size() == compiled


def _check_against_uncached(pair, res, alpha: float) -> None:
    """Every decision of ``res`` equals a slow verifier: a full forward over prompt +
    accepted chain + the candidate step + the verification suffix."""
    prompt = _request(pair).prompt_ids
    verdict = verdict_tokens(pair.tok, VerifierConfig())
    for d in res.decisions:
        prefix = prompt + [t for st in res.steps[: d.index] for t in st.tokens]
        logits = _full_logits(pair, pair.target, prefix + list(d.tokens) + list(verdict.suffix))
        p = float(cpn_probability(jnp.asarray(logits[-1]), verdict.positive, verdict.negative))
        assert abs(p - d.p) < 1e-5
        assert (p > alpha) == d.accepted


def test_decisions_equal_uncached_reference(pair, mid_alpha):
    _check_against_uncached(pair, _run(pair, "fpsr", alpha=mid_alpha), mid_alpha)


def test_chain_structure_and_metrics(pair, mid_alpha):
    res = _run(pair, "fpsr", alpha=mid_alpha)
    m = res.metrics
    by_source = collections.Counter(st.source for st in res.steps)
    assert by_source["draft"] == m.accepted and by_source["target"] == m.fallbacks
    assert m.judged == len(res.decisions) == m.accepted + m.fallbacks
    assert sum(m.judged_by_pos) == m.judged and sum(m.accepted_by_pos) == m.accepted
    assert m.steps == len(res.steps) == STEPS and m.output_tokens == len(res.tokens)
    for st in res.steps:
        if st.source == "target":
            assert st.window_pos is not None and st.p is not None and st.p <= mid_alpha


def test_bonus_step_after_full_acceptance(pair):
    res = {e: _run(pair, e, alpha=0.0, bonus_step=True) for e in ("lookahead", "fpsr")}
    assert res["lookahead"].tokens == res["fpsr"].tokens
    sources = [st.source for st in res["fpsr"].steps]
    assert sources[: K + 1] == ["draft"] * K + ["target"]
    assert res["fpsr"].metrics.bonus_steps >= 1


def test_eos_ends_the_chain_in_every_engine(pair, mid_alpha):
    """Make the target's most frequent non-delimiter token the end-of-sequence: chains stop
    right after it, and the schedules still agree."""
    text = pair.tok.decode(_run(pair, "target_only").tokens)
    chars = [c for c, _ in collections.Counter(text).most_common() if c != pair.delimiter]
    eos = pair.tok.encode(chars[0], add_special_tokens=False)[0]
    results = {}
    for engine in ("target_only", "draft_only", *SPEC_ENGINES):
        eng = _engine(pair, engine, alpha=mid_alpha, max_steps=12)
        eng.eos_ids = (eos,)
        tables = core.step_tables(pair.tok, pair.cfg.text.vocab_size, pair.delimiter, (eos,))
        eng.tables = {"draft": tables, "target": tables}
        results[engine] = eng.run(_request(pair))
    for engine, res in results.items():
        toks = res.tokens
        assert eos not in toks[:-1], engine
        if len(res.steps) < 12:
            assert toks[-1] == eos, engine
    ref = results["specreason"].tokens
    assert results["lookahead"].tokens == ref and results["fpsr"].tokens == ref


def test_separate_device_sets_match_one_device(pair, mid_alpha):
    """Draft on 2 devices, target on 4 others (fsdp x tensor): same output as one device,
    also with steps packed narrower than S (S = 16) and lookahead's rows (and bonus row)
    forked."""
    devices = jax.devices()
    draft = shard_model(Qwen3VL(pair.cfg, rngs=nnx.Rngs(1)), make_mesh((2, 1, 1), devices[:2]))
    target_mesh = make_mesh((1, 2, 2), devices[2:6])
    target = shard_model(Qwen3VL(pair.cfg, rngs=nnx.Rngs(0)), target_mesh)
    for engine, s, bonus in (("fpsr", S, False), ("fpsr", 16, False), ("lookahead", 16, True)):
        eng = _engine(
            pair,
            engine,
            alpha=mid_alpha,
            max_step_tokens=s,
            bonus_step=bonus,
            draft_role=Role.of(draft, make_mesh((2, 1, 1), devices[:2])),
            target_role=Role.of(target, target_mesh),
        )
        res = eng.run(_request(pair))
        want = _run(pair, engine, alpha=mid_alpha, max_step_tokens=s, bonus_step=bonus)
        assert res.tokens == want.tokens, (engine, s)
        assert [d.accepted for d in res.decisions] == [d.accepted for d in want.decisions]


# -------------------------------------------------------------------- bad input


def test_mismatched_models_are_refused_before_work(pair):
    other = dataclasses.replace(pair.cfg, image_token_id=pair.cfg.image_token_id - 1)
    draft = Role.of(pair.draft)
    draft.cfg = other
    with pytest.raises(SpecSetupError, match="image_token_id"):
        _engine(pair, "fpsr", draft_role=draft)
    bigger = dataclasses.replace(pair.cfg, text=dataclasses.replace(pair.cfg.text, vocab_size=384))
    draft.cfg = bigger
    with pytest.raises(SpecSetupError, match="vocab_size"):
        _engine(pair, "fpsr", draft_role=draft)


@pytest.mark.parametrize(
    "section, cls, value, match",
    [
        ({"alpha": 1.5}, VerifierConfig, None, "alpha=1.5: must be in"),
        ({"alpha": -0.1}, VerifierConfig, None, "alpha=-0.1"),
        ({"window": 0}, SpecConfig, None, "window=0: must be >= 1"),
        ({"engine": "medusa"}, SpecConfig, None, "engine='medusa'"),
    ],
)
def test_bad_config_values(section, cls, value, match):
    with pytest.raises(ConfigError, match=match):
        to_dataclass(cls, section, "spec")


def test_unreadable_and_empty_images(pair, tmp_path):
    eng = _engine(pair, "fpsr")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        eng.request(str(bad), "q")
    with pytest.raises(ValueError):
        eng.request(np.zeros((0, 0, 3), np.uint8), "q")


def test_question_longer_than_cache(pair):
    eng = _engine(pair, "fpsr", cache_length=256)
    req = eng.request(pair.image, "why? " * 80)
    with pytest.raises(CacheTooShort, match="cache_length"):
        eng.run(req)


def test_forced_acceptance_is_shared_by_all_schedules(pair):
    """The benchmark override: same seeded decisions in every schedule, at about the rate."""
    runs = {}
    for engine in SPEC_ENGINES:
        eng = _engine(pair, engine, max_steps=12)
        eng.forced_acceptance = 0.5
        runs[engine] = eng.run(_request(pair))
    ref = runs["specreason"]
    for res in runs.values():
        assert [d.accepted for d in res.decisions] == [d.accepted for d in ref.decisions]
        assert res.tokens == ref.tokens
    assert 0 < ref.metrics.accepted < ref.metrics.judged
    with pytest.raises(ValueError, match="forced_acceptance"):
        SpecEngine(
            Role.of(pair.draft), Role.of(pair.target), pair.tok, SpecConfig(), forced_acceptance=1.5
        )
