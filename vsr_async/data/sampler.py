"""Sample order as a pure function of (seed, epoch, position), so a run resumes exactly.

The sampler never ends: epochs follow one another, each a fresh permutation. The engine counts
the samples it has consumed and, on resume, rebuilds the sampler at `position_after(...)`.
Samples the loader had prefetched but the model never saw are simply produced again.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

SampleKey = tuple[int, int]
"""(item_index, sample_seed): which item, and the seed for its crop and augmentation."""


def epoch_order(num_items: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, sample seeds) of one epoch: a permutation and one seed per position."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_items)
    seeds = rng.integers(0, 2**63 - 1, size=num_items, dtype=np.int64)
    return order, seeds


def position_after(num_items: int, samples_consumed: int) -> tuple[int, int]:
    """(epoch, index_in_epoch) of the next sample after `samples_consumed` samples."""
    if num_items <= 0:
        raise ValueError("a dataset with no items has no sample positions")
    return divmod(samples_consumed, num_items)


class ResumableSampler(Sampler[SampleKey]):
    """Yields (item_index, sample_seed) forever, from (start_epoch, start_index) on.

    Each `iter()` starts again at the start position; a run takes one iterator.
    """

    def __init__(self, num_items: int, seed: int, start_epoch: int = 0, start_index: int = 0):
        super().__init__()
        if num_items <= 0:
            raise ValueError(f"num_items must be positive, got {num_items}")
        if not 0 <= start_index < num_items:
            raise ValueError(f"start_index must be in [0, {num_items}), got {start_index}")
        self.num_items = num_items
        self.seed = seed
        self.start_epoch = start_epoch
        self.start_index = start_index

    @property
    def epoch_length(self) -> int:
        """Samples per epoch (each item once)."""
        return self.num_items

    def __iter__(self) -> Iterator[SampleKey]:
        epoch, index = self.start_epoch, self.start_index
        while True:
            order, seeds = epoch_order(self.num_items, self.seed, epoch)
            for position in range(index, self.num_items):
                yield int(order[position]), int(seeds[position])
            epoch, index = epoch + 1, 0
