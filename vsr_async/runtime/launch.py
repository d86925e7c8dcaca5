"""Assembles one run from a Config: run directory (`run_folder`), logging, store, writers,
worker, supervisor; the engine is built (and a checkpoint loaded) later, on the GPU thread.

The CLI and the tests build runs the same way through `build_run`, so what the tests exercise
is what users run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsr_async.errors import CheckpointError, ConfigError
from vsr_async.files.checkpoints import check_compatible, find_resume_checkpoint, load_checkpoint
from vsr_async.files.logs import LOG_NAME, RunLogging
from vsr_async.files.predecessor_checkpoint import MODEL_NAME as PREDECESSOR_MODEL
from vsr_async.files.predecessor_checkpoint import is_predecessor_checkpoint
from vsr_async.files.run_lock import RunLock
from vsr_async.files.statistics import StatisticsWriter
from vsr_async.files.superseded import set_aside_newer_files
from vsr_async.files.tensorboard import TensorBoardLogger
from vsr_async.names import display_name
from vsr_async.runtime.checkpointer import CheckpointWriter
from vsr_async.runtime.config_recorder import ConfigRecorder
from vsr_async.runtime.live_config import LiveConfigRecorder, load_runtime_config
from vsr_async.runtime.predecessor_resume import continue_predecessor
from vsr_async.runtime.run_folder import TENSORBOARD_DIR, RunFolder, claim_run_dir, resume_source
from vsr_async.runtime.store import StatsStore
from vsr_async.runtime.supervisor import Supervisor
from vsr_async.runtime.worker import GpuWorker

if TYPE_CHECKING:
    from vsr_async.training.distributed import RankContext
    from vsr_async.training.engine import TrainingEngine

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def scan(config: Any, progress: ProgressCallback | None = None) -> Any:
    """Validate the dataset (blocking: headers of every file); errors name the bad file."""
    from vsr_async.data.layout import scan_configured

    return scan_configured(config, progress)


@dataclass
class Run:
    """Everything one run is made of; `execute()` drives it."""

    config: Any
    run_dir: Path
    store: StatsStore
    supervisor: Supervisor
    logging: RunLogging
    lock: RunLock | None = None  # held from build_run to the very end of shutdown

    async def start(self, timeout: float = 120.0) -> asyncio.Task[int]:
        """Run in the background; return its task once the supervisor has started (engine
        built, first step pending). What stops the run before that is raised here."""
        task = asyncio.create_task(self.execute())
        started = asyncio.ensure_future(self.supervisor.started.wait())
        await asyncio.wait({started, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()  # raises what went wrong at start
        if not self.supervisor.started.is_set():
            raise TimeoutError(f"the run did not start within {timeout:.0f} s")
        return task

    async def execute(self) -> int:
        try:
            return await self.supervisor.run()
        finally:
            try:
                self.logging.close()
            finally:
                if self.lock is not None:
                    self.lock.release()


def make_engine(
    config: Any, dataset_info: Any, source: Path | None, ranks: RankContext | None = None
) -> TrainingEngine:
    """Build the engine on the GPU thread and, when resuming, load the checkpoint there too."""
    from vsr_async.training.engine import TrainingEngine

    engine = TrainingEngine(config, dataset_info, ranks)
    if source is None:
        return engine
    if source.is_dir():
        found = find_resume_checkpoint(source, config)
        if found is None:
            log.info("no checkpoint in %s: starting a new run", source)
            return engine
        path, state = found
    elif is_predecessor_checkpoint(source):  # its file is read, never written or adopted
        continue_predecessor(engine, source, config, new_run_id())
        return engine
    else:
        path, state = source, load_checkpoint(source)
        check_compatible(state, config, path)
    engine.load_state(state)
    assert engine.resumed is not None  # load_state sets it
    engine.resumed = dataclasses.replace(engine.resumed, source=path.resolve())
    log.info("continuing from %s (step %d)", path, engine.step)
    # Before this run writes anything: files of later steps (an abandoned branch) move aside,
    # so its saves neither overwrite them nor let `--resume auto` jump back to them.
    set_aside_newer_files(Path(config.DATA_ROOT).expanduser().resolve(), engine.step)
    return engine


def build_run(
    config: Any,
    dataset_info: Any,
    *,
    resume: str = "auto",
    console_log: bool = True,
    ranks: RankContext | None = None,
) -> Run:
    """Wire a run together (cheap: the model is built later, on the GPU thread).

    The run folder is locked first and stays locked until `Run.execute` has finished; on any
    failure here the lock is released again. `ranks`: rank 0 of a torchrun job (the other
    ranks run `runtime.follower`, not this).
    """
    source = resume_source(config, resume)  # a bad --resume file fails before any write
    folder = claim_run_dir(config, source)
    try:
        return _assemble(folder, dataset_info, console_log, ranks)
    except BaseException:
        folder.lock.release()
        raise


def _assemble(
    folder: RunFolder,
    dataset_info: Any,
    console_log: bool,
    ranks: RankContext | None,
) -> Run:
    run_logging = open_run_logging(folder.path, console_log)
    try:
        for notice in folder.notices:
            log.warning("%s", notice)
        for line in dataset_warnings(dataset_info):
            log.warning("dataset: %s", line)
        return _wire(folder, dataset_info, run_logging, ranks)
    except BaseException:
        run_logging.close()
        raise


def _wire(
    folder: RunFolder, dataset_info: Any, run_logging: RunLogging, ranks: RankContext | None
) -> Run:
    config, run_dir = folder.config, folder.path
    source = folder.source  # auto: the checkpoints of the folder actually used
    if folder.resuming:  # only the checkpoint's own folder's live config goes with it
        config = load_runtime_config(run_dir, config)
    store = StatsStore(
        run_id=new_run_id(),
        step_max=config.MAX_STEPS,
        predecessor_activity_names=config.MODEL == PREDECESSOR_MODEL,
    )
    store.skipped_files.extend(display_name(s.path) for s in dataset_info.skipped)
    statistics = StatisticsWriter(
        run_dir, on_written=store.statistics_written, on_error=store.statistics_failed
    )
    worker = GpuWorker(
        lambda: build_engine(config, dataset_info, source, folder.resuming, ranks=ranks)
    )
    tensorboard = TensorBoardLogger(run_dir / TENSORBOARD_DIR)
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
    supervisor.add_hook(LiveConfigRecorder(run_dir, tensorboard))
    supervisor.add_hook(ConfigRecorder(supervisor))  # config_step_<step>.json, TensorBoard
    supervisor.add_hook(checkpointer)  # a new best quality is saved as best.pt
    log.info("run directory %s", run_dir)
    return Run(config, run_dir, store, supervisor, run_logging, folder.lock)


def dataset_warnings(info: Any, limit: int = 20) -> list[str]:
    """What the scan decided (validation fallbacks, a hold-out) and the files it skipped, for
    training.log; `check` lists every skipped file."""
    skipped = [f"skipped {line}" for line in info.skipped_lines(limit)]
    return [*info.notices, *skipped]


def open_run_logging(run_dir: Path, console_log: bool) -> RunLogging:
    try:
        return RunLogging(run_dir, console=console_log)
    except OSError as exc:
        path = exc.filename or run_dir / LOG_NAME
        raise ConfigError("DATA_ROOT", f"cannot open {path}: {exc.strerror}") from None


def build_engine(
    config: Any,
    dataset_info: Any,
    source: Path | None,
    resuming: bool,
    *,
    ranks: RankContext | None = None,
) -> TrainingEngine:
    """`make_engine`, and a planned resume that loaded nothing is an error, not a new run that
    would write over the folder's files with its runtime_config.json applied. Under torchrun
    (rank 0) the other ranks get the config, dataset and state from here (`rank_start`)."""

    def build() -> TrainingEngine:
        engine = make_engine(config, dataset_info, source, ranks)
        if resuming and engine.resumed is None:
            raise CheckpointError(
                source or Path(config.DATA_ROOT),
                "no checkpoint here could be loaded (see the warnings above); the folder is left "
                "as it is: move the damaged files away, or start with --resume never",
            )
        return engine

    if ranks is None:
        return build()
    from vsr_async.training.rank_start import start_leader

    return start_leader(ranks, config, dataset_info, build)


async def scan_async(config: Any, progress: ProgressCallback | None = None) -> Any:
    return await asyncio.to_thread(scan, config, progress)
