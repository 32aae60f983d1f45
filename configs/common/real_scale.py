"""Shared sections of the real-scale configs (Qwen3-VL checkpoints, the paper's settings).

Not a config itself (it lives below ``configs/`` so that the every-config tests, which
load ``configs/*.py``, skip it): ``configs/sapo_*.py`` and ``configs/eval_*.py`` load it
with ``runpy.run_path`` and state only what differs. Every field is documented here; the
typed dataclasses (`dreamr_jax.training.train_config.TrainConfig`,
`dreamr_jax.eval.EvalConfig`) validate them after command-line overrides.

The paper's settings (DESIGN.md §2): threshold α = 0.7, window K = 4, SAPO with AdamW at
lr 1e-6 and batch 64 in bf16, maximum length 8192, rewards w1:w2:w3 = 1:1:1. Where the
paper is silent (group size G, clip ε, KL β, temperature, step caps, schedule) the values
are ours and say so.
"""

import ml_collections

# Placeholder paths of local Hugging Face checkpoints; override on the command line.
CHECKPOINTS = {
    "2b": "/ckpt/Qwen3-VL-2B-Instruct",
    "4b": "/ckpt/Qwen3-VL-4B-Instruct",
    "32b": "/ckpt/Qwen3-VL-32B-Instruct",
}
# The `dreamr_jax.models.config.PRESETS` entry of each size (shape tests read these).
PRESETS = {"2b": "qwen3-vl-2b", "4b": "qwen3-vl-4b", "32b": "qwen3-vl-32b"}
TARGET = "32b"  # the target of every real-scale config (the paper's Qwen3-VL-32B)
# Placeholder raw-data directories, in each dataset's published layout.
SOURCES = {
    "geo3k": "/data/geometry3k",
    "mathverse": "/data/MathVerse",
    "mmbench": "/data/MMBench",
    "realworldqa": "/data/realworldqa",
    "mmmu": "/data/MMMU",
}
STEP_TOKENS = 128  # S: cap on one reasoning step (ours; the paper does not give it)


def models(draft: str) -> dict[str, str]:
    """The `PRESETS` names of the target and the ``draft`` (2b or 4b): a config's ``MODELS``,
    whose per-chip memory the shape tests bound by its ``HBM_GIB``."""
    return {"target": PRESETS[TARGET], "draft": PRESETS[draft]}


def model(size: str) -> ml_collections.ConfigDict:
    """Eval/infer `ModelSection`: a checkpoint in bf16."""
    m = ml_collections.ConfigDict()
    m.checkpoint = CHECKPOINTS[size]  # Hugging Face Qwen3-VL directory
    m.dtype = "bfloat16"  # parameter and activation dtype (the paper: bf16)
    m.seed = 0  # unused with a checkpoint
    return m


def mesh(*, data=1, fsdp=1, tensor=1, first_device=0) -> ml_collections.ConfigDict:
    """`MeshSection`: a (data, fsdp, tensor) mesh over devices first_device.. on."""
    m = ml_collections.ConfigDict()
    m.data = data  # batch-parallel replicas
    m.fsdp = fsdp  # parameters sharded over their embedding width (and the batch)
    m.tensor = tensor  # heads / MLP width / vocabulary sharded (tensor parallel)
    m.first_device = first_device  # disjoint ranges let draft and target run at once
    return m


def spec() -> ml_collections.ConfigDict:
    """`SpecConfig`: FPSR with the paper's window."""
    s = ml_collections.ConfigDict()
    s.engine = "fpsr"  # target_only, draft_only, specreason, lookahead or fpsr
    s.window = 4  # K: draft steps verified per round (the paper: 4)
    s.bonus_step = False  # append a target step after a fully accepted window
    s.overlap = True  # fpsr: draft window w+1 while the target verifies window w
    s.max_step_tokens = STEP_TOKENS  # S
    s.max_steps = 64  # the chain ends after this many steps (S * 64 = the paper's 8192)
    s.delimiter = "\n\n"  # text that ends a step
    s.temperature = 0.0  # greedy decoding
    s.top_k = 0
    s.top_p = 1.0
    s.seed = 0
    s.cache_length = 0  # KV-cache slots per model; 0 sizes it to the request
    return s


def verifier() -> ml_collections.ConfigDict:
    """`VerifierConfig`: the paper's CPN rule at α = 0.7."""
    v = ml_collections.ConfigDict()
    v.alpha = 0.7  # α: accept a draft step iff p(yes) / (p(yes) + p(no)) > α
    v.question = "Is the last step correct? Answer Yes or No."
    v.positive_words = ("Yes",)  # s+
    v.negative_words = ("No",)  # s-
    v.rule = "cpn"  # cpn (the paper's) or score (SpecReason's 0-9 score)
    v.score_question = "Rate the last step from 0 (wrong) to 9 (certainly correct)."
    v.score_threshold = 7  # score rule only
    return v


