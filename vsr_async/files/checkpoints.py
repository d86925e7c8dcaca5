"""Checkpoints in DATA_ROOT/checkpoints: atomic files that hold everything a run needs to continue.

State is copied on the GPU thread (`TrainingEngine.capture_state`), then written with
`write_checkpoint` on one I/O thread (`runtime.checkpointer.CheckpointWriter`): temp file in the
same directory, fsync, rename, directory fsync — never `torch.save` straight onto the target.
Files hold only tensors and plain Python values, so they load with `torch.load(weights_only=True)`.

Retention deletes only this run's own older files: the periodic checkpoints this process wrote,
plus its resumed lineage (files in this folder at or below the resume step that load and carry
the run's run_id, when it resumed from a file in this folder). It keeps the KEEP_CHECKPOINTS
newest of those (0: all of them, as the predecessor did); everything else (files of other runs,
files above the resume step it did not write, files that fail to load, `best.pt`) is left alone.
`best.pt` is replaced only by a model whose quality beats the one it holds.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsr_async.errors import CheckpointError
from vsr_async.files.atomic import atomic_writer
from vsr_async.settings import Config

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pt"
FORMAT_VERSION = 1
SHAPE_KEYS = ("MODEL", "N_FEATS", "N_BLOCKS", "NUM_FRAMES", "SCALE")  # a file fits only its shape
# Shape keys that older checkpoints may lack, and the value they had then (MODEL came later).
SHAPE_DEFAULTS = {"MODEL": "vsrnet"}
REQUIRED_KEYS = ("format_version", "step", "model", "optimizer", "config", "run_id")
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Periodic/requested checkpoints as (step, path), newest first (`best.pt` not included)."""
    found = []
    if Path(directory).is_dir():
        for path in Path(directory).iterdir():
            match = _NAME.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x1f\x7f]")


def why_unloadable(path: Path, exc: Exception) -> str:
    """A few plain words on why torch could not load a file (its own text runs to paragraphs of
    advice about weights_only, sometimes with terminal colour codes)."""
    if _size(path) == 0:
        return "the file is empty"
    if isinstance(exc, pickle.UnpicklingError):
        return "not a vsr_async checkpoint (not a PyTorch file of tensors and plain values)"
    if isinstance(exc, EOFError):
        return "the file ends early (truncated)"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, RuntimeError | OSError):  # miniz/zip errors, reads past a cut-off end
        return "damaged or not a vsr_async checkpoint (an incomplete or foreign archive)"
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    detail = _ANSI.sub("", first).strip()[:120]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def check_archive(path: Path) -> None:
    """Cheap first look (a few KB): every checkpoint is a PyTorch zip archive. The full check is
    `load_checkpoint`, on the GPU thread."""
    try:
        with open(path, "rb") as handle:
            empty, archive = handle.read(1) == b"", zipfile.is_zipfile(handle)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read: {exc.strerror}") from None
    if empty:
        raise CheckpointError(path, "cannot be loaded: the file is empty")
    if not archive:
        raise CheckpointError(
            path,
            "cannot be loaded: not a vsr_async checkpoint, or a damaged one (no complete "
            "PyTorch archive)",
        )


