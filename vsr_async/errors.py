"""User-facing failures: each knows the one line the user reads; `__main__` prints it and exits 1.

Anything that is not a `VsrError` is a bug and keeps its traceback. Every exception that one layer
raises and another catches lives here, so that neither has to import the other to name it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


class RankError(VsrError):
    """Under torchrun: this rank cannot work with the others (unreachable, timed out, or one of
    them left); the message names the rank and the exchange."""


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


class ProcessResourceError(VsrError):
    """A read failed because this process (or the machine) is out of file descriptors or memory.

    Not the file's fault: it is never counted as a broken file nor blamed on the dataset; the
    reader waits for the resource to come back (SkippingDataset) and only then gives up.
    """

    SUFFIX = "; the file itself is not at fault"

    def __init__(self, path: Path | str, what: str) -> None:
        self.path, self.what = Path(path), what  # `what` has no ": " (see from_message)
        super().__init__(f"cannot read {self.path}: {what}{self.SUFFIX}")

    @classmethod
    def from_message(cls, message: str) -> ProcessResourceError:
        """Rebuilt from str(error), as it arrives from a DataLoader worker."""
        path, _, what = (
            message.removeprefix("cannot read ").removesuffix(cls.SUFFIX).rpartition(": ")
        )
        return cls(path, what)


# --- live configuration changes (PATCH /api/config) -------------------------------------------


def describe_changes(changes: dict[str, Any]) -> str:
    """`MIN_LR=0.0001, MAX_LR=5e-05`: how log lines and messages name a change."""
    return ", ".join(f"{key}={value!r}" for key, value in changes.items())


class LiveConfigConflict(ConfigError):
    """A change that fits the applied config but not the changes accepted before it."""

    def __init__(self, error: ConfigError, pending_changes: list[tuple[str, dict[str, Any]]]):
        self.error = error
        self.pending_changes = pending_changes
        pending = "; ".join(
            f"{describe_changes(changes)} (request {request_id})"
            for request_id, changes in pending_changes
        )
        super().__init__(
            "",
            f"{error}: conflicts with a change accepted but not applied yet: {pending}; send "
            "the keys together in one request, or wait until that one has applied",
        )
        self.key = error.key


class ConfigChangeFailed(ConfigError):
    """An accepted change that could not be applied at the step boundary: none of it applied."""

    def __init__(self, changes: dict[str, Any], reason: str) -> None:
        self.changes = changes
        self.reason = reason
        super().__init__(
            "",
            f"config change {describe_changes(changes)} failed: {reason}; the previous values stay",
        )


class StartOnlyKeyError(ConfigError):
    """A key that only applies when a run starts (model shape, data, device…)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        others = f" (also {', '.join(keys[1:])})" if len(keys) > 1 else ""
        super().__init__(
            keys[0],
            f"only applies at start{others}; change it in the config file and restart (with "
            "--resume auto to continue from the last checkpoint)",
        )


# --- not the user's doing: outcomes the runtime reports to whoever asked -------------------------


class CommandNotAvailable(Exception):
    """A command this run cannot carry out (e.g. a checkpoint before checkpoints exist, or any
    command once the run is stopping). The keyboard and the web panel show it; not a VsrError."""


class ValidationInterrupted(Exception):
    """A stop arrived while validating: the remaining images are skipped (no partial results)."""

    def __init__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        super().__init__(f"validation interrupted after {done} of {total} images")


def one_line(text: str) -> str:
    """`text` with control characters escaped (a newline or NUL in a path cannot split or cut the
    message) and undecodable file-name bytes shown as `\\xNN` (`names.display_name`)."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in display_name(text)
    )
