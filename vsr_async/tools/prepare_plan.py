"""What `prepare` makes from the scanned videos: the clips (one per shot long enough for a
window), which of them are validation clips, and the samples each clip gives — all decided
from the videos and the settings alone, so a resumed run makes exactly the files a run without
interruption would.

A clip is one shot of one video (frames between two scene cuts). The validation set is whole
clips, picked by a seeded hash of their names: no frame of a validation clip is ever in
training, and no window ever spans a cut.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vsr_async.errors import VsrError
from vsr_async.tools.prepare_video import VideoScan
from vsr_async.tools.scene_cuts import shots

VAL_WINDOWS_FRAMES = 3
"""Frame layout: a validation clip keeps its centre VAL_WINDOWS_FRAMES·NUM_FRAMES frames
(validation scores the centre window; `evaluate` every frame of the clip)."""


class PrepareError(VsrError):
    """Settings and videos that cannot make a dataset (too few clips, frames too small)."""


@dataclass(frozen=True)
class Settings:
    """Everything that decides the output; an unfinished prepare resumes only with the same."""

    layout: str
    scale: int
    num_frames: int
    patch_size: int
    val_size: int  # patch layout: side of a validation sample (0: twice the patch size)
    val_fraction: float
    stride: int
    crops: int
    seed: int
    cut_threshold: float
    degradation: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClipPlan:
    id: str
    video: int  # index into the scans
    start: int  # first frame number (inclusive)
    end: int  # last frame number (exclusive)
    split: str  # "train" or "val"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipPlan:
        return cls(**data)


def video_names(scans: list[VideoScan]) -> list[str]:
    """A file-name-safe, unique name per video (its stem; -2, -3… where stems repeat)."""
    names: list[str] = []
    for scan in scans:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", scan.path.stem).strip("_") or "video"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def plan_clips(
    scans: list[VideoScan], settings: Settings
) -> tuple[list[ClipPlan], list[tuple[str, int, int]]]:
    """(the clips, the shots dropped as shorter than NUM_FRAMES: (video name, start, end))."""
    candidates, dropped = [], []
    for v, (scan, name) in enumerate(zip(scans, video_names(scans), strict=True)):
        for shot, (start, end) in enumerate(shots(scan.frames, scan.cuts)):
            if end - start < settings.num_frames:
                dropped.append((name, start, end))
            else:
                candidates.append((f"{name}_s{shot:03d}", v, start, end))
    if len(candidates) < 2:
        raise PrepareError(
            f"the videos give {len(candidates)} clip(s) of at least NUM_FRAMES="
            f"{settings.num_frames} frames between scene cuts; a training and a validation set "
            "need at least 2 (validation takes whole clips, never frames of a training clip): "
            "add a video"
        )
    n_val = min(len(candidates) - 1, max(1, round(settings.val_fraction * len(candidates))))
    ranked = sorted(candidates, key=lambda c: _hash(settings.seed, c[0]))
    val_ids = {c[0] for c in ranked[:n_val]}
    clips = [
        ClipPlan(cid, v, start, end, "val" if cid in val_ids else "train")
        for cid, v, start, end in candidates
    ]
    return clips, dropped


def _hash(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def frames_used(clip: ClipPlan, settings: Settings) -> tuple[int, int]:
    """[first, end) of the frames a clip's samples come from."""
    if clip.split == "train":
        return clip.start, clip.end
    keep = settings.num_frames if settings.layout == "patches" else None
    if keep is None:
        keep = VAL_WINDOWS_FRAMES * settings.num_frames
    keep = min(keep, clip.end - clip.start)
    first = clip.start + (clip.end - clip.start - keep) // 2
    return first, first + keep


def window_starts(clip: ClipPlan, settings: Settings) -> list[int]:
    """Patch layout: first frame numbers of the clip's sample windows."""
    first, end = frames_used(clip, settings)
    if clip.split == "val":
        return [first]
    return list(range(first, end - settings.num_frames + 1, settings.stride))


def crop_corners(
    clip: ClipPlan, window: int, settings: Settings, height: int, width: int
) -> list[tuple[int, int, int]]:
    """(y0, x0, size) of each GT crop of one window, on the LR pixel grid (multiples of scale).

    Training: `crops` seeded random places of the patch size; validation: one centred square
    of the validation size (capped by the frame)."""
    s = settings.scale
    if clip.split == "val":
        size = min(settings.val_size or 2 * settings.patch_size, height, width)
        size -= size % s
        return [(((height - size) // 2) // s * s, ((width - size) // 2) // s * s, size)]
    p = settings.patch_size
    rng = np.random.default_rng([settings.seed, zlib.crc32(clip.id.encode()), window])
    return [
        (
            s * int(rng.integers(0, (height - p) // s + 1)),
            s * int(rng.integers(0, (width - p) // s + 1)),
            p,
        )
        for _ in range(settings.crops)
    ]


def noise_rng(clip: ClipPlan, settings: Settings) -> np.random.Generator:
    return np.random.default_rng([settings.seed, zlib.crc32(clip.id.encode()), 0])


def iterate_clips(clips: list[ClipPlan], video: int) -> Iterator[ClipPlan]:
    """A video's clips in frame order."""
    return iter(sorted((c for c in clips if c.video == video), key=lambda c: c.start))
