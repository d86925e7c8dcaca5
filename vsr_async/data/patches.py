"""Patch-layout datasets: a GT patch and its LR file of NUM_FRAMES frames stacked vertically.

Sizes come from the files (checked by the scan); no cropping, only augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vsr_async.data.augment import augment
from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.images import read_rgb, to_tensor
from vsr_async.data.info import PatchPair
from vsr_async.data.skipping import SkippingDataset
from vsr_async.data.validation_set import ValidationSet
from vsr_async.errors import DatasetError


class PatchTrainDataset(SkippingDataset):
    """Training samples of the patch layout, indexed by (item_index, sample_seed)."""

    def __init__(self, pairs: Sequence[PatchPair], num_frames: int, scale: int) -> None:
        super().__init__(len(pairs))
        self.pairs = tuple(pairs)
        self.num_frames = num_frames
        self.scale = scale

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        assert pair.lr is not None, "training pairs always have an LR file (scan_patches)"
        gt = self.read(pair.gt)  # [H, W, 3]
        lr = split_frames(pair.lr, self.read(pair.lr), pair.gt_size, self.num_frames, self.scale)
        if gt.shape[:2] != (pair.gt_size[1], pair.gt_size[0]):
            raise DatasetError(
                pair.gt, f"GT is {gt.shape[1]}x{gt.shape[0]}, changed since the scan"
            )
        return augment(to_tensor(lr), to_tensor(gt), rng)


class PatchValDataset(ValidationSet):
    """Validation images of the patch layout, decoded now; a broken file is an error naming it.

    A pair without an LR file (VAL_LR_MISSING="bicubic") gets NUM_FRAMES copies of the bicubic
    downscale of its GT: the one degradation that needs no neighbouring frames.
    """

    def __init__(self, pairs: Sequence[PatchPair], num_frames: int, scale: int) -> None:
        items = []
        for pair in pairs:
            gt = read_rgb(pair.gt)
            if pair.lr is None:
                lr = np.repeat(bicubic_downscale(gt, scale)[None], num_frames, axis=0)
            else:
                gt_size = (gt.shape[1], gt.shape[0])
                lr = split_frames(pair.lr, read_rgb(pair.lr), gt_size, num_frames, scale)
            items.append((pair.name, lr, gt))
        super().__init__(items)


def split_frames(
    path: Path, stacked: np.ndarray, gt_size: tuple[int, int], num_frames: int, scale: int
) -> np.ndarray:
    """LR file [T·h, w, 3] → frames [T, h, w, 3]; a size that does not fit GT is an error."""
    h, w = gt_size[1] // scale, gt_size[0] // scale
    if stacked.shape[:2] != (num_frames * h, w):
        raise DatasetError(
            path,
            f"LR is {stacked.shape[1]}x{stacked.shape[0]}, expected {w}x{num_frames * h} "
            f"(NUM_FRAMES={num_frames} frames of {w}x{h} stacked vertically)",
        )
    return stacked.reshape(num_frames, h, w, 3)
