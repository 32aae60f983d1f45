"""Run configs: every shipped config loads, overrides, typed validation, the run record."""

import dataclasses
import importlib.util
import json
import os
import pathlib
from typing import Literal

import ml_collections
import pytest
from absl import flags

from dreamr_jax import config as config_lib
from dreamr_jax.config import ConfigError, require

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / "configs").glob("*.py"))
# The config system's own tests read a frozen fixture (sections model, prompt, generate,
# mesh); the shipped configs are checked by the tests that load every one of them.
DEMO = str(pathlib.Path(__file__).parent / "config_fixture.py")


def _variants(path: pathlib.Path) -> tuple[str | None, ...]:
    spec = importlib.util.spec_from_file_location(f"_variants_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return (None, *getattr(module, "VARIANTS", ()))


def _flat(cfg) -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        else:
            out[key] = value
    return out


SHIPPED = [(p, v) for p in CONFIG_FILES for v in _variants(p)]


def test_configs_are_shipped():
    assert any(p.name == "demo.py" for p in CONFIG_FILES)


@pytest.mark.parametrize(
    "path,variant", SHIPPED, ids=[f"{p.stem}:{v}" if v else p.stem for p, v in SHIPPED]
)
def test_every_config_loads_and_records(path, variant, tmp_workdir):
    spec = f"{path}:{variant}" if variant else str(path)
    cfg = config_lib.load_config(spec)
    assert isinstance(cfg, ml_collections.ConfigDict)
    assert cfg.is_locked
    assert isinstance(cfg.workdir, str) and cfg.workdir
    # Every value must survive the run record.
    config_lib.write_resolved(cfg, tmp_workdir, spec=spec)
    assert config_lib.read_resolved(tmp_workdir).to_dict() == json.loads(json.dumps(cfg.to_dict()))


def test_smoke_variant_states_only_its_changes():
    base = _flat(config_lib.load_config(DEMO))
    smoke = _flat(config_lib.load_config(f"{DEMO}:smoke"))
    assert base.keys() == smoke.keys()
    changed = {k for k in base if base[k] != smoke[k]}
    assert changed == {"generate.max_new_tokens", "workdir"}
    assert smoke["generate.max_new_tokens"] == 8


@pytest.mark.parametrize(
    "override,key,expected",
    [
        ("generate.max_new_tokens=5", "generate.max_new_tokens", 5),
        ("generate.temperature=1", "generate.temperature", 1.0),  # int text, float field
        ("generate.top_p=2.5e-1", "generate.top_p", 0.25),
        ("model.dtype=bfloat16", "model.dtype", "bfloat16"),
        ("model.checkpoint=123", "model.checkpoint", "123"),  # str field keeps digits as text
        ("--config.mesh.fsdp=4", "mesh.fsdp", 4),
        (
            "generate.stop_strings=('\\n\\n', 'Answer:')",
            "generate.stop_strings",
            ("\n\n", "Answer:"),
        ),
        ("generate.stop_strings=a,b", "generate.stop_strings", ("a", "b")),
        ("generate.stop_strings=()", "generate.stop_strings", ()),
        ("workdir=None", "workdir", None),
    ],
)
def test_override_parses_by_field_type(override, key, expected):
    cfg = config_lib.load_config(DEMO, [override])
    value = _flat(cfg)[key]
    assert value == expected
    assert type(value) is type(expected)


def test_override_types_for_bool_tuple_and_none_fields():
    cfg = ml_collections.ConfigDict({"s": {"flag": True, "sizes": (1, 2), "scales": (1.0,)}})
    cfg.s.extra = None
    config_lib.apply_overrides(
        cfg, ["s.flag=false", "s.sizes=3,4,5", "s.scales=(2, 3)", "s.extra=[1, 'x']"]
    )
    assert cfg.s.flag is False
    assert cfg.s.sizes == (3, 4, 5)
    assert cfg.s.scales == (2.0, 3.0) and isinstance(cfg.s.scales[0], float)
    assert cfg.s.extra == [1, "x"]
    with pytest.raises(ConfigError, match=r"config\.s\.flag='maybe': cannot parse as bool"):
        config_lib.apply_overrides(cfg, ["s.flag=maybe"])
    with pytest.raises(ConfigError, match=r"config\.s\.sizes=.*elements must be int"):
        config_lib.apply_overrides(cfg, ["s.sizes=a,b"])


def test_later_override_wins_and_file_is_untouched():
    cfg = config_lib.load_config(DEMO, ["mesh.data=2", "mesh.data=4"])
    assert cfg.mesh.data == 4
    assert config_lib.load_config(DEMO).mesh.data == 1


def test_unknown_override_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        config_lib.load_config(DEMO, ["generate.topp=0.5"])
    msg = str(err.value)
    assert msg.startswith("config.generate: unknown key 'topp'")
    for key in ("max_new_tokens", "temperature", "top_k", "top_p", "stop_strings"):
        assert key in msg
    assert "Did you mean 'top_p'" in msg
    with pytest.raises(ConfigError, match=r"^config: unknown key 'modle'; valid keys: generate"):
        config_lib.load_config(DEMO, ["modle.seed=1"])


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("generate.top_k=1.5", r"config\.generate\.top_k='1\.5': cannot parse as int"),
        ("model.seed=abc", r"config\.model\.seed='abc': cannot parse as int"),
        (
            "model=3",
            r"config\.model is a section; set its fields instead \(checkpoint, dtype, seed\)",
        ),
        ("model.seed.x=1", r"config\.model\.seed=0 is a value, not a section"),
        ("generate.top_p", r"must look like section\.field=value"),
    ],
)
def test_bad_override_names_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_lib.load_config(DEMO, [override])


