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

from vsr_async.checkpoints import (
    CHECKPOINT_DIR,
    CheckpointWriter,
    check_compatible,
    find_resume_checkpoint,
    load_checkpoint,
)
from vsr_async.errors import CheckpointError, ConfigError
from vsr_async.live_config import LiveConfigRecorder, load_runtime_config
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
    """Everything one run is made of; `execute()` drives it."""

    config: Any
    run_dir: Path
    store: StatsStore
    supervisor: Supervisor
    logging: RunLogging

    async def execute(self) -> int:
        try:
            return await self.supervisor.run()
        finally:
            self.logging.close()


def has_run(directory: Path) -> bool:
    """Whether a directory already holds a run's files (never overwritten by a fresh start)."""
    if not directory.is_dir():
        return False
    return any((directory / CHECKPOINT_DIR).glob("*.pt")) or any(directory.glob("Statistik_*.json"))


def fresh_run_dir(config: Any) -> Any:
    """--resume never: keep DATA_ROOT if it holds no run, else a new sibling directory."""
    base = Path(config.DATA_ROOT).expanduser().resolve()
    if not has_run(base):
        return config
    stamp = f"{base.name}-{datetime.now():%Y%m%d-%H%M%S}"
    fresh, n = base.with_name(stamp), 1
    while fresh.exists():  # two fresh starts in one second must not share (and prune) a folder
        n += 1
        fresh = base.with_name(f"{stamp}-{n}")
    log.warning("%s holds an earlier run (kept untouched); this run writes to %s", base, fresh)
    return config.replace({"DATA_ROOT": str(fresh)})


def resume_source(config: Any, resume: str) -> Path | None:
    """Which checkpoint to continue from: None for a fresh start, else a file or folder."""
    if resume == "never":
        return None
    if resume == "auto":
        return Path(config.DATA_ROOT).expanduser().resolve() / CHECKPOINT_DIR
    path = Path(resume).expanduser()
    if not path.is_file():
        raise CheckpointError(path, "no such file (--resume takes auto, never or a file)")
    return path


def make_engine(config: Any, dataset_info: Any, source: Path | None) -> Any:
    """Build the engine on the GPU thread and, when resuming, load the checkpoint there too."""
    from vsr_async.engine import TrainingEngine

    engine = TrainingEngine(config, dataset_info)
    if source is None:
        return engine
    if source.is_dir():
        found = find_resume_checkpoint(source, config)
        if found is None:
            log.info("no checkpoint in %s: starting a new run", source)
            return engine
        path, state = found
    else:
        path, state = source, load_checkpoint(source)
        check_compatible(state, config, path)
    engine.load_state(state)
    log.info("continuing from %s (step %d)", path, engine.step)
    return engine


def build_run(
    config: Any, dataset_info: Any, *, resume: str = "auto", console_log: bool = True
) -> Run:
    """Wire a run together (cheap: the model is built later, on the GPU thread)."""
    if resume == "never":
        config = fresh_run_dir(config)
    source = resume_source(config, resume)
    run_dir = prepare_run_dir(config)
    run_logging = RunLogging(run_dir, console=console_log)
    if source is not None:
        config = load_runtime_config(run_dir, config)
    store = StatsStore(run_id=new_run_id(), step_max=config.MAX_STEPS)
    statistics = StatisticsWriter(
        run_dir, on_written=store.statistics_written, on_error=store.statistics_failed
    )
    worker = GpuWorker(lambda: make_engine(config, dataset_info, source))
    tensorboard = TensorBoardLogger(run_dir / "tensorboard")
    checkpointer = CheckpointWriter(run_dir, worker, store, config)
    supervisor = Supervisor(
        config,
        run_dir=run_dir,
        worker=worker,
        store=store,
        statistics=statistics,
        tensorboard=tensorboard,
        checkpointer=checkpointer,
    )
    supervisor.config_listeners.append(LiveConfigRecorder(run_dir, tensorboard))
    supervisor.validation_listeners.append(checkpointer.on_validation)
    log.info("run directory %s", run_dir)
    return Run(config, run_dir, store, supervisor, run_logging)


async def scan_async(config: Any, progress: ProgressCallback | None = None) -> Any:
    return await asyncio.to_thread(scan, config, progress)
