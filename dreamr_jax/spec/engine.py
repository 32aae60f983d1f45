"""Step-level speculative reasoning engines on one shared core.

    engine = SpecEngine(draft, target, tokenizer, SpecConfig(engine="fpsr"))
    result = engine.run(engine.request(image, question))

Five schedules, selected by ``SpecConfig.engine``, all built from `dreamr_jax.spec.core`:

* ``target_only`` / ``draft_only``: one model writes every step (the baselines).
* ``specreason``: the draft writes a step, the target verifies it (one packed pass), and
  on rejection the target writes that step itself.
* ``lookahead`` (Lookahead-Reasoning): the draft writes K steps; the target verifies all K
  and, in the same round, writes its own step for every window position (K rows sharing
  the prefix cache); accept up to the first rejection and take the target's step there.
* ``fpsr``: the same decisions, with early stopping (the target writes only the one step
  it needs: after the packed verification, which is one forward pass, nothing past the
  first rejection is started) and overlap (while the target verifies window w, the draft
  already writes window w+1 assuming full acceptance; with draft and target on separate
  devices that time is hidden; on one device set JAX's async dispatch time-shares it).

With greedy decoding ``specreason``, ``lookahead`` and ``fpsr`` (bonus step off) make the
same decisions and produce the same text: they differ only in schedule. The bonus step
(``bonus_step``: on full acceptance the target appends its own step K+1) is off by default:
in the verify-first schedule it costs a full target step and discards the draft's
precomputed next window.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamr_jax.config import require
from dreamr_jax.data.steps import StepConfig, delimiter_token_sequences
from dreamr_jax.inference.generate import (
    CacheTooShort,
    StaticGraph,
    bucket,
    make_batch,
    prefill,
)
from dreamr_jax.inference.sampling import SamplingConfig
from dreamr_jax.models.text import KVCache
from dreamr_jax.processing import build_prompt, preprocess_images
from dreamr_jax.spec import core
from dreamr_jax.spec.metrics import RequestMetrics
from dreamr_jax.spec.verify import VerifierConfig, verdict_tokens

ENGINES = ("target_only", "draft_only", "specreason", "lookahead", "fpsr")


class SpecSetupError(ValueError):
    """Draft and target (or a request) cannot work together; raised before model work."""


@dataclasses.dataclass(frozen=True)
class SpecConfig:
    """Engine settings (symbols as in DESIGN.md §2).

    Attributes:
      engine: one of `ENGINES`.
      window: K, draft steps per verification round (``specreason`` uses 1).
      bonus_step: on full acceptance the target appends its own step K+1 (``lookahead``
        and ``fpsr``).
      overlap: ``fpsr`` drafts window w+1 while the target verifies window w.
      max_step_tokens: S, the cap on one step's tokens.
      max_steps: a chain ends after this many steps.
      delimiter: text that ends a step.
      temperature: 0 for greedy decoding (both models), else the sampling temperature.
      top_k: keep the k most likely tokens (0 = all).
      top_p: nucleus mass in (0, 1].
      seed: sampling seed.
      cache_length: KV-cache slots per model (static: one compilation); 0 sizes it to the
        prompt and ``max_steps``. A request that does not fit is refused before any model
        work.
    """

    engine: str = "fpsr"
    window: int = 4
    bonus_step: bool = False
    overlap: bool = True
    max_step_tokens: int = 64
    max_steps: int = 16
    delimiter: str = "\n\n"
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    cache_length: int = 0

    def validate(self) -> SpecConfig:
        require(self.engine in ENGINES, "engine", self.engine, f"must be one of {ENGINES}")
        require(self.window >= 1, "window", self.window, "must be >= 1 (K draft steps)")
        require(self.max_step_tokens >= 1, "max_step_tokens", self.max_step_tokens, "must be >= 1")
        require(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        require(bool(self.delimiter), "delimiter", self.delimiter, "must be non-empty")
        require(self.temperature >= 0, "temperature", self.temperature, "must be >= 0")
        require(self.top_k >= 0, "top_k", self.top_k, "must be >= 0")
        require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        require(self.cache_length >= 0, "cache_length", self.cache_length, "must be >= 0")
        return self

    @property
    def k(self) -> int:
        """The window size this engine uses."""
        return 1 if self.engine == "specreason" else self.window


@dataclasses.dataclass
class Role:
    """One model of the pair: split once, optionally pinned to its own devices.

    Attributes:
      graphdef, state: ``nnx.split(model)`` (the graphdef as a `StaticGraph`, hashed once).
      cfg: the model's `ModelConfig`.
      sharding: where this role's small inputs go (replicated on its mesh), or None for
        the default device.
    """

    graphdef: nnx.GraphDef
    state: nnx.State
    cfg: object
    dtype: object = jnp.float32
    sharding: jax.sharding.Sharding | None = None

    @classmethod
    def of(cls, model, mesh: jax.sharding.Mesh | None = None) -> Role:
        graphdef, state = nnx.split(model)
        sharding = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.P())
        return cls(StaticGraph(graphdef), state, model.cfg, model.dtype, sharding)

    def put(self, tree):
        return tree if self.sharding is None else jax.device_put(tree, self.sharding)


@dataclasses.dataclass
class Request:
    """A tokenised question: prompt ids (image placeholders expanded) and its pixels."""

    prompt_ids: list[int]
    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None


@dataclasses.dataclass
class Step:
    """One step of the final chain.

    Attributes:
      tokens: its token ids (delimiter or end-of-sequence included).
      source: "draft" (accepted), "target" (fallback, bonus, or a baseline's step) or
        "draft_only".
      window_pos: 1-based position in its verification window (a bonus step: K+1; None
        for a baseline's step).
      p: the verifier's score of the draft step this one accepts or replaces.
    """

    tokens: list[int]
    source: str
    window_pos: int | None = None
    p: float | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """One verifier decision: draft step ``tokens`` proposed as chain step ``index``."""

    index: int
    tokens: tuple[int, ...]
    accepted: bool
    p: float


@dataclasses.dataclass
class Result:
    """A finished request: the chain, each verification decision, and metrics."""

    steps: list[Step]
    decisions: list[Decision]
    metrics: RequestMetrics

    @property
    def tokens(self) -> list[int]:
        return [t for s in self.steps for t in s.tokens]


@dataclasses.dataclass
class _Head:
    """A batch-1 cache with its host-side write head and next-token logits."""

    cache: KVCache
    logits: jax.Array
    index: int
    pos: int


class SpecEngine:
    """Runs requests through one of the `ENGINES` with a draft and a target model."""

    def __init__(
        self,
        draft: Role,
        target: Role,
        tokenizer,
        cfg: SpecConfig,
        verifier: VerifierConfig | None = None,
        image_processor=None,
        forced_acceptance: float | None = None,
    ):
        """Builds the engine (no model work).

        Args:
          draft, target: the two models (the same `Role` twice is allowed).
          tokenizer: the shared Hugging Face tokenizer.
          cfg: engine settings; verifier: CPN settings.
          image_processor: image settings for `request`.
          forced_acceptance: FOR BENCHMARKS ONLY. Replaces every verifier decision with a
            seeded coin flip accepting with this probability (the verification pass still
            runs, so costs are real), to time the schedules at a controlled acceptance rate
            independent of model quality. The flip depends only on the seed and the chain
            step index, so every schedule sees the same decisions.
        """
        self.cfg = cfg.validate()
        self.image_processor = image_processor
        if forced_acceptance is not None and not 0.0 <= forced_acceptance <= 1.0:
            raise ValueError(f"forced_acceptance={forced_acceptance} must be in [0, 1].")
        self.forced_acceptance = forced_acceptance
        self.verifier = (verifier or VerifierConfig()).validate()
        self.draft, self.target, self.tokenizer = draft, target, tokenizer
        check_pair(draft.cfg, target.cfg)
        self.verdict = verdict_tokens(tokenizer, self.verifier)
        eos = [i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None]
        self.eos_ids = tuple(dict.fromkeys(eos + [tokenizer.convert_tokens_to_ids("<|im_end|>")]))
        step_cfg = StepConfig(cfg.delimiter, cfg.max_step_tokens)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        sampling = SamplingConfig(
            max_new_tokens=cfg.max_step_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            stop_sequences=delimiter_token_sequences(tokenizer, step_cfg),
            pad_id=self.pad_id,
            suppress_token_ids=target.cfg.vision_token_ids,
        ).validate()
        self.dec = core.StepDecode(cfg.max_step_tokens, sampling)
        vocab = target.cfg.text.vocab_size
        tables = core.step_tables(tokenizer, vocab, cfg.delimiter, self.eos_ids)
        self.tables = {"draft": draft.put(tables), "target": target.put(tables)}
        # Made once, not per request or step: each eager op is a dispatch (~0.1-0.2 ms).
        self.rng = jax.random.key(cfg.seed)
        one = np.ones((1,), bool)
        self.one_row = {
            "draft": draft.put(jnp.asarray(one)),
            "target": target.put(jnp.asarray(one)),
        }
        # Lookahead's target rows: one per window position, and the bonus row.
        rows = cfg.k + int(cfg.bonus_step)
        self.all_rows = target.put(jnp.asarray(np.ones((rows,), bool)))

    # ------------------------------------------------------------------ requests

    def request(self, image, question: str) -> Request:
        """`make_request` with this engine's tokenizer and image settings."""
        if self.image_processor is None:
            raise SpecSetupError("the engine was built without an image_processor config.")
        return make_request(self.tokenizer, self.image_processor, self.target.cfg, image, question)

    def cache_length(self, prompt_slots: int) -> int:
        """`cache_slots` for this engine (``prompt_slots``: the padded prompt length)."""
        return cache_slots(
            self.cfg,
            len(self.verdict.suffix),
            prompt_slots,
            self.target.cfg.text.max_position_embeddings,
        )

    def precompile(self, req: Request) -> None:
        """Compiles the packed verification pass at every width it may take
        (`core.step_widths`) for ``req``'s cache shape. The width follows the window's
        longest draft step, so a warm-up request may not meet them all and a timed one
        would compile the rest; a baseline engine needs nothing. Timing harnesses call it
        with each shape's warm-up request."""
        if self.cfg.engine in ("target_only", "draft_only"):
            return
        metrics = RequestMetrics(engine=self.cfg.engine, window=self.cfg.k)
        run, t = _Run(self, req, metrics, None), self.target
        k, s = self.cfg.k, self.cfg.max_step_tokens
        tokens = t.put(jnp.full((1, k, s), self.pad_id, jnp.int32))
        for w in core.step_widths(s):
            cache = KVCache.init(t.cfg.text, 1, run.length, t.dtype)
            out = core.verify_window(
                t.graphdef,
                t.state,
                cache,
                tokens,
                t.put(np.full((1, k), w, np.int32)),  # as `windows` passes them
                verdict=self.verdict,
                verifier=self.verifier,
                width=w,
            )
            jax.block_until_ready(out)

    # ------------------------------------------------------------------- running

    def run(self, req: Request, on_step: Callable[[Step], None] | None = None) -> Result:
        """Answers one request; ``on_step`` sees each step as soon as it is final."""
        metrics = RequestMetrics(engine=self.cfg.engine, window=self.cfg.k)
        run = _Run(self, req, metrics, on_step)
        t0 = time.perf_counter()
        {
            "target_only": run.single,
            "draft_only": run.single,
            "specreason": run.windows,
            "lookahead": run.windows,
            "fpsr": run.windows,
        }[self.cfg.engine]()
        metrics.wall_s = time.perf_counter() - t0
        metrics.output_tokens = sum(len(s.tokens) for s in run.steps)
        metrics.steps = len(run.steps)
        return Result(run.steps, run.decisions, metrics)


def make_request(tokenizer, image_processor, model_cfg, image, question: str) -> Request:
    """Tokenises ``question`` about ``image`` (array, PIL image or path) with the chat
    template. Needs no weights, so callers check requests before loading models.

    Raises:
      FileNotFoundError / ValueError: an unreadable, corrupt or empty image (named).
    """
    pixels, grid = preprocess_images([image], image_processor)
    content = [{"type": "image"}, {"type": "text", "text": question}]
    merge = model_cfg.vision.spatial_merge_size
    ids, _ = build_prompt(tokenizer, [{"role": "user", "content": content}], grid, merge_size=merge)
    return Request(ids, pixels, grid)


def cache_slots(cfg: SpecConfig, suffix_len: int, prompt_slots: int, max_positions: int) -> int:
    """Static cache slots for a padded prompt: room for ``max_steps`` steps in S-slot
    regions, plus one window of draft steps and verification suffixes (and a bonus row) in
    flight.

    Raises:
      CacheTooShort: the request needs more slots than ``cfg.cache_length`` allows (or
        than ``max_positions`` when it is 0).
    """
    s = cfg.max_step_tokens
    inflight = (cfg.k + 1) * (s + suffix_len) + (cfg.k + 1) * s
    need = prompt_slots + cfg.max_steps * s + inflight
    limit = cfg.cache_length or max_positions
    if need > limit:
        raise CacheTooShort(
            f"the prompt fills {prompt_slots} slots (padded) and up to {cfg.max_steps} steps "
            f"of {s} tokens plus a window in flight need {need} cache slots, but the limit "
            f"is {limit}; shorten the question, lower max_steps / max_step_tokens / window, "
            "or raise cache_length."
        )
    return cfg.cache_length or bucket(need, step=256)


def check_pair(draft_cfg, target_cfg) -> None:
    """Draft and target must read the same prompts: same vocabulary, image token ids and
    image patching (one preprocessing serves both)."""
    for name in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
        a, b = getattr(draft_cfg, name), getattr(target_cfg, name)
        if a != b:
            raise SpecSetupError(
                f"draft {name}={a} but target {name}={b}: the two models need the same "
                "tokenizer and special tokens (e.g. two Qwen3-VL checkpoints)."
            )
    if draft_cfg.text.vocab_size != target_cfg.text.vocab_size:
        raise SpecSetupError(
            f"draft vocab_size={draft_cfg.text.vocab_size} but target "
            f"vocab_size={target_cfg.text.vocab_size}: the models must share a tokenizer."
        )
    for name in ("patch_size", "temporal_patch_size", "spatial_merge_size"):
        a, b = getattr(draft_cfg.vision, name), getattr(target_cfg.vision, name)
        if a != b:
            raise SpecSetupError(
                f"draft vision.{name}={a} but target vision.{name}={b}: one image "
                "preprocessing must serve both models."
            )


class _Run:
    """The state of one request: both heads, the chain so far, the metrics."""

    def __init__(self, eng: SpecEngine, req: Request, metrics: RequestMetrics, on_step):
        self.eng, self.m, self.on_step = eng, metrics, on_step
        self.steps: list[Step] = []
        self.decisions: list[Decision] = []
        self.done = False
        self.calls = 0
        cfg = eng.target.cfg
        batch = make_batch(
            cfg,
            [req.prompt_ids],
            pixel_values=req.pixel_values,
            image_grid_thw=req.image_grid_thw,
            pad_id=eng.pad_id,
        )
        self.length = eng.cache_length(batch.shape[1])
        self.batch = batch
        self.start_pos = int(jnp.max(batch.positions)) + 1
        self.heads: dict[str, _Head] = {}

    # --------------------------------------------------------------- primitives

    def role(self, name: str) -> Role:
        return self.eng.draft if name == "draft" else self.eng.target

    def head(self, name: str) -> _Head:
        """The role's head, prefilling the prompt on first use."""
        if name not in self.heads:
            role = self.role(name)
            cache = KVCache.init(role.cfg.text, 1, self.length, role.dtype)
            logits, cache = prefill(role.graphdef, role.state, role.put(self.batch), cache)
            self.heads[name] = _Head(cache, logits, self.batch.shape[1], self.start_pos)
            if name == "target":
                self.m.target_passes += 1
        return self.heads[name]

    def key(self) -> tuple[jax.Array, np.uint32]:
        """``(rng, call)``: a step samples with ``fold_in(rng, call)`` (`core.write_step`)."""
        self.calls += 1
        return self.eng.rng, np.uint32(self.calls)

    def write(self, name: str, head: _Head, active=None):
        """Dispatches one step from ``head``; returns ``(StepOutput, cache)`` (async)."""
        active = self.eng.one_row[name] if active is None else active
        role = self.role(name)
        return core.write_step(
            role.graphdef,
            role.state,
            head.cache,
            head.logits,
            *self.key(),
            active,
            self.eng.tables[name],
            dec=self.eng.dec,
        )

    def emit(self, step: Step) -> None:
        if self.done:
            return
        self.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)
        ended = bool(step.tokens) and step.tokens[-1] in self.eng.eos_ids
        self.done = ended or len(self.steps) >= self.eng.cfg.max_steps

    # ----------------------------------------------------------------- baselines

    def single(self) -> None:
        name = "target" if self.eng.cfg.engine == "target_only" else "draft"
        head = self.head(name)
        while not self.done:
            out, cache = self.write(name, head)
            n = int(np.asarray(out.lengths)[0])
            tokens = np.asarray(out.tokens)[0, :n].tolist()
            head = _Head(cache, out.logits, head.index + n, head.pos + n)
            if name == "target":
                self.m.target_tokens += n
                self.m.target_passes += n
            else:
                self.m.draft_tokens += n
            self.emit(Step(tokens, "target" if name == "target" else "draft_only"))

    # ------------------------------------------------------- speculative engines

    def draft_window(self, head: _Head, k: int):
        """Dispatches K draft steps from ``head`` without waiting; steps after an
        end-of-sequence are empty. Returns ``(outputs, final cache)``."""
        outs, cache, logits = [], head.cache, head.logits
        active = self.eng.one_row["draft"]
        for _ in range(k):
            out, cache = self.write("draft", _Head(cache, logits, 0, 0), active)
            outs.append(out)
            logits, active = out.logits, active & ~out.eos
        return outs, cache

    def windows(self) -> None:
        eng, cfg = self.eng, self.eng.cfg
        k, s = cfg.k, cfg.max_step_tokens
        overlap = cfg.engine == "fpsr" and cfg.overlap
        bonus = cfg.bonus_step and cfg.engine in ("lookahead", "fpsr")
        draft, target = self.head("draft"), self.head("target")
        pending = self.draft_window(draft, k)
        while not self.done:
            outs, d_cache = pending
            tokens_ks = jnp.concatenate([o.tokens for o in outs])
            # The pass packs each step in W <= S slots (`core.step_width`); W needs the
            # window's lengths on the host, a wait the pass would make anyway. The host
            # copy is what the target and the judging below receive.
            lengths = [int(x[0]) for x in jax.device_get([o.lengths for o in outs])]
            w = core.step_width(max(lengths), s)
            p, ok, step_logits, t_cache = core.verify_window(
                eng.target.graphdef,
                eng.target.state,
                target.cache,
                *eng.target.put((tokens_ks[None], np.asarray([lengths], np.int32))),
                verdict=eng.verdict,
                verifier=eng.verifier,
                width=w,
            )
            p, ok, step_logits = p[0], ok[0], step_logits[0]
            rows = None
            if cfg.engine == "lookahead":  # the target's K steps in the same round
                rows = self.target_rows(t_cache, target, lengths, step_logits, bonus, w)
            if overlap:  # window w+1 assuming full acceptance, dispatched before syncing
                pending = self.draft_window(_Head(d_cache, outs[-1].logits, 0, 0), k)
            tokens, p_host, ok_host = jax.device_get((tokens_ks, p, ok))
            p_host, ok_host = p_host.tolist(), ok_host.tolist()
            n = sum(1 for x in lengths if x > 0)
            self.m.verify_calls += 1
            self.m.target_passes += 1
            self.m.draft_tokens += sum(lengths)
            a = self.judge(tokens, lengths[:n], p_host, ok_host)
            accepted_len = sum(lengths[:a])
            index, pos = target.index + a * w, target.pos + accepted_len
            logits = step_logits[a - 1 : a] if a else target.logits
            new_target = _Head(core.rewind(t_cache, index, [pos]), logits, index, pos)
            d_index, d_pos = draft.index + accepted_len, draft.pos + accepted_len
            if self.done:
                # Work already dispatched (a speculative window, lookahead's rows) belongs to
                # this request's time, not to whatever runs next.
                jax.block_until_ready((pending, rows))
                break
            if a < n or bonus:
                fallback = a < n
                step, target = self.target_step(new_target, rows, a, w)
                self.m.count_target_step(fallback)
                # A fallback replaces window position a+1; a bonus step follows the window.
                self.emit(Step(step, "target", a + 1, p_host[a] if fallback else None))
                if overlap:  # the speculative window assumed a different prefix
                    wasted = jax.device_get([o.lengths for o in pending[0]])
                    self.m.draft_tokens += int(sum(int(x[0]) for x in wasted))
                    d_cache = pending[1]
                draft = self.draft_append(d_cache, d_index, d_pos, step)
                pending = self.draft_window(draft, k)
            else:
                target = new_target
                if overlap:
                    self.m.overlap_hits += 1
                    draft = _Head(None, None, d_index, d_pos)  # pending holds its cache
                else:
                    draft = _Head(d_cache, outs[-1].logits, d_index, d_pos)
                    pending = self.draft_window(draft, k)

    def judge(self, tokens, lengths, p, ok) -> int:
        """Records decisions and emits accepted draft steps up to the first rejection;
        returns how many were accepted."""
        for i, length in enumerate(lengths):
            if self.done:
                return i
            step = tuple(tokens[i, :length].tolist())
            accepted = bool(ok[i])
            rate = self.eng.forced_acceptance
            if rate is not None:  # benchmark override, see SpecEngine
                coin = np.random.default_rng([self.eng.cfg.seed, len(self.steps)]).random()
                accepted = bool(coin < rate)
            self.decisions.append(Decision(len(self.steps), step, accepted, float(p[i])))
            self.m.count_decision(i, accepted)
            if not accepted:
                return i
            self.emit(Step(list(step), "draft", i + 1, float(p[i])))
        return len(lengths)

    def target_rows(self, t_cache, target: _Head, lengths: list, step_logits, bonus: bool, w: int):
        """Lookahead: the target writes its own step at every window position at once
        (``lengths``: the window's step lengths, on the host; ``w``: the verification
        pass's slots per step). Everything it passes is placed on the target's devices."""
        eng = self.eng
        lengths = np.asarray(lengths + [0] * bonus, np.int32)  # the bonus row: after d_K
        rows = lengths.shape[0]
        lengths = eng.target.put(lengths)
        forked = core.fork_rows(t_cache, target.index, target.pos, lengths, np.int32(w))
        logits = jnp.concatenate([target.logits, step_logits[: rows - 1]])
        active = eng.all_rows
        return core.write_step(
            eng.target.graphdef,
            eng.target.state,
            forked,
            logits,
            *self.key(),
            active,
            eng.tables["target"],
            dec=eng.dec,
        )

    def target_step(self, target: _Head, rows, a: int, w: int):
        """The target's own step after ``P + d_<=a`` (lookahead: row ``a`` of the batched
        round, ``w`` the pass's slots per step; otherwise written now). Returns
        ``(tokens, head after it)``."""
        if rows is not None:
            out, cache = rows
            lengths = np.asarray(out.lengths)
            n, s = int(lengths[a]), self.eng.cfg.max_step_tokens
            written = target.index + (len(lengths) - a) * w  # the rows' write head before
            cache = core.move_step(
                core.take_row(cache, a), written, target.index, n, max_step_tokens=s
            )
            self.m.target_passes += int(lengths.max())
            self.m.target_tokens += int(lengths.sum())
            tokens = np.asarray(out.tokens)[a, :n].tolist()
            return tokens, _Head(cache, out.logits[a : a + 1], target.index + n, target.pos + n)
        out, cache = self.write("target", target)
        n = int(np.asarray(out.lengths)[0])
        self.m.target_passes += n
        self.m.target_tokens += n
        tokens = np.asarray(out.tokens)[0, :n].tolist()
        return tokens, _Head(cache, out.logits, target.index + n, target.pos + n)

    def draft_append(self, d_cache, index: int, pos: int, tokens: list[int]) -> _Head:
        """Rewinds the draft to ``index`` and writes the target's step into it."""
        eng, s = self.eng, self.eng.cfg.max_step_tokens
        cache = core.rewind(d_cache, index, [pos])
        chunk = np.full((1, s), eng.pad_id, np.int32)
        chunk[0, : len(tokens)] = tokens
        chunk, length = eng.draft.put((jnp.asarray(chunk), jnp.asarray([len(tokens)], jnp.int32)))
        logits, cache = core.append_chunk(eng.draft.graphdef, eng.draft.state, cache, chunk, length)
        return _Head(cache, logits, index + s, pos + len(tokens))
