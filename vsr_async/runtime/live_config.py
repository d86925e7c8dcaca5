"""Live configuration: the keys that may change mid-run, saved to DATA_ROOT/runtime_config.json.

Every applied change is logged, written to TensorBoard (`Config/Changes`) and saved atomically;
a resumed run reads the file back through the same validation as a config file.

The predecessor (VSR++) kept a `runtime_config.json` of its own, with lowercase keys, in the same
folder. Such a file is the user's: it is read, each value mapped onto our key (predecessor_keys)
and applied, or set aside with one line saying why — never an error, and never written to. A run
in that folder saves its own live changes beside it, in `vsr_async_runtime_config.json`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from vsr_async.errors import (
    ConfigError,
    LiveConfigConflict,
    StartOnlyKeyError,
    describe_changes,
)
from vsr_async.files.atomic import write_atomic_async
from vsr_async.files.tensorboard import TensorBoardLogger
from vsr_async.runtime.hooks import RunHook
from vsr_async.settings import Config, field_names, live_keys, no_effect, our_key

log = logging.getLogger(__name__)

RUNTIME_CONFIG = "runtime_config.json"
# Ours, when runtime_config.json is the predecessor's (which is never written to).
OWN_RUNTIME_CONFIG = "vsr_async_runtime_config.json"


def live_values(config: Config) -> dict[str, Any]:
    """The current values of the keys PATCH /api/config may change (`config_live`)."""
    return {key: getattr(config, key) for key in sorted(live_keys())}


def check_live_changes(config: Config, changes: dict[str, Any]) -> Config:
    """Validate a change request as the loader would; start-only keys are refused by name, and
    so are the predecessor's keys that do nothing here (a change to them would change nothing)."""
    for key in changes:
        why = no_effect(key)
        if why is not None:
            raise ConfigError(key, f"has no effect here: {why}")
    known = config.to_dict()
    start_only = sorted(k for k in changes if our_key(k) in known and our_key(k) not in live_keys())
    if start_only:
        raise StartOnlyKeyError(start_only)
    return config.replace(changes)


def check_against_pending(
    applied: Config,
    pending: Config,
    changes: dict[str, Any],
    pending_changes: list[tuple[str, dict[str, Any]]],
) -> Config:
    """Validate a change against the config as it will be once every accepted change applies.

    `pending` is that config, `pending_changes` the (request id, changes) not applied yet. A
    change that is wrong on its own raises the loader's ConfigError; one that fits `applied`
    but not `pending` raises LiveConfigConflict, naming the pending changes it collides with.
    """
    try:
        return check_live_changes(pending, changes)
    except StartOnlyKeyError:
        raise
    except ConfigError as error:
        if pending is applied or not pending_changes:
            raise
        try:
            check_live_changes(applied, changes)
        except ConfigError:
            raise error from None  # wrong on its own: the pending changes are not the cause
        raise LiveConfigConflict(error, pending_changes) from None


def load_runtime_config(run_dir: Path, config: Config) -> Config:
    """Apply the saved live config (if any) on top of `config`: our runtime_config.json, validated
    like a config file; or the predecessor's, mapped key by key (never an error), and then ours
    from beside it."""
    path = Path(run_dir) / RUNTIME_CONFIG
    values = _read_json_object(path)
    if values is not None and is_own_runtime_config(values):
        return _apply_own(path, values, config)
    if values is not None:
        config = apply_predecessor_runtime_config(path, values, config)
    beside = Path(run_dir) / OWN_RUNTIME_CONFIG
    own = _read_json_object(beside)
    return config if own is None else _apply_own(beside, own, config)


def is_own_runtime_config(values: dict[str, Any]) -> bool:
    """Ours holds every live key under our UPPERCASE names; VSR++'s holds lowercase keys, and
    starts as `{}` (its config had no lowercase keys to copy)."""
    ours = set(field_names())
    return bool(values) and all(key in ours for key in values)


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """The file's JSON object; None when there is no file, or (with one warning, the file left
    as it is) when it cannot be read as one: it may be the user's, half-written by VSR++."""
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s set aside, not applied: not a readable JSON file (%s)", path, exc)
        return None
    if not isinstance(values, dict):
        log.warning(
            "%s set aside, not applied: holds a JSON %s, not an object of key: value",
            path,
            type(values).__name__,
        )
        return None
    return values


