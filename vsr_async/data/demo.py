"""The embedded demo dataset: short synthetic-motion clips over scikit-image's sample photographs.

Written once, in the patch layout, into a temporary folder that is renamed into place only when
complete, so a crash never leaves a half dataset that looks finished. Deterministic (fixed seed).
LR frames are `bicubic_downscale` of the rendered HR frames; GT is the centre frame's HR crop.
Validation clips come from photographs that training never sees.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from skimage import data as photos

from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.images import write_png
from vsr_async.data.motion import fit_camera_path, random_camera_path, render_clip
from vsr_async.errors import DatasetError

DemoProgress = Callable[[int, int, str], None]
"""progress(done, total, label): clips written so far, out of all, and what is being built."""

DEMO_SEED = 20240607
FORMAT_VERSION = 2
TRAIN_CLIPS = 256
TRAIN_GT_SIZE = 96
VAL_GT_SIZE = 192
PLACEMENT_TRIES = 3  # per clip, the most detailed of this many random places is filmed
COMPLETE_MARKER = ".complete"

# Photographs shipped inside scikit-image (no download). Gray ones are written as gray PNGs.
TRAIN_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": photos.astronaut,
    "coffee": photos.coffee,
    "chelsea": photos.chelsea,
    "hubble": photos.hubble_deep_field,
    "ihc": photos.immunohistochemistry,
    "camera": photos.camera,
    "brick": photos.brick,
    "grass": photos.grass,
    "gravel": photos.gravel,
    "moon": photos.moon,
}
VAL_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "rocket": photos.rocket,
    "motorcycle": lambda: photos.stereo_motorcycle()[0],
    "coins": photos.coins,
    "clock": photos.clock,
}


def build_demo_dataset(
    root: Path | str, scale: int, num_frames: int, progress: DemoProgress | None = None
) -> Path:
    """Build the demo dataset at `root` unless an identical one is already there; return root."""
    root = Path(root)
    params = _parameters(scale, num_frames)
    if _built_with(root) == params:
        return root
    if root.exists() and not _replaceable(root):
        raise DatasetError(
            root, "exists and is not a demo dataset; move it away or choose another folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(root)
    building = root.parent / f".{root.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    try:
        _write_dataset(building, scale, num_frames, progress)
        (building / COMPLETE_MARKER).write_text(json.dumps(params, indent=2) + "\n")
        _move_into_place(building, root, params)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root


def _parameters(scale: int, num_frames: int) -> dict[str, int]:
    return {
        "format": FORMAT_VERSION,
        "seed": DEMO_SEED,
        "scale": scale,
        "num_frames": num_frames,
        "train_clips": TRAIN_CLIPS,
        "train_gt_size": _multiple(TRAIN_GT_SIZE, scale),
        "val_gt_size": _multiple(VAL_GT_SIZE, scale),
    }


def _write_dataset(out: Path, scale: int, num_frames: int, progress: DemoProgress | None) -> None:
    for folder in ("Patches/GT", "Patches/LR", "Val/GT", "Val/LR"):
        (out / folder).mkdir(parents=True)
    total = TRAIN_CLIPS + len(VAL_PHOTOS)
    if progress is not None:
        progress(0, total, "demo dataset: training clips")
    train = [(name, _photo(load)) for name, load in TRAIN_PHOTOS.items()]
    for i in range(TRAIN_CLIPS):
        name, photo = train[i % len(train)]
        rng = np.random.default_rng([DEMO_SEED, 0, i])
        gt, lr = _make_clip(photo, _multiple(TRAIN_GT_SIZE, scale), scale, num_frames, rng)
        _write_pair(out / "Patches", f"{i:04d}_{name}.png", gt, lr)
        if progress is not None:
            progress(i + 1, total, "demo dataset: training clips")
    for j, (name, load) in enumerate(VAL_PHOTOS.items()):
        rng = np.random.default_rng([DEMO_SEED, 1, j])
        gt, lr = _make_clip(_photo(load), _multiple(VAL_GT_SIZE, scale), scale, num_frames, rng)
        _write_pair(out / "Val", f"{name}.png", gt, lr)
        if progress is not None:
            progress(TRAIN_CLIPS + j + 1, total, "demo dataset: validation clips")


def _make_clip(
    photo: np.ndarray, gt_size: int, scale: int, num_frames: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(GT [P, P, 3], LR [T, P/s, P/s, 3]) of one clip filmed over `photo`.

    Frames are rendered with a margin and downscaled whole, so the LR crop is a genuine
    bicubic degradation of the scene (no border effects), then cropped to the GT window.
    """
    margin = 3 * scale  # HR pixels; the antialiased bicubic kernel reaches 2 LR pixels
    size = gt_size + 2 * margin
    path = random_camera_path(rng, num_frames)
    placement = fit_camera_path((photo.shape[1], photo.shape[0]), path, size)
    corners = [
        (
            int(rng.integers(*placement.x_range, endpoint=True)),
            int(rng.integers(*placement.y_range, endpoint=True)),
        )
        for _ in range(PLACEMENT_TRIES)
    ]
    x0, y0 = max(corners, key=lambda c: _detail(photo, c[0], c[1], size))
    frames = render_clip(photo, placement.coords, x0, y0)  # [T, S, S, 3]
    m, lr_m, lr_size = margin, margin // scale, gt_size // scale
    lr = bicubic_downscale(frames, scale)[:, lr_m : lr_m + lr_size, lr_m : lr_m + lr_size]
    gt = frames[num_frames // 2, m : m + gt_size, m : m + gt_size]
    return gt, lr


def _write_pair(split: Path, file_name: str, gt: np.ndarray, lr: np.ndarray) -> None:
    """GT, and LR frames stacked vertically; gray photos (R = G = B) are written as gray PNGs."""
    stacked = lr.reshape(-1, *lr.shape[2:])  # [T·h, w, 3]
    if _is_gray(gt) and _is_gray(stacked):
        gt, stacked = gt[..., 0], stacked[..., 0]
    write_png(split / "GT" / file_name, gt)
    write_png(split / "LR" / file_name, stacked)


def _photo(load: Callable[[], np.ndarray]) -> np.ndarray:
    """uint8 HxWx3 RGB of a sample photograph (gray photos repeated into three channels)."""
    image = np.asarray(load())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def _detail(photo: np.ndarray, x0: int, y0: int, size: int) -> float:
    """Mean absolute gradient of a photo window: flat sky teaches super-resolution nothing."""
    window = photo[y0 : y0 + size, x0 : x0 + size].astype(np.float32)
    return float(np.abs(np.diff(window, axis=0)).mean() + np.abs(np.diff(window, axis=1)).mean())


def _is_gray(image: np.ndarray) -> bool:
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def _multiple(size: int, scale: int) -> int:
    return size - size % scale


def _built_with(root: Path) -> dict[str, int] | None:
    """The parameters a complete demo dataset at `root` was built with, or None."""
    try:
        return json.loads((root / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _replaceable(root: Path) -> bool:
    """Only an empty folder or an outdated demo dataset may be replaced, never user data."""
    return root.is_dir() and ((root / COMPLETE_MARKER).is_file() or not any(root.iterdir()))


def _remove_abandoned_builds(root: Path) -> None:
    """Remove the temporary folders of builds whose process died (a crash or kill -9)."""
    for folder in [
        *root.parent.glob(f".{root.name}.building-*"),
        *root.parent.glob(f".{root.name}.old-*"),
    ]:
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(building: Path, root: Path, params: dict[str, int]) -> None:
    """Rename the finished build to `root`; an old demo dataset there is moved aside first.

    If another process finished the same build first, its result is kept and ours dropped.
    """
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        if _built_with(root) == params:
            return
        shutil.rmtree(old, ignore_errors=True)
        os.replace(root, old)
    try:
        os.rename(building, root)
    except OSError:
        if _built_with(root) != params:
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
