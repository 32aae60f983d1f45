"""`python -m dreamr_jax.eval`: engines over a dataset split, graded, timed and plotted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_importers import (
    RWQA_SCHEMA,
    _img,
    _mv_item,
    _png,
    _rwqa_row,
    _write_mathverse,
    _write_parquet,
)

from dreamr_jax import config as config_lib
from dreamr_jax import eval as eval_lib
from dreamr_jax.data import grading
from dreamr_jax.spec import SpecEngine, report
from dreamr_jax.spec import roles as roles_lib

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cfg(*overrides):
    raw = config_lib.load_config(str(ROOT / "configs/demo.py:smoke"), overrides)
    return config_lib.to_dataclass(eval_lib.EvalConfig, {k: raw[k] for k in eval_lib.SECTIONS})


def _lines(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "eval/requests.jsonl").read_text().splitlines()]


def _outputs(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "eval").iterdir()) if p.is_file()}


def _no_load(*args, **kwargs):
    raise AssertionError("weights were loaded before the inputs were checked")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke evaluation of both baselines and fpsr at α in (0, 1), two synthetic
    requests. (The other speculative engines share fpsr's code path and decisions; each
    engine and α costs seconds of compilation.)"""
    workdir = tmp_path_factory.mktemp("eval")
    cfg = _cfg("eval.engines=('draft_only', 'fpsr')")
    return workdir, eval_lib.run(cfg, workdir, progress=False)


