"""Writing one clip's samples into the staging folder of `prepare`, in either dataset layout.

Each PNG is written under a temp name and renamed (a reader never meets half a file); when a
clip is complete, its files and folders are fsynced before the state file records it as done,
so a clip recorded as done survives a crash, and one that is not is written again on resume
(under the same names: the plan is deterministic).
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from vsr_async.files.atomic import fsync_directory, temp_path_for
from vsr_async.tools.degradations import Degradation, crop_to_scale, degrade_clip
from vsr_async.tools.prepare_plan import (
    ClipPlan,
    Settings,
    crop_corners,
    frames_used,
    noise_rng,
    window_starts,
)

Frames = Iterator[tuple[int, np.ndarray]]


class PngFiles:
    """Atomic PNG writes, made durable together by `sync()`."""

    def __init__(self) -> None:
        self._written: list[Path] = []

    def write(self, path: Path, image: np.ndarray) -> None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=6)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(path)
        try:
            with open(tmp, "wb") as handle:
                handle.write(buffer.getbuffer())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._written.append(path)

    def sync(self) -> int:
        """fsync every file written since the last call, then their folders; the count."""
        for path in self._written:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for folder in {p.parent for p in self._written}:
            fsync_directory(folder)
        count, self._written = len(self._written), []
        return count


def write_clip(
    staging: Path,
    clip: ClipPlan,
    frames: Frames,
    settings: Settings,
    files: PngFiles,
    advance: Callable[[int], None],
) -> int:
    """Consume the clip's frames from `frames` (a video's frames in order, positioned at or
    before the clip's first) and write its samples; returns how many it wrote."""
    first, end = frames_used(clip, settings)
    spec = Degradation(scale=settings.scale, **settings.degradation)
    hr_frames = (crop_to_scale(f, settings.scale) for f in _between(frames, first, end, advance))
    pairs = degrade_clip(hr_frames, spec, noise_rng(clip, settings))
    numbered = zip(range(first, end), pairs, strict=True)
    if settings.layout == "frames":
        return _write_frames(staging, clip, numbered, files)
    return _write_patches(staging, clip, numbered, settings, files)


def _between(
    frames: Frames, first: int, end: int, advance: Callable[[int], None]
) -> Iterator[np.ndarray]:
    """The frames numbered first … end−1 (earlier ones are skipped)."""
    if end <= first:
        return
    for index, frame in frames:
        advance(1)
        if index >= first:
            yield frame
        if index >= end - 1:
            return


def _write_frames(
    staging: Path,
    clip: ClipPlan,
    numbered: Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]],
    files: PngFiles,
) -> int:
    """Frame layout: GT/<clip>/<frame>.png and LR/<clip>/<frame>.png (under Val/ for val)."""
    root = staging / "Val" if clip.split == "val" else staging
    count = 0
    for index, (hr, lr) in numbered:
        files.write(root / "GT" / clip.id / f"{index:06d}.png", hr)
        files.write(root / "LR" / clip.id / f"{index:06d}.png", lr)
        count += 1
    return count


def _write_patches(
    staging: Path,
    clip: ClipPlan,
    numbered: Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]],
    settings: Settings,
    files: PngFiles,
) -> int:
    """Patch layout: per window and crop, the centre frame's GT crop and the NUM_FRAMES LR crops
    stacked vertically (Patches/ for training, Val/ for validation)."""
    root = staging / ("Val" if clip.split == "val" else "Patches")
    starts = set(window_starts(clip, settings))
    t, s = settings.num_frames, settings.scale
    window: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=t)
    count = 0
    for index, (hr, lr) in numbered:
        window.append((index, hr, lr))
        start = index - t + 1
        if len(window) < t or start not in starts:
            continue
        centre = window[t // 2][1]
        height, width = centre.shape[:2]
        for k, (y0, x0, size) in enumerate(crop_corners(clip, start, settings, height, width)):
            gt = centre[y0 : y0 + size, x0 : x0 + size]
            ly, lx, ls = y0 // s, x0 // s, size // s
            stacked = np.concatenate([w[2][ly : ly + ls, lx : lx + ls] for w in window])
            name = (
                f"{clip.id}_{start:06d}.png"
                if clip.split == "val"
                else (f"{clip.id}_{start:06d}_{k:02d}.png")
            )
            files.write(root / "GT" / name, gt)
            files.write(root / "LR" / name, stacked)
            count += 1
    return count
