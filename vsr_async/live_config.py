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

from config import LEGACY_KEYS, Config, live_keys
from vsr_async.atomic import write_atomic_async
from vsr_async.errors import ConfigError
from vsr_async.tensorboard import TensorBoardLogger

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


class LiveConfigRecorder:
    """Supervisor config listener: logs each change and saves runtime_config.json (latest wins).

    The write runs as a task so a slow fsync never holds up the step loop.
    """

    def __init__(self, run_dir: Path, tensorboard: TensorBoardLogger) -> None:
        self.path = Path(run_dir) / RUNTIME_CONFIG
        self.tensorboard = tensorboard
        self._lock = asyncio.Lock()
        self._latest: Config | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, config: Config, applied: dict[str, Any], step: int) -> None:
        text = ", ".join(f"{k}={v!r}" for k, v in applied.items())
        self.tensorboard.log_text("Config/Changes", f"step {step}: {text}", step)
        self._latest = config
        task = asyncio.create_task(self._persist())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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

    async def flush(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks)
