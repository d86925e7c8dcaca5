"""Model output to the pixels an encoder takes, computed where the model ran.

Converting on the device (GPU, or the CPU's intra-op threads) keeps the writer thread light:
it only copies planes into FFmpeg frames, so it never competes with the model for long. For
H.264 the YUV 4:2:0 planes also halve the device-to-host copy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_FORMATS = ("rgb24", "yuv420p")

# ITU-R BT.601, limited ("TV") range: FFmpeg's default for RGB -> yuv420p, and what the stream
# is tagged with. Rows give Y, Cb, Cr from R, G, B in [0, 1], in 8-bit code values.
_BT601_LIMITED = torch.tensor(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ]
)
_OFFSET = (16.0, 128.0, 128.0)


def to_pixels(sr: Tensor, pixel_format: str) -> list[np.ndarray]:
    """[B, 3, H, W] in [0, 1] -> B host arrays: rgb24 HxWx3, or yuv420p (3H/2)xW (the Y plane,
    then Cb, then Cr, as `av.VideoFrame.from_ndarray(..., format="yuv420p")` reads them)."""
    rgb = sr.float().clamp(0.0, 1.0)
    if pixel_format == "rgb24":
        # as data.images.to_uint8 rounds, so a lossless output equals the model's frames exactly
        quantised = rgb.mul(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)
    elif pixel_format == "yuv420p":
        quantised = _yuv420p(rgb)
    else:
        raise ValueError(f"unknown pixel format {pixel_format!r}")
    return list(quantised.contiguous().cpu().numpy())  # the one device sync per batch


def _yuv420p(rgb: Tensor) -> Tensor:
    b, _, h, w = rgb.shape
    matrix = _BT601_LIMITED.to(rgb.device)
    luma = torch.einsum("c,bchw->bhw", matrix[0], rgb).add_(_OFFSET[0])  # [B, H, W]
    half = F.avg_pool2d(rgb, 2)  # [B, 3, H/2, W/2]: 2x2 chroma average
    chroma = torch.einsum("kc,bchw->bkhw", matrix[1:], half)  # [B, 2, H/2, W/2]
    chroma = chroma.add_(_OFFSET[1])
    planes = torch.cat([luma.flatten(1), chroma.flatten(1)], dim=1)  # [B, 3·H·W/2]
    return planes.round_().clamp_(0, 255).to(torch.uint8).view(b, h * 3 // 2, w)
