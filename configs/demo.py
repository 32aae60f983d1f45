"""The demo: DREAM-R end to end on a CPU, with small models trained from scratch.

    python -m dreamr_jax.train --config=configs/demo.py     # data, SFT, SAPO, export, eval
    python -m dreamr_jax.infer --config=configs/demo.py     # one question, step by step
    python -m dreamr_jax.eval --config=configs/demo.py      # engines over a split

``train`` generates the synthetic visual-reasoning set, trains a small target and a much
smaller draft on its reference chains, runs SAPO on the draft against the target, exports
all three models in Hugging Face format and evaluates every engine with the SFT and the
SAPO draft, writing ``WORKDIR/report.md``. ``infer`` and ``eval`` use the ``target`` /
``draft`` checkpoints given (the exported ones after training: ``WORKDIR/export/...``), or
tiny random models when none is given.

Run as ``--config=configs/demo.py`` or ``--config=configs/demo.py:smoke`` and override any
field with ``--config.section.field=value``. Each section is validated by its stage's typed
dataclass after overrides; the field docs below say what each value means.
"""

import ml_collections

from dreamr_jax.config import derive

# Each variant states only what differs from the base config.
_VARIANT_CHANGES = {
    # A seconds-long run for tests and CI.
    "smoke": {
        "spec.max_steps": 3,
        "spec.max_step_tokens": 8,
        "eval.num_examples": 2,
        "eval.alphas": (0.0, 1.0),
        "data.train_size": 64,
        "data.validation_size": 4,
        "data.test_size": 4,
        "data.tokenizer_examples": 200,
        "sft_target.steps": 4,
        "sft_target.batch_size": 4,
        "sft_target.optim.total_steps": 4,
        "sft_target.optim.warmup_steps": 1,
        "sft_target.checkpoint.every_steps": 2,
        "sft_draft.steps": 2,
        "sft_draft.batch_size": 4,
        "sft_draft.optim.total_steps": 2,
        "sft_draft.optim.warmup_steps": 1,
        "refine_target.records": 4,
        "refine_target.sft.steps": 2,
        "refine_target.sft.batch_size": 4,
        "refine_target.sft.optim.total_steps": 2,
        "refine_target.sft.optim.warmup_steps": 1,
        "sapo.steps": 2,
        "sapo.prompts_per_step": 2,
        "sapo.rollout.group_size": 2,
        "sapo.rollout.max_new_tokens": 16,
        "sapo.optim.total_steps": 2,
        "sapo.optim.warmup_steps": 1,
        "sapo.checkpoint.every_steps": 1,
        "workdir": "runs/demo_smoke",
    },
}
VARIANTS = tuple(_VARIANT_CHANGES)


def _model(seed: int) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.checkpoint = ""  # Hugging Face Qwen3-VL directory; "" = built-in tiny model
    m.dtype = "float32"  # parameter and activation dtype (float32 or bfloat16)
    m.seed = seed  # PRNG seed of the built-in model's random init
    return m


def _mesh() -> ml_collections.ConfigDict:
    # Mesh axis sizes over data*fsdp*tensor devices starting at first_device; disjoint
    # device ranges let draft and target run at the same time.
    m = ml_collections.ConfigDict()
    m.data = 1
    m.fsdp = 1
    m.tensor = 1
    m.first_device = 0
    return m


def _synthetic() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.image_size = 64  # image side in pixels (64..224); not resized: one patch grid
    d.seed = 0  # with split and index it fixes every example
    # Bar charts: the heights are read at fixed places, then compared or added in text,
    # which this target learns in minutes (held-out accuracy measured after SFT without
    # verification rows: 85% at 1000 steps). Families that must count shapes (count,
    # position) or read digits stayed under 50% in the same budget.
    d.families = ("bars",)  # task families drawn
    d.max_objects = 4  # most shapes in count / position images (4..16)
    d.grid = 0  # cells per side of the shape grid; 0 = ceil(sqrt(max_objects)) + 1
    d.min_difficulty = 1  # difficulty levels drawn, 1..3
    d.max_difficulty = 3
    return d


