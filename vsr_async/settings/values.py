"""What a config key is made of: `key()` declares one (default, doc, range, live, secret), and
the helpers here say what its type allows, in words, whether a value fits it, and turn `--set`
text (always a string) into that type. Knows no key names."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal

from vsr_async.errors import ConfigError


def key(
    default: Any,
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    live: bool = False,
    secret: bool = False,
) -> Any:
    """A config key: its default, one-line doc, inclusive range, whether PATCH /api/config may
    change it mid-run (`live`), and whether it is a credential kept out of every file (`secret`)."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "live": live, "secret": secret}
    return field(default=default, metadata=meta)


def describe_type(tp: Any) -> str:
    """The allowed values of a field type, as the user reads them in an error."""
    if tp is bool:
        return "true or false"
    if tp in (int, float, str):
        return {int: "an integer", float: "a number", str: "a string"}[tp]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    return str(tp)


def range_text(meta: Mapping[str, Any]) -> str:
    """A field's inclusive range from its metadata ("in [1, 1e+10]"); "" when it has none."""
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        return f"in [{lo:g}, {hi:g}]"
    if lo is None and hi is None:
        return ""
    return f">= {lo:g}" if lo is not None else f"<= {hi:g}"


def value_fits(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp) and type(value) in {
            type(a) for a in typing.get_args(tp)
        }
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, a) for a in typing.get_args(tp))
    return isinstance(value, tp)


def convert_string(key: str, text: str, tp: Any) -> Any:
    """Turn a --set value (always a string) into the field's type, or raise naming the key."""
    text = text.strip()
    if tp is str:
        return text
    if tp is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(key, f"must be true or false, got {text!r}")
    if tp is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise ConfigError(key, f"must be an integer, got {text!r}") from None
            if as_float.is_integer():
                return int(as_float)
            raise ConfigError(key, f"must be an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(key, f"must be a number, got {text!r}") from None
    origin = typing.get_origin(tp)
    if origin is Literal:
        for choice in typing.get_args(tp):
            if str(choice).lower() == text.lower():
                return choice
        raise ConfigError(key, f"must be {describe_type(tp)}, got {text!r}")
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return convert_string(key, text, option)
            except ConfigError:
                continue
        raise ConfigError(key, f"must be {describe_type(tp)}, got {text!r}")
    raise ConfigError(key, f"cannot be set from text (type {tp})")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """File values keep their type, except that an integer is accepted where a number is asked."""
    if isinstance(value, str) and tp is not str and not value_fits(value, tp):
        return convert_string(key, value, tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