def eval_section(dataset: str, engines: tuple[str, ...]) -> ml_collections.ConfigDict:
    """`EvalSection`: the first ``num_examples`` questions of ``dataset`` at α = 0.7."""
    e = ml_collections.ConfigDict()
    e.dataset = dataset  # an importer of dreamr_jax.data.import_tfds
    e.split = ""  # "" = the importer's default split
    e.num_examples = 500  # N: the paper evaluates whole splits; raise N to the split size
    e.data_dir = ""  # TFDS data dir; "" = WORKDIR/data
    e.source_dir = SOURCES[dataset]  # raw files, imported into data_dir once
    e.engines = engines  # target_only always runs first: the speedup baseline
    e.alphas = (0.7,)  # α per speculative run (the paper's choice)
    e.warmup = 1  # untimed passes over every input shape: keeps compilation out
    e.plots = True
    return e


def eval_config(dataset: str, draft: str, engines: tuple[str, ...]) -> ml_collections.ConfigDict:
    """A ``python -m dreamr_jax.eval`` config: Qwen3-VL-32B target, ``draft`` (2b or 4b).

    Meshes (one TPU v6e-8 host, 8 chips of 32 GiB): the target tensor-parallel over chips
    0-3, the draft over chips 4-5, mirroring the paper's 4 + 2 GPU split; chips 6-7 idle.
    """
    cfg = ml_collections.ConfigDict()
    cfg.workdir = f"runs/eval_{dataset}"  # outputs: WORKDIR/eval/{summary.json, ...}
    cfg.target = model(TARGET)
    cfg.draft = model(draft)
    cfg.spec = spec()
    cfg.verifier = verifier()
    cfg.target_mesh = mesh(tensor=4, first_device=0)
    cfg.draft_mesh = mesh(tensor=2, first_device=4)
    cfg.eval = eval_section(dataset, engines)
    return cfg


def _optim(steps: int) -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.learning_rate = 1e-6  # η: the paper's AdamW learning rate
    o.warmup_steps = 10  # ours: a short linear warmup
    o.total_steps = steps
    o.min_lr_ratio = 1.0  # constant η after warmup (the paper gives no schedule)
    o.weight_decay = 0.01  # ours (AdamW's usual)
    o.b1 = 0.9  # PyTorch AdamW defaults (the paper's code is PyTorch)
    o.b2 = 0.999
    o.eps = 1e-8
    o.grad_clip_norm = 1.0
    return o


def sft_draft_section(max_patches: int) -> ml_collections.ConfigDict:
    """`DraftSFTConfig`: the optional warm start of the draft on the target's chains (list
    "sft_draft" in ``stages`` before "sapo"). The target answers the first ``records``
    training questions greedily; the chains graded right train the draft (ours: the paper
    does not publish its warm start)."""
    steps = 200
    t = ml_collections.ConfigDict()
    t.steps = steps
    t.batch_size = 64
    t.seq_len = 4096  # prompt (<= 512 image tokens) + chain
    t.patches_per_row = max_patches  # set from data.max_patches by train
    t.micro_batches = 8
    t.seed = 0
    t.verify_fraction = 0.0  # the draft never judges steps
    t.verify_weight = 1
    t.verify_pairs = False
    t.cache_records = 0  # the target's chains are held in memory already
    t.optim = _optim(steps)
    t.optim.learning_rate = 1e-5  # ours: SFT moves further than the paper's RL η
    t.checkpoint = ml_collections.ConfigDict()
    t.checkpoint.every_steps = 50
    t.checkpoint.keep = 2
    t.checkpoint.async_save = True
    c = t.chains = ml_collections.ConfigDict()
    c.source = "target"  # the target's chains (Geo3K has no reference chains)
    c.records = 2000  # Geo3K's train split has 2,101 problems
    c.keep = "correct"  # rejection sampling: only chains with the right answer
    c.temperature = 0.0
    c.max_new_tokens = 3072  # seq_len minus the prompt
    c.batch_size = 32
    c.seed = 0
    return t


