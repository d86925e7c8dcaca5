"""Validation of a whole `Config`: each field's type and range (from its metadata), then the
rules that relate fields. Every problem is collected, so the user sees them all at once.

The config arrives as `Any`: `schema.py` calls in here from `Config.__post_init__`, so this
module cannot import `Config` back (no import cycles).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vsr_async.errors import ConfigError
from vsr_async.settings.values import describe_type, range_text, value_fits


def check_config(config: Any) -> list[ConfigError]:
    """Every problem of `config` (a Config), as errors naming the key; [] when it is valid."""
    errors = check_types_and_ranges(config)
    return errors + check_relations(config, {e.key for e in errors})


def check_types_and_ranges(config: Any) -> list[ConfigError]:
    errors = []
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, tp = getattr(config, f.name), hints[f.name]
        if not value_fits(value, tp):
            shown = f"a {type(value).__name__}" if f.metadata.get("secret") else repr(value)
            errors.append(ConfigError(f.name, f"must be {describe_type(tp)}, got {shown}"))
            continue
        if isinstance(value, str) and "\x00" in value:  # no OS call takes it; Path raises
            errors.append(ConfigError(f.name, "must not contain a NUL byte (\\x00)"))
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                errors.append(ConfigError(f.name, f"must be a finite number, got {value!r}"))
                continue
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                errors.append(
                    ConfigError(f.name, f"must be {range_text(f.metadata)}, got {value!r}")
                )
    return errors


def check_relations(c: Any, failed: set[str]) -> list[ConfigError]:
    """Rules beyond one field's type and range; a rule is skipped if a key it reads is bad."""
    errors = []
    perceptual_on = lambda: c.PERCEPTUAL_WEIGHT > 0  # noqa: E731
    rules: list[tuple[tuple[str, ...], Callable[[], bool], Callable[[], str]]] = [
        (
            ("N_BLOCKS", "MODEL"),
            lambda: c.N_BLOCKS % 2 == 1 and c.MODEL == "vsrnet",
            lambda: f"must be even (split between two trunks), got {c.N_BLOCKS}",
        ),
        (
            ("SCALE", "MODEL"),
            lambda: c.MODEL == "vsrpp" and c.SCALE != 3,
            lambda: (
                f'must be 3 for MODEL = "vsrpp" (the predecessor\'s VSRBidirectional_3x '
                f"upscales x3 only), got {c.SCALE}"
            ),
        ),
        (
            ("NUM_FRAMES",),
            lambda: c.NUM_FRAMES % 2 == 0,
            lambda: f"must be odd (the centre frame is restored), got {c.NUM_FRAMES}",
        ),
        (
            ("GT_PATCH_SIZE", "SCALE"),
            lambda: c.GT_PATCH_SIZE % c.SCALE != 0,
            lambda: f"must be a multiple of SCALE={c.SCALE}, got {c.GT_PATCH_SIZE}",
        ),
        (
            ("MIN_LR", "MAX_LR"),
            lambda: c.MIN_LR > c.MAX_LR,
            lambda: f"must be <= MAX_LR={c.MAX_LR:g}, got {c.MIN_LR:g}",
        ),
        (
            ("EFFECTIVE_BATCH", "BATCH_SIZE"),
            lambda: c.BATCH_SIZE == "auto" and c.EFFECTIVE_BATCH == 0,
            lambda: 'must be set (>= 1) when BATCH_SIZE is "auto"',
        ),
        (
            ("PERCEPTUAL_WEIGHTS_PATH", "PERCEPTUAL_WEIGHT"),
            lambda: (
                perceptual_on()
                and bool(c.PERCEPTUAL_WEIGHTS_PATH)
                and not Path(c.PERCEPTUAL_WEIGHTS_PATH).is_file()
            ),
            lambda: f"no such file: {c.PERCEPTUAL_WEIGHTS_PATH}",
        ),
        (
            ("DEVICE",),
            lambda: not _device_ok(c.DEVICE),
            lambda: f'must be "auto", "cpu", "cuda" or "cuda:N", got {c.DEVICE!r}',
        ),
        (("WEB_HOST",), lambda: not c.WEB_HOST.strip(), lambda: "must not be empty"),
        (
            ("WEB_HOST",),
            lambda: not _host_ok(c.WEB_HOST),
            lambda: f"is not a host name or IP address, got {c.WEB_HOST!r}",
        ),
    ]
    for keys, broken, message in rules:
        if not failed.intersection(keys) and broken():
            errors.append(ConfigError(keys[0], message()))
    return errors


def _host_ok(host: str) -> bool:
    """An IP address, or a name the resolver can encode (no empty or over-long labels)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        host.encode("idna")  # what getaddrinfo does first; "a..b" fails here with a traceback
    except UnicodeError:
        return False
    return True


def _device_ok(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()
