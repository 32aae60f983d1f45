"""A frozen copy of an early demo config: the config system's test fixture (the shipped
configs change with the project; these tests need sections that do not).
"""

import ml_collections

from dreamr_jax.config import derive

# Each variant states only what differs from the base config.
_VARIANT_CHANGES = {
    # A seconds-long run for tests and CI.
    "smoke": {"generate.max_new_tokens": 8, "workdir": "runs/demo_smoke"},
}
VARIANTS = tuple(_VARIANT_CHANGES)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the base config, or the variant named by ``arg`` (one of `VARIANTS`)."""
    cfg = ml_collections.ConfigDict()
    # Run directory: resolved config, outputs and checkpoints go here.
    cfg.workdir = "runs/demo"

    cfg.model = ml_collections.ConfigDict()
    cfg.model.checkpoint = ""  # Hugging Face Qwen3-VL directory; "" = built-in tiny model
    cfg.model.dtype = "float32"  # parameter and activation dtype (float32 or bfloat16)
    cfg.model.seed = 0  # PRNG seed of the built-in model's random init

    cfg.prompt = ml_collections.ConfigDict()
    cfg.prompt.question = "How many red squares are in the picture?"
    cfg.prompt.image = ""  # image file; "" = a built-in picture of coloured squares

    cfg.generate = ml_collections.ConfigDict()
    cfg.generate.max_new_tokens = 32  # tokens generated after the prompt
    cfg.generate.temperature = 0.0  # 0 is greedy decoding
    cfg.generate.top_k = 0  # keep the k most likely tokens; 0 keeps all
    cfg.generate.top_p = 1.0  # nucleus sampling mass in (0, 1]; 1 keeps all
    cfg.generate.stop_strings = ()  # generation ends after any of these strings

    # Mesh axis sizes; their product must equal the number of devices used.
    cfg.mesh = ml_collections.ConfigDict()
    cfg.mesh.data = 1
    cfg.mesh.fsdp = 1
    cfg.mesh.tensor = 1

    if not arg:
        return cfg
    if arg not in _VARIANT_CHANGES:
        raise ValueError(f"unknown variant {arg!r} of this config; known: {VARIANTS}.")
    return derive(cfg, _VARIANT_CHANGES[arg])
