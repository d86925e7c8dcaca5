"""The configuration a run started with, as it was resolved (config file, --set, options and a
restored runtime_config.json together), recorded where the predecessor kept it: a JSON file in
DATA_ROOT (`config_step_<step>.json`, the predecessor's `{step, timestamp, config}` layout) and
TensorBoard text and hparams (see `TensorBoardLogger.log_config`).

Secret keys never appear: every value comes from `Config.public_dict()`.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vsr_async.files.atomic import write_atomic_async


def config_record_name(step: int, start: int = 1) -> str:
    """`config_step_0012345.json`: one file per start, named by the step it starts at (a
    resumed run adds one; zero-padded like the predecessor's `runtime_config_step_*.json`).
    A second start at the same step (a resume from an older checkpoint) is `..._2.json`: an
    earlier start's record is never overwritten."""
    suffix = "" if start == 1 else f"_{start}"
    return f"config_step_{step:07d}{suffix}.json"


def free_record_path(run_dir: Path, step: int) -> Path:
    """The first record name at `step` that no earlier start has taken (one writer per folder:
    the run lock)."""
    start = 1
    while (path := Path(run_dir) / config_record_name(step, start)).exists():
        start += 1
    return path


def config_record(config: Any, *, step: int, run_id: str) -> dict[str, Any]:
    """What the file holds: the start step, when, the run id and every public key's value."""
    return {
        "step": step,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "run_id": run_id,
        "config": config.public_dict(),
    }


async def write_config_record(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write the record atomically into `run_dir` (aiofiles: the event loop never blocks)."""
    path = await asyncio.to_thread(free_record_path, Path(run_dir), record["step"])
    data = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    await write_atomic_async(path, data.encode("utf-8"))
    return path


def config_markdown(values: dict[str, Any]) -> str:
    """A Markdown table of the keys (TensorBoard's text plugin renders it)."""
    rows = [f"| `{key}` | `{value!r}` |" for key, value in values.items()]
    return "\n".join(["| key | value |", "|---|---|", *rows])


def hparam_values(values: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """Values the hparams plugin can hold: numbers, booleans and text; anything else as text."""
    return {
        key: value if isinstance(value, bool | int | float | str) else json.dumps(value)
        for key, value in values.items()
    }
