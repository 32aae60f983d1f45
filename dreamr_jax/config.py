"""Run configs: Python files with `get_config`, command-line overrides, typed validation.

The big_vision convention. A config is a file ``configs/NAME.py`` whose
``get_config(arg=None)`` returns an `ml_collections.ConfigDict`; a run selects it as
``--config=configs/NAME.py[:variant]`` (the variant string is passed to ``get_config``) and
overrides any leaf as ``--config.section.field=value``. Entry points get the flag from
`define_config_flag`; tests and notebooks call `load_config`, which applies the same kind of
overrides without absl.

After overrides, each stage turns its section into a frozen, documented dataclass with
`to_dataclass`: unknown and missing keys are rejected there, types are checked, and the
dataclass's own ``validate()`` runs. Every error is a `ConfigError` whose message starts
with the key path (``config.generate.top_p=1.5: must be in (0, 1]``). Finally
`write_resolved` records the resolved config in the run directory, next to what the run
writes.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import ml_collections
from absl import flags
from ml_collections import config_flags

T = TypeVar("T")

RESOLVED_NAME = "config.json"
SPEC_NAME = "config_spec.txt"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A run config is malformed; the message names the key path and the problem."""


class FieldError(ConfigError):
    """One field of a config dataclass is invalid.

    Raised from a dataclass's ``validate()`` (usually through `require`), which does not know
    where its section sits; `to_dataclass` adds the path, giving messages such as
    ``config.generate.top_p=1.5: must be in (0, 1]``.
    """

    def __init__(self, field: str, value: Any, reason: str):
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{field}={value!r}: {reason}")


def require(ok: bool, field: str, value: Any, reason: str) -> None:
    """Raises `FieldError(field, value, reason)` unless ``ok``; for ``validate()`` methods."""
    if not ok:
        raise FieldError(field, value, reason)


