"""User-facing failures: each knows the one line the user reads; `__main__` prints it and exits 1.

Anything that is not a `VsrError` is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

from vsr_async.names import display_name


class VsrError(Exception):
    """Base of every error a user can cause and fix (bad config, bad data, busy port)."""

    exit_code = 1


class ConfigError(VsrError):
    """A config key has a bad name, type or value. `key` names it ('' for file-level problems)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key {key}: {message}" if key else message)


class ConfigErrors(ConfigError):
    """Several config problems reported at once, so the user fixes them in one go."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        ConfigError.__init__(self, errors[0].key, "; ".join(str(e) for e in errors))
        # ConfigError prefixed the key once more; keep the joined messages as they are.
        self.args = ("; ".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return self.args[0]


class OptionError(VsrError):
    """A command-line option (not a config key) has a bad value; `option` names it."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"option {option}: {message}")


class DatasetError(VsrError):
    """Bad training or validation data; `path` names the file or folder at fault."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"dataset {self.path}: {message}")


class CheckpointError(VsrError):
    """A checkpoint cannot be loaded or does not fit the run; `path` names it."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"checkpoint {self.path}: {message}")


class InputError(VsrError):
    """A tool's input (a video, a frame folder) cannot be read; `path` names it."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"input {self.path}: {message}")


class OutputError(VsrError):
    """A tool cannot write its output where it was asked to; `path` names the output."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"output {self.path}: {message}")


class MissingExtraError(VsrError):
    """An optional package is not installed; the message names the `pip install` that adds it."""

    def __init__(self, package: str, requirement: str, extra: str, needed_for: str) -> None:
        self.package, self.extra = package, extra
        super().__init__(
            f"{needed_for} needs the {package!r} package, which is not installed: "
            f"pip install '{requirement}' (or vsr_async's [{extra}] extra)"
        )


class DeviceMemoryError(VsrError):
    """Not even one sample per micro-batch, with gradient checkpointing, fits the device."""


class PortInUseError(VsrError):
    """The web panel cannot bind its address (usually: another run holds the port)."""

    def __init__(self, host: str, port: int, reason: str = "address already in use") -> None:
        self.host, self.port = host, port
        super().__init__(
            f"cannot start the web panel on {host}:{port}: {reason} "
            "(pick another port with --port N, or --no-web)"
        )


def one_line(text: str) -> str:
    """`text` with control characters escaped (a newline or NUL in a path cannot split or cut the
    message) and undecodable file-name bytes shown as `\\xNN` (`names.display_name`)."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in display_name(text)
    )