def sapo_section(steps: int, max_patches: int) -> ml_collections.ConfigDict:
    """`SAPOConfig` at the paper's scale: 64 rollouts per update, 8192 tokens at most."""
    r = ml_collections.ConfigDict()
    r.steps = steps
    r.prompts_per_step = 8  # P; batch P * G = 64 rollouts (the paper's batch 64)
    r.rollout = ml_collections.ConfigDict()
    r.rollout.group_size = 8  # G (GRPO-standard; not published)
    # Prompt (<= max_patches / 4 image tokens + text, < 1024) + completion <= 8192.
    r.rollout.max_new_tokens = 7168
    r.rollout.temperature = 1.0  # the policy's own distribution (GRPO-standard)
    r.rollout.top_k = 0
    r.rollout.top_p = 1.0
    r.rollout.max_step_tokens = STEP_TOKENS  # S
    r.rollout.delimiter = "\n\n"
    r.rollout.max_scored_steps = 64  # steps per rollout the target scores (7168 / S = 56)
    r.reward = ml_collections.ConfigDict()
    r.reward.w_outcome = 1.0  # w1 (the paper: 1:1:1)
    r.reward.w_draft = 1.0  # w2
    r.reward.w_length = 1.0  # w3
    r.reward.length_free = 2048  # no length penalty up to this many tokens (ours)
    r.reward.length_max = 7168  # penalty -1 at the completion cap
    r.reward.draft_needs_answer = False  # True: R_draft = 0 without a final answer (ours)
    r.verifier = verifier()  # the frozen target's CPN verifier that defines R_draft
    r.clip_eps = 0.2  # ε (GRPO-standard)
    r.kl_beta = 0.04  # β (GRPO-standard)
    r.micro_batches = 8  # one group of G = 8 rollouts per micro-batch
    r.patches_per_row = max_patches  # set from data.max_patches by train
    r.seed = 0
    # The policy's token entropy costs one more softmax over [rows, 8192, 151,936] per
    # micro-batch: off at this scale (turn on to watch for entropy collapse).
    r.log_entropy = False
    r.optim = _optim(steps)
    r.checkpoint = ml_collections.ConfigDict()
    r.checkpoint.every_steps = 25  # save period (the final step is always saved)
    r.checkpoint.keep = 2
    r.checkpoint.async_save = True
    return r


def sapo_config(draft: str, eval_dataset: str) -> ml_collections.ConfigDict:
    """A ``python -m dreamr_jax.train`` config: SAPO on a ``draft`` (2b or 4b) checkpoint
    against the Qwen3-VL-32B checkpoint on Geo3K, then export and an ``eval_dataset`` eval.

    Meshes (one TPU v5p-8 host, 4 chips of 95 GiB): the policy (draft) FSDP over chips
    0-1, with the frozen reference on the same mesh (SAPO's reference is the starting
    draft, held as a second copy of the policy's parameters in the policy's sharding); the
    frozen target tensor-parallel over chips 2-3.
    """
    max_patches = 2048  # <= 512 image tokens per prompt (after the 2x2 merge)
    steps = 500
    cfg = ml_collections.ConfigDict()
    cfg.workdir = f"runs/sapo_qwen3vl_{draft}_32b"  # a gs:// path on multi-host slices
    cfg.stages = ("data", "sapo", "export", "eval")  # no SFT: both models are checkpoints

    cfg.data = ml_collections.ConfigDict()
    cfg.data.dataset = "geo3k"  # Geometry3K's train split (2,101 problems) via the importer
    cfg.data.source_dir = SOURCES["geo3k"]  # its published layout: train/<id>/data.json
    cfg.data.max_patches = max_patches  # images resized to at most this many patches

    cfg.target_model = ml_collections.ConfigDict()
    cfg.target_model.checkpoint = CHECKPOINTS[TARGET]  # frozen target (verifier of R_draft)
    cfg.target_model.dtype = "bfloat16"
    cfg.draft_model = ml_collections.ConfigDict()
    cfg.draft_model.checkpoint = CHECKPOINTS[draft]  # the policy and the reference
    cfg.draft_model.dtype = "bfloat16"

    # Not in stages: list "sft_draft" before "sapo" to warm-start the draft on the target's
    # chains first (generation by the 32B target, then SFT on the draft mesh).
    cfg.sft_draft = sft_draft_section(max_patches)
    cfg.sapo = sapo_section(steps, max_patches)
    cfg.spec = spec()  # the eval stage's engines
    cfg.verifier = verifier()
    cfg.eval = eval_section(eval_dataset, ("target_only", "fpsr"))
    cfg.eval.num_examples = 200  # with the starting and the SAPO draft: 2 x 2 passes
    cfg.target_mesh = mesh(tensor=2, first_device=2)
    cfg.draft_mesh = mesh(fsdp=2, first_device=0)
    # Rollouts decode tensor-parallel on the policy's chips: FSDP would gather every weight
    # for every sampled token. The policy's weights move there once per update.
    cfg.rollout_mesh = mesh(tensor=2, first_device=0)
    return cfg
