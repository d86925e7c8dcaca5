"""Which layout a dataset folder uses, and the one entry point that checks a dataset.

Everything a user can get wrong in a dataset is found here, before the first step, as a
`DatasetError` that names the file or folder; training itself only meets files that broke later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from vsr_async.data.info import DatasetInfo, LayoutName
from vsr_async.data.listing import ScanProgress, path_kind
from vsr_async.data.patch_folders import PatchOptions, patch_folder_names
from vsr_async.data.scan_frames import scan_frame_layout
from vsr_async.data.scan_patches import scan_patch_layout
from vsr_async.errors import ConfigError, DatasetError
from vsr_async.settings import Config

__all__ = ["DatasetInfo", "detect_layout", "scan_configured", "scan_dataset"]


def detect_layout(root: Path | str, patch_folder: str = "Patches") -> LayoutName:
    """The layout of `root`: "patches" if it has PATCH_FOLDER or another patch folder
    (Patches_Large/GT, ...), "frames" if it has GT/; else an error."""
    root = Path(root)
    kind = path_kind(root)
    if kind != "folder":
        what = "does not exist" if kind == "missing" else "is a file, expected a folder"
        raise DatasetError(root, f"dataset folder {what}")
    has_patches = path_kind(root / patch_folder) == "folder" or bool(patch_folder_names(root))
    has_frames = path_kind(root / "GT") == "folder"
    if has_patches and has_frames:
        raise DatasetError(
            root,
            'holds both Patches/ and GT/; set DATASET_LAYOUT to "patches" or "frames"',
        )
    if has_patches:
        return "patches"
    if has_frames:
        return "frames"
    raise DatasetError(
        root,
        "is not a dataset: expected Patches/GT and Patches/LR (patch layout) "
        "or GT/<clip>/<frame>.png (frame-folder layout), each with Val/ beside it",
    )


def scan_dataset(
    root: Path | str,
    layout: LayoutName | Literal["auto"],
    num_frames: int,
    scale: int,
    gt_patch_size: int,
    progress: ScanProgress | None = None,
    *,
    val_max_images: int = 0,
    patch_options: PatchOptions | None = None,
) -> DatasetInfo:
    """Check a whole dataset (headers of training files, full decode of validation files).

    `progress(done, total)` is called while files are checked. `val_max_images` > 0 checks and
    keeps only the first that many validation images (VAL_MAX_IMAGES). `patch_options`: the
    patch layout's folders and validation fallbacks (default: the predecessor's dataset).
    """
    root = Path(root)
    if path_kind(root) == "missing":
        raise DatasetError(root, "dataset folder does not exist")
    options = patch_options or PatchOptions()
    if layout == "auto":
        layout = detect_layout(root, options.patch_folder)
    if layout == "patches":
        return scan_patch_layout(root, num_frames, scale, progress, val_max_images, options)
    if layout == "frames":
        return scan_frame_layout(root, num_frames, scale, gt_patch_size, progress, val_max_images)
    raise ValueError(f"unknown dataset layout {layout!r}")


def scan_configured(config: Config, progress: ScanProgress | None = None) -> DatasetInfo:
    """`scan_dataset` with a run's keys (blocking: headers of every file)."""
    if not config.DATASET_ROOT:
        raise ConfigError("DATASET_ROOT", "must name the dataset folder")
    return scan_dataset(
        Path(config.DATASET_ROOT).expanduser(),
        config.DATASET_LAYOUT,
        num_frames=config.NUM_FRAMES,
        scale=config.SCALE,
        gt_patch_size=config.GT_PATCH_SIZE,
        progress=progress,
        patch_options=PatchOptions(
            patch_folder=config.PATCH_FOLDER,
            lr_folder=config.LR_FOLDER,
            val_lr_missing=config.VAL_LR_MISSING,
            holdout_images=config.VAL_HOLDOUT_IMAGES,
        ),
    )
