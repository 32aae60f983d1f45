r"""DREAM-R training: the stages a config lists, each resumable, each ending in a checkpoint.

    python -m dreamr_jax.train --config=configs/demo.py [--workdir=DIR] [--config.a.b=v]

Stages, in order (``stages`` selects a subset; each restores the previous one's result):

* ``data``: the synthetic visual-reasoning dataset (ArrayRecord, deterministic) and a BPE
  tokenizer trained on its corpus, under ``WORKDIR/data`` and ``WORKDIR/tokenizer``; or an
  imported training set (Geo3K, ScienceQA, OCR-VQA: ``data.dataset``, ``data.source_dir``),
  whose train and val splits are imported into ``WORKDIR/data``;
* ``sft_target``: trains the (small, demo) target from scratch on the reference chains;
* ``sft_draft``: trains the much smaller draft the same way (its warm start), on the
  reference chains or, with ``sft_draft.chains.source="target"``, on chains the SFT target
  (or the target checkpoint) writes for training questions (`training.distill`: graded,
  the right ones kept by default; the only SFT data an imported training set has);
* ``refine_target``: fine-tunes the target's verdicts on the SFT draft's own steps
  (`training.refine`);
* ``sapo``: RL on the draft against the frozen target (`training.sapo`), reporting the
  draft's held-out acceptance and reward before and after;
* ``export``: Hugging Face directories ``WORKDIR/export/{target,draft_sft,draft_sapo}``
  (weights, config, tokenizer, image processor) that transformers and ``dreamr_jax.infer``
  load;
* ``eval``: every engine over the held-out split with the SFT draft and the SAPO draft
  (`dreamr_jax.eval`), then ``WORKDIR/report.md`` / ``report.json`` with the plots.

Re-running the same command resumes: finished stages are reused (their checkpoints and
files), an interrupted one continues from its last checkpoint.

**Real checkpoints.** A `ModelSpec` with ``checkpoint`` set starts from that Hugging Face
Qwen3-VL directory (`hf.load_pretrained`, straight into the role's mesh) instead of a
built-in model; the tokenizer and image processor then come from the target's checkpoint
(images resized to at most ``data.max_patches`` vision patches). A real-scale run skips the
SFT stages (``stages=("data", "sapo", "export", "eval")``, or with ``"sft_draft"`` and
``sft_draft.chains.source="target"`` to warm-start the draft on the target's chains): a role
whose SFT stage is not
listed and has not finished in the workdir uses its checkpoint as it is, and ``export``
writes only what changed (the SAPO draft), pointing at the checkpoints for the rest.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import time
from pathlib import Path

import jax
from absl import app, flags, logging
from flax import nnx

from dreamr_jax import config as config_lib
from dreamr_jax import eval as eval_lib
from dreamr_jax.data import import_tfds, synthetic_tfds
from dreamr_jax.data.tokenizer_train import build_synthetic_tokenizer
from dreamr_jax.models import hf
from dreamr_jax.models.qwen3_vl import Qwen3VL
from dreamr_jax.models.sharding import init_sharded
from dreamr_jax.processing import ImageProcessorConfig, load_tokenizer
from dreamr_jax.rl.rollout import chain_token_ids
from dreamr_jax.spec.engine import check_pair
from dreamr_jax.spec.roles import (
    DTYPES,
    ModelSection,
    check_tokenizers,
)
from dreamr_jax.training import demo_report, distill
from dreamr_jax.training.checkpoint import check_workdir
from dreamr_jax.training.refine import run_refine
from dreamr_jax.training.sapo import Scorer, policy_stats, run_sapo
from dreamr_jax.training.sft import run_sft
from dreamr_jax.training.train_config import SECTIONS, TrainConfig

# Exported directory -> the model it holds.
EXPORTS = {"target": "target", "draft_sft": "draft_sft", "draft_sapo": "draft_sapo"}

# The importer split each of the run's splits reads (imported training sets).
IMPORTED_SPLITS = {"train": "train", "validation": "val", "test": "test"}


class StageError(RuntimeError):
    """A stage's input (an earlier stage's result) is missing."""


# ---------------------------------------------------------------------------------- runs


class Run:
    """One training run in ``workdir``: the stages share its data, tokenizer and models."""

    def __init__(self, cfg: TrainConfig, workdir: str | os.PathLike, raw_config=None):
        self.cfg, self.dir = cfg, Path(workdir)
        self.raw = raw_config
        self.models: dict[str, object] = {}
        self.notes: dict[str, object] = {}

    # ------------------------------------------------------------------- shared state

    @property
    def tokenizer_dir(self) -> Path:
        return self.dir / "tokenizer"

    @property
    def from_checkpoints(self) -> bool:
        """Whether the tokenizer and image processor come from the target's checkpoint."""
        return bool(self.cfg.target_model.checkpoint)

    def source(self, split: str):
        """Random-access records of ``split`` ("train", "validation", "test")."""
        d = self.cfg.data
        if d.dataset == "synthetic":
            return synthetic_tfds.load(str(self.dir / "data"), d.synthetic, split, d.sizes())
        return import_tfds.load(d.dataset, self.dir / "data", IMPORTED_SPLITS[split])

    def tokenizer(self):
        if not hasattr(self, "_tok"):
            if self.from_checkpoints:
                self._tok = self._checkpoint_tokenizer()
            elif not (self.tokenizer_dir / "tokenizer.json").exists():
                raise StageError(
                    f"no dataset / tokenizer in {self.dir}: run stage 'data' first "
                    "(add it to stages)."
                )
            else:
                self._tok = load_tokenizer(self.tokenizer_dir)
        return self._tok

    def _checkpoint_tokenizer(self):
        """The target checkpoint's tokenizer, after checking that a draft checkpoint reads
        prompts the same way (configs and tokenizers only: no weight is read)."""
        target = self.cfg.target_model.checkpoint
        tok = load_tokenizer(target)
        draft = self.cfg.draft_model.checkpoint
        if draft:
            check_pair(hf.read_config(draft), hf.read_config(target))
            check_tokenizers(load_tokenizer(draft), tok)
        return tok

    def image_cfg(self, model_cfg) -> ImageProcessorConfig:
        if self.from_checkpoints:  # the target's processor, within the patch budget
            base = ImageProcessorConfig.from_pretrained(self.cfg.target_model.checkpoint)
            cap = self.patches(model_cfg) * base.patch_size**2
            # Upscaling a small image rounds both sides up; a floor of a quarter of the cap
            # keeps that inside the cap (up to aspect ratios far beyond real images').
            low = min(base.min_pixels, cap // 4)
            return dataclasses.replace(base, min_pixels=low, max_pixels=min(base.max_pixels, cap))
        side = self.cfg.data.synthetic.image_size
        return ImageProcessorConfig.for_vision(
            model_cfg.vision, min_pixels=side * side, max_pixels=side * side
        )

    def patches(self, model_cfg) -> int:
        """Static image patches per training row."""
        v = model_cfg.vision
        if self.from_checkpoints:
            unit = v.spatial_merge_size**2
            return self.cfg.data.max_patches // unit * unit
        return (self.cfg.data.synthetic.image_size // v.patch_size) ** 2

    def init_model(self, role: str, *, restoring: bool = False):
        """The role's starting model on its mesh: its checkpoint, or a fresh built-in one.
        With ``restoring`` (a finished stage's checkpoint replaces the weights) neither is
        read or initialised: the model's shape, all zeros."""
        spec = self.cfg.target_model if role == "target" else self.cfg.draft_model
        mesh = (self.cfg.target_mesh if role == "target" else self.cfg.draft_mesh).mesh(role)
        dtype = DTYPES[spec.dtype]
        if spec.checkpoint:
            self.tokenizer()  # checks the pair before any weight is read
            if not restoring:
                model, _ = hf.load_pretrained(spec.checkpoint, dtype=dtype, mesh=mesh)
                return model, mesh
            mcfg = hf.read_config(spec.checkpoint)
        else:
            mcfg = spec.model_config(self.tokenizer())
        make = lambda: Qwen3VL(mcfg, dtype=dtype, rngs=nnx.Rngs(spec.seed))  # noqa: E731
        return init_sharded(make, mesh, zeros=restoring), mesh

    def _as_is(self, role: str) -> bool:
        """Whether the role's final model is its checkpoint, unchanged: its SFT model is the
        checkpoint and (target) no ``refine_target`` stage changes it."""
        return self._sft_is_checkpoint(role) and not (role == "target" and self.refines())

    def _sft_is_checkpoint(self, role: str) -> bool:
        """Whether the role's SFT model is its checkpoint: it has one, and its SFT stage is
        neither listed nor finished in this workdir."""
        spec = self.cfg.target_model if role == "target" else self.cfg.draft_model
        stage = f"sft_{role}"
        return bool(spec.checkpoint) and stage not in self.cfg.stages and not self.finished(stage)

    def refines(self) -> bool:
        """Whether this run's target is the ``refine_target`` stage's (listed or done)."""
        return "refine_target" in self.cfg.stages or self.finished("refine_target")

    def export_dir(self, name: str) -> Path:
        """Where exported model ``name`` (of `EXPORTS`) is: a checkpoint used unchanged is
        not copied, it is its own export."""
        model_name = EXPORTS[name]
        if model_name != "draft_sapo":
            role = "draft" if model_name == "draft_sft" else "target"
            if self._as_is(role):
                spec = self.cfg.target_model if role == "target" else self.cfg.draft_model
                return Path(spec.checkpoint)
        return self.dir / "export" / name

    # ------------------------------------------------------------------------- stages

    def data(self) -> None:
        d = self.cfg.data
        if d.dataset == "synthetic":
            synthetic_tfds.build(str(self.dir / "data"), d.synthetic, d.sizes())
        else:  # the splits SAPO reads: train, and val for the before/after check
            for split in ("train", "validation"):
                import_tfds.build(
                    d.dataset, d.source_dir, self.dir / "data", IMPORTED_SPLITS[split]
                )
        if self.from_checkpoints:  # the tokenizer is the checkpoint's
            return
        if not (self.tokenizer_dir / "tokenizer.json").exists():
            tmp = self.dir / "tokenizer.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            build_synthetic_tokenizer(
                tmp,
                n=d.tokenizer_examples,
                vocab_size=d.tokenizer_vocab,
                cfg=d.synthetic,
                extra=self.fixed_texts(),
            )
            os.replace(tmp, self.tokenizer_dir)

    def fixed_texts(self) -> tuple[str, ...]:
        """Texts every model reads besides the examples: the verifiers' questions and
        words, and the chat roles. Trained into the tokenizer, a verification suffix
        becomes a few tokens instead of one per byte (cheaper rows and verification)."""
        texts = ["user", "assistant"]
        for v in (self.cfg.verifier, self.cfg.sapo.verifier):
            texts += [v.question, *v.positive_words, *v.negative_words]
        return tuple(dict.fromkeys(texts))

    def finished(self, stage: str) -> bool:
        """Whether ``stage`` completed in this workdir (its outputs are all there)."""
        if stage in ("sft_target", "sft_draft", "refine_target", "sapo"):
            steps = getattr(self.cfg, stage).steps
            done = (self.dir / stage / "checkpoints" / str(steps)).is_dir()
            return done and (stage != "sapo" or (self.dir / "sapo" / "effect.json").exists())
        if stage == "export":
            return all((self.export_dir(n) / "config.json").exists() for n in EXPORTS)
        return False

    def _require(self, stage: str) -> None:
        if not self.finished(stage):
            raise StageError(
                f"this stage needs the result of stage {stage!r}, which has not finished in "
                f"{self.dir}; run it first (add {stage!r} to stages) or point --workdir at a "
                "run that finished it."
            )

    def sft(self, role: str, *, load_only: bool = False) -> None:
        """Trains (or, when finished, restores) the role's SFT model."""
        stage = f"sft_{role}"
        if self.finished(stage) and not load_only:
            print(f"stage {stage}: finished earlier, reused", flush=True)
            return
        # First: names a missing data stage. A finished stage restores its final
        # checkpoint, so its start is only the model's shape.
        model, mesh = self.init_model(role, restoring=load_only)
        source = self.source("train")
        if role == "draft" and self.cfg.sft_draft.chains.source == "target":
            source = self.target_chains(source)
        sec = self.cfg.sft_target if role == "target" else self.cfg.sft_draft
        sec = dataclasses.replace(sec, patches_per_row=self.patches(model.cfg))
        trained, result = run_sft(
            self.dir / stage,
            model,
            source,
            self.tokenizer(),
            self.image_cfg(model.cfg),
            sec,
            mesh,
            config=self.raw,
            desc=stage,
            verifier=self.cfg.verifier,
        )
        self._stop_if_preempted(result)
        self.models[f"{role}_sft"] = trained

    def target_chains(self, source) -> distill.ChainRecords:
        """``sft_draft``'s records when it trains on the target's chains: written once by
        the SFT target (or the target checkpoint) and kept in ``sft_draft/target_chains.json``
        (a resumed run reads them back)."""
        path = self.dir / "sft_draft" / "target_chains.json"
        cfg = self.cfg.sft_draft.chains
        if path.exists():
            chains = distill.load_chains(path)
        else:
            target = self.model("target_sft")
            records = [source[i] for i in range(min(cfg.records, len(source)))]
            tokenizer = self.tokenizer()
            eos_ids, pad_id = chain_token_ids(tokenizer)
            chains = distill.target_chains(
                target,
                records,
                tokenizer,
                self.image_cfg(target.cfg),
                cfg,
                delimiter=self.cfg.spec.delimiter,
                eos_ids=eos_ids,
                pad_id=pad_id,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            distill.save_chains(path, chains, asked=len(records))
        print(
            f"sft_draft: trains on {len(chains)} target-written chains "
            f"({sum(c.correct for c in chains)} graded right)",
            flush=True,
        )
        return distill.ChainRecords(source, chains)

    def model(self, name: str):
        """A stage's model: in memory, restored from the stage's final checkpoint, or (for
        ``target_sft`` / ``draft_sft`` without an SFT stage) the role's checkpoint.
        ``target`` is the target later stages use: ``refine_target``'s when this run has
        that stage, else ``target_sft``.

        Raises:
          StageError: the stage that makes it has not finished in this workdir.
        """
        if name == "target" and not self.refines():
            name = "target_sft"
        if name not in self.models:
            if name == "draft_sapo":
                self._require("sapo")
                self.sapo(load_only=True)
            elif name == "target":
                self._require("refine_target")
                self.refine(load_only=True)
            else:
                role = "target" if name == "target_sft" else "draft"
                if self._sft_is_checkpoint(role):
                    self.models[name] = self.init_model(role)[0]
                else:
                    self._require(f"sft_{role}")
                    self.sft(role, load_only=True)
        return self.models[name]

    def refine(self, *, load_only: bool = False) -> None:
        """Fine-tunes the SFT target's verdicts on the SFT draft's wrong steps
        (`training.refine`); when finished, only restores the refined target."""
        if self.finished("refine_target") and not load_only:
            print("stage refine_target: finished earlier, reused", flush=True)
            return
        target, draft = self.model("target_sft"), self.model("draft_sft")
        del self.models["target_sft"]  # its arrays are donated to the fine-tune
        sec = self.cfg.refine_target
        sft = dataclasses.replace(sec.sft, patches_per_row=self.patches(target.cfg))
        trained, result = run_refine(
            self.dir / "refine_target",
            target,
            draft,
            self.source("train"),
            self.tokenizer(),
            self.image_cfg(target.cfg),
            dataclasses.replace(sec, sft=sft),
            self.cfg.target_mesh.mesh("target"),
            draft_image_cfg=self.image_cfg(draft.cfg),
            max_step_tokens=self.cfg.spec.max_step_tokens,
            delimiter=self.cfg.spec.delimiter,
            verifier=self.cfg.verifier,
            config=self.raw,
        )
        self._stop_if_preempted(result)
        self.models["target"] = trained

    def sapo(self, *, load_only: bool = False) -> None:
        """Runs SAPO on the SFT draft, measuring the draft on held-out prompts before and
        after; when finished, only restores the trained draft (``load_only``)."""
        if self.finished("sapo") and not load_only:
            print("stage sapo: finished earlier, reused", flush=True)
            return
        rollout_mesh = self.cfg.rollout_mesh.mesh("rollout")
        target, draft = self.model("target"), self.model("draft_sft")
        sec = dataclasses.replace(self.cfg.sapo, patches_per_row=self.patches(draft.cfg))
        image_cfg = self.image_cfg(draft.cfg)
        scorer = Scorer(target, self.tokenizer(), image_cfg, sec)
        val = self.source("validation")
        held_out = [val[i] for i in range(min(len(val), self.cfg.data.validation_size))]
        before = None if load_only else policy_stats(scorer, draft, held_out)
        trained, result = run_sapo(
            self.dir / "sapo",
            draft,
            target,
            self.source("train"),
            self.tokenizer(),
            image_cfg,
            sec,
            self.cfg.draft_mesh.mesh("draft"),
            config=self.raw,
            rollout_mesh=rollout_mesh,
        )
        self._stop_if_preempted(result)
        self.models["draft_sapo"] = trained
        if load_only:
            return
        after = policy_stats(scorer, trained, held_out)
        effect = {"held_out_examples": len(held_out), "before": before, "after": after}
        path = self.dir / "sapo" / "effect.json"
        path.with_suffix(".tmp").write_text(json.dumps(effect, indent=2) + "\n")
        os.replace(path.with_suffix(".tmp"), path)

    def export(self) -> None:
        for name, model_name in EXPORTS.items():
            out = self.export_dir(name)
            if (out / "config.json").exists():
                continue
            model = self.model(model_name)
            self.tokenizer().save_pretrained(out)
            image = self.image_cfg(model.cfg)
            processor = {
                "image_processor_type": "Qwen2VLImageProcessor",
                "patch_size": image.patch_size,
                "temporal_patch_size": image.temporal_patch_size,
                "merge_size": image.merge_size,
                "image_mean": list(image.image_mean),
                "image_std": list(image.image_std),
                "size": {"shortest_edge": image.min_pixels, "longest_edge": image.max_pixels},
            }
            (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
            hf.save_pretrained(model, model.cfg, out)  # config.json last: marks complete

    def _stop_if_preempted(self, result) -> None:
        if result.preempted:
            raise SystemExit(
                f"preempted at step {result.step}: checkpoint saved; re-run the same command "
                "to resume."
            )

    def stage(self, name: str) -> None:
        {
            "data": self.data,
            "sft_target": lambda: self.sft("target"),
            "sft_draft": lambda: self.sft("draft"),
            "refine_target": self.refine,
            "sapo": self.sapo,
            "export": self.export,
            "eval": self.evaluate,
        }[name]()

    def run(self) -> dict:
        timings = self.notes.setdefault("timings_s", {})
        for stage in self.cfg.stages:
            t0 = time.perf_counter()
            logging.info("stage %s", stage)
            if stage == "eval":
                timings["total_before_eval"] = round(sum(timings.values()), 2)
            self.stage(stage)
            timings[stage] = round(time.perf_counter() - t0, 2)
            print(f"stage {stage}: done in {timings[stage]} s", flush=True)
        return self.notes

    def evaluate(self) -> None:
        """Every engine with the SFT draft and with the SAPO draft, on the held-out split;
        then the report. A finished evaluation (its summary exists) is reused."""
        cfg = self.cfg
        if cfg.data.dataset == "synthetic":  # held-out examples of the training set
            sec = dataclasses.replace(
                cfg.eval,
                dataset="synthetic",
                synthetic=cfg.data.synthetic,
                data_dir=str(self.dir / "data"),
            )
        else:  # the benchmark the eval section names
            sec = dataclasses.replace(
                cfg.eval, data_dir=cfg.eval.data_dir or str(self.dir / "data")
            )
        # The evaluation loads the exported models itself: free the stages' copies first (at
        # real scale a second 32B target would not fit next to the first).
        self.models.clear()
        gc.collect()
        summaries = {}
        for draft in ("draft_sft", "draft_sapo"):
            out = self.dir / f"eval_{draft}"
            done = out / "eval" / "summary.json"
            if not done.exists():
                ecfg = eval_lib.EvalConfig(
                    target=ModelSection(
                        checkpoint=str(self.export_dir("target")), dtype=cfg.target_model.dtype
                    ),
                    draft=ModelSection(
                        checkpoint=str(self.export_dir(draft)), dtype=cfg.draft_model.dtype
                    ),
                    spec=cfg.spec,
                    verifier=cfg.verifier,
                    target_mesh=cfg.target_mesh,
                    draft_mesh=cfg.draft_mesh,
                    eval=sec,
                )
                eval_lib.run(ecfg, out)
            summaries[draft] = json.loads(done.read_text())
        self._require("export")
        effect = self.dir / "sapo" / "effect.json"
        sapo_effect = json.loads(effect.read_text()) if effect.exists() else None
        models = {name: hf.read_config(self.export_dir(name)) for name in ("target", "draft_sft")}
        paths = demo_report.write(
            self.dir, summaries, sapo_effect, models, self.notes, alpha=cfg.verifier.alpha
        )
        self.notes["report"] = str(paths["md"])


def run(cfg: TrainConfig, workdir: str | os.PathLike, raw_config=None) -> dict:
    """Runs ``cfg.stages`` in ``workdir`` (resuming); returns a summary dict."""
    check_workdir(workdir)
    return Run(cfg, workdir, raw_config).run()


def _multi_host(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def main(argv, flag_values: dict) -> None:
    """Runs the configured stages from parsed flags; last line printed: one JSON object."""
    del argv
    raw = flag_values["config"].value
    workdir = flag_values["workdir"].value or raw.get("workdir") or "runs/train"
    cfg = config_lib.to_dataclass(TrainConfig, {k: raw[k] for k in SECTIONS if k in raw})
    check_workdir(workdir)
    if _multi_host(flag_values["distributed"].value):  # before any other JAX call
        jax.distributed.initialize()
    config_lib.write_resolved(raw, workdir, spec=config_lib.flag_spec())
    summary = run(cfg, workdir, raw.to_dict())
    print(json.dumps(summary), flush=True)


def _cli() -> None:
    # Flags are defined here, not at import, so entry points can be imported side by side.
    flag_values = {
        "config": config_lib.define_config_flag(),
        "workdir": flags.DEFINE_string(
            "workdir", None, "Run directory (default: the config's workdir)."
        ),
        "distributed": flags.DEFINE_bool(
            "distributed",
            None,
            "Call jax.distributed.initialize() (one process per host). Default: on a "
            "multi-host TPU slice or with JAX_COORDINATOR_ADDRESS set.",
        ),
    }
    app.run(lambda argv: main(argv, flag_values))


if __name__ == "__main__":
    _cli()