def _apply_own(path: Path, values: dict[str, Any], config: Config) -> Config:
    try:
        updated = check_live_changes(config, values)
    except ConfigError as exc:
        raise ConfigError("", f"{path}: {exc}") from None
    log.info("live config restored from %s: %s", path.name, values)
    return updated


def apply_predecessor_runtime_config(path: Path, values: dict[str, Any], config: Config) -> Config:
    """VSR++'s runtime_config.json on top of `config`: each value that maps onto a live key of
    ours and is valid there is applied; every other one is set aside with one warning naming it
    and why. The file itself is never changed."""
    mapped: dict[str, tuple[str, Any]] = {}  # our key -> (its name in the file, value)
    for name, value in values.items():
        reason = _set_aside_reason(config, name)
        if reason is not None:
            log.warning("%s (VSR++): %s=%r set aside: %s", path.name, name, value, reason)
        else:
            mapped[our_key(name)] = (name, value)
    try:  # together first: MIN_LR and MAX_LR may only fit each other
        config = check_live_changes(config, {name: v for name, v in mapped.values()})
        applied = list(mapped.values())
    except ConfigError:
        applied = []
        for name, value in mapped.values():
            try:
                config = check_live_changes(config, {name: value})
                applied.append((name, value))
            except ConfigError as exc:
                log.warning("%s (VSR++): %s=%r set aside: %s", path.name, name, value, exc)
    shown = ", ".join(
        f"{our_key(n)}={getattr(config, our_key(n))!r} (from {n})" for n, _ in applied
    )
    log.info(
        "%s is VSR++'s: %s; it is left as it is, and this run saves its live changes to %s",
        path.name,
        f"applied {shown}" if shown else "no value of it applies",
        OWN_RUNTIME_CONFIG,
    )
    return config


def _set_aside_reason(config: Config, name: str) -> str | None:
    """Why a key of VSR++'s runtime_config.json cannot apply here; None when it can."""
    why = no_effect(name)
    if why is not None:
        return f"no effect here: {why}"
    key = our_key(name)
    if key not in config.to_dict():
        return "not a key of VSR++ or of vsr_async"
    if key not in live_keys():
        return f"{key} only applies at start: set it in the config file"
    return None


def own_runtime_config_path(run_dir: Path) -> Path:
    """The file this run saves its live changes to: runtime_config.json, unless that file is
    someone else's (VSR++'s, or one that does not read as ours), which is never written to."""
    path = run_dir / RUNTIME_CONFIG
    if not path.exists():
        return path
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return run_dir / OWN_RUNTIME_CONFIG
    if isinstance(values, dict) and is_own_runtime_config(values):
        return path
    return run_dir / OWN_RUNTIME_CONFIG


class LiveConfigRecorder(RunHook):
    """Run hook: logs each change and saves runtime_config.json (latest wins).

    Called only for applied changes, so the file never holds a refused or failed one. The
    supervisor runs each call as a background task (a slow fsync never holds up the step loop)
    and awaits those tasks when the run stops; `stop` then writes whatever is still unwritten,
    so the last change is on disk at exit.
    """

    def __init__(self, run_dir: Path, tensorboard: TensorBoardLogger) -> None:
        self.path = own_runtime_config_path(Path(run_dir))
        self.tensorboard = tensorboard
        self._lock = asyncio.Lock()
        self._latest: Config | None = None

    async def on_config_change(self, config: Config, applied: dict[str, Any], step: int) -> None:
        text = f"step {step}: {describe_changes(applied)}"
        self.tensorboard.log_text("Config/Changes", text, step)
        self._latest = config
        await self._persist()

    async def stop(self) -> None:
        """The last change on disk before the run ends (waits for a write still under way)."""
        await self._persist()

    async def _persist(self) -> None:
        async with self._lock:  # writes are serialized; each writes the newest config
            latest, self._latest = self._latest, None
            if latest is None:
                return
            data = json.dumps(live_values(latest), indent=2).encode("utf-8")
            try:
                await write_atomic_async(self.path, data)
            except OSError as exc:
                log.error("could not save %s: %s", self.path.name, exc)
