"""Training augmentation: the 8 flips/rotations of the square, applied alike to LR and GT.

Randomness comes only from the generator passed in (seeded per sample by the sampler), so a
sample looks the same whatever the worker count and after a resume.
"""

from __future__ import annotations

import numpy as np
import torch


def augment(
    lr: torch.Tensor, gt: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip, vertical flip and 90° rotation of lr [T, 3, h, w] and gt [3, H, W].

    Non-square samples are not rotated: a rotated sample would no longer batch with the others.
    """
    hflip, vflip, rotate = rng.random(3) < 0.5  # always three draws: the stream stays aligned
    if hflip:
        lr, gt = lr.flip(-1), gt.flip(-1)
    if vflip:
        lr, gt = lr.flip(-2), gt.flip(-2)
    if rotate and gt.shape[-1] == gt.shape[-2]:
        lr, gt = lr.rot90(1, dims=(-2, -1)), gt.rot90(1, dims=(-2, -1))
    return lr.contiguous(), gt.contiguous()