def load_checkpoint(path: Path, *, lazy: bool = False) -> dict[str, Any]:
    """Load and verify one file; any damage (truncation, wrong content) is a one-line
    CheckpointError naming the file. `lazy` maps the tensors from the file instead of reading
    them: milliseconds for a large file, for callers that only need its step, run_id or quality."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except Exception as exc:  # torch raises many types for damaged zips and bad pickles
        raise CheckpointError(path, f"cannot be loaded: {why_unloadable(path, exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, "does not hold a vsr_async checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(path, f"is incomplete (missing {', '.join(missing)})")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            path, f"has format {state['format_version']}, this version reads {FORMAT_VERSION}"
        )
    return state


def check_compatible(state: dict[str, Any], config: Config, path: Path) -> None:
    """Refuse a checkpoint whose model shape differs from the config, naming every key."""
    saved = {**SHAPE_DEFAULTS, **state["config"]}
    differing = [k for k in SHAPE_KEYS if saved.get(k) != getattr(config, k)]
    if differing:
        detail = ", ".join(
            f"{k}={saved.get(k)!r} (config has {getattr(config, k)!r})" for k in differing
        )
        raise CheckpointError(
            path,
            f"was trained with a different model shape: {detail}; use the same values, "
            "or --resume never to start a new run",
        )


def saved_model_name(state: dict[str, Any]) -> str:
    """The model a checkpoint of ours holds (config MODEL; files from before the key: vsrnet)."""
    return str(state["config"].get("MODEL", SHAPE_DEFAULTS["MODEL"]))


def _load_or_warn(path: Path) -> dict[str, Any] | None:
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        log.warning("skipping damaged checkpoint: %s", exc)
        return None


def find_resume_checkpoint(directory: Path, config: Config) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads and verifies; damaged ones are skipped with a warning.

    `best.pt` counts too: it is newer than every periodic file when a kill came after a new best
    but before the next periodic save. Its best quality is kept either way, so a restart from an
    older periodic file never lets a worse validation overwrite the best.
    """
    directory = Path(directory)
    best_path = directory / BEST_NAME
    best = _load_or_warn(best_path) if best_path.is_file() else None
    found: tuple[Path, dict[str, Any]] | None = None
    for _, path in list_checkpoints(directory):
        state = _load_or_warn(path)
        if state is not None:
            found = (path, state)
            break
    if best is not None and (found is None or best["step"] > found[1]["step"]):
        found = (best_path, best)
    if found is None:
        return None
    path, state = found
    check_compatible(state, config, path)
    if best is not None and better_quality(best.get("best_quality"), state.get("best_quality")):
        state = {**state, "best_quality": best["best_quality"], "best_step": best["best_step"]}
    return path, state


def better_quality(quality: float | None, than: float | None) -> bool:
    """Whether `quality` beats `than` (a missing quality never beats; anything beats none)."""
    return quality is not None and (than is None or quality > than)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Blocking atomic write (I/O thread only)."""
    with atomic_writer(path) as handle:
        torch.save(state, handle)


def retention_victims(candidates: dict[str, int], keep: int, newest_own: str | None) -> list[str]:
    """Names to delete: all but the `keep` highest steps of `candidates`, never `newest_own`;
    none when `keep` is 0 (KEEP_CHECKPOINTS = 0 keeps every checkpoint)."""
    if keep == 0:
        return []
    ranked = sorted(candidates.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return [name for name, _ in ranked[max(keep, 1) :] if name != newest_own]


@dataclass
class RetentionScope:
    """Which files in the checkpoint folder retention may ever delete (I/O thread only).

    `own`: periodic checkpoints this process wrote (name -> step). `lineage`: files of the run
    it resumed, at or below the resume step, found once on the first retention pass.
    """

    own: dict[str, int] = field(default_factory=dict)
    lineage: dict[str, int] | None = None  # None: not looked for yet

    def candidates(self) -> dict[str, int]:
        return {**(self.lineage or {}), **self.own}

    def newest_own(self) -> str | None:
        return max(self.own, key=lambda name: self.own[name]) if self.own else None

    def forget(self, name: str) -> None:
        self.own.pop(name, None)
        if self.lineage is not None:
            self.lineage.pop(name, None)


def find_lineage(directory: Path, resumed: Any, own: dict[str, int]) -> dict[str, int]:
    """Files of the resumed run that retention may delete: only when it resumed from a file in
    `directory`, at or below its step, loading and carrying its run_id. A file that fails to
    load is reported (once: this runs once per process) and left alone."""
    source = getattr(resumed, "source", None)
    if source is None or Path(source).resolve().parent != Path(directory).resolve():
        return {}
    lineage = {}
    for step, path in list_checkpoints(directory):
        if path.name in own or step > resumed.step:
            continue
        try:
            state = load_checkpoint(path, lazy=True)
        except CheckpointError as exc:
            log.warning("checkpoint retention: leaving %s alone: %s", path.name, exc)
            continue
        if state["run_id"] == resumed.run_id and state["step"] == step:
            lineage[path.name] = step
    return lineage
