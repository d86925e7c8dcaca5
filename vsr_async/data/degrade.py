"""The degradation HR → LR: antialiased bicubic downscaling, rounded to 8 bits.

The demo builder and the frame-folder layout without an LR folder both use this one function, so
a model trained on either sees the same LR statistics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """uint8 HxWx3 (or NxHxWx3) → uint8 (H/scale)x(W/scale)x3, like MATLAB's imresize.

    H and W must be multiples of `scale`; callers check that on the data and name the file.
    """
    height, width = img.shape[-3], img.shape[-2]
    if height % scale or width % scale:
        raise ValueError(f"image {width}x{height} is not divisible by scale {scale}")
    pixels = np.ascontiguousarray(img)
    if not pixels.flags.writeable:  # torch warns on read-only numpy memory
        pixels = pixels.copy()
    batch = torch.from_numpy(pixels.reshape(-1, height, width, img.shape[-1]))
    x = batch.permute(0, 3, 1, 2).float()  # [N, 3, H, W], 0..255
    y = F.interpolate(
        x,
        size=(height // scale, width // scale),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    out = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return out.reshape(*img.shape[:-3], height // scale, width // scale, img.shape[-1])
