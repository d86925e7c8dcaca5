"""Reading a run's configuration: a config file (Python or TOML), `--set KEY=VALUE` overrides,
and `./config.py` as the file a run reads when no `--config` is given (as the predecessor did).

A Python config file is executed, as the predecessor's was: it can run any code, so load only
files you trust, and share configs as TOML, which is data and never runs.
"""

from __future__ import annotations

import contextlib
import runpy
import stat
import tomllib
import traceback
import types
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vsr_async.errors import ConfigError
from vsr_async.settings.schema import Config, build_config

USER_CONFIG = "config.py"


def user_config_file() -> Path | None:
    """`./config.py` in the working folder when it is there: the file the predecessor read."""
    path = Path(USER_CONFIG)
    return path if path.is_file() else None


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """`--set KEY=VALUE` arguments → {KEY: "VALUE"} (converted later, by the field's type)."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError("", f"--set expects KEY=VALUE, got {pair!r}")
        result[key.strip()] = value
    return result


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Raw values from a TOML file or a Python file of UPPERCASE constants.

    A Python file is executed, as the predecessor's were, so it runs whatever its author wrote;
    TOML is plain data, the safe choice for configs shared with others. A Python file may define
    `get_config()` returning a dict (the predecessor's format); then that dict is the config.
    Otherwise its UPPERCASE module-level names are. Every failure, the file's own code included
    (an exception, `sys.exit()`), is one ConfigError naming the file.
    """
    path = Path(path)
    if "\x00" in str(path):
        raise ConfigError("", f"config file path {str(path)!r} contains a NUL byte")
    source = _read_config_file(path)
    if path.suffix == ".toml":
        return _parse_toml(path, source)
    if path.suffix != ".py":
        raise ConfigError("", f"config file {path}: must end in .py or .toml")
    return _run_python_config(path)


def _read_config_file(path: Path) -> bytes:
    """The file's bytes; a missing, unreadable or not-a-file path is one error naming it."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError("", f"config file {path}: is a directory, not a file")
        if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
            raise ConfigError("", f"config file {path}: is not a regular file")
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError("", f"config file {path}: cannot be read: {reason}") from None


def _parse_toml(path: Path, source: bytes) -> dict[str, Any]:
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "",
            f"config file {path}: not valid TOML: not UTF-8 text "
            f"(byte 0x{source[exc.start]:02x} at offset {exc.start})",
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"config file {path}: not valid TOML: {exc}") from None
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(
                key,
                f"config file {path}: tables are not supported; write plain KEY = value lines",
            )
    return data


def _run_python_config(path: Path) -> dict[str, Any]:
    """Execute the file in its own namespace; its get_config() dict, or its UPPERCASE names."""
    with _config_code_errors(path):
        namespace = runpy.run_path(str(path), run_name="vsr_async_config")
        get_config = namespace.get("get_config")
        if not callable(get_config):
            return {
                k: v
                for k, v in namespace.items()
                if k.isupper() and not k.startswith("_") and not isinstance(v, types.ModuleType)
            }
        values = get_config()
        values = dict(values) if isinstance(values, Mapping) else values
    if not isinstance(values, dict):
        raise ConfigError(
            "",
            f"config file {path}: get_config() must return a dict, got {type(values).__name__}",
        )
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(
                "",
                f"config file {path}: get_config() returned the key {key!r}; "
                "keys must be strings like 'N_FEATS'",
            )
    return values


@contextlib.contextmanager
def _config_code_errors(path: Path) -> Iterator[None]:
    """Around the config file's own code: what it raises becomes one line naming the file.

    `sys.exit()` is caught too (it would end the process silently with the file's exit code);
    Ctrl+C (KeyboardInterrupt) is left alone.
    """
    try:
        yield
    except SystemExit as exc:
        raise ConfigError(
            "", f"config file {path} called sys.exit({exc.code!r}) while being loaded"
        ) from None
    except Exception as exc:  # the user's code: any error is theirs to fix
        line = _line_in_file(path, exc)
        where = f" failed at line {line}" if line else " failed"
        raise ConfigError("", f"config file {path}{where}: {_exception_text(exc)}") from None


def _line_in_file(path: Path, exc: Exception) -> int | None:
    """The line of `path` where `exc` arose (the innermost frame in that file)."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        return exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return frames[-1].lineno if frames else None


def _exception_text(exc: Exception) -> str:
    """`Type: message` on one line (a SyntaxError without its own "(file, line N)" suffix)."""
    message = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    message = " ".join(message.split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """The config of a run: defaults, then the file, then --set overrides, validated once."""
    values: dict[str, Any] = load_config_file(path) if path is not None else {}
    values.update(parse_overrides(overrides))
    return build_config(values)
