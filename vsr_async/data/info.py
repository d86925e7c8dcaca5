"""What a dataset scan found: plain, frozen, picklable records (no pixels).

The training datasets are built from these records, so the files are listed and checked once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vsr_async.errors import DatasetError
from vsr_async.names import display_name, undecodable_names

LayoutName = Literal["patches", "frames"]
Size = tuple[int, int]
"""(W, H) in pixels, the order image headers use."""


@dataclass(frozen=True)
class PatchPair:
    """One patch-layout sample: a GT image and its LR file (T frames stacked vertically).

    `lr` is None for a validation image whose LR is the bicubic downscale of its GT
    (VAL_LR_MISSING="bicubic"); training pairs always have an LR file.
    """

    name: str
    gt: Path
    lr: Path | None
    gt_size: Size


@dataclass(frozen=True)
class SkippedFile:
    """A dataset file the scan left out, and why (shown by `check`, logged, counted)."""

    path: Path
    reason: str

    def describe(self, root: Path) -> str:
        shown = self.path.relative_to(root) if self.path.is_relative_to(root) else self.path
        return f"{display_name(shown)}: {self.reason}"


@dataclass(frozen=True)
class Clip:
    """Consecutive frames of one frame-layout clip (all of them, or the validation window).

    `lr_frames` is None when LR is the bicubic downscale of the GT frames, made on the fly.
    """

    name: str
    gt_frames: tuple[Path, ...]
    lr_frames: tuple[Path, ...] | None
    gt_size: Size

    def windows(self, num_frames: int) -> int:
        """Training samples this clip gives: every run of `num_frames` consecutive frames."""
        return len(self.gt_frames) - num_frames + 1


@dataclass(frozen=True)
class DatasetInfo:
    """A validated dataset: its layout, counts and sizes, and the records to load it from."""

    layout: LayoutName
    root: Path
    num_frames: int
    scale: int
    train_count: int
    """Training samples in one epoch: patches, or windows of NUM_FRAMES frames."""
    val_count: int
    train_gt_size: Size
    """(W, H) of one training GT sample as the model sees it (patch size, or the crop)."""
    gt_sizes: tuple[Size, ...]
    """Distinct (W, H) of the training GT files or frames."""
    val_gt_sizes: tuple[Size, ...]
    """Distinct (W, H) of the validation GT images (each is validated at full size)."""
    val_names: tuple[str, ...]
    lr_from_files: bool
    """False when training LR is made on the fly by bicubic downscaling (frame layout, no LR/)."""
    train_items: tuple[PatchPair, ...] | tuple[Clip, ...] = field(repr=False)
    val_items: tuple[PatchPair, ...] | tuple[Clip, ...] = field(repr=False)
    skipped: tuple[SkippedFile, ...] = ()
    """Files left out at the scan (a GT without an LR partner); never a stop while any is left."""
    notices: tuple[str, ...] = ()
    """Warnings about how the dataset is used (validation fallbacks, a hold-out)."""

    @property
    def train_lr_size(self) -> Size:
        """(w, h) of one LR frame of a training sample."""
        return (self.train_gt_size[0] // self.scale, self.train_gt_size[1] // self.scale)

    def describe(self) -> str:
        """A few lines for `python -m vsr_async check`, every skipped file named, with why."""
        gt_w, gt_h = self.train_gt_size
        lr_w, lr_h = self.train_lr_size
        sizes = ", ".join(f"{w}x{h}" for w, h in self.gt_sizes[:4])
        if len(self.gt_sizes) > 4:
            sizes += f", … ({len(self.gt_sizes)} sizes)"
        lr_source = "LR files" if self.lr_from_files else "LR = bicubic downscale of GT"
        val_sizes = ", ".join(f"{w}x{h}" for w, h in self.val_gt_sizes[:4])
        return "\n".join(
            [
                f"dataset {display_name(self.root)} ({self.layout} layout, {lr_source})",
                f"  training:   {self.train_count} samples from GT {sizes}; "
                f"sample GT {gt_w}x{gt_h}, LR {self.num_frames} x {lr_w}x{lr_h} "
                f"(x{self.scale})",
                f"  validation: {self.val_count} images, GT {val_sizes}",
                *(f"  warning: {notice}" for notice in self.notices),
                *self._skipped_note(),
                *self._undecodable_note(),
            ]
        )

    def skipped_lines(self, limit: int | None = None) -> list[str]:
        """One line per skipped file ("Patches/GT/x.png: no LR partner ..."), the first `limit`."""
        shown = self.skipped if limit is None else self.skipped[:limit]
        lines = [s.describe(self.root) for s in shown]
        if len(shown) < len(self.skipped):
            lines.append(f"… and {len(self.skipped) - len(shown)} more")
        return lines

    def _skipped_note(self) -> list[str]:
        if not self.skipped:
            return []
        head = f"  skipped: {len(self.skipped)} file(s), not used for training or validation:"
        return [head, *(f"    {line}" for line in self.skipped_lines())]

    def file_paths(self) -> list[Path]:
        """Every file the run reads (training and validation, GT and LR)."""
        paths: list[Path] = []
        for item in (*self.train_items, *self.val_items):
            if isinstance(item, PatchPair):
                paths += [item.gt] if item.lr is None else [item.gt, item.lr]
            else:
                paths += [*item.gt_frames, *(item.lr_frames or ())]
        return paths

    def _undecodable_note(self) -> list[str]:
        """A warning naming files whose names are not valid UTF-8: they are used, and shown
        escaped (`\\xff`) in `check`, the panel and Statistik files."""
        names = undecodable_names(p.relative_to(self.root) for p in self.file_paths())
        if not names:
            return []
        shown = ", ".join(names[:5]) + (f", … ({len(names)} files)" if len(names) > 5 else "")
        return [
            f"  warning: {len(names)} file name(s) not valid UTF-8, used and shown escaped: {shown}"
        ]


def lr_frame_size(gt_path: Path, gt_size: Size, scale: int) -> Size:
    """(w, h) of the LR frame that belongs to a GT frame; a GT that SCALE does not divide is bad."""
    width, height = gt_size
    if width % scale or height % scale:
        raise DatasetError(
            gt_path, f"GT is {width}x{height}, not divisible by SCALE={scale} in both directions"
        )
    return width // scale, height // scale