def test_bad_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown variant 'huge'.*smoke"):
        config_lib.load_config(f"{DEMO}:huge")
    with pytest.raises(ConfigError, match=r"config file '.*nope\.py' not found"):
        config_lib.load_config(str(tmp_path / "nope.py"))
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ConfigError, match=r"defines no get_config"):
        config_lib.load_config(str(empty))
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def get_config(arg=None):\n    return {'a': 1}\n")
    with pytest.raises(ConfigError, match=r"returned dict, not an ml_collections.ConfigDict"):
        config_lib.load_config(str(wrong))


def test_derive_checks_keys_and_leaves_base_alone():
    base = config_lib.load_config(DEMO)
    child = config_lib.derive(base, {"generate.top_k": 40, "mesh.data": 2})
    assert (child.generate.top_k, child.mesh.data) == (40, 2)
    assert (base.generate.top_k, base.mesh.data) == (0, 1)
    with pytest.raises(ConfigError, match=r"config\.generate: unknown key 'topk'"):
        config_lib.derive(base, {"generate.topk": 40})
    with pytest.raises(ConfigError, match=r"config\.mesh\.data='2'"):
        config_lib.derive(base, {"mesh.data": "2"})


# ----------------------------------------------------------------------------------------
# to_dataclass


@dataclasses.dataclass(frozen=True)
class _Generate:
    """A stand-in for a stage's typed config."""

    max_new_tokens: int
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    mode: Literal["greedy", "sample"] = "greedy"
    note: str | None = None

    def validate(self) -> None:
        require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        if self.max_new_tokens <= 0:
            raise ValueError("max_new_tokens must be positive")


@dataclasses.dataclass(frozen=True)
class _Job:
    generate: _Generate
    mesh_shape: tuple[int, int, int] = (1, 1, 1)


def test_to_dataclass_converts_nested_sections():
    cfg = ml_collections.ConfigDict(
        {"generate": {"max_new_tokens": 4, "top_p": 1, "stop_strings": ["\n\n"]}}
    )
    cfg.mesh_shape = [2, 2, 2]
    job = config_lib.to_dataclass(_Job, cfg)
    assert job == _Job(_Generate(4, 1.0, ("\n\n",)), (2, 2, 2))
    assert isinstance(job.generate.top_p, float)
    assert isinstance(job.generate.stop_strings, tuple)


def test_to_dataclass_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(ConfigError) as err:
        config_lib.to_dataclass(
            _Generate, {"max_new_tokens": 4, "topp": 0.5}, where="config.generate"
        )
    msg = str(err.value)
    assert msg.startswith("config.generate: unknown key 'topp'; valid keys: ")
    assert "max_new_tokens, mode, note, stop_strings, top_p" in msg


