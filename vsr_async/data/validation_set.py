"""Validation data, decoded once into memory when the dataset is built.

Validation runs many times on the same few images; decoding them up front makes each run fast
and turns a broken validation file into an error at start-up, never in the middle of a run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vsr_async.data.images import to_tensor

ValSample = tuple[str, torch.Tensor, torch.Tensor]
"""(name, lr [T, 3, h, w], gt [3, H, W]), full images."""


class ValidationSet(Dataset[ValSample]):
    """Decoded validation images as uint8 (a quarter of float32's memory), tensors on access."""

    def __init__(self, items: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        self._items = items  # (name, lr uint8 [T, h, w, 3], gt uint8 [H, W, 3])

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> ValSample:
        name, lr, gt = self._items[i]
        return name, to_tensor(lr), to_tensor(gt)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self._items]
