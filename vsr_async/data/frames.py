"""Frame-folder datasets: windows of NUM_FRAMES consecutive frames, GT = the centre frame.

Training takes a random GT crop of GT_PATCH_SIZE (LR crop aligned at offset/SCALE); validation
takes the centre window of each clip at full size. Without LR files, LR is bicubic_downscale of
the GT frames, made here so the model sees exactly the degradation the demo data uses.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vsr_async.data.augment import augment
from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.images import read_rgb, to_tensor
from vsr_async.data.info import Clip, Size
from vsr_async.data.skipping import SkippingDataset
from vsr_async.data.validation_set import ValidationSet
from vsr_async.errors import DatasetError

# LR pixels of context around a crop when downscaling on the fly. The antialiased bicubic kernel
# reaches 2 LR pixels; with 3 the crop's LR equals that of the whole frame, bit for bit.
_CONTEXT_LR_PX = 3


class FrameTrainDataset(SkippingDataset):
    """Training windows of all clips, indexed by (item_index, sample_seed)."""

    def __init__(
        self, clips: Sequence[Clip], num_frames: int, scale: int, gt_patch_size: int
    ) -> None:
        self.clips = tuple(clips)
        self.num_frames = num_frames
        self.scale = scale
        self.gt_patch_size = gt_patch_size
        self._first_window = [0, *itertools.accumulate(c.windows(num_frames) for c in self.clips)]
        super().__init__(self._first_window[-1])

    def window(self, index: int) -> tuple[Clip, int]:
        """The clip of training item `index` and the number of its window's first frame."""
        c = bisect.bisect_right(self._first_window, index) - 1
        return self.clips[c], index - self._first_window[c]

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        clip, start = self.window(index)
        s, p = self.scale, self.gt_patch_size
        width, height = clip.gt_size
        x0 = s * int(rng.integers(0, (width - p) // s + 1))  # aligned to the LR pixel grid
        y0 = s * int(rng.integers(0, (height - p) // s + 1))
        frames = slice(start, start + self.num_frames)
        centre = clip.gt_frames[start + self.num_frames // 2]
        if clip.lr_frames is not None:
            lr_crop = np.s_[y0 // s : (y0 + p) // s, x0 // s : (x0 + p) // s]
            lr_size = (width // s, height // s)
            lr = np.stack([self._frame(f, lr_size)[lr_crop] for f in clip.lr_frames[frames]])
            gt = self._frame(centre, clip.gt_size)[y0 : y0 + p, x0 : x0 + p]
        else:
            lr, gt = self._degrade_crop(clip.gt_frames[frames], clip.gt_size, x0, y0)
        return augment(to_tensor(lr), to_tensor(gt), rng)

    def _degrade_crop(
        self, paths: tuple[Path, ...], gt_size: Size, x0: int, y0: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """LR [T, h, w, 3] and GT [H, W, 3] of one crop, LR made by bicubic downscaling.

        Only the crop plus a little context is downscaled, not the whole frame.
        """
        s, p, pad = self.scale, self.gt_patch_size, _CONTEXT_LR_PX * self.scale
        left, top = max(x0 - pad, 0), max(y0 - pad, 0)
        right, bottom = min(x0 + p + pad, gt_size[0]), min(y0 + p + pad, gt_size[1])
        region = np.stack([self._frame(f, gt_size)[top:bottom, left:right] for f in paths])
        lr = bicubic_downscale(region, s)  # [T, (bottom-top)/s, (right-left)/s, 3]
        lx, ly = (x0 - left) // s, (y0 - top) // s
        lr = lr[:, ly : ly + p // s, lx : lx + p // s]
        gt = region[len(paths) // 2, y0 - top : y0 - top + p, x0 - left : x0 - left + p]
        return lr, gt

    def _frame(self, path: Path, size: Size) -> np.ndarray:
        frame = self.read(path)
        if frame.shape[:2] != (size[1], size[0]):
            raise DatasetError(
                path,
                f"frame is {frame.shape[1]}x{frame.shape[0]}, expected {size[0]}x{size[1]} "
                "(changed since the scan)",
            )
        return frame


class FrameValDataset(ValidationSet):
    """Validation windows (one per clip), decoded now; a broken file is an error naming it."""

    def __init__(self, windows: Sequence[Clip], num_frames: int, scale: int) -> None:
        items = []
        for window in windows:
            centre = num_frames // 2
            if window.lr_frames is not None:
                lr = np.stack([read_rgb(p) for p in window.lr_frames])
                gt = read_rgb(window.gt_frames[centre])
            else:
                gts = np.stack([read_rgb(p) for p in window.gt_frames])
                lr, gt = bicubic_downscale(gts, scale), gts[centre]
            items.append((window.name, lr, gt))
        super().__init__(items)