def test_to_dataclass_names_missing_required_fields():
    with pytest.raises(
        ConfigError, match=r"^config\.generate: missing required field\(s\): max_new"
    ):
        config_lib.to_dataclass(_Job, {"generate": {"top_p": 0.5}})
    with pytest.raises(ConfigError, match=r"^config: missing required field\(s\): generate\.$"):
        config_lib.to_dataclass(_Job, {})


@pytest.mark.parametrize(
    "section,pattern",
    [
        (
            {"max_new_tokens": 4, "top_p": 1.5},
            r"^config\.generate\.top_p=1\.5: must be in \(0, 1\]$",
        ),
        ({"max_new_tokens": 0}, r"^config\.generate: max_new_tokens must be positive$"),
        ({"max_new_tokens": "4"}, r"^config\.generate\.max_new_tokens='4': expected int, got str"),
        ({"max_new_tokens": True}, r"^config\.generate\.max_new_tokens=True: expected int"),
        ({"max_new_tokens": 4, "mode": "beam"}, r"config\.generate\.mode='beam': must be one of"),
        ({"max_new_tokens": 4, "stop_strings": [1]}, r"config\.generate\.stop_strings\[0\]=1"),
        ({"max_new_tokens": 4, "note": 3}, r"config\.generate\.note=3: expected str"),
    ],
)
def test_to_dataclass_checks_types_and_calls_validate(section, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_lib.to_dataclass(_Job, {"generate": section})


def test_to_dataclass_checks_fixed_tuple_length_and_section_kind():
    with pytest.raises(ConfigError, match=r"config\.mesh_shape=.*expected 3 elements, got 2"):
        config_lib.to_dataclass(_Job, {"generate": {"max_new_tokens": 1}, "mesh_shape": [1, 2]})
    with pytest.raises(ConfigError, match=r"config\.generate: expected a section, got int"):
        config_lib.to_dataclass(_Job, {"generate": 3})


def test_to_dataclass_accepts_none_for_optional():
    gen = config_lib.to_dataclass(_Generate, {"max_new_tokens": 2, "note": None})
    assert gen.note is None


# ----------------------------------------------------------------------------------------
# write_resolved


def test_write_resolved_writes_json_and_spec(tmp_workdir):
    (tmp_workdir / "checkpoint_7").write_text("weights")
    cfg = config_lib.load_config(f"{DEMO}:smoke", ["generate.stop_strings=('\\n\\n',)"])
    path = config_lib.write_resolved(cfg, tmp_workdir, spec="configs/demo.py:smoke")
    assert path == tmp_workdir / "config.json"
    written = json.loads(path.read_text())
    assert written["generate"]["max_new_tokens"] == 8
    assert written["generate"]["stop_strings"] == ["\n\n"]
    assert (tmp_workdir / "config_spec.txt").read_text() == "configs/demo.py:smoke\n"
    assert (tmp_workdir / "checkpoint_7").read_text() == "weights"
    assert sorted(p.name for p in tmp_workdir.iterdir()) == [
        "checkpoint_7",
        "config.json",
        "config_spec.txt",
    ]
    # Read back, the record validates like the live config (lists become tuples).
    gen = config_lib.to_dataclass(
        _Generate,
        {
            k: v
            for k, v in config_lib.read_resolved(tmp_workdir).generate.items()
            if k in ("max_new_tokens", "top_p", "stop_strings")
        },
    )
    assert gen.stop_strings == ("\n\n",)


def test_write_resolved_creates_workdir_and_keeps_a_changed_config(tmp_path):
    workdir = tmp_path / "runs" / "a"
    config_lib.write_resolved({"x": 1}, workdir)
    config_lib.write_resolved({"x": 1}, workdir)  # same content: nothing new
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]
    config_lib.write_resolved({"x": 2}, workdir)
    config_lib.write_resolved({"x": 3}, workdir)
    assert json.loads((workdir / "config.json").read_text()) == {"x": 3}
    assert json.loads((workdir / "config.1.json").read_text()) == {"x": 1}
    assert json.loads((workdir / "config.2.json").read_text()) == {"x": 2}


