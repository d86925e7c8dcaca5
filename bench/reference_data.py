"""The reference workload of DESIGN §10 as a dataset on disk: GT 540x540 patches with 5 LR frames
of 180x180 (x3), cut from the photographs scikit-image ships (upscaled where too small).

Built once into vsr_demo/bench-reference (a few seconds); used by the GPU benchmarks so that the
loader decodes real PNGs of the real size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.images import write_png

GT_SIZE, SCALE, FRAMES = 540, 3, 5

# The reference run of DESIGN §10 (nothing due: no validation, checkpoint or histogram).
REFERENCE_SETTINGS = {
    "N_FEATS": 128,
    "N_BLOCKS": 32,
    "BATCH_SIZE": 4,
    "NUM_FRAMES": FRAMES,
    "SCALE": SCALE,
    "DATASET_LAYOUT": "patches",
    "MAX_STEPS": 10**9,
    "VAL_STEP_EVERY": 10**9,
    "SAVE_STEP_EVERY": 10**9,
    "HIST_STEP_EVERY": 10**9,
    "NUM_WORKERS": 4,
    "WARMUP_STEPS": 10,
}


def _photo(name: str, min_side: int) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    factor = min_side / min(image.shape[:2])
    if factor > 1:
        t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, scale_factor=factor * 1.05, mode="bicubic", align_corners=False)
        image = t.clamp(0, 255).round().byte()[0].permute(1, 2, 0).numpy()
    return image


def build_reference_dataset(root: Path, samples: int = 32, val: int = 2) -> Path:
    if (root / ".complete").exists():
        return root
    rng = np.random.default_rng(0)
    photos = [
        _photo(n, GT_SIZE + 2 * FRAMES)
        for n in ("hubble_deep_field", "astronaut", "coffee", "rocket", "chelsea")
    ]
    for split, count in (("Patches", samples), ("Val", val)):
        (root / split / "GT").mkdir(parents=True, exist_ok=True)
        (root / split / "LR").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            photo = photos[i % len(photos)]
            y = int(rng.integers(0, photo.shape[0] - GT_SIZE))
            x = int(rng.integers(FRAMES, photo.shape[1] - GT_SIZE - FRAMES))
            frames = [
                bicubic_downscale(photo[y : y + GT_SIZE, x + d : x + d + GT_SIZE], SCALE)
                for d in range(-(FRAMES // 2), FRAMES // 2 + 1)
            ]
            write_png(root / split / "GT" / f"{i:04d}.png", photo[y : y + GT_SIZE, x : x + GT_SIZE])
            write_png(root / split / "LR" / f"{i:04d}.png", np.concatenate(frames, axis=0))
    (root / ".complete").write_text("ok\n")
    return root
