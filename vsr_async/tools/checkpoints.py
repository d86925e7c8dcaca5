"""`python -m vsr_async checkpoints [--config FILE | DATA_ROOT]`: a run's checkpoints as a table
(step, kind, quality, time, file), the way the predecessor's startup table listed them.

Lists ours (DATA_ROOT/checkpoints: `checkpoint_<step>.pt`, `best.pt`) and the predecessor's
(VSR++: `checkpoint_step_<step>.pth` in DATA_ROOT itself), newest first. Each file is read
lazily (`torch.load(mmap=True)`: the tensors are mapped, not read), so a folder of large files
lists in well under a second per file; nothing is written. Quality: ours is the best validation
quality of the run when the file was saved (for `best.pt`: that model's own); the predecessor's
is the `ki_quality` of its last validation, from the file's `metrics`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vsr_async.errors import CheckpointError, OptionError
from vsr_async.names import display_name

# Our `reason` of a save, as a kind the table shows (anything else is shown as saved).
KINDS = {"schedule": "periodic", "shutdown": "final", "keyboard": "requested", "api": "requested"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "checkpoints",
        help="list a run's checkpoints (ours and the predecessor's): step, kind, quality, time",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument(
        "data_root",
        nargs="?",
        type=Path,
        metavar="DATA_ROOT",
        help="the run folder (default: DATA_ROOT of --config, or of ./config.py)",
    )
    p.add_argument("--config", type=Path, help="a config file whose DATA_ROOT is listed")


@dataclass(frozen=True)
class Row:
    step: int
    kind: str
    quality: float | None
    time: str
    path: Path
    note: str = ""  # why a file could not be read


def run(args: argparse.Namespace) -> int:
    folder = run_folder(args.data_root, args.config)
    if not folder.is_dir():
        raise OptionError("DATA_ROOT", f"{display_name(folder)} is not a folder")
    rows = list_rows(folder)
    print(f"checkpoints in {display_name(folder)}:")
    print("\n".join(table_lines(rows, folder)))
    return 0


def run_folder(data_root: Path | None, config: Path | None) -> Path:
    """DATA_ROOT given, or read from the config file (`--config`, else ./config.py)."""
    from vsr_async.settings import load_config_file, user_config_file

    if data_root is not None and config is not None:
        raise OptionError("--config", "give either DATA_ROOT or --config, not both")
    if data_root is not None:
        return data_root.expanduser().resolve()
    path = config if config is not None else user_config_file()
    if path is None:
        raise OptionError("--config", "no DATA_ROOT, no --config and no ./config.py given")
    value = load_config_file(path).get("DATA_ROOT", "Learn")
    return Path(str(value)).expanduser().resolve()


def list_rows(folder: Path) -> list[Row]:
    """Every checkpoint of ours and of the predecessor in `folder`, newest step first."""
    from vsr_async.files.checkpoints import BEST_NAME, CHECKPOINT_DIR, list_checkpoints
    from vsr_async.files.predecessor_checkpoint import list_predecessor_checkpoints

    rows = [_our_row(path) for _, path in list_checkpoints(folder / CHECKPOINT_DIR)]
    best = folder / CHECKPOINT_DIR / BEST_NAME
    if best.is_file():
        rows.append(_our_row(best, kind="best"))
    rows += [_predecessor_row(f.path, f.step, f.kind) for f in list_predecessor_checkpoints(folder)]
    return sorted(rows, key=lambda r: (r.step, r.kind != "best"), reverse=True)


def _our_row(path: Path, kind: str | None = None) -> Row:
    from vsr_async.files.checkpoints import load_checkpoint

    try:
        state = load_checkpoint(path, lazy=True)
    except CheckpointError as exc:
        return Row(-1, kind or "?", None, _mtime(path), path, _why(exc))
    reason = str(state.get("reason", "schedule"))
    quality = state.get("best_quality")
    return Row(
        int(state["step"]),
        kind or KINDS.get(reason, reason),
        float(quality) if isinstance(quality, int | float) else None,
        _short_time(state.get("saved_at")) or _mtime(path),
        path,
    )


def _predecessor_row(path: Path, step: int, kind: str) -> Row:
    from vsr_async.files.predecessor_checkpoint import load_predecessor_checkpoint

    shown = {"regular": "periodic"}.get(kind, kind)
    try:
        checkpoint = load_predecessor_checkpoint(path, lazy=True)
    except CheckpointError as exc:
        return Row(step, f"VSR++ {shown}", None, _mtime(path), path, _why(exc))
    quality = checkpoint.metrics.get("ki_quality")
    return Row(
        checkpoint.step,
        f"VSR++ {shown}",
        float(quality) if isinstance(quality, int | float) else None,
        _short_time(checkpoint.timestamp) or _mtime(path),
        path,
    )


def _why(exc: CheckpointError) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text


def _short_time(value: Any) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS` (local to the file's own writer); '' if none."""
    if not isinstance(value, str):
        return ""
    try:
        return f"{datetime.fromisoformat(value):%Y-%m-%d %H:%M:%S}"
    except ValueError:
        return ""


def _mtime(path: Path) -> str:
    try:
        return f"{datetime.fromtimestamp(path.stat().st_mtime):%Y-%m-%d %H:%M:%S}"
    except OSError:
        return "?"


def table_lines(rows: list[Row], folder: Path) -> list[str]:
    if not rows:
        return ["  (none: no checkpoint_<step>.pt in checkpoints/, no checkpoint_step_*.pth)"]
    lines = [f"  {'step':>9}  {'kind':<16}  {'quality':>8}  {'time':<19}  file"]
    for row in rows:
        step = "?" if row.step < 0 else str(row.step)
        quality = "-" if row.quality is None else f"{row.quality * 100:.2f}%"
        name = row.path.relative_to(folder).as_posix()
        note = f"  ({row.note})" if row.note else ""
        lines.append(f"  {step:>9}  {row.kind:<16}  {quality:>8}  {row.time:<19}  {name}{note}")
    return lines
