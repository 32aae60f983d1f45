"""The demo job: speculative multimodal reasoning with built-in tiny models on CPU.

    python -m dreamr_jax.infer --config=configs/demo.py
    python -m dreamr_jax.eval --config=configs/demo.py

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

    cfg.verifier = ml_collections.ConfigDict()
    cfg.verifier.alpha = 0.7  # α: accept a draft step iff p(yes) / (p(yes) + p(no)) > α
    cfg.verifier.question = "Is the last step correct? Answer Yes or No."
    cfg.verifier.positive_words = ("Yes",)
    cfg.verifier.negative_words = ("No",)
    cfg.verifier.rule = "cpn"  # cpn (the paper's) or score (SpecReason's 0-9 score)

    cfg.prompt = ml_collections.ConfigDict()
    cfg.prompt.question = "How many red squares are in the picture?"
    cfg.prompt.image = ""  # image file; "" = a built-in picture of coloured squares

    cfg.target_mesh = _mesh()
    cfg.draft_mesh = _mesh()

    # python -m dreamr_jax.eval: engines over a dataset split (infer ignores this section).
    cfg.eval = ml_collections.ConfigDict()
    cfg.eval.dataset = "synthetic"  # synthetic, or an importer: mmbench, mathverse, ...
    cfg.eval.split = ""  # "" = the dataset's default split (synthetic: test)
    cfg.eval.num_examples = 8  # N: the split's first N examples
    cfg.eval.data_dir = ""  # TFDS data dir; "" = WORKDIR/data (synthetic is built there)
    cfg.eval.source_dir = ""  # raw files of an imported dataset, built into data_dir once
    cfg.eval.data_seed = 0  # synthetic dataset seed
    cfg.eval.image_size = 64  # synthetic image side in pixels (64..224)
    cfg.eval.engines = ("target_only", "draft_only", "specreason", "lookahead", "fpsr")
    cfg.eval.alphas = (0.5, 0.7, 0.9)  # α per speculative run; baselines run once
    cfg.eval.warmup = 1  # untimed passes over every input shape first: keeps compile out
    cfg.eval.plots = True  # write the PNG plots

    if not arg:
        return cfg
    if arg not in _VARIANT_CHANGES:
        raise ValueError(f"unknown variant {arg!r} of configs/demo.py; known: {VARIANTS}.")
    return derive(cfg, _VARIANT_CHANGES[arg])
