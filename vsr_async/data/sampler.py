"""Sample order as a pure function of (seed, epoch, position), so a run resumes exactly.

The sampler never ends: epochs follow one another, each a fresh permutation. The engine counts
the samples it has consumed and, on resume, rebuilds the sampler at `position_after(...)`.
Samples the loader had prefetched but the model never saw are simply produced again.

Under torchrun every rank takes its own share of the same global stream (`rank`, `world_size`,
`rank_batch`): one step's positions are split into consecutive per-rank chunks, so W ranks with
a batch of b see exactly the samples (and seeds) of one process with a batch of W*b, and a run
resumes with any world size from the global count of samples consumed.
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

    With `world_size` > 1 the global stream from the start position is cut into steps of
    `world_size * rank_batch` consecutive positions, and rank `rank` yields the `rank`-th chunk
    of `rank_batch` positions of every step (a chunk may straddle an epoch end, as the global
    stream does). Chunks rather than round-robin samples keep a rank's micro-batches made of
    consecutive positions, so the ranks of step k together hold exactly the single process's
    positions [k*G, (k+1)*G) — the same samples and the same gradient average.
    """

    def __init__(
        self,
        num_items: int,
        seed: int,
        start_epoch: int = 0,
        start_index: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        rank_batch: int = 1,
    ):
        super().__init__()
        if num_items <= 0:
            raise ValueError(f"num_items must be positive, got {num_items}")
        if not 0 <= start_index < num_items:
            raise ValueError(f"start_index must be in [0, {num_items}), got {start_index}")
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}) (world_size), got {rank}")
        if rank_batch < 1:
            raise ValueError(f"rank_batch must be at least 1, got {rank_batch}")
        self.num_items = num_items
        self.seed = seed
        self.start_epoch = start_epoch
        self.start_index = start_index
        self.rank = rank
        self.world_size = world_size
        self.rank_batch = rank_batch

    @property
    def epoch_length(self) -> int:
        """Samples per epoch (each item once)."""
        return self.num_items

    def __iter__(self) -> Iterator[SampleKey]:
        if self.world_size == 1:
            return self._whole_stream()
        return self._rank_chunks()

    def _whole_stream(self) -> Iterator[SampleKey]:
        epoch, index = self.start_epoch, self.start_index
        while True:
            order, seeds = epoch_order(self.num_items, self.seed, epoch)
            for position in range(index, self.num_items):
                yield int(order[position]), int(seeds[position])
            epoch, index = epoch + 1, 0

    def _rank_chunks(self) -> Iterator[SampleKey]:
        """This rank's chunks, jumping a whole step at a time: the other ranks' positions are
        never walked, and an epoch's order is drawn only if one of its positions is yielded."""
        n, step = self.num_items, self.world_size * self.rank_batch
        chunk = self.start_epoch * n + self.start_index + self.rank * self.rank_batch
        cached = -1, np.empty(0, np.int64), np.empty(0, np.int64)
        while True:
            position, end = chunk, chunk + self.rank_batch
            while position < end:  # a chunk may run over one or more epoch ends
                epoch, index = divmod(position, n)
                if cached[0] != epoch:
                    cached = epoch, *epoch_order(n, self.seed, epoch)
                take = min(end - position, n - index)
                yield from zip(
                    cached[1][index : index + take].tolist(),
                    cached[2][index : index + take].tolist(),
                    strict=True,
                )
                position += take
            chunk += step
