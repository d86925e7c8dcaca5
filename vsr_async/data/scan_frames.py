"""Checking a frame-folder (REDS-like) dataset before training starts.

    <root>/GT/<clip>/<frame>.png       training clips, frames in natural name order
    <root>/LR/<clip>/<frame>.png       optional; otherwise LR = bicubic_downscale(GT), on the fly
    <root>/Val/GT/<clip>/<frame>.png   validation clips (the centre window of each is used)
    <root>/Val/LR/<clip>/<frame>.png   optional, as LR/

Training frames are checked by header only (fast); the validation windows are decoded fully.
"""

from __future__ import annotations

from pathlib import Path

from vsr_async.data.images import read_rgb, read_size
from vsr_async.data.info import Clip, DatasetInfo, Size, lr_frame_size
from vsr_async.data.listing import (
    ProgressCounter,
    ScanProgress,
    image_names,
    optional_folder,
    require_folder,
    require_images,
    require_same_names,
    subfolder_names,
)
from vsr_async.errors import DatasetError


def scan_frame_layout(
    root: Path,
    num_frames: int,
    scale: int,
    gt_patch_size: int,
    progress: ScanProgress | None = None,
    val_max_images: int = 0,
) -> DatasetInfo:
    """Validate every clip of a frame-folder dataset; each problem names the file or folder."""
    gt_root = require_folder(root / "GT", "training clips, GT/<clip>/<frame>.png")
    lr_root = optional_folder(root / "LR")
    val_gt_root = require_folder(
        root / "Val" / "GT",
        "validation clips, Val/GT/<clip>/<frame>.png; validation never uses training files",
    )
    val_lr_root = optional_folder(root / "Val" / "LR")
    train_listing = _list_clips(gt_root, lr_root, num_frames)
    val_listing = [
        _centre_window(c, num_frames) for c in _list_clips(val_gt_root, val_lr_root, num_frames)
    ]
    if val_max_images:
        val_listing = val_listing[:val_max_images]

    total = sum(len(c.gt_frames) + len(c.lr_frames or ()) for c in train_listing)
    total += sum(num_frames + (1 if c.lr_frames else 0) for c in val_listing)
    counter = ProgressCounter(progress, total)
    train = [_check_train_clip(c, scale, gt_patch_size, counter) for c in train_listing]
    val = [_check_val_clip(c, num_frames, scale, counter) for c in val_listing]
    return DatasetInfo(
        layout="frames",
        root=root,
        num_frames=num_frames,
        scale=scale,
        train_count=sum(c.windows(num_frames) for c in train),
        val_count=len(val),
        train_gt_size=(gt_patch_size, gt_patch_size),
        gt_sizes=tuple(sorted({c.gt_size for c in train})),
        val_gt_sizes=tuple(sorted({c.gt_size for c in val})),
        val_names=tuple(c.name for c in val),
        lr_from_files=lr_root is not None,
        train_items=tuple(train),
        val_items=tuple(val),
    )


def _list_clips(gt_root: Path, lr_root: Path | None, num_frames: int) -> list[Clip]:
    """Clips with their frame paths (size not read yet: gt_size is (0, 0))."""
    clip_names = subfolder_names(gt_root)
    if not clip_names:
        if image_names(gt_root):
            raise DatasetError(
                gt_root,
                "holds images directly; the frame layout wants one folder per clip "
                "(GT/<clip>/<frame>.png)",
            )
        raise DatasetError(gt_root, "folder is empty: no clip folders (GT/<clip>/<frame>.png)")
    if lr_root is not None:
        require_same_names(gt_root, clip_names, lr_root, subfolder_names(lr_root))
    clips = []
    for name in clip_names:
        gt_dir = gt_root / name
        frames = require_images(gt_dir, f"clip {name}")
        if len(frames) < num_frames:
            raise DatasetError(
                gt_dir, f"clip has {len(frames)} frames, fewer than NUM_FRAMES={num_frames}"
            )
        lr_frames = None
        if lr_root is not None:
            lr_dir = lr_root / name
            require_same_names(gt_dir, frames, lr_dir, require_images(lr_dir, f"clip {name}"))
            lr_frames = tuple(lr_dir / f for f in frames)
        clips.append(Clip(name, tuple(gt_dir / f for f in frames), lr_frames, (0, 0)))
    return clips


def _centre_window(clip: Clip, num_frames: int) -> Clip:
    """The NUM_FRAMES frames around the clip's middle: validation restores the middle frame."""
    start = (len(clip.gt_frames) - num_frames) // 2
    window = slice(start, start + num_frames)
    centre = clip.gt_frames[start + num_frames // 2]
    lr = clip.lr_frames[window] if clip.lr_frames is not None else None
    return Clip(f"{clip.name}/{centre.stem}", clip.gt_frames[window], lr, clip.gt_size)


def _check_train_clip(clip: Clip, scale: int, gt_patch_size: int, counter: ProgressCounter) -> Clip:
    gt_size = _one_size(clip.gt_frames, [read_size(p) for p in clip.gt_frames])
    counter.advance(len(clip.gt_frames))
    lr_size = lr_frame_size(clip.gt_frames[0], gt_size, scale)
    if min(gt_size) < gt_patch_size:
        raise DatasetError(
            clip.gt_frames[0].parent,
            f"frames are {gt_size[0]}x{gt_size[1]}, smaller than GT_PATCH_SIZE={gt_patch_size}",
        )
    if clip.lr_frames is not None:
        for path in clip.lr_frames:
            _require_lr_frame_size(path, read_size(path), lr_size, gt_size, scale)
        counter.advance(len(clip.lr_frames))
    return Clip(clip.name, clip.gt_frames, clip.lr_frames, gt_size)


def _check_val_clip(clip: Clip, num_frames: int, scale: int, counter: ProgressCounter) -> Clip:
    """Decode what validation will decode: the LR window and the centre GT, or the GT window."""
    if clip.lr_frames is None:
        frames = [read_rgb(p) for p in clip.gt_frames]
        gt_size = _one_size(clip.gt_frames, [(f.shape[1], f.shape[0]) for f in frames])
        lr_frame_size(clip.gt_frames[0], gt_size, scale)
        counter.advance(num_frames)
        return Clip(clip.name, clip.gt_frames, None, gt_size)
    centre = clip.gt_frames[num_frames // 2]
    gt = read_rgb(centre)
    gt_size = (gt.shape[1], gt.shape[0])
    lr_size = lr_frame_size(centre, gt_size, scale)
    for path in clip.lr_frames:
        lr = read_rgb(path)
        _require_lr_frame_size(path, (lr.shape[1], lr.shape[0]), lr_size, gt_size, scale)
    counter.advance(num_frames + 1)
    return Clip(clip.name, clip.gt_frames, clip.lr_frames, gt_size)


def _one_size(paths: tuple[Path, ...], sizes: list[Size]) -> Size:
    """The frames of a clip share one size; the first frame that differs is named."""
    for path, size in zip(paths, sizes, strict=True):
        if size != sizes[0]:
            raise DatasetError(
                path,
                f"frame is {size[0]}x{size[1]}, but {paths[0].name} is "
                f"{sizes[0][0]}x{sizes[0][1]}; all frames of a clip must have one size",
            )
    return sizes[0]


def _require_lr_frame_size(
    path: Path, size: Size, expected: Size, gt_size: Size, scale: int
) -> None:
    if size != expected:
        raise DatasetError(
            path,
            f"LR frame is {size[0]}x{size[1]}, expected {expected[0]}x{expected[1]} "
            f"(GT {gt_size[0]}x{gt_size[1]} at SCALE={scale})",
        )