def _text_model(hidden: int, layers: int, heads: int, kv_heads: int, seed: int, vision: int):
    m = ml_collections.ConfigDict()
    m.hidden_size = hidden
    m.num_layers = layers
    m.num_heads = heads
    m.num_kv_heads = kv_heads
    m.head_dim = 32
    m.intermediate_size = 3 * hidden
    m.vision_depth = 3 if vision >= 128 else 2  # vision tower blocks
    m.vision_hidden = vision
    m.vision_heads = vision // 32
    m.dtype = "float32"
    m.seed = seed  # initialisation seed
    return m


def _optim(lr: float, warmup: int, total: int) -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.learning_rate = lr  # peak η after warmup
    o.warmup_steps = warmup
    o.total_steps = total  # cosine decay reaches min_lr_ratio * η here
    o.min_lr_ratio = 0.05
    o.weight_decay = 0.01
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.grad_clip_norm = 1.0
    return o


def _checkpoint(every: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.every_steps = every  # save period (the final step is always saved)
    c.keep = 2  # newest checkpoints kept
    c.async_save = True
    return c


def _sft(steps: int, lr: float, batch: int) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.steps = steps
    t.batch_size = batch
    t.seq_len = 128  # static row length: prompt (image tokens included) + chain
    t.patches_per_row = 64  # set from the image size by train
    t.micro_batches = 1
    t.seed = 0
    t.verify_fraction = 0.0  # share of verification examples (the verifier's task)
    t.verify_weight = 1  # loss weight of a verification example's verdict token
    t.verify_pairs = False  # verification rows as (as written, corrupted) pairs of one step
    t.cache_records = 8192  # records kept decoded in memory after their first read (0: none)
    t.optim = _optim(lr, warmup=min(20, steps // 5), total=steps)
    t.checkpoint = _checkpoint(every=max(1, steps // 4))
    return t


def _sapo(steps: int) -> ml_collections.ConfigDict:
    r = ml_collections.ConfigDict()
    r.steps = steps
    r.prompts_per_step = 4  # P; the batch is P * G rollouts
    r.rollout = ml_collections.ConfigDict()
    r.rollout.group_size = 4  # G
    r.rollout.max_new_tokens = 96
    r.rollout.temperature = 1.0
    r.rollout.top_k = 0
    r.rollout.top_p = 1.0
    r.rollout.max_step_tokens = 32
    r.rollout.delimiter = "\n\n"
    r.rollout.max_scored_steps = 6  # K steps per rollout the target scores
    r.reward = ml_collections.ConfigDict()
    r.reward.w_outcome = 1.0  # w1
    r.reward.w_draft = 1.0  # w2
    r.reward.w_length = 1.0  # w3
    r.reward.length_free = 80  # no length penalty up to this many tokens
    r.reward.length_max = 96  # penalty -1 from here
    r.reward.draft_needs_answer = True  # R_draft = 0 without a final answer (ours; see rewards)
    r.verifier = _verifier()
    r.clip_eps = 0.2  # ε
    r.kl_beta = 0.04  # β
    r.micro_batches = 1
    r.patches_per_row = 64
    r.seed = 0
    r.log_entropy = True  # the policy's mean token entropy in the metrics
    r.optim = _optim(1e-4, warmup=2, total=steps)
    r.checkpoint = _checkpoint(every=max(1, steps // 4))
    return r


def _refine(steps: int) -> ml_collections.ConfigDict:
    r = ml_collections.ConfigDict()
    r.records = 800  # training records the SFT draft writes steps for
    r.temperature = 1.0  # the draft samples its steps (its own mistakes, as SAPO sees them)
    r.min_step = 1  # the draft writes steps 2.. after the reference steps before them
    r.seed = 0
    r.synthetic_fraction = 0.3  # records whose pairs hold a synthetic corruption instead
    # Rows: contrast pairs (reference step, the draft's wrong step) and chains, half each.
    r.sft = _sft(steps=steps, lr=1e-3, batch=16)
    r.sft.verify_fraction = 0.5
    r.sft.verify_pairs = True
    r.sft.verify_weight = 16
    r.sft.seq_len = 144
    return r


def _chains() -> ml_collections.ConfigDict:
    # The chains sft_draft trains on (dreamr_jax.training.distill).
    c = ml_collections.ConfigDict()
    c.source = "reference"  # reference (the dataset's chains) or target (the target writes them)
    c.records = 1000  # target: training questions the target answers (the first ones)
    c.keep = "correct"  # target: keep the chains graded right (or "all")
    c.temperature = 0.0  # target: its sampling temperature (0: greedy)
    c.max_new_tokens = 80  # target: cap on a chain's tokens (prompt + chain <= seq_len)
    c.batch_size = 32  # target: questions per generation call
    c.seed = 0
    return c


def _verifier() -> ml_collections.ConfigDict:
    v = ml_collections.ConfigDict()
    v.alpha = 0.7  # α: accept a draft step iff p(yes) / (p(yes) + p(no)) > α
    v.question = "Is the last step correct? Answer Yes or No."
    v.positive_words = ("Yes",)
    v.negative_words = ("No",)
    v.rule = "cpn"  # cpn (the paper's) or score (SpecReason's 0-9 score)
    v.score_question = "Rate the last step from 0 (wrong) to 9 (certainly correct)."
    v.score_threshold = 7
    return v


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the base config, or the variant named by ``arg`` (one of `VARIANTS`)."""
    cfg = ml_collections.ConfigDict()
    # Run directory: resolved config, outputs and checkpoints go here.
    cfg.workdir = "runs/demo"

    cfg.target = _model(seed=0)  # the large model whose answers we want
    cfg.draft = _model(seed=1)  # the small model that proposes steps

    cfg.spec = ml_collections.ConfigDict()
    cfg.spec.engine = "fpsr"  # target_only, draft_only, specreason, lookahead or fpsr
    cfg.spec.window = 4  # K: draft steps verified per round
    cfg.spec.bonus_step = False  # append a target step after a fully accepted window
    cfg.spec.overlap = True  # fpsr: draft window w+1 while the target verifies window w
    cfg.spec.max_step_tokens = 32  # S: cap on one step's tokens
    cfg.spec.max_steps = 8  # the chain ends after this many steps
    cfg.spec.delimiter = "\n\n"  # text that ends a step
    cfg.spec.temperature = 0.0  # 0 is greedy decoding
    cfg.spec.top_k = 0  # keep the k most likely tokens; 0 keeps all
    cfg.spec.top_p = 1.0  # nucleus sampling mass in (0, 1]; 1 keeps all
    cfg.spec.seed = 0  # sampling seed
    cfg.spec.cache_length = 0  # KV-cache slots per model; 0 sizes it to the request

    cfg.verifier = _verifier()

    cfg.prompt = ml_collections.ConfigDict()
    cfg.prompt.question = "How much taller is the tallest bar than the shortest bar?"
    cfg.prompt.image = ""  # image file; "" = a built-in bar chart (answer: 6)

    cfg.target_mesh = _mesh()
    cfg.draft_mesh = _mesh()
    # SAPO's rollouts (train only): the policy's weights move here each update, unless it
    # is draft_mesh's (where the policy trains), as here.
    cfg.rollout_mesh = _mesh()

    # python -m dreamr_jax.eval: engines over a dataset split (infer ignores this section).
    cfg.eval = ml_collections.ConfigDict()
    cfg.eval.dataset = "synthetic"  # synthetic, or an importer: mmbench, mathverse, ...
    cfg.eval.split = ""  # "" = the dataset's default split (synthetic: test)
    # N: the split's first N examples. 64 = the whole test split: one answer is 1.6 points,
    # so "fpsr within 2 points of target-only" can be told apart from "equal" (with 32, one
    # answer was 3.1 points).
    cfg.eval.num_examples = 64
    cfg.eval.data_dir = ""  # TFDS data dir; "" = WORKDIR/data (synthetic is built there)
    cfg.eval.source_dir = ""  # raw files of an imported dataset, built into data_dir once
    cfg.eval.synthetic = _synthetic()  # the synthetic set's generator settings
    cfg.eval.engines = ("target_only", "draft_only", "specreason", "lookahead", "fpsr")
    cfg.eval.alphas = (0.5, 0.7, 0.9)  # α per run of the sweep_engines; baselines run once
    # Engines run at every α; the other speculative engines run once, at verifier.alpha.
    # Sweeping specreason and lookahead too cost about 55 s of the demo's evaluation.
    cfg.eval.sweep_engines = ("fpsr",)
    cfg.eval.warmup = 1  # untimed passes over every input shape first: keeps compile out
    cfg.eval.plots = True  # write the PNG plots

    # python -m dreamr_jax.train: the stages, the data and the two models trained from scratch.
    cfg.stages = ("data", "sft_target", "sft_draft", "refine_target", "sapo", "export", "eval")
    cfg.data = ml_collections.ConfigDict()
    cfg.data.synthetic = _synthetic()
    cfg.data.train_size = 12000
    # Held-out prompts of SAPO's before/after check. With 64, one SAPO run's accuracy change
    # read -12.5 points where 512 prompts read +0.2 (sapo.seed=1): 64 is too few to judge.
    cfg.data.validation_size = 512
    cfg.data.test_size = 64
    cfg.data.tokenizer_vocab = 512  # BPE vocabulary trained on the synthetic corpus
    cfg.data.tokenizer_examples = 2000
    cfg.target_model = _text_model(hidden=128, layers=4, heads=4, kv_heads=2, seed=0, vision=128)
    cfg.draft_model = _text_model(hidden=64, layers=1, heads=2, kv_heads=1, seed=1, vision=64)
    # 1600 steps: 100% held-out accuracy after refine_target, as 2200 steps gave, in about 3
    # minutes less on the 2-core CPU; 1500 steps, measured without refine_target, 87.5%.
    cfg.sft_target = _sft(steps=1600, lr=3e-3, batch=16)
    # The target also learns to judge steps, from (as written, corrupted) pairs of one step:
    # with independent rows it learned no verdicts in 3000 steps; with pairs at 30% it
    # judges the later steps in part (at 50% its own accuracy fell below 90%).
    cfg.sft_target.verify_fraction = 0.3
    cfg.sft_target.verify_pairs = True
    cfg.sft_target.verify_weight = 16  # a verdict weighs about a third of a whole chain
    # Chains and verification rows (the whole chain plus the question): at most 126 tokens
    # in 24,000 rows drawn from the demo's train split.
    cfg.sft_target.seq_len = 128
    cfg.sft_draft = _sft(steps=300, lr=3e-3, batch=16)
    # The reference chains: the demo's SFT target answers like them (100% after refine), and
    # writing 1000 chains would cost time the 15-minute budget does not have.
    cfg.sft_draft.chains = _chains()
    # The target's verdicts, fine-tuned on the SFT draft's own wrong steps (see
    # dreamr_jax.training.refine: its SFT verdicts passed 10% of the draft's right steps).
    cfg.refine_target = _refine(steps=400)
    # SAPO, 100 steps at lr 1e-4 (`_sapo`). On 512 held-out prompts, before -> after, seeds
    # 0 / 1 / 2 on one pair of SFT models (a 2200-step target): acceptance +6.3 / +3.5 / +5.7
    # points, reward +0.039 / +0.021 / +0.060, accuracy -2.1 / -1.3 / +0.8 points. The former
    # 20 steps at lr 3e-4 (seed 0): acceptance +4.6, reward -0.019, accuracy -6.0.
    cfg.sapo = _sapo(steps=100)

    if not arg:
        return cfg
    if arg not in _VARIANT_CHANGES:
        raise ValueError(f"unknown variant {arg!r} of configs/demo.py; known: {VARIANTS}.")
    return derive(cfg, _VARIANT_CHANGES[arg])