def test_writes_jsonl_summary_and_plots(smoke):
    workdir, summary = smoke
    assert json.loads((workdir / "eval/summary.json").read_text()) == summary
    runs = [(r["engine"], r["alpha"]) for r in summary["results"]]
    assert runs[:2] == [("target_only", None), ("draft_only", None)]
    assert runs[2:] == [("fpsr", 0.0), ("fpsr", 1.0)]
    assert summary["dataset"] == "synthetic" and summary["split"] == "test"
    assert summary["requests"] == 2
    assert summary["config"]["eval"]["alphas"] == [0.0, 1.0]
    for name in report.PLOTS:
        data = (workdir / "eval" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    lines = _lines(workdir)
    assert len(lines) == len(runs) * 2
    for line in lines:
        assert set(line) == {
            "id",
            "engine",
            "alpha",
            "answer",
            "gold",
            "answer_type",
            "correct",
            "steps",
            "metrics",
        }
        assert line["id"] in ("test-0-0", "test-0-1")
        assert len(line["steps"]) == line["metrics"]["steps"] <= 3
        assert all(s["source"] in ("draft", "target", "draft_only") for s in line["steps"])
        assert line["correct"] == grading.grade(
            line["answer"], line["gold"], answer_type=line["answer_type"]
        )
        assert line["metrics"]["correct"] == line["correct"]
    assert not list((workdir / "eval").glob("*.tmp")) and not list((workdir / "eval").glob(".*"))


def test_summary_counts_match_jsonl(smoke):
    workdir, summary = smoke
    lines = _lines(workdir)
    for result in summary["results"]:
        mine = [
            x for x in lines if (x["engine"], x["alpha"]) == (result["engine"], result["alpha"])
        ]
        assert result["requests"] == len(mine) == 2
        for key in ("steps", "judged", "accepted", "fallbacks", "output_tokens", "verify_calls"):
            assert result[key] == sum(x["metrics"][key] for x in mine), key
        assert result["accuracy"] == sum(x["correct"] for x in mine) / len(mine)
        assert result["wall_s"] == pytest.approx(sum(x["metrics"]["wall_s"] for x in mine))
        accepted = sum(s["source"] == "draft" for x in mine for s in x["steps"])
        assert result["accepted"] >= accepted  # steps past max_steps may be dropped
    target = summary["results"][0]
    assert target["engine"] == "target_only" and target["speedup"] == 1.0
    for result in summary["results"][1:]:
        assert result["speedup"] == pytest.approx(target["wall_s"] / result["wall_s"])


def test_alpha_extremes_match_baselines(smoke):
    workdir, summary = smoke
    answers = {}
    for line in _lines(workdir):
        answers.setdefault((line["engine"], line["alpha"]), []).append(line["answer"])
    assert answers[("fpsr", 1.0)] == answers[("target_only", None)]
    assert answers[("fpsr", 0.0)] == answers[("draft_only", None)]
    assert answers[("target_only", None)] != answers[("draft_only", None)]  # not vacuous
    by_engine = {(r["engine"], r["alpha"]): r for r in summary["results"]}
    assert by_engine[("fpsr", 0.0)]["acceptance_rate"] == 1.0
    assert by_engine[("fpsr", 1.0)]["acceptance_rate"] == 0.0


def test_disjoint_device_sets_give_the_same_answers(smoke, tmp_path):
    """The paper's split: draft on 2 devices, target on 4 others (fsdp x tensor). At α = 1
    every lookahead round falls back to the target's forked rows (which once mixed the two
    device sets and crashed); the answers equal target_only's, and those equal the
    one-device run's."""
    meshes = (
        "draft_mesh.data=2",
        "target_mesh.first_device=2",
        "target_mesh.fsdp=2",
        "target_mesh.tensor=2",
    )
    cfg = _cfg("eval.engines=('lookahead',)", "verifier.alpha=1.0", *meshes)
    summary = eval_lib.run(cfg, tmp_path, progress=False)
    assert [r["engine"] for r in summary["results"]] == ["target_only", "lookahead"]
    assert summary["results"][1]["acceptance_rate"] == 0.0
    answers = {}
    for line in _lines(tmp_path):
        answers.setdefault(line["engine"], []).append(line["answer"])
    one_device = [x["answer"] for x in _lines(smoke[0]) if x["engine"] == "target_only"]
    assert answers["lookahead"] == answers["target_only"] == one_device


def test_table_and_headline(smoke):
    _, summary = smoke
    text = report.table(summary["results"])
    assert text.splitlines()[0].split() == ["engine", "alpha", "accuracy", "acceptance", "speedup"]
    assert "target_only" in text and "1.00x" in text and len(text.splitlines()) == 2 + 4
    head = report.headline(summary)
    assert json.loads(json.dumps(head)) == head
    assert head["runs"][0] == {
        "engine": "target_only",
        "alpha": None,
        "accuracy": summary["results"][0]["accuracy"],
        "acceptance_rate": None,
        "speedup": 1.0,
    }


def test_rerun_keeps_old_outputs_and_interruption_changes_nothing(tmp_path, monkeypatch):
    # α = 1 as in the module's fixture: compiled once per process.
    overrides = ("eval.engines=('fpsr',)", "eval.alphas=(1.0,)", "eval.warmup=0")
    first = eval_lib.run(_cfg(*overrides), tmp_path, progress=False)
    (tmp_path / "eval" / "notes.txt").write_text("mine")
    before = _outputs(tmp_path)

    calls = {"n": 0}
    real_run = SpecEngine.run

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # target_only done, in fpsr's runs
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(SpecEngine, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        eval_lib.run(_cfg(*overrides), tmp_path, progress=False)
    assert _outputs(tmp_path) == before
    monkeypatch.undo()

    second = eval_lib.run(_cfg(*overrides, "eval.plots=false"), tmp_path, progress=False)
    assert second["run_id"] != first["run_id"]
    now = _outputs(tmp_path)
    assert set(now) == {"notes.txt", "requests.jsonl", "summary.json"}
    assert json.loads(now["summary.json"]) == second
    assert len(_lines(tmp_path)) == 2 * 2
    old = tmp_path / "eval" / "old" / first["run_id"]
    assert {p.name: p.read_bytes() for p in old.iterdir()} == {
        k: v for k, v in before.items() if k != "notes.txt"
    }


def test_runs_sweep_only_the_sweep_engines():
    cfg = _cfg("eval.alphas=(0.5, 0.9)", "eval.sweep_engines=('fpsr',)", "verifier.alpha=0.7")
    assert cfg.eval.runs(cfg.verifier.alpha) == [
        ("target_only", None),
        ("draft_only", None),
        ("specreason", 0.7),
        ("lookahead", 0.7),
        ("fpsr", 0.5),
        ("fpsr", 0.9),
    ]
    every = _cfg("eval.alphas=(0.5, 0.9)", "eval.sweep_engines=('specreason', 'lookahead', 'fpsr')")
    assert [a for e, a in every.eval.runs(0.7) if e == "lookahead"] == [0.5, 0.9]


@pytest.mark.parametrize(
    "override,match",
    [
        ("eval.dataset=imagenet", r"config\.eval\.dataset='imagenet'.*mmbench.*realworldqa"),
        ("eval.engines=()", r"config\.eval\.engines=\(\): is empty"),
        ("eval.engines=('fpsr', 'medusa')", r"unknown \['medusa'\]"),
        ("eval.alphas=(0.5, 1.5)", r"config\.eval\.alphas=\(0\.5, 1\.5\): must be in \[0, 1\]"),
        ("eval.num_examples=0", r"config\.eval\.num_examples=0: must be >= 1"),
        ("eval.split=dev", r"config\.eval\.split='dev': synthetic has the splits"),
        ("eval.warmup=-1", r"config\.eval\.warmup=-1"),
        ("eval.sweep_engines=('draft_only',)", r"sweep_engines=.*unknown \['draft_only'\]"),
    ],
)
def test_bad_config_values_are_named(override, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        _cfg(override)


def test_bad_data_is_refused_before_weights_load(tmp_path, monkeypatch):
    monkeypatch.setattr(roles_lib.hf, "load_pretrained", _no_load)
    with pytest.raises(config_lib.ConfigError, match=r"eval\.source_dir='': realworldqa split"):
        eval_lib.run(_cfg("eval.dataset=realworldqa"), tmp_path, progress=False)
    missing = tmp_path / "nowhere"
    with pytest.raises(config_lib.ConfigError, match="nowhere.*no such directory"):
        eval_lib.run(
            _cfg("eval.dataset=realworldqa", f"eval.source_dir={missing}"), tmp_path, progress=False
        )
    with pytest.raises(config_lib.ConfigError, match="eval.split='dev'.*realworldqa has"):
        _cfg("eval.dataset=realworldqa", "eval.split=dev")
    source = tmp_path / "rwqa"
    _write_parquet(source / "data/test-0.parquet", [_rwqa_row()], RWQA_SCHEMA)
    with pytest.raises(config_lib.ConfigError, match="has only 1 usable examples"):
        eval_lib.run(
            _cfg("eval.dataset=realworldqa", f"eval.source_dir={source}"), tmp_path, progress=False
        )
    # A record without an image cannot be asked: skipped, and counted when N is short.
    _write_mathverse(tmp_path / "mv", [_mv_item(1), _mv_item(2, question="", image="")])
    mathverse = ("eval.dataset=mathverse", f"eval.source_dir={tmp_path / 'mv'}")
    with pytest.raises(config_lib.ConfigError, match=r"only 1 usable .*\(1 without an image"):
        eval_lib.run(_cfg(*mathverse), tmp_path, progress=False)
    items, notes = eval_lib.load_items(_cfg(*mathverse, "eval.num_examples=1").eval, tmp_path)
    assert [i.id for i in items] == ["mathverse:1"] and "Options: (A) 30°" in items[0].question
    from dreamr_jax.inference.generate import CacheTooShort

    with pytest.raises(CacheTooShort, match="cache_length") as err:
        eval_lib.run(_cfg("spec.cache_length=64"), tmp_path, progress=False)
    assert "in eval record 'test-0-0'" in err.value.__notes__
    assert not (tmp_path / "eval").exists()


def test_imported_dataset_is_built_once_and_graded(tmp_path):
    source = tmp_path / "rwqa"
    # Prompts in the synthetic ones' length bucket and image size: nothing recompiles.
    rows = [
        _rwqa_row(
            image=_img(_png("red", (64, 64))),
            question="Which way does the car face?\nA. Left\nB. Straight\nC. Right",
        ),
        _rwqa_row(
            image=_img(_png("blue", (64, 64))),
            question="How many cars are in the picture, counting every car?",
            answer="3",
        ),
    ]
    _write_parquet(source / "data/test-0.parquet", rows, RWQA_SCHEMA)
    base = ("eval.dataset=realworldqa", "eval.engines=('target_only',)", "eval.plots=false")
    summary = eval_lib.run(_cfg(*base, f"eval.source_dir={source}"), tmp_path, progress=False)
    lines = _lines(tmp_path)
    assert [x["id"] for x in lines] == ["realworldqa:0", "realworldqa:1"]
    assert [(x["gold"], x["answer_type"]) for x in lines] == [("B", "choice"), ("3", "number")]
    assert summary["split"] == "test" and summary["results"][0]["speedup"] == 1.0
    # Built into data_dir: a second run needs no source.
    again = eval_lib.run(_cfg(*base), tmp_path, progress=False)
    assert [x["answer"] for x in _lines(tmp_path)] == [x["answer"] for x in lines]
    assert again["data"]["data_dir"] == str(tmp_path / "data")


def test_cli_prints_table_and_final_json(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamr_jax.eval",
            "--config=configs/demo.py:smoke",
            f"--workdir={tmp_path}",
            "--config.eval.engines=('target_only',)",
            "--config.eval.num_examples=1",
            "--config.eval.warmup=0",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    head = json.loads(proc.stdout.strip().splitlines()[-1])
    assert head["requests"] == 1 and head["dataset"] == "synthetic"
    assert head["runs"] == [
        {
            "engine": "target_only",
            "alpha": None,
            "accuracy": _lines(tmp_path)[0]["correct"] * 1.0,
            "acceptance_rate": None,
            "speedup": 1.0,
        }
    ]
    summary = json.loads((tmp_path / "eval/summary.json").read_text())
    assert report.table(summary["results"]) in proc.stdout
    assert "target_only: " in proc.stderr and "1/1" in proc.stderr  # the progress bar
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert resolved["eval"]["num_examples"] == 1


def test_warmup_covers_every_compiled_shape():
    import numpy as np

    from dreamr_jax.spec import Request

    def req(n_ids, side):
        grid = np.array([[1, side, side]])
        return Request(list(range(n_ids)), np.zeros((side * side, 8), np.float32), grid)

    # 40 and 60 ids pad to 64; 70 to 128; a different image grid is another shape.
    requests = [req(40, 4), req(60, 4), req(70, 4), req(40, 6), req(50, 4)]
    assert eval_lib.shape_representatives(requests) == [0, 2, 3]
