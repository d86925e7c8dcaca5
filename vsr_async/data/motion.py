"""Synthetic camera motion over a still photograph: the frames of a short demo clip.

Each clip pans by a sub-pixel amount per frame, with a slight zoom, rotation and hand shake, so
neighbouring LR frames hold genuinely different samples of the scene (what a VSR model exploits).
The centre frame is an exact crop of the photograph: the GT carries no resampling blur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CameraPath:
    """Motion per frame relative to the centre frame (HR pixels, fractions, degrees)."""

    velocity: tuple[float, float]
    zoom_per_frame: float
    rotation_per_frame_deg: float
    shake: tuple[tuple[float, float], ...]
    """(dx, dy) added to each frame's position; (0, 0) at the centre frame."""

    def scaled(self, factor: float) -> CameraPath:
        """The same path with every motion multiplied by `factor` (for photos too small)."""
        return replace(
            self,
            velocity=(self.velocity[0] * factor, self.velocity[1] * factor),
            zoom_per_frame=self.zoom_per_frame * factor,
            rotation_per_frame_deg=self.rotation_per_frame_deg * factor,
            shake=tuple((dx * factor, dy * factor) for dx, dy in self.shake),
        )


def random_camera_path(rng: np.random.Generator, num_frames: int) -> CameraPath:
    """A plausible slow camera move: 0.3–2 HR px/frame pan, ≤0.4 %/frame zoom, ≤0.3°/frame turn."""
    speed, angle = rng.uniform(0.3, 2.0), rng.uniform(0.0, 2 * math.pi)
    shake = rng.normal(0.0, 0.25, size=(num_frames, 2))
    shake[num_frames // 2] = 0.0
    return CameraPath(
        velocity=(speed * math.cos(angle), speed * math.sin(angle)),
        zoom_per_frame=rng.uniform(-0.004, 0.004),
        rotation_per_frame_deg=rng.uniform(-0.3, 0.3),
        shake=tuple((float(dx), float(dy)) for dx, dy in shake),
    )


def source_coords(path: CameraPath, size: int) -> np.ndarray:
    """[T, size, size, 2]: where in the photo (x, y) each rendered pixel is sampled.

    Relative to the crop's top-left corner; frame T//2 samples exactly the integer grid.
    """
    num_frames = len(path.shake)
    centre = (size - 1) / 2
    v, u = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing="ij")
    coords = np.empty((num_frames, size, size, 2))
    for t in range(num_frames):
        k = t - num_frames // 2
        zoom = (1.0 + path.zoom_per_frame) ** k
        theta = math.radians(path.rotation_per_frame_deg * k)
        cos, sin = math.cos(theta) * zoom, math.sin(theta) * zoom
        dx = path.velocity[0] * k + path.shake[t][0]
        dy = path.velocity[1] * k + path.shake[t][1]
        coords[t, ..., 0] = centre + cos * u - sin * v + dx
        coords[t, ..., 1] = centre + sin * u + cos * v + dy
    coords[num_frames // 2] = np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1)
    return coords


@dataclass(frozen=True)
class Placement:
    """A camera path that fits a photo, and the top-left corners (x0, y0) it may start from."""

    path: CameraPath
    coords: np.ndarray
    """[T, S, S, 2] from `source_coords`."""
    x_range: tuple[int, int]
    """Inclusive range of x0."""
    y_range: tuple[int, int]


def fit_camera_path(photo_size: tuple[int, int], path: CameraPath, size: int) -> Placement:
    """Where in a photo (W, H) a size x size clip along `path` can be filmed, all in bounds.

    A path that leaves a small photo is damped until it fits; bicubic sampling needs 2 pixels
    of border, so the sampled area stays that far inside.
    """
    width, height = photo_size
    for _ in range(12):
        coords = source_coords(path, size)
        corners = coords[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # an affine map's extremes
        lo, hi = corners.min(axis=(0, 1)), corners.max(axis=(0, 1))
        x_range = (math.ceil(2 - lo[0]), math.floor(width - 3 - hi[0]))
        y_range = (math.ceil(2 - lo[1]), math.floor(height - 3 - hi[1]))
        if x_range[0] <= x_range[1] and y_range[0] <= y_range[1]:
            return Placement(path, coords, x_range, y_range)
        path = path.scaled(0.5)
    raise ValueError(f"photo {width}x{height} is too small for a {size}x{size} clip")


def render_clip(photo: np.ndarray, coords: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """uint8 frames [T, S, S, 3] sampled bicubically from photo (uint8 HxWx3) at coords + (x0, y0).

    The centre frame is copied, not resampled, so it is the photograph's own pixels.
    """
    num_frames, size = coords.shape[0], coords.shape[1]
    height, width = photo.shape[:2]
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].float()  # [1, 3, Hp, Wp]
    xy = torch.from_numpy(coords).float() + torch.tensor([x0, y0], dtype=torch.float32)
    grid = xy / torch.tensor([width - 1, height - 1], dtype=torch.float32) * 2 - 1
    frames = F.grid_sample(
        image.expand(num_frames, -1, -1, -1),
        grid,
        mode="bicubic",
        padding_mode="border",
        align_corners=True,
    )  # [T, 3, S, S]
    out = frames.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    out[num_frames // 2] = photo[y0 : y0 + size, x0 : x0 + size]
    return out