# ----------------------------------------------------------------------------------------
# Loading and overriding.


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``path.py[:variant]`` and applies ``key.path=value`` overrides.

    Args:
      spec: path of a config file, optionally followed by ``:variant``; the variant string
        is passed to ``get_config`` (as ml_collections' ``--config`` flag does).
      overrides: strings ``a.b=v`` (a leading ``--config.`` is accepted too). ``v`` is
        parsed by the type of the field it replaces; see `apply_overrides`.

    Returns:
      The locked ConfigDict: existing fields can be set, none can be added.

    Raises:
      ConfigError: missing file, no ``get_config``, a bad variant, or a bad override.
    """
    path, sep, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found (from --config={spec!r}).")
    module_spec = importlib.util.spec_from_file_location(
        f"_dreamr_config_{pathlib.Path(path).stem}", path
    )
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"config file {path!r} is not a Python file (from --config={spec!r}).")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path!r} defines no get_config(arg=None) function.")
    try:
        cfg = get_config(variant) if sep else get_config()
    except ValueError as e:  # e.g. an unknown variant; keep the config's own message.
        raise ConfigError(f"--config={spec!r}: {e}") from e
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(
            f"{path}: get_config() returned {type(cfg).__name__}, not an ml_collections.ConfigDict."
        )
    cfg.lock()
    return apply_overrides(cfg, overrides)


def apply_overrides(
    cfg: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
    """Sets ``key.path=value`` overrides on ``cfg`` in place and returns it.

    The text is parsed by the field's current type: int, float (``1e-6``, ``inf``), bool
    (true/false/1/0/yes/no/on/off), str (taken verbatim), tuple or list (a Python literal
    such as ``"('a', 'b')"`` or ``1,2``; elements are converted to the type of the current
    elements). ``None`` sets any field to None; a field that is None is parsed as a Python
    literal, else kept as a string.

    Raises:
      ConfigError: an unknown key (listing the valid keys at that level), a section given
        a value, or text that does not parse as the field's type.
    """
    for text in overrides:
        key, sep, value_text = text.removeprefix("--").removeprefix("config.").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {text!r} must look like section.field=value.")
        parent, name, where = _find_leaf(cfg, key)
        value = _parse_override(value_text, parent[name], parent.get_type(name), where)
        _assign(parent, name, value, where)
    return cfg


def derive(
    base: ml_collections.ConfigDict, changes: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """Returns a copy of ``base`` with ``{"a.b": value}`` changes; for config variants.

    The replace-style way to write a variant: state only what differs from the base. Keys
    must exist (a typo is an error, not a new field) and values keep the field's type.
    """
    cfg = copy.deepcopy(base)  # keeps placeholder types and FieldReference links
    cfg.lock()
    for key, value in changes.items():
        parent, name, where = _find_leaf(cfg, key)
        _assign(parent, name, value, where)
    return cfg


def _find_leaf(cfg: ml_collections.ConfigDict, key: str):
    """Walks ``a.b.c`` down to (section, last name, "config.a.b.c"); checks every name."""
    *sections, name = key.split(".")
    node, where = cfg, "config"
    for part in [*sections, name]:
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"{where}={node!r} is a value, not a section.")
        if part not in node:
            raise _unknown_keys_error(where, [part], node.keys())
        parent, where = node, f"{where}.{part}"
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(
            f"{where} is a section; set its fields instead ({', '.join(sorted(node.keys()))})."
        )
    return parent, name, where


def _assign(parent: ml_collections.ConfigDict, name: str, value: Any, where: str) -> None:
    try:
        parent[name] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}={value!r}: {e}") from e


def _parse_override(text: str, current: Any, field_type: type, where: str) -> Any:
    if text == "None":
        return None
    if isinstance(current, tuple | list):
        return _parse_sequence(text, current, where)
    try:
        if field_type is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError("expected true or false")
            return text.lower() in _TRUE
        if field_type is int:
            return int(text)
        if field_type is float:
            return float(text)
    except ValueError:
        raise ConfigError(
            f"{where}={text!r}: cannot parse as {field_type.__name__} "
            f"(the type of the current value {current!r})."
        ) from None
    if field_type is str:
        return text
    return _literal_or_text(text)


def _parse_sequence(text: str, current: tuple | list, where: str) -> tuple | list:
    value = _literal_or_text(text)
    if isinstance(value, str):  # unquoted a,b,c: a sequence of strings
        value = tuple(part.strip() for part in text.split(",") if part.strip())
    elif not isinstance(value, tuple | list):
        value = (value,)
    if current:
        kind = type(current[0])
        if kind is float:
            value = [
                float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value
            ]
        bad = [v for v in value if type(v) is not kind]
        if bad:
            raise ConfigError(
                f"{where}={text!r}: elements must be {kind.__name__} like the current "
                f"{current!r}; got {bad[0]!r}."
            )
    return type(current)(value)


def _literal_or_text(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _unknown_keys_error(where: str, unknown: Sequence[str], valid) -> ConfigError:
    valid = sorted(valid)
    hint = ""
    if len(unknown) == 1:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
    names = ", ".join(repr(k) for k in unknown)
    return ConfigError(
        f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names}; "
        f"valid keys: {', '.join(valid) or '(none)'}.{hint}"
    )


# ----------------------------------------------------------------------------------------
# The absl flag.


def define_config_flag(
    name: str = "config",
    *,
    default: str | None = None,
    help_string: str = "Run config: path/to/config.py[:variant]; override with --config.a.b=v.",
    flag_values: flags.FlagValues = flags.FLAGS,
    sys_argv: list[str] | None = None,
) -> flags.FlagHolder:
    """Defines ``--config=path.py[:variant]`` with ``--config.a.b=v`` overrides.

    Call it at an entry point's module top; the config is loaded and locked when flags are
    parsed (`ml_collections.config_flags.DEFINE_config_file`), which finds the overrides in
    ``sys_argv`` (default: ``sys.argv`` at parse time; pass the parsed argv when it differs,
    as tests do) and parses them by field type.
    """
    return config_flags.DEFINE_config_file(
        name, default, help_string, flag_values=flag_values, lock_config=True, sys_argv=sys_argv
    )


def flag_spec(name: str = "config", flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """The parsed config flag as a command-line fragment, for `write_resolved`'s ``spec``.

    E.g. ``configs/demo.py:smoke --config.generate.max_new_tokens=5``.
    """
    flag = flag_values[name]
    parts = [config_flags.get_config_filename(flag)]
    for key, value in sorted(config_flags.get_override_values(flag).items()):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"--{name}.{key}={text}")
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------------------
# Typed validation.


def to_dataclass(cls: type[T], cfg_dict: Mapping[str, Any], where: str = "config") -> T:
    """Converts a config section into the frozen dataclass ``cls`` and validates it.

    Nested dataclass fields are converted recursively from sub-sections, tuple fields from
    lists or tuples, int to float where a float is declared; ``X | None`` and ``Literal``
    are understood. Then ``cls.validate()`` runs if it exists.

    Args:
      cls: a dataclass type.
      cfg_dict: a ConfigDict section or any mapping (e.g. loaded from ``config.json``).
      where: the key path of ``cfg_dict``, used in error messages.

    Raises:
      ConfigError: unknown keys (listing the valid ones), missing required fields (by
        name), a value of the wrong type, or a failed ``validate()``; the message starts
        with the key path.
    """
    if isinstance(cfg_dict, ml_collections.ConfigDict):
        cfg_dict = cfg_dict.to_dict()
    if not isinstance(cfg_dict, Mapping):
        raise ConfigError(f"{where}: expected a section, got {type(cfg_dict).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in cfg_dict if k not in fields]
    if unknown:
        raise _unknown_keys_error(where, unknown, fields)
    missing = [
        name
        for name, f in fields.items()
        if name not in cfg_dict
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required field(s): {', '.join(missing)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _convert(value, hints.get(name, Any), f"{where}.{name}")
        for name, value in cfg_dict.items()
    }
    try:
        obj = cls(**kwargs)
        if callable(getattr(obj, "validate", None)):
            obj.validate()
    except FieldError as e:
        raise ConfigError(f"{where}.{e.field}={e.value!r}: {e.reason}") from e
    except ConfigError as e:
        if str(e).startswith(where):
            raise
        raise ConfigError(f"{where}: {e}") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return obj


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Checks ``value`` against the type ``hint``, converting sections and sequences."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], where)
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return value if isinstance(value, hint) else to_dataclass(hint, value, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r}: must be one of {list(args)}.")
        return value
    if hint is tuple or origin is tuple:
        return _convert_tuple(value, args, where)
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(hint)
    if expected is None:
        return value  # Any, dict, enums...: not checked here; validate() may.
    if not isinstance(value, expected) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(
            f"{where}={value!r}: expected {hint.__name__}, got {type(value).__name__}."
        )
    return float(value) if hint is float else value


def _convert_tuple(value: Any, args: tuple, where: str) -> tuple:
    if not isinstance(value, tuple | list):
        raise ConfigError(f"{where}={value!r}: expected a tuple, got {type(value).__name__}.")
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise ConfigError(f"{where}={value!r}: expected {len(args)} elements, got {len(value)}.")
    return tuple(
        _convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
    )


# ----------------------------------------------------------------------------------------
# The resolved config in the run directory.


def write_resolved(cfg: Any, workdir: str | os.PathLike, spec: str | None = None) -> pathlib.Path:
    """Writes ``workdir/config.json`` (and ``config_spec.txt`` when ``spec`` is given).

    Each file is written to a temporary file in ``workdir`` and moved into place with
    ``os.replace``, so a reader never sees half a file. Nothing already in ``workdir`` is
    deleted: if an existing ``config.json`` differs (say a resumed run changed an
    override) it is kept as ``config.1.json`` (then ``.2``, ...).

    Args:
      cfg: the resolved config: a ConfigDict, a mapping or a dataclass.
      workdir: the run directory; created if missing.
      spec: how the config was selected, e.g. ``configs/demo.py:smoke
        --config.generate.max_new_tokens=5`` (see `flag_spec`).

    Returns:
      The path of ``config.json``.

    Raises:
      ConfigError: a value that JSON cannot hold, or a workdir that cannot be written.
    """
    text = json.dumps(_jsonable(cfg, "config"), indent=2, sort_keys=True) + "\n"
    workdir = pathlib.Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        path = _replace_keeping_old(workdir / RESOLVED_NAME, text)
        if spec is not None:
            _replace_keeping_old(workdir / SPEC_NAME, spec.rstrip("\n") + "\n")
    except OSError as e:
        raise ConfigError(
            f"workdir {str(workdir)!r} is not writable: {e.strerror or e} "
            f"({e.filename or workdir}). Is a part of the path a file, or read-only?"
        ) from e
    return path


def read_resolved(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads back the ``config.json`` that `write_resolved` wrote (tuples come back as lists)."""
    path = pathlib.Path(workdir) / RESOLVED_NAME
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(
            f"no resolved config at {str(path)!r}; is this a run directory?"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {e}") from e


def _replace_keeping_old(path: pathlib.Path, text: str) -> pathlib.Path:
    if path.exists():
        if path.read_text() == text:
            return path
        n = 1
        while path.with_suffix(f".{n}{path.suffix}").exists():
            n += 1
        shutil.copy2(path, path.with_suffix(f".{n}{path.suffix}"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy/jax scalar
        return value.item()
    raise ConfigError(f"{where}: a {type(value).__name__} cannot be written to {RESOLVED_NAME}.")
