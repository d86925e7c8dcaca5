"""Assembles one run from a Config: run directory, logging, store, writers, worker, supervisor.

The CLI and the tests build runs the same way through `build_run`, so what the tests exercise
is what users run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsr_async.errors import CheckpointError, ConfigError
from vsr_async.files.checkpoints import (
    BEST_NAME,
    CHECKPOINT_DIR,
    check_archive,
    check_compatible,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from vsr_async.files.logs import LOG_NAME, RunLogging
from vsr_async.files.run_lock import RunLock, folder_busy, folder_in_use
from vsr_async.files.statistics import StatisticsWriter, remove_stale_statistics_temps
from vsr_async.files.superseded import set_aside_newer_files
from vsr_async.files.tensorboard import TensorBoardLogger
from vsr_async.runtime.checkpointer import CheckpointWriter
from vsr_async.runtime.config_recorder import ConfigRecorder
from vsr_async.runtime.live_config import RUNTIME_CONFIG, LiveConfigRecorder, load_runtime_config
from vsr_async.runtime.store import StatsStore
from vsr_async.runtime.supervisor import Supervisor
from vsr_async.runtime.worker import GpuWorker

if TYPE_CHECKING:
    from vsr_async.training.engine import TrainingEngine

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"

ProgressCallback = Callable[[int, int], None]


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_dir_of(config: Any) -> Path:
    """DATA_ROOT as an absolute path; refused inside the dataset (the dataset is never written)."""
    run_dir = Path(config.DATA_ROOT).expanduser().resolve()
    if config.DATASET_ROOT:
        dataset = Path(config.DATASET_ROOT).expanduser().resolve()
        if run_dir == dataset or dataset in run_dir.parents:
            raise ConfigError(
                "DATA_ROOT",
                f"{run_dir} is inside the dataset folder {dataset}; the run directory must be "
                "separate (the dataset is never written to)",
            )
    return run_dir


@dataclass
class RunFolder:
    """The folder a run writes to, held (`lock`) before anything is written into it."""

    config: Any  # DATA_ROOT names `path` (a sibling when the configured one holds another run)
    path: Path
    lock: RunLock
    resuming: bool  # continues the checkpoint in this folder: its runtime_config.json applies
    notices: list[str]  # said once the run's log is open (so they reach training.log too)


def claim_run_dir(config: Any, source: Path | None) -> RunFolder:
    """Choose, lock and check the run folder (see docs/design.md, "One run per folder").

    DATA_ROOT is used when it holds no earlier run's files or when this start continues the
    checkpoint in it; otherwise the run goes to a new sibling folder, leaving DATA_ROOT as it is.
    """
    base = run_dir_of(config)
    if folder_in_use(base):  # even a start that would go to a sibling: it is the same run twice
        raise folder_busy(base)
    resuming = resumes_here(base, source)
    notices = []
    earlier = [] if resuming else earlier_run_files(base)
    run_dir = base
    if earlier:
        run_dir = new_sibling(base)
        config = config.replace({"DATA_ROOT": str(run_dir)})
        shown = ", ".join(p.relative_to(base).as_posix() for p in earlier[:3])
        more = ", ..." if len(earlier) > 3 else ""
        why = "" if source is None else " and no checkpoint this start continues"
        notices.append(
            f"{base} holds an earlier run's files ({shown}{more}){why}; they are kept "
            f"untouched and this run writes to {run_dir} (to continue it later, set DATA_ROOT "
            "to that folder)"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("DATA_ROOT", f"cannot create {run_dir}: {exc.strerror}") from None
    lock = RunLock.acquire(run_dir)
    if lock.warning:
        notices.append(lock.warning)
    try:
        check_layout(run_dir)
        for stale in remove_stale_statistics_temps(run_dir):
            notices.append(f"removed {stale.name}, left by an interrupted write")
    except BaseException:
        lock.release()
        raise
    return RunFolder(config, run_dir, lock, resuming, notices)


def check_layout(run_dir: Path) -> None:
    """The names a run writes must be free for it: one line naming the path that is in the way."""
    for name in (CHECKPOINT_DIR, TENSORBOARD_DIR):
        path = run_dir / name
        if os.path.lexists(path) and not path.is_dir():
            raise ConfigError(
                "DATA_ROOT",
                f"{path} is not a folder (the run keeps its {name} there); move it away",
            )
    log_file = run_dir / LOG_NAME
    if log_file.is_dir():
        raise ConfigError(
            "DATA_ROOT", f"{log_file} is a folder (the run writes its log file there); move it away"
        )


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


# What marks a folder as holding a run: its outputs. A stale lock file, temp files and a
# `superseded/` folder without these are not a run.
RUN_OUTPUTS = (
    "Statistik_*.json",
    RUNTIME_CONFIG,
    f"{CHECKPOINT_DIR}/*.pt",
    f"{TENSORBOARD_DIR}/*",
)


def earlier_run_files(directory: Path) -> list[Path]:
    """An earlier run's files in `directory` (sorted), which a fresh start must not write over."""
    if not directory.is_dir():
        return []
    found = {p for pattern in RUN_OUTPUTS for p in directory.glob(pattern) if p.is_file()}
    log_file = directory / LOG_NAME
    if log_file.is_file() and log_file.stat().st_size > 0:
        found.add(log_file)
    return sorted(found)


def has_run(directory: Path) -> bool:
    """Whether a directory already holds a run's files (never overwritten by a fresh start)."""
    return bool(earlier_run_files(directory))


