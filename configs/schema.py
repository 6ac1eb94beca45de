"""YAML presets -> typed dataclasses, with dotted command-line overrides.

    cfg = load_config(TrainConfig, "configs/train/pfpascal_r50.yaml", ["optim.lr=0.01"])

Rules: an unknown key, a value of the wrong type or a missing required value is a one-line
`UserError` naming the key (and the file). A preset may inherit another with `_base_: other.yaml`
(path relative to the preset); the child's keys override the base's, recursively.
Every float setting must be finite: NaN and infinity are refused for all of them.
Supported field types: bool, int, float, str, Optional[T], Literal[...], list[T], tuple[T, ...],
dict[str, T] and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from configs.runtime import UserError

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, resolving `_base_` inheritance. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        named_by = f" (the _base_ of {_chain[-1]})" if _chain else ""
        raise UserError(f"config file not found: {path}{named_by}")
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise UserError(f"{path}: _base_ inheritance forms a cycle ({cycle})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"config file {path} is unreadable ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"invalid YAML in {path}{where}: {getattr(err, 'problem', err)}") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    base = data.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise UserError(f"{path}: _base_ must be one file name (a string), got {base!r}")
        data = merge_dicts(load_yaml(path.parent / base, (*_chain, path.resolve())), data)
    return data


def merge_dicts(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge; values of `update` win, nested mappings merge."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """['a.b=3', 'c=[1, 2]'] -> {'a': {'b': 3}, 'c': [1, 2]}; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"bad override {pair!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise UserError(f"bad override {pair!r}: value is not valid YAML") from err
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {pair!r} conflicts with another override of {part!r}")
        node[leaf] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> T:
    """Build `cls` from `base` (dict) <- YAML file at `path` <- dotted `overrides`."""
    data: dict[str, Any] = dict(base or {})
    source = "defaults"
    if path is not None:
        data = merge_dicts(data, load_yaml(path))
        source = str(path)
    given = parse_overrides(overrides)
    check_keys_and_types(cls, given, "command line")  # an override's mistake is not blamed on the preset
    data = merge_dicts(data, given)
    return build_config(cls, data, source=f"{source} + command line" if given else source)


def check_keys_and_types(cls: type, data: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Check the keys and value types of a partial mapping (e.g. the overrides alone) against `cls`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise unknown_key(source, key, fields)
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
            check_keys_and_types(hints[name], value, source, prefix=f"{key}.")
        else:
            _coerce(hints[name], value, key, source)


def build_config(cls: type[T], data: Mapping[str, Any], source: str = "config", prefix: str = "") -> T:
    """Construct dataclass `cls` from a mapping, checking keys and types recursively."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: key '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise unknown_key(source, f"{prefix}{unknown[0]}", fields)
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key, source)
        elif field.default is _MISSING and field.default_factory is _MISSING:
            raise UserError(f"{source}: missing required config key '{key}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ validation
        raise UserError(f"{source}: {err}") from err


def unknown_key(source: str, key: str, known: Iterable[str]) -> UserError:
    return UserError(f"{source}: unknown config key '{key}' (known keys here: {', '.join(sorted(known))})")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple) `value` against type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = UserError(f"{source}: config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except UserError as err:
                errors.append(err)
        if len(errors) == 1:  # Optional[T]: T's own message (e.g. a NaN refused) says more
            raise errors[0]
        raise bad
    if origin is typing.Literal:
        if value in args:
            return value
        raise UserError(f"{source}: config key '{key}' must be one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build_config(tp, value, source, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise bad
            return tuple(_coerce(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        vt = args[1] if args else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"{source}: config key '{key}' must be a finite number, got {value!r} "
                                f"(NaN and infinity are refused)")
            return float(value)
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of builtins (tuples become lists), e.g. for YAML/JSON or checkpoints."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {str(k): convert(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return convert(cfg)
