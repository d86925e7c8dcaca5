"""Tiled inference: a clip that does not fit the device is restored in overlapping spatial tiles.

Every frame of the clip is cropped alike; each tile's output keeps only its core (the overlap
is cut off) and the cores are stitched. With an overlap of at least the model's receptive
radius the result equals the untiled output up to floating-point rounding. Pure compute, for
the GPU thread; no I/O.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vsr_async.errors import DeviceMemoryError

log = logging.getLogger(__name__)

MAX_OVERLAP_LR = 32
"""Largest tile overlap in LR pixels. A deep recurrent model's receptive radius (hundreds of
pixels for 32 blocks and 5 frames) would make every tile nearly the whole frame; beyond this
overlap, the seams' error is tiny and tiles stay small enough to help."""

MIN_TILE_CORE_LR = 8
"""Tiles are not made smaller than this (LR pixels of core per side): at that size the overlap
is most of the work and a clip that still does not fit will not fit in any tiling."""


def receptive_radius(model: nn.Module) -> int:
    """LR pixels around an output pixel that influence it (VSRNet; else a conservative guess).

    VSRNet: the centre state of the forward branch has seen the backward branch over all T
    frames and its own centre+1 steps; each step has n_blocks/2 ResBlocks of two 3x3 convs,
    plus the 3x3 feature extraction and the 3x3 upsampling conv (the bicubic base needs 2).
    """
    n_blocks = getattr(model, "n_blocks", None)
    num_frames = getattr(model, "num_frames", None)
    if n_blocks is None or num_frames is None:
        return MAX_OVERLAP_LR
    half = n_blocks // 2
    steps = num_frames + num_frames // 2 + 1
    return max(steps * 2 * half + 2, 2)


def free_device_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error (the failed tensors are gone)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def tile_spans(size: int, tiles: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Per tile along one axis: (core start, core end, padded start, padded end), LR pixels."""
    core = math.ceil(size / tiles)
    spans = []
    for start in range(0, size, core):
        end = min(start + core, size)
        spans.append((start, end, max(start - overlap, 0), min(end + overlap, size)))
    return spans


def tiled_forward(model: nn.Module, lr: Tensor, *, scale: int, tiles: int, overlap: int) -> Tensor:
    """The model's output for `lr` [B, T, 3, h, w], computed in `tiles` x `tiles` tiles.

    Each tile is the core plus `overlap` LR pixels on every side (less at the frame's border,
    which the untiled model sees as the same zero padding); only the core of its output is kept.
    """
    b, _, _, h, w = lr.shape
    out: Tensor | None = None
    for y0, y1, py0, py1 in tile_spans(h, tiles, overlap):
        for x0, x1, px0, px1 in tile_spans(w, tiles, overlap):
            sr = model(lr[..., py0:py1, px0:px1])  # [B, 3, s·(py1−py0), s·(px1−px0)]
            if out is None:
                out = sr.new_empty(b, sr.shape[1], h * scale, w * scale)  # [B, 3, H, W]
            core = sr[
                ...,
                (y0 - py0) * scale : (y1 - py0) * scale,
                (x0 - px0) * scale : (x1 - px0) * scale,
            ]
            out[..., y0 * scale : y1 * scale, x0 * scale : x1 * scale] = core
            del sr, core  # the next tile may need this memory
    assert out is not None
    return out


@dataclass
class TiledInference:
    """Runs the model whole, or in tiles after an out-of-memory error, and remembers the tiling.

    Once a clip needed tiles, later clips start with the same tiling (each further OOM doubles
    the tiles per side), so a validation pays the failed attempt once, not per clip.
    """

    tiles_per_side: int = 1  # 1: untiled
    oom_retries: int = 0
    overlap_lr: int | None = None  # set at the first tiling
    exact: bool | None = None  # overlap >= receptive radius: same result as untiled
    purpose: str = "validation"  # what the messages call the work ("validation", "upscale")

    def __call__(self, model: nn.Module, lr: Tensor, *, scale: int, name: str = "") -> Tensor:
        while True:
            try:
                if self.tiles_per_side == 1:
                    return model(lr)
                return tiled_forward(
                    model, lr, scale=scale, tiles=self.tiles_per_side, overlap=self._overlap(model)
                )
            except torch.OutOfMemoryError as exc:
                message = str(exc).splitlines()[0] if str(exc) else "out of memory"
            # Outside the except block: the failed attempt's tensors are unreferenced now.
            free_device_memory(lr.device)
            self._more_tiles(lr, name, message)

    def _overlap(self, model: nn.Module) -> int:
        if self.overlap_lr is None:
            radius = receptive_radius(model)
            self.overlap_lr = min(radius, MAX_OVERLAP_LR)
            self.exact = radius <= MAX_OVERLAP_LR
        return self.overlap_lr

    def _more_tiles(self, lr: Tensor, name: str, message: str) -> None:
        h, w = lr.shape[-2:]
        tiles = self.tiles_per_side * 2
        if max(math.ceil(h / tiles), math.ceil(w / tiles)) < MIN_TILE_CORE_LR:
            raise DeviceMemoryError(
                f"{self.purpose} clip {name or '?'} ({w}x{h} LR) is out of device memory even in "
                f"{self.tiles_per_side}x{self.tiles_per_side} tiles ({message})"
            )
        self.oom_retries += 1
        self.tiles_per_side = tiles
        log.warning(
            "%s out of memory on %s (%dx%d LR): retrying in %dx%d tiles (%s)",
            self.purpose,
            name or "a clip",
            w,
            h,
            tiles,
            tiles,
            message,
        )

    def to_snapshot(self) -> dict[str, Any]:
        """The snapshot's `runtime.validation_tiling`."""
        return {
            "tiles_per_side": self.tiles_per_side,
            "oom_retries": self.oom_retries,
            "overlap_lr_px": self.overlap_lr,
            "exact": self.exact,
        }
