"""Checking a patch-layout dataset (the predecessor's) before training starts.

    <root>/Patches/GT/<name>.png   GT patch, W x H
    <root>/Patches/LR/<name>.png   NUM_FRAMES LR frames of W/SCALE x H/SCALE, stacked vertically
    <root>/Val/GT/<name>.png       validation, same pairing and stacking, any size per image
    <root>/Val/LR/<name>.png

Training files are checked by header only (fast); validation files are decoded fully, since a
validation run must never meet a broken file.
"""

from __future__ import annotations

from pathlib import Path

from vsr_async.data.images import read_rgb, read_size
from vsr_async.data.info import DatasetInfo, PatchPair, Size, lr_frame_size
from vsr_async.data.listing import (
    ProgressCounter,
    ScanProgress,
    require_folder,
    require_images,
    require_same_names,
)
from vsr_async.errors import DatasetError


def scan_patch_layout(
    root: Path,
    num_frames: int,
    scale: int,
    progress: ScanProgress | None = None,
    val_max_images: int = 0,
) -> DatasetInfo:
    """Validate every file of a patch-layout dataset; each problem names the file at fault."""
    folders = {
        part: require_folder(root / part, what)
        for part, what in (
            ("Patches/GT", "training GT patches"),
            ("Patches/LR", "training LR patches, NUM_FRAMES frames stacked vertically"),
            ("Val/GT", "validation GT images; validation never uses training files"),
            ("Val/LR", "validation LR images, NUM_FRAMES frames stacked vertically"),
        )
    }
    train_names = _paired_names(folders["Patches/GT"], folders["Patches/LR"], "training")
    val_names = _paired_names(folders["Val/GT"], folders["Val/LR"], "validation")
    if val_max_images:
        val_names = val_names[:val_max_images]

    counter = ProgressCounter(progress, 2 * (len(train_names) + len(val_names)))
    train = [
        _check_pair(folders["Patches/GT"], folders["Patches/LR"], n, num_frames, scale, counter)
        for n in train_names
    ]
    _require_one_size(train)
    val = [
        _check_val_pair(folders["Val/GT"], folders["Val/LR"], n, num_frames, scale, counter)
        for n in val_names
    ]
    return DatasetInfo(
        layout="patches",
        root=root,
        num_frames=num_frames,
        scale=scale,
        train_count=len(train),
        val_count=len(val),
        train_gt_size=train[0].gt_size,
        gt_sizes=(train[0].gt_size,),
        val_gt_sizes=tuple(sorted({p.gt_size for p in val})),
        val_names=tuple(p.name for p in val),
        lr_from_files=True,
        train_items=tuple(train),
        val_items=tuple(val),
    )


def expected_lr_size(gt_path: Path, gt_size: Size, num_frames: int, scale: int) -> Size:
    """(w, T·h) of the stacked LR file that belongs to a GT image; GT must divide by SCALE."""
    width, height = lr_frame_size(gt_path, gt_size, scale)
    return width, num_frames * height


def _paired_names(gt_dir: Path, lr_dir: Path, what: str) -> list[str]:
    gt_names = require_images(gt_dir, f"{what} GT")
    lr_names = require_images(lr_dir, f"{what} LR")
    require_same_names(gt_dir, gt_names, lr_dir, lr_names)
    return gt_names


def _check_pair(
    gt_dir: Path, lr_dir: Path, name: str, num_frames: int, scale: int, counter: ProgressCounter
) -> PatchPair:
    gt_path, lr_path = gt_dir / name, lr_dir / name
    gt_size = read_size(gt_path)
    lr_size = read_size(lr_path)
    counter.advance(2)
    _require_lr_size(gt_path, gt_size, lr_path, lr_size, num_frames, scale)
    return PatchPair(Path(name).stem, gt_path, lr_path, gt_size)


def _check_val_pair(
    gt_dir: Path, lr_dir: Path, name: str, num_frames: int, scale: int, counter: ProgressCounter
) -> PatchPair:
    gt_path, lr_path = gt_dir / name, lr_dir / name
    gt = read_rgb(gt_path)
    lr = read_rgb(lr_path)
    counter.advance(2)
    gt_size = (gt.shape[1], gt.shape[0])
    _require_lr_size(gt_path, gt_size, lr_path, (lr.shape[1], lr.shape[0]), num_frames, scale)
    return PatchPair(Path(name).stem, gt_path, lr_path, gt_size)


def _require_lr_size(
    gt_path: Path, gt_size: Size, lr_path: Path, lr_size: Size, num_frames: int, scale: int
) -> None:
    expected = expected_lr_size(gt_path, gt_size, num_frames, scale)
    if lr_size != expected:
        (gt_w, gt_h), (w, h) = gt_size, (expected[0], expected[1] // num_frames)
        raise DatasetError(
            lr_path,
            f"LR is {lr_size[0]}x{lr_size[1]}, expected {expected[0]}x{expected[1]} "
            f"(NUM_FRAMES={num_frames} frames of {w}x{h} stacked vertically, "
            f"for GT {gt_w}x{gt_h} at SCALE={scale})",
        )


def _require_one_size(pairs: list[PatchPair]) -> None:
    """Training patches are batched together, so they must all have one size."""
    first = pairs[0]
    for pair in pairs:
        if pair.gt_size != first.gt_size:
            raise DatasetError(
                pair.gt,
                f"GT is {pair.gt_size[0]}x{pair.gt_size[1]}, but {first.gt.name} is "
                f"{first.gt_size[0]}x{first.gt_size[1]}; training patches must all have one size",
            )
