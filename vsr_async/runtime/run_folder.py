"""The folder a run writes to: DATA_ROOT, or a new sibling when DATA_ROOT holds an earlier run's
files this start does not continue; locked before anything is written into it, and checked for
names that are in the way. Also which checkpoint a start continues from (`--resume`), since that
decides whether DATA_ROOT is this run's own folder. See docs/design.md, "One run per folder".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vsr_async.errors import CheckpointError, ConfigError
from vsr_async.files.checkpoints import BEST_NAME, CHECKPOINT_DIR, check_archive, list_checkpoints
from vsr_async.files.logs import LOG_NAME
from vsr_async.files.predecessor_checkpoint import (
    MODEL_NAME,
    is_predecessor_checkpoint,
    list_predecessor_checkpoints,
    wrong_model_message,
)
from vsr_async.files.run_lock import RunLock, folder_busy, folder_in_use
from vsr_async.files.statistics import remove_stale_statistics_temps
from vsr_async.runtime.live_config import OWN_RUNTIME_CONFIG, RUNTIME_CONFIG

TENSORBOARD_DIR = "tensorboard"


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
    source: Path | None = None  # what the engine continues from (`--resume auto`: in `path`)


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
        if source is not None and source.parent == base and is_predecessor_checkpoint(source):
            notices.append(
                f"{base} is a VSR++ (predecessor) Learn folder: continuing from its "
                f"checkpoint {source.name}; its files are kept untouched and this run writes "
                f"to {run_dir} (to continue it later, set DATA_ROOT to that folder)"
            )
        else:
            why = "" if source is None else " and no checkpoint this start continues"
            notices.append(
                f"{base} holds an earlier run's files ({shown}{more}){why}; they are kept "
                f"untouched and this run writes to {run_dir} (to continue it later, set "
                "DATA_ROOT to that folder)"
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
    if source == base / CHECKPOINT_DIR:  # auto: the checkpoints of the folder used
        source = run_dir / CHECKPOINT_DIR
    return RunFolder(config, run_dir, lock, resuming, notices, source)


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


# What marks a folder as holding a run: its outputs, ours and the predecessor's (VSR++: its
# checkpoints and runtime_config*.json lie in DATA_ROOT itself). A stale lock file, temp files
# and a `superseded/` folder without these are not a run.
RUN_OUTPUTS = (
    "Statistik_*.json",
    RUNTIME_CONFIG,
    OWN_RUNTIME_CONFIG,
    "runtime_config*.json",
    "checkpoint_step_*.pth",
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
        run_dir = Path(config.DATA_ROOT).expanduser().resolve()
        checkpoints = run_dir / CHECKPOINT_DIR
        if resumable_checkpoint(checkpoints) is None:  # none of ours: a predecessor folder?
            return predecessor_source(config, run_dir) or checkpoints
        return checkpoints
    path = Path(resume).expanduser()
    if not path.is_file():
        raise CheckpointError(path, "no such file (--resume takes auto, never or a file)")
    check_archive(path)  # a file that is no checkpoint at all is refused before the run starts
    if config.MODEL != MODEL_NAME and is_predecessor_checkpoint(path):
        raise CheckpointError(path, wrong_model_message())
    return path


def predecessor_source(config: Any, run_dir: Path) -> Path | None:
    """`--resume auto` in a predecessor (VSR++) Learn folder: its newest checkpoint file (a
    cheap look at each; none of them is loaded here). MODEL must build its model."""
    found = [f.path for f in list_predecessor_checkpoints(run_dir)]
    newest = next((path for path in found if is_predecessor_checkpoint(path)), None)
    if newest is None:
        return None
    if config.MODEL != MODEL_NAME:
        raise ConfigError(
            "MODEL",
            f"{run_dir} is a VSR++ (predecessor) Learn folder (newest checkpoint "
            f'{newest.name}); set MODEL = "{MODEL_NAME}" to continue it, or start with '
            "--resume never to train a new model in a sibling folder",
        )
    return newest
