"""HR → LR for `prepare`: optional Gaussian blur, antialiased bicubic downscaling (the same
`bicubic_downscale` the demo data and the frame layout's on-the-fly LR use), then optional
Gaussian noise and JPEG or H.264 recompression at a chosen quality — the classic order of
real-world degradation models (blur, downsample, noise, compression).

Deterministic: the noise comes from the generator each clip is given. H.264 runs over a clip's
LR frames in order, as a real encoder sees a shot (motion prediction across frames).
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from vsr_async.data.degrade import bicubic_downscale


@dataclass(frozen=True)
class Degradation:
    scale: int
    blur: float = 0.0
    """σ of a Gaussian blur in HR pixels, before downscaling (0: none)."""
    noise: float = 0.0
    """σ of Gaussian noise on the 0–255 scale, added to the LR frame (0: none)."""
    jpeg: int | None = None
    """JPEG quality 1–100 of a re-encoding of each LR frame (None: none)."""
    h264: int | None = None
    """x264 CRF 0–51 of a re-encoding of each clip's LR frames (None: none)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        steps = [f"blur σ={self.blur:g}"] if self.blur else []
        steps.append(f"bicubic x{self.scale} (antialiased)")
        if self.noise:
            steps.append(f"noise σ={self.noise:g}")
        if self.jpeg is not None:
            steps.append(f"JPEG quality {self.jpeg}")
        if self.h264 is not None:
            steps.append(f"H.264 CRF {self.h264}")
        return " → ".join(steps)


def crop_to_scale(frame: np.ndarray, scale: int) -> np.ndarray:
    """The frame cut to a multiple of `scale` in both directions (the bottom/right rest goes)."""
    h, w = frame.shape[0] - frame.shape[0] % scale, frame.shape[1] - frame.shape[1] % scale
    return frame[:h, :w]


def degrade_clip(
    frames: Iterable[np.ndarray], spec: Degradation, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(HR, LR) pairs in order, for HR frames whose sides are multiples of the scale."""
    pairs = ((hr, _per_frame(hr, spec, rng)) for hr in frames)
    if spec.h264 is None:
        yield from pairs
    else:
        yield from _h264_round_trip(pairs, spec.h264)


def _per_frame(hr: np.ndarray, spec: Degradation, rng: np.random.Generator) -> np.ndarray:
    source = _gaussian_blur(hr, spec.blur) if spec.blur > 0 else hr
    lr = bicubic_downscale(source, spec.scale)
    if spec.noise > 0:
        noisy = lr.astype(np.float32) + rng.normal(0.0, spec.noise, lr.shape).astype(np.float32)
        lr = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if spec.jpeg is not None:
        lr = _jpeg_round_trip(lr, spec.jpeg)
    return lr


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 HxWx3 blurred by a separable Gaussian (radius 3σ, reflected borders)."""
    import torch
    import torch.nn.functional as F

    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-(x**2) / (2.0 * sigma**2))
    taps = taps / taps.sum()
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().unsqueeze(0)
    t = F.pad(t, (radius, radius, radius, radius), mode="reflect")
    t = F.conv2d(t, taps.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    t = F.conv2d(t, taps.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    out = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
    return out.contiguous().numpy()


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.array(decoded.convert("RGB"), dtype=np.uint8)


def _h264_round_trip(
    pairs: Iterator[tuple[np.ndarray, np.ndarray]], crf: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Encode the LR frames with x264 (yuv420p) and decode them back, streaming: the encoder
    holds a few frames of lookahead, so HR frames wait in a queue for their LR partner."""
    from vsr_async.tools.prepare_video import pyav

    av = pyav()
    encoder: Any = None
    decoder: Any = av.CodecContext.create("h264", "r")
    waiting: deque[np.ndarray] = deque()
    size = (0, 0)

    def decoded(packets: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for packet in packets:
            for frame in decoder.decode(packet):
                lr = frame.to_ndarray(format="rgb24")[: size[0], : size[1]]
                yield waiting.popleft(), np.ascontiguousarray(lr)

    for index, (hr, lr) in enumerate(pairs):
        if encoder is None:
            size = lr.shape[:2]
            encoder = av.CodecContext.create("libx264", "w")
            encoder.height, encoder.width = size[0] + size[0] % 2, size[1] + size[1] % 2
            encoder.pix_fmt = "yuv420p"
            encoder.time_base = Fraction(1, 25)
            encoder.options = {"crf": str(crf), "preset": "medium"}
        even = np.pad(lr, ((0, size[0] % 2), (0, size[1] % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(even, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        waiting.append(hr)
        yield from decoded(encoder.encode(frame))
    if encoder is None:
        return
    yield from decoded(encoder.encode(None))
    for frame in decoder.decode(None):
        lr = frame.to_ndarray(format="rgb24")[: size[0], : size[1]]
        yield waiting.popleft(), np.ascontiguousarray(lr)
