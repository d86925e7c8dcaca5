"""Assembles one run from a Config: run directory, logging, store, writers, worker, supervisor.

The CLI and the tests build runs the same way through `build_run`, so what the tests exercise
is what users run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vsr_async.errors import ConfigError
from vsr_async.live_config import LiveConfigRecorder
from vsr_async.logs import RunLogging
from vsr_async.statistics import StatisticsWriter, remove_stale_statistics_temps
from vsr_async.store import StatsStore
from vsr_async.supervisor import Supervisor
from vsr_async.tensorboard import TensorBoardLogger
from vsr_async.worker import GpuWorker

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def prepare_run_dir(config: Any) -> Path:
    """Create DATA_ROOT (never the dataset folder) and remove temp files a crash left there."""
    run_dir = Path(config.DATA_ROOT).expanduser().resolve()
    if config.DATASET_ROOT:
        dataset = Path(config.DATASET_ROOT).expanduser().resolve()
        if run_dir == dataset or dataset in run_dir.parents:
            raise ConfigError(
                "DATA_ROOT",
                f"{run_dir} is inside the dataset folder {dataset}; the run directory must be "
                "separate (the dataset is never written to)",
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("DATA_ROOT", f"cannot create {run_dir}: {exc.strerror}") from None
    for stale in remove_stale_statistics_temps(run_dir):
        log.warning("removed %s, left by an interrupted write", stale.name)
    return run_dir


def scan(config: Any, progress: ProgressCallback | None = None) -> Any:
    """Validate the dataset (blocking: headers of every file); errors name the bad file."""
    from vsr_async.data.layout import detect_layout, scan_dataset

    if not config.DATASET_ROOT:
        raise ConfigError("DATASET_ROOT", "must name the dataset folder")
    root = Path(config.DATASET_ROOT).expanduser()
    layout = config.DATASET_LAYOUT if config.DATASET_LAYOUT != "auto" else detect_layout(root)
    return scan_dataset(
        root,
        layout,
        num_frames=config.NUM_FRAMES,
        scale=config.SCALE,
        gt_patch_size=config.GT_PATCH_SIZE,
        progress=progress,
    )


@dataclass
class Run:
    """Everything one run is made of; `supervisor.run()` drives it."""

    config: Any
    run_dir: Path
    run_id: str
    store: StatsStore
    supervisor: Supervisor
    logging: RunLogging

    async def execute(self) -> int:
        try:
            return await self.supervisor.run()
        finally:
            self.logging.close()


def build_run(config: Any, dataset_info: Any, *, console_log: bool = True) -> Run:
    """Wire a run together (cheap: the model is built later, on the GPU thread)."""
    from vsr_async.engine import TrainingEngine

    run_dir = prepare_run_dir(config)
    run_logging = RunLogging(run_dir, console=console_log)
    run_id = new_run_id()
    store = StatsStore(run_id=run_id, step_max=config.MAX_STEPS)
    statistics = StatisticsWriter(
        run_dir, on_written=store.statistics_written, on_error=store.statistics_failed
    )
    worker = GpuWorker(lambda: TrainingEngine(config, dataset_info))
    supervisor = Supervisor(
        config,
        run_dir=run_dir,
        worker=worker,
        store=store,
        statistics=statistics,
        tensorboard=TensorBoardLogger(run_dir / "tensorboard"),
    )
    supervisor.config_listeners.append(LiveConfigRecorder(run_dir, supervisor.tensorboard))
    log.info("run %s in %s", run_id, run_dir)
    return Run(config, run_dir, run_id, store, supervisor, run_logging)


async def scan_async(config: Any, progress: ProgressCallback | None = None) -> Any:
    return await asyncio.to_thread(scan, config, progress)
