"""Set aside an abandoned branch: when a run resumes from a checkpoint older than files in its
folder, those newer files move (atomic renames, nothing deleted) to
DATA_ROOT/superseded/<YYYYmmdd-HHMMSS>-from-step-<N>/, in the same layout as a run folder.

Without this the new branch would overwrite them (its checkpoint_40.pt, Statistik_20.json) and a
later `--resume auto` would jump back to the abandoned newest checkpoint. Files that fail to load
are left where they are (a later save at their step replaces them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vsr_async.errors import CheckpointError, ConfigError
from vsr_async.files.atomic import fsync_directory
from vsr_async.files.checkpoints import BEST_NAME, CHECKPOINT_DIR, list_checkpoints, load_checkpoint
from vsr_async.files.statistics import list_statistics

log = logging.getLogger(__name__)

SUPERSEDED_DIR = "superseded"


@dataclass(frozen=True)
class NewerFiles:
    """Files of a run folder from steps after the one a run resumes from."""

    checkpoints: list[Path]  # periodic files and best.pt that load
    statistics: list[tuple[int, Path]]
    damaged: list[Path]  # checkpoints above the step that fail to load: left in place

    @property
    def movable(self) -> list[Path]:
        return self.checkpoints + [path for _, path in self.statistics]


def find_newer_files(run_dir: Path, step: int) -> NewerFiles:
    """Checkpoints (best.pt by the step it holds) and Statistik files above `step`."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    checkpoints, damaged = [], []
    candidates = [path for n, path in sorted(list_checkpoints(directory)) if n > step]
    best = directory / BEST_NAME
    if best.is_file():
        candidates.append(best)
    for path in candidates:
        try:
            held = int(load_checkpoint(path, lazy=True)["step"])
        except CheckpointError as exc:
            if path.name != BEST_NAME:  # a damaged best.pt is replaced by the next best
                damaged.append(path)
                log.warning("%s; left in place (a save at its step replaces it)", exc)
            continue
        if path.name != BEST_NAME or held > step:
            checkpoints.append(path)
    statistics = [(n, path) for n, path in list_statistics(run_dir) if n > step]
    return NewerFiles(checkpoints, statistics, damaged)


def _new_folder(run_dir: Path, step: int) -> Path:
    base = Path(run_dir) / SUPERSEDED_DIR
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}-from-step-{step}"
    folder, n = base / stamp, 1
    while folder.exists():
        n += 1
        folder = base / f"{stamp}-{n}"
    try:
        (folder / CHECKPOINT_DIR).mkdir(parents=True)
        fsync_directory(base)
        fsync_directory(Path(run_dir))
    except OSError as exc:
        raise ConfigError(
            "DATA_ROOT", f"cannot create {folder} for the newer files: {exc.strerror}"
        ) from None
    return folder


def _describe(newer: NewerFiles) -> str:
    parts = [path.name for path in newer.checkpoints]
    steps = [n for n, _ in newer.statistics]
    if len(steps) == 1:
        parts.append(f"Statistik_{steps[0]}.json")
    elif steps:
        parts.append(f"{len(steps)} Statistik files (steps {steps[0]}-{steps[-1]})")
    return ", ".join(parts)


def set_aside_newer_files(run_dir: Path, step: int) -> Path | None:
    """Move the files above `step` into a new superseded folder; returns it (None: nothing newer).

    Renames within one file system are atomic; the directories are fsynced, so after a crash
    each file is in exactly one of the two places. A failure stops the start, naming the file.
    """
    run_dir = Path(run_dir)
    newer = find_newer_files(run_dir, step)
    if not newer.movable:
        return None
    folder = _new_folder(run_dir, step)
    for path in newer.movable:
        target = folder / path.relative_to(run_dir)
        try:
            os.rename(path, target)
        except OSError as exc:
            raise CheckpointError(
                path, f"cannot be moved to {target} ({exc.strerror}); nothing was deleted"
            ) from None
    for directory in (run_dir / CHECKPOINT_DIR, run_dir, folder / CHECKPOINT_DIR, folder):
        fsync_directory(directory)
    log.warning(
        "resuming at step %d, older than files in %s: %s; they are kept, unchanged, in %s",
        step,
        run_dir,
        _describe(newer),
        folder,
    )
    return folder
