"""Training never stops for one broken file: the sample is replaced and the file reported.

The scan checked headers only, so a file can still fail to decode (truncated, or changed on disk
since). The replacement is chosen from the sample seed, so it is the same whatever the worker
count; after MAX_TRIES failures in a row the data is gone, not damaged, and that is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vsr_async.data.images import read_rgb
from vsr_async.data.sampler import SampleKey
from vsr_async.errors import DatasetError

MAX_TRIES = 8

TrainSample = tuple[torch.Tensor, torch.Tensor, list[str]]
"""(lr [T, 3, h, w], gt [3, H, W], paths of files skipped to make this sample)."""


class SkippingDataset(Dataset[TrainSample]):
    """Base of the training datasets: indexed by (item_index, sample_seed) from the sampler.

    Subclasses implement `load(index, rng)` and read files through `read(path)`.
    """

    def __init__(self, num_items: int) -> None:
        self.num_items = num_items
        self._known_bad: set[Path] = set()  # per process: a bad file is decoded only once

    def __len__(self) -> int:
        return self.num_items

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(lr [T, 3, h, w], gt [3, H, W]) of item `index`; random choices from `rng` only."""
        raise NotImplementedError

    def read(self, path: Path) -> np.ndarray:
        """read_rgb, remembering files that failed so that later epochs skip them at once."""
        if path in self._known_bad:
            raise DatasetError(path, "unreadable image (failed before)")
        try:
            return read_rgb(path)
        except DatasetError:
            self._known_bad.add(path)
            raise

    def __getitem__(self, key: SampleKey) -> TrainSample:
        index, sample_seed = key
        skipped: list[str] = []
        for attempt in range(MAX_TRIES):
            try:
                lr, gt = self.load(index, np.random.default_rng([sample_seed, attempt]))
                return lr, gt, skipped
            except DatasetError as exc:
                skipped.append(str(exc.path))
                last = exc
            index = int(np.random.default_rng([sample_seed, attempt, 1]).integers(self.num_items))
        raise DatasetError(
            last.path,
            f"{MAX_TRIES} training samples in a row could not be read (last: {last}); "
            "is the dataset still there?",
        )
