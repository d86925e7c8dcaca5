"""Checking a patch-layout dataset (the predecessor's) before training starts.

    <root>/<PATCH_FOLDER>/GT/<name>.png    GT patch, W x H (PATCH_FOLDER: Patches, Patches_Large...)
    <root>/<PATCH_FOLDER>/<LR>/<name>.png  NUM_FRAMES LR frames of W/SCALE x H/SCALE, stacked
                                           vertically (LR: LR, LR_7frames, ...; see patch_folders)
    <root>/Val/GT/<name>.png               validation, same pairing and stacking, any size
    <root>/Val/<LR>/<name>.png             (optional: see val_sources)

A GT file without an LR partner is skipped and reported, as the predecessor did. Training files
are checked by header only (fast); validation files are decoded fully, since a validation run
must never meet a broken file.
"""

from __future__ import annotations

from pathlib import Path

from vsr_async.data.images import read_rgb, read_size
from vsr_async.data.info import DatasetInfo, PatchPair, Size, SkippedFile, lr_frame_size
from vsr_async.data.listing import ProgressCounter, ScanProgress, image_names, require_images
from vsr_async.data.patch_folders import PatchOptions, resolve_patch_folders
from vsr_async.data.val_sources import paired_names, plan_validation
from vsr_async.errors import DatasetError


def scan_patch_layout(
    root: Path,
    num_frames: int,
    scale: int,
    progress: ScanProgress | None = None,
    val_max_images: int = 0,
    options: PatchOptions | None = None,
) -> DatasetInfo:
    """Validate every file of a patch-layout dataset; each problem names the file at fault."""
    options = options or PatchOptions()
    folders = resolve_patch_folders(root, options, num_frames)
    require_images(folders.train_gt, "training GT")
    lr_names = set(image_names(folders.train_lr))
    skipped: list[SkippedFile] = []
    train_names = paired_names(folders, lr_names, skipped)
    if not train_names:
        raise DatasetError(
            folders.train_gt,
            f"none of its {len(skipped)} GT patches has an LR partner in "
            f"{folders.show(folders.train_lr)} (same file name, NUM_FRAMES frames stacked)",
        )
    plan = plan_validation(folders, train_names, lr_names, options, skipped)
    val_pairs = plan.pairs[:val_max_images] if val_max_images else plan.pairs

    files = 2 * len(plan.train_names) + sum(1 + (lr is not None) for _, _, lr in val_pairs)
    counter = ProgressCounter(progress, files)
    train = [
        _check_pair(folders.train_gt, folders.train_lr, n, num_frames, scale, counter)
        for n in plan.train_names
    ]
    _require_one_size(train)
    val = [_check_val_pair(n, gt, lr, num_frames, scale, counter) for n, gt, lr in val_pairs]
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
        skipped=tuple(skipped),
        notices=tuple(plan.notices),
    )


def expected_lr_size(gt_path: Path, gt_size: Size, num_frames: int, scale: int) -> Size:
    """(w, T·h) of the stacked LR file that belongs to a GT image; GT must divide by SCALE."""
    width, height = lr_frame_size(gt_path, gt_size, scale)
    return width, num_frames * height


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
    name: str,
    gt_path: Path,
    lr_path: Path | None,
    num_frames: int,
    scale: int,
    counter: ProgressCounter,
) -> PatchPair:
    """A validation pair, decoded; without an LR file (bicubic), GT must divide by SCALE."""
    gt = read_rgb(gt_path)
    counter.advance()
    gt_size = (gt.shape[1], gt.shape[0])
    if lr_path is None:
        lr_frame_size(gt_path, gt_size, scale)
    else:
        lr = read_rgb(lr_path)
        counter.advance()
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
