"""Live configuration: the keys that may change mid-run, saved to DATA_ROOT/runtime_config.json.

Every applied change is logged, written to TensorBoard (`Config/Changes`) and saved atomically;
a resumed run reads the file back through the same validation as a config file.
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
from vsr_async.settings import LEGACY_KEYS, Config, live_keys

log = logging.getLogger(__name__)

RUNTIME_CONFIG = "runtime_config.json"


def live_values(config: Config) -> dict[str, Any]:
    """The current values of the keys PATCH /api/config may change (`config_live`)."""
    return {key: getattr(config, key) for key in sorted(live_keys())}


def check_live_changes(config: Config, changes: dict[str, Any]) -> Config:
    """Validate a change request as the loader would; start-only keys are refused by name."""
    known = config.to_dict()

    def name(key: str) -> str:  # an old key name (USE_AMP) means its new key (AMP)
        return LEGACY_KEYS[key][0] if key in LEGACY_KEYS else key

    start_only = sorted(k for k in changes if name(k) in known and name(k) not in live_keys())
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
    """Apply a saved runtime_config.json (if any) on top of `config`, validated like a file."""
    path = Path(run_dir) / RUNTIME_CONFIG
    if not path.is_file():
        return config
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("", f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError("", f"{path}: must hold a JSON object of KEY: value")
    try:
        updated = check_live_changes(config, values)
    except ConfigError as exc:
        raise ConfigError("", f"{path}: {exc}") from None
    log.info("live config restored from %s: %s", path.name, values)
    return updated


class LiveConfigRecorder(RunHook):
    """Run hook: logs each change and saves runtime_config.json (latest wins).

    Called only for applied changes, so the file never holds a refused or failed one. The
    supervisor runs each call as a background task (a slow fsync never holds up the step loop)
    and awaits those tasks when the run stops; `stop` then writes whatever is still unwritten,
    so the last change is on disk at exit.
    """

    def __init__(self, run_dir: Path, tensorboard: TensorBoardLogger) -> None:
        self.path = Path(run_dir) / RUNTIME_CONFIG
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
