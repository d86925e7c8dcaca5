"""Which folders of a patch-layout dataset a run reads (PATCH_FOLDER, LR_FOLDER).

The predecessor's multi-format generator writes one training folder per patch format beside
`Patches/` (`Patches_Medium169`, `Patches_Large`, ...), each with `GT/`, `LR/` (5 frames) and
`LR_7frames/` (an earlier version: `LR_5frames/` and `LR_7frames/`). One run trains on one of
them: its patches share one size, which batching needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vsr_async.data.listing import path_kind, subfolder_names
from vsr_async.errors import ConfigError, DatasetError
from vsr_async.names import display_name
from vsr_async.settings.run_keys import ValLrMissing

_FRAMES_FOLDER = re.compile(r"LR_(\d+)frames")


@dataclass(frozen=True)
class PatchOptions:
    """The config keys of the patch layout (defaults = the predecessor's dataset as it was)."""

    patch_folder: str = "Patches"
    lr_folder: str = "auto"
    val_lr_missing: ValLrMissing = "patches"
    holdout_images: int = 100


@dataclass(frozen=True)
class PatchFolders:
    """The resolved folders: training GT and LR, and where validation files would be."""

    root: Path
    train_gt: Path
    train_lr: Path
    val_gt: Path
    val_lr: Path

    def show(self, path: Path) -> str:
        """`path` as the user finds it in the dataset ("Patches/LR/x.png")."""
        return display_name(path.relative_to(self.root))


def patch_folder_names(root: Path) -> list[str]:
    """Folders of `root` that hold training patches: a GT/ folder and an LR folder beside it."""
    found = []
    for name in subfolder_names(root):
        if name.lower() == "val":
            continue
        folder = root / name
        if path_kind(folder / "GT") == "folder" and lr_folder_names(folder):
            found.append(name)
    return found


def lr_folder_names(folder: Path) -> list[str]:
    """LR folders in a patch folder: `LR` and `LR_<n>frames`."""
    return [n for n in subfolder_names(folder) if n == "LR" or _FRAMES_FOLDER.fullmatch(n)]


def resolve_patch_folders(root: Path, options: PatchOptions, num_frames: int) -> PatchFolders:
    """The folders to read; a missing one is an error that lists what is there instead."""
    for key_name, value in (
        ("PATCH_FOLDER", options.patch_folder),
        ("LR_FOLDER", options.lr_folder),
    ):
        if value in ("", ".", "..") or Path(value).name != value:
            raise ConfigError(key_name, f"must be one folder name (no path), got {value!r}")
    patches = root / options.patch_folder
    kind = path_kind(patches)
    if kind != "folder":
        found = patch_folder_names(root)
        there = f"patch folders here: {', '.join(found)}" if found else "no patch folder here"
        what = "missing" if kind == "missing" else "not a folder"
        raise DatasetError(
            patches,
            f"{what} (PATCH_FOLDER={options.patch_folder!r}); {there} "
            "(each with GT/ and LR/ or LR_<n>frames/)",
        )
    gt = patches / "GT"
    if path_kind(gt) != "folder":
        raise DatasetError(gt, "missing folder (training GT patches)")
    lr_name = _lr_name(patches, options.lr_folder, num_frames)
    return PatchFolders(root, gt, patches / lr_name, root / "Val" / "GT", root / "Val" / lr_name)


def frames_in_name(lr_name: str) -> int | None:
    """5 for "LR_5frames"; None for "LR" (its count is NUM_FRAMES, checked from file sizes)."""
    match = _FRAMES_FOLDER.fullmatch(lr_name)
    return int(match.group(1)) if match else None


def _lr_name(patches: Path, lr_folder: str, num_frames: int) -> str:
    available = lr_folder_names(patches)
    if lr_folder == "auto":
        wanted = f"LR_{num_frames}frames"
        name = wanted if wanted in available else "LR" if "LR" in available else None
        if name is None:
            there = ", ".join(available) or "none"
            raise DatasetError(
                patches / "LR",
                f"missing folder (training LR, NUM_FRAMES={num_frames} frames stacked "
                f'vertically; LR_FOLDER="auto" looks for {wanted} or LR); LR folders here: '
                f"{there} — set NUM_FRAMES or LR_FOLDER to use one",
            )
    else:
        name = lr_folder
        if path_kind(patches / name) != "folder":
            there = ", ".join(available) or "none"
            raise DatasetError(
                patches / name,
                f"missing folder (LR_FOLDER={lr_folder!r}); LR folders here: {there}",
            )
    frames = frames_in_name(name)
    if frames is not None and frames != num_frames:
        raise DatasetError(
            patches / name,
            f"holds {frames}-frame LR stacks, but NUM_FRAMES={num_frames}; "
            f"set NUM_FRAMES={frames} or another LR_FOLDER",
        )
    return name
