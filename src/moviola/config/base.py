"""The schema machinery every config section shares: strict building from dictionaries.

An unknown key is an error that suggests the closest known one, a wrong type is an error that
names the expected type; YAML's loose types are converted only where that loses nothing.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import fields
from typing import Any, Iterator, Literal, Optional, Union


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what to do."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert YAML's loose types where lossless."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not fit {_type_name(tp)}")
    if origin is Literal:
        options = typing.get_args(tp)
        if not any(value == o and type(value) is type(o) for o in options):  # true is not 1, 1.0 is not 1
            close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(options)}{hint}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def from_dict(cls: type, data: dict, prefix: str = "", unknown_hint=None) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are ConfigErrors.

    A field whose metadata has ``build`` is built by that function (``build(value, key)``): the
    ``model:`` section, whose dataclass depends on its ``family``. ``unknown_hint`` may rewrite
    the message of an unknown key: ``unknown_hint(key, hint)`` returns the text that follows the key
    (``hint`` is the default: the closest known key).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    builders = {f.name: f.metadata["build"] for f in fields(cls) if "build" in f.metadata}
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            if unknown_hint is not None:
                hint = unknown_hint(key, hint)
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        if key in builders:
            kwargs[key] = builders[key](value, f"{prefix}{key}")
        else:
            kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    out = dataclasses.asdict(cfg)
    return json.loads(json.dumps(out))  # tuples -> lists, a plain JSON-able tree


def numbers(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf value of a config tree as ``(dotted key, value)``; list items as ``key[i]``."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from numbers(value, f"{prefix}{f.name}.")
        elif isinstance(value, tuple):
            yield from ((f"{prefix}{f.name}[{i}]", v) for i, v in enumerate(value))
        else:
            yield f"{prefix}{f.name}", value


Range = tuple[str, Optional[float], Optional[float]]


def check_ranges(values: dict[str, Any], ranges: tuple[Range, ...]) -> None:
    """Finite numbers and sane ranges: a NaN learning rate or a zero patch is an error, not a crash.

    ``ranges`` holds ``(key, lowest allowed, highest allowed)``; None = unbounded on that side.
    """
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number (got {value})")
    for key, low, high in ranges:
        value = values.get(key)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f"between {low} and {high}" if low is not None and high is not None
                      else f"at least {low}" if low is not None else f"at most {high}")
            raise ConfigError(f"{key} must be {bounds} (got {value})")


def leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{dotted key: value}`` (an empty mapping and lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: Any, new: Any) -> dict[str, tuple]:
    """The dotted keys whose values differ between two configs: ``{key: (old, new)}``."""
    a, b = leaves(to_dict(old)), leaves(to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