def test_write_resolved_is_atomic(tmp_workdir, monkeypatch):
    config_lib.write_resolved({"x": 1}, tmp_workdir)

    def crash(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(config_lib.os, "replace", crash)
    with pytest.raises(ConfigError, match="not writable: No space left on device"):
        config_lib.write_resolved({"x": 2}, tmp_workdir)
    # The old record is whole and no temporary file is left behind.
    assert json.loads((tmp_workdir / "config.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_workdir.iterdir()) == ["config.1.json", "config.json"]


def test_write_resolved_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    workdir = blocker / "sub"  # works as root too, unlike chmod
    with pytest.raises(ConfigError, match=r"workdir '.*file\.txt/sub' is not writable"):
        config_lib.write_resolved({"x": 1}, workdir)
    assert blocker.read_text() == "keep me"


def test_write_resolved_rejects_values_json_cannot_hold(tmp_workdir):
    with pytest.raises(ConfigError, match=r"config\.model\.init: a function cannot be written"):
        config_lib.write_resolved({"model": {"init": lambda: 0}}, tmp_workdir)
    assert list(tmp_workdir.iterdir()) == []


def test_read_resolved_missing(tmp_workdir):
    with pytest.raises(ConfigError, match="no resolved config"):
        config_lib.read_resolved(tmp_workdir)


# ----------------------------------------------------------------------------------------
# The absl flag


# ml_collections loads config files with the deprecated SourceFileLoader.load_module.
_IGNORE_LOAD_MODULE = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def _parse_config_flag(argv: list[str]):
    fv = flags.FlagValues()
    holder = config_lib.define_config_flag(flag_values=fv, sys_argv=argv)
    fv(argv)
    return holder, fv


@_IGNORE_LOAD_MODULE
def test_config_flag_parses_variant_and_overrides(monkeypatch):
    monkeypatch.chdir(REPO / "tests")
    argv = ["prog", "--config=config_fixture.py:smoke", "--config.generate.max_new_tokens=5"]
    holder, fv = _parse_config_flag(argv)
    cfg = holder.value
    assert cfg.generate.max_new_tokens == 5
    assert cfg.workdir == "runs/demo_smoke"
    assert cfg.is_locked
    expected = config_lib.load_config("config_fixture.py:smoke", ["generate.max_new_tokens=5"])
    assert cfg.to_dict() == expected.to_dict()
    spec = config_lib.flag_spec(flag_values=fv)
    assert spec == "config_fixture.py:smoke --config.generate.max_new_tokens=5"


@_IGNORE_LOAD_MODULE
def test_config_flag_bad_overrides(monkeypatch):
    monkeypatch.chdir(REPO)
    # ml_collections' own errors: less detailed than load_config's, but they name the key.
    with pytest.raises(AttributeError, match=r"topp[\s\S]*Did you mean .*top_p"):
        _parse_config_flag(["prog", f"--config={DEMO}", "--config.generate.topp=0.5"])
    with pytest.raises(flags.IllegalFlagValueError, match=r"config\.generate\.top_k=1\.5"):
        _parse_config_flag(["prog", f"--config={DEMO}", "--config.generate.top_k=1.5"])


def test_conftest_environment():
    assert "--xla_force_host_platform_device_count=8" in os.environ["XLA_FLAGS"].split()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert flags.FLAGS.is_parsed()


@pytest.mark.parametrize(
    "path,variant", SHIPPED, ids=[f"{p.stem}:{v}" if v else p.stem for p, v in SHIPPED]
)
def test_every_config_validates_for_each_entry_point(path, variant):
    """Each entry point's sections of a shipped config convert to its typed dataclasses."""
    from dreamr_jax import eval as eval_lib
    from dreamr_jax import infer, train

    cfg = config_lib.load_config(f"{path}:{variant}" if variant else str(path))
    checked = 0
    for module, cls in (
        (train, train.TrainConfig),
        (infer, infer.InferConfig),
        (eval_lib, eval_lib.EvalConfig),
    ):
        sections = {k: cfg[k] for k in module.SECTIONS if k in cfg}
        if sections:
            config_lib.to_dataclass(cls, sections)
            checked += 1
    assert checked >= 1
