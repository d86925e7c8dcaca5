"""Training never stops for one broken file: the sample is replaced and the file reported.

The scan checked headers only, so a file can still fail to decode (truncated, or changed on disk
since). The replacement is chosen from the sample seed, so it is the same whatever the worker
count; after MAX_TRIES failures in a row the data is gone, not damaged, and that is an error.
A process out of file descriptors or memory (`ProcessResourceError`) is not a broken file: the
same sample is read again once the resource is back, so batches stay the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vsr_async.data.images import ProcessResourceError, read_rgb
from vsr_async.data.sampler import SampleKey
from vsr_async.errors import DatasetError

MAX_TRIES = 8
RESOURCE_WAIT_S = 10.0  # how long one sample waits for descriptors or memory before the run stops
RESOURCE_PAUSE_S = (0.05, 1.0)  # first and longest pause between reads while waiting

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
                lr, gt = self._load_when_possible(index, [sample_seed, attempt])
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

    def _load_when_possible(self, index: int, seed: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`load`, read again while the process is out of descriptors or memory (up to
        RESOURCE_WAIT_S); each read starts from the same seed, so the sample does not change."""
        waited_s, pause_s = 0.0, RESOURCE_PAUSE_S[0]
        while True:
            try:
                return self.load(index, np.random.default_rng(seed))
            except ProcessResourceError:
                if waited_s >= RESOURCE_WAIT_S:
                    raise
            time.sleep(pause_s)  # a loader thread or worker process, never the event loop
            waited_s += pause_s
            pause_s = min(2 * pause_s, RESOURCE_PAUSE_S[1])
