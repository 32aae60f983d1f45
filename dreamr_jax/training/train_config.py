"""The typed config of ``python -m dreamr_jax.train``: its sections and their checks.

`TrainConfig` holds one dataclass per config section (``data``, ``target_model``,
``sft_target``, ``sapo``, ``spec``, ``eval``, ...); `config.to_dataclass` builds it from an
``ml_collections`` config such as ``configs/demo.py`` and every section validates itself.
"""

from __future__ import annotations

import dataclasses

from dreamr_jax import config as config_lib
from dreamr_jax import eval as eval_lib
from dreamr_jax.data import synthetic
from dreamr_jax.spec import SpecConfig, VerifierConfig
from dreamr_jax.spec.roles import DTYPES, MeshSection, builtin_config
from dreamr_jax.training.distill import DraftSFTConfig
from dreamr_jax.training.refine import RefineConfig
from dreamr_jax.training.sapo import SAPOConfig
from dreamr_jax.training.sft import SFTConfig

EvalSection = eval_lib.EvalSection

STAGES = ("data", "sft_target", "sft_draft", "refine_target", "sapo", "export", "eval")


# Training sets the data stage can import (`import_tfds`).
IMPORTED = ("geo3k", "scienceqa", "ocrvqa")
DATASETS = ("synthetic", *IMPORTED)


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The training data: the synthetic dataset and the tokenizer trained on it, or an
    imported training set.

    Attributes:
      dataset: "synthetic" (built-in, generated) or an imported training set ("geo3k",
        "scienceqa", "ocrvqa"); an imported one needs ``target_model.checkpoint`` (its
        tokenizer: the trained one only covers the synthetic corpus).
      source_dir: imported sets: the raw files in their published layout; the data stage
        imports the train and val splits into ``WORKDIR/data`` once.
      max_patches: checkpoint runs: images are resized by the target checkpoint's image
        processor to at most this many vision patches (before the 2x2 merge), the static
        patch budget of every training row.
      synthetic: the generator's settings (seed, image size, families, difficulty); images
        are not resized, so every example has one static patch grid.
      train_size, validation_size, test_size: synthetic examples per split;
        validation_size also caps the held-out prompts of SAPO's before/after check (the
        first ones of the validation split, any dataset).
      tokenizer_vocab: BPE vocabulary size of the trained tokenizer.
      tokenizer_examples: training examples the tokenizer is trained on.
    """

    dataset: str = "synthetic"
    source_dir: str = ""
    max_patches: int = 1024
    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig(image_size=64)
    train_size: int = 20_000
    validation_size: int = 256
    test_size: int = 256
    tokenizer_vocab: int = 512
    tokenizer_examples: int = 2000

    def sizes(self) -> dict[str, int]:
        return {
            "train": self.train_size,
            "validation": self.validation_size,
            "test": self.test_size,
        }

    def validate(self):
        require = config_lib.require
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {DATASETS}")
        require(self.max_patches >= 4, "max_patches", self.max_patches, "must be >= 4")
        self.synthetic.validate()
        for name, n in self.sizes().items():
            config_lib.require(n >= 1, f"{name}_size", n, "must be >= 1")
        config_lib.require(
            self.tokenizer_vocab >= 300, "tokenizer_vocab", self.tokenizer_vocab, "must be >= 300"
        )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A role's model: a Hugging Face checkpoint, or a built-in model trained from scratch
    (the demo's target and draft).

    Attributes:
      checkpoint: a local Hugging Face Qwen3-VL directory to start from; "" = the built-in
        model below (whose sizes are then ignored).
      hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate_size: the
        text decoder.
      vision_depth, vision_hidden, vision_heads: the vision tower.
      dtype: parameter dtype ("bfloat16" at real scale, as the paper trains).
      seed: initialisation seed.
    """

    checkpoint: str = ""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_heads: int = 2
    dtype: str = "float32"
    seed: int = 0

    def validate(self):
        config_lib.require(self.dtype in DTYPES, "dtype", self.dtype, f"one of {sorted(DTYPES)}")

    def model_config(self, tokenizer):
        return builtin_config(
            tokenizer,
            "target",
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vision_depth=self.vision_depth,
            vision_hidden=self.vision_hidden,
            vision_heads=self.vision_heads,
            deepstack=(0,),
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every stage's settings."""

    stages: tuple[str, ...] = STAGES
    data: DataSection = DataSection()
    target_model: ModelSpec = ModelSpec()
    draft_model: ModelSpec = ModelSpec(hidden_size=64, num_layers=2, head_dim=16, seed=1)
    sft_target: SFTConfig = SFTConfig()
    sft_draft: DraftSFTConfig = DraftSFTConfig()
    refine_target: RefineConfig = RefineConfig()
    sapo: SAPOConfig = SAPOConfig()
    spec: SpecConfig = SpecConfig()
    verifier: VerifierConfig = VerifierConfig()
    eval: EvalSection = EvalSection()
    target_mesh: MeshSection = MeshSection()
    draft_mesh: MeshSection = MeshSection()
    # SAPO's rollouts; the policy's weights move there each update unless it equals
    # draft_mesh (where the policy trains).
    rollout_mesh: MeshSection = MeshSection()

    def validate(self):
        require = config_lib.require
        bad = [s for s in self.stages if s not in STAGES]
        require(not bad, "stages", self.stages, f"unknown {bad}; pick from {STAGES}")
        target, draft = self.target_model.checkpoint, self.draft_model.checkpoint
        require(
            bool(target) or not draft,
            "draft_model.checkpoint",
            draft,
            "needs target_model.checkpoint too (both models must share the target's tokenizer)",
        )
        data = self.data
        if data.dataset != "synthetic":
            require(
                bool(target),
                "data.dataset",
                data.dataset,
                "needs target_model.checkpoint (the trained tokenizer covers only the "
                "synthetic corpus)",
            )
            sft = [s for s in self.stages if s in ("sft_target", "refine_target")]
            if self.sft_draft.chains.source == "reference":
                sft += [s for s in self.stages if s == "sft_draft"]
            require(
                not sft,
                "stages",
                self.stages,
                f"{sft} train on the synthetic reference chains; with an imported dataset "
                "list only data, sft_draft (with sft_draft.chains.source='target': the "
                "target's chains), sapo, export and eval",
            )
            require(
                "data" not in self.stages or bool(data.source_dir),
                "data.source_dir",
                data.source_dir,
                f"the data stage needs the {data.dataset} files to import",
            )


SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))