def resumable_checkpoint(checkpoints: Path) -> Path | None:
    """The newest file in `checkpoints` that looks loadable (a cheap look, not `torch.load`)."""
    for path in [p for _, p in list_checkpoints(checkpoints)] + [checkpoints / BEST_NAME]:
        if path.is_file():
            try:
                check_archive(path)
            except CheckpointError:
                continue
            return path
    return None


def resumes_here(run_dir: Path, source: Path | None) -> bool:
    """Whether this start continues the checkpoint in `run_dir`: then it may write there and
    takes over its runtime_config.json. `--resume auto` needs a loadable-looking checkpoint;
    `--resume FILE` a file inside `run_dir/checkpoints`."""
    if source is None:
        return False
    checkpoints = run_dir / CHECKPOINT_DIR
    if source.is_dir():
        return source.resolve() == checkpoints.resolve() and bool(resumable_checkpoint(checkpoints))
    return source.resolve().parent == checkpoints.resolve()


def fresh_run_dir(config: Any) -> Any:
    """A fresh start: keep DATA_ROOT if it holds no run, else a new sibling directory."""
    base = Path(config.DATA_ROOT).expanduser().resolve()
    if not has_run(base):
        return config
    return config.replace({"DATA_ROOT": str(new_sibling(base))})


def new_sibling(base: Path) -> Path:
    """Create `<base>-<date>-<time>[-n]` beside `base`: mkdir claims the name, so two starts in
    the same second never share a folder."""
    stamp = f"{base.name}-{datetime.now():%Y%m%d-%H%M%S}"
    fresh, n = base.with_name(stamp), 1
    while True:
        try:
            fresh.mkdir(parents=True)
            return fresh
        except FileExistsError:
            n += 1
            fresh = base.with_name(f"{stamp}-{n}")
        except OSError as exc:
            raise ConfigError("DATA_ROOT", f"cannot create {fresh}: {exc.strerror}") from None


def resume_source(config: Any, resume: str) -> Path | None:
    """Which checkpoint to continue from: None for a fresh start, else a file or folder."""
    if resume == "never":
        return None
    if resume == "auto":
        return Path(config.DATA_ROOT).expanduser().resolve() / CHECKPOINT_DIR
    path = Path(resume).expanduser()
    if not path.is_file():
        raise CheckpointError(path, "no such file (--resume takes auto, never or a file)")
    check_archive(path)  # a file that is no checkpoint at all is refused before the run starts
    return path


def make_engine(config: Any, dataset_info: Any, source: Path | None) -> TrainingEngine:
    """Build the engine on the GPU thread and, when resuming, load the checkpoint there too."""
    from vsr_async.training.engine import TrainingEngine

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
    engine.resumed = dataclasses.replace(engine.resumed, source=path.resolve())
    log.info("continuing from %s (step %d)", path, engine.step)
    # Before this run writes anything: files of later steps (an abandoned branch) move aside,
    # so its saves neither overwrite them nor let `--resume auto` jump back to them.
    set_aside_newer_files(Path(config.DATA_ROOT).expanduser().resolve(), engine.step)
    return engine


def build_run(
    config: Any, dataset_info: Any, *, resume: str = "auto", console_log: bool = True
) -> Run:
    """Wire a run together (cheap: the model is built later, on the GPU thread).

    The run folder is locked first and stays locked until `Run.execute` has finished; on any
    failure here the lock is released again.
    """
    source = resume_source(config, resume)  # a bad --resume file fails before any write
    folder = claim_run_dir(config, source)
    try:
        return _assemble(folder, dataset_info, resume, console_log)
    except BaseException:
        folder.lock.release()
        raise


def _assemble(folder: RunFolder, dataset_info: Any, resume: str, console_log: bool) -> Run:
    run_logging = open_run_logging(folder.path, console_log)
    try:
        for notice in folder.notices:
            log.warning("%s", notice)
        return _wire(folder, dataset_info, resume, run_logging)
    except BaseException:
        run_logging.close()
        raise


def _wire(folder: RunFolder, dataset_info: Any, resume: str, run_logging: RunLogging) -> Run:
    config, run_dir = folder.config, folder.path
    source = resume_source(config, resume)  # auto: the checkpoints of the folder actually used
    if folder.resuming:  # only the checkpoint's own folder's live config goes with it
        config = load_runtime_config(run_dir, config)
    store = StatsStore(run_id=new_run_id(), step_max=config.MAX_STEPS)
    statistics = StatisticsWriter(
        run_dir, on_written=store.statistics_written, on_error=store.statistics_failed
    )
    worker = GpuWorker(lambda: build_engine(config, dataset_info, source, folder.resuming))
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


def open_run_logging(run_dir: Path, console_log: bool) -> RunLogging:
    try:
        return RunLogging(run_dir, console=console_log)
    except OSError as exc:
        path = exc.filename or run_dir / LOG_NAME
        raise ConfigError("DATA_ROOT", f"cannot open {path}: {exc.strerror}") from None


def build_engine(
    config: Any, dataset_info: Any, source: Path | None, resuming: bool
) -> TrainingEngine:
    """`make_engine`, and a planned resume that loaded nothing is an error, not a new run that
    would write over the folder's files with its runtime_config.json applied."""
    engine = make_engine(config, dataset_info, source)
    if resuming and engine.resumed is None:
        raise CheckpointError(
            source or Path(config.DATA_ROOT),
            "no checkpoint here could be loaded (see the warnings above); the folder is left "
            "as it is: move the damaged files away, or start with --resume never",
        )
    return engine


async def scan_async(config: Any, progress: ProgressCallback | None = None) -> Any:
    return await asyncio.to_thread(scan, config, progress)
