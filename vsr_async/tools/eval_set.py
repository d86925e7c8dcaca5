"""The images `evaluate` scores: a validation or test set in either dataset layout, as clips of
(LR window, GT) pairs.

`--dataset DIR` is a dataset root (its `Val/` is scored) or a split folder itself (`GT/`
beside `LR/`, e.g. a test set such as Vid4 laid out as `GT/<clip>/<frame>.png`):

- patch layout: `GT/<name>.png` with `LR/<name>.png` (NUM_FRAMES frames stacked vertically):
  each file pair is a clip of one image;
- frame layout: `GT/<clip>/<frame>.png`, optional `LR/<clip>/<frame>.png` (else LR is the
  bicubic downscale, as in training): every frame of every clip is scored, the model seeing the
  NUM_FRAMES frames around it with the clip's first and last frames repeated at its ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.images import read_rgb
from vsr_async.data.listing import (
    image_names,
    optional_folder,
    path_kind,
    require_folder,
    require_images,
    require_same_names,
    subfolder_names,
)
from vsr_async.data.patches import split_frames
from vsr_async.errors import DatasetError


@dataclass(frozen=True)
class EvalClip:
    """One clip to score: its GT frames and LR (frame files, one stacked file, or None: made by
    bicubic downscaling of the GT frames)."""

    name: str
    gt_frames: tuple[Path, ...]
    lr_frames: tuple[Path, ...] | None = None
    stacked_lr: Path | None = None  # patch layout: the LR file of NUM_FRAMES frames

    @property
    def frame_count(self) -> int:
        return len(self.gt_frames)


@dataclass(frozen=True)
class EvalSet:
    folder: Path  # the split folder that holds GT/ (and LR/)
    layout: str  # "patches" or "frames"
    clips: tuple[EvalClip, ...]

    @property
    def image_count(self) -> int:
        return sum(c.frame_count for c in self.clips)


def find_eval_set(root: Path) -> EvalSet:
    """The clips under `root` (its Val/ when it has one); every problem names the path."""
    kind = path_kind(root)
    if kind != "folder":
        what = "does not exist" if kind == "missing" else "is a file, expected a folder"
        raise DatasetError(root, f"evaluation set folder {what}")
    folder = root / "Val" if path_kind(root / "Val") == "folder" else root
    gt_root = require_folder(
        folder / "GT",
        "an evaluation set is a dataset root with Val/, or a folder with GT/ "
        "(GT/<clip>/<frame>.png, or GT/<name>.png with LR/<name>.png)",
    )
    lr_root = optional_folder(folder / "LR")
    clip_names = subfolder_names(gt_root)
    if clip_names:
        return EvalSet(folder, "frames", tuple(_frame_clips(gt_root, lr_root, clip_names)))
    names = image_names(gt_root)
    if not names:
        raise DatasetError(gt_root, "folder is empty: no clip folders and no images")
    if lr_root is None:
        raise DatasetError(
            folder / "LR",
            "missing folder (the patch layout's LR files: NUM_FRAMES frames stacked "
            "vertically, same names as GT/)",
        )
    require_same_names(gt_root, names, lr_root, require_images(lr_root, "LR files"))
    clips = [EvalClip(Path(n).stem, (gt_root / n,), stacked_lr=lr_root / n) for n in names]
    return EvalSet(folder, "patches", tuple(clips))


def _frame_clips(gt_root: Path, lr_root: Path | None, clip_names: list[str]) -> list[EvalClip]:
    if lr_root is not None:
        require_same_names(gt_root, clip_names, lr_root, subfolder_names(lr_root))
    clips = []
    for name in clip_names:
        frames = require_images(gt_root / name, f"clip {name}")
        lr = None
        if lr_root is not None:
            lr_dir = lr_root / name
            require_same_names(
                gt_root / name, frames, lr_dir, require_images(lr_dir, f"clip {name}")
            )
            lr = tuple(lr_dir / f for f in frames)
        clips.append(EvalClip(name, tuple(gt_root / name / f for f in frames), lr))
    return clips


def window_indices(index: int, count: int, num_frames: int) -> list[int]:
    """The NUM_FRAMES frame numbers centred on `index`, the clip's ends repeated."""
    half = num_frames // 2
    return [min(max(index + k, 0), count - 1) for k in range(-half, half + 1)]


def clip_images(
    clip: EvalClip, num_frames: int, scale: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(image name, LR window uint8 [T, h, w, 3], GT uint8 [H, W, 3]) for every scored frame."""
    if clip.stacked_lr is not None:
        gt = read_rgb(clip.gt_frames[0])
        _require_divisible(clip.gt_frames[0], gt, scale)
        lr = split_frames(
            clip.stacked_lr,
            read_rgb(clip.stacked_lr),
            (gt.shape[1], gt.shape[0]),
            num_frames,
            scale,
        )
        yield clip.name, lr, gt
        return
    lr_frames = _lr_frames(clip, scale)  # [N, h, w, 3]: every window of the clip needs them
    expected = (lr_frames.shape[1] * scale, lr_frames.shape[2] * scale)
    for i, gt_path in enumerate(clip.gt_frames):
        gt = read_rgb(gt_path)
        if gt.shape[:2] != expected:
            raise DatasetError(
                gt_path,
                f"frame is {gt.shape[1]}x{gt.shape[0]}, expected {expected[1]}x{expected[0]} "
                "like the clip's first frame",
            )
        window = lr_frames[window_indices(i, len(lr_frames), num_frames)]
        yield f"{clip.name}/{gt_path.stem}", window, gt


def _lr_frames(clip: EvalClip, scale: int) -> np.ndarray:
    """All LR frames of a frame-layout clip: read, or the bicubic downscale of the GT frames."""
    first = read_rgb(clip.gt_frames[0])
    _require_divisible(clip.gt_frames[0], first, scale)
    height, width = first.shape[0] // scale, first.shape[1] // scale
    frames = []
    for i, gt_path in enumerate(clip.gt_frames):
        if clip.lr_frames is not None:
            frame = read_rgb(clip.lr_frames[i])
            where = clip.lr_frames[i]
        else:
            gt = first if i == 0 else read_rgb(gt_path)
            if gt.shape != first.shape:
                raise DatasetError(
                    gt_path,
                    f"frame is {gt.shape[1]}x{gt.shape[0]}, but {clip.gt_frames[0].name} is "
                    f"{first.shape[1]}x{first.shape[0]}; all frames of a clip must have one size",
                )
            frame, where = bicubic_downscale(gt, scale), gt_path
        if frame.shape[:2] != (height, width):
            raise DatasetError(
                where,
                f"LR frame is {frame.shape[1]}x{frame.shape[0]}, expected {width}x{height} "
                f"(GT {first.shape[1]}x{first.shape[0]} at scale x{scale})",
            )
        frames.append(frame)
    return np.stack(frames)


def _require_divisible(path: Path, gt: np.ndarray, scale: int) -> None:
    height, width = gt.shape[:2]
    if height % scale or width % scale:
        raise DatasetError(path, f"GT is {width}x{height}, not divisible by the scale x{scale}")
