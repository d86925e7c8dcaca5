"""The training stream shared by torchrun ranks: each rank takes its chunk of every global step,
and the ranks together are exactly the single process's stream (same items, same seeds)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from vsr_async.data import ResumableSampler, build_train_loader, position_after
from vsr_async.data.sampler import SampleKey, epoch_order
from vsr_async.data.skipping import SkippingDataset

SEED = 1234
# (start_epoch, start_index): the very start, inside an epoch, one before and at an epoch end
STARTS = [(0, 0), (1, 3), (2, -1), (0, -2)]


def single(n: int, count: int, start: int = 0) -> list[SampleKey]:
    """The first `count` positions of the one-process stream from global position `start`."""
    epoch, index = position_after(n, start)
    return list(itertools.islice(ResumableSampler(n, SEED, epoch, index), count))


def rank_streams(
    n: int, world: int, batch: int, steps: int, start: int = 0
) -> list[list[SampleKey]]:
    """What each rank's sampler yields for `steps` global steps."""
    epoch, index = position_after(n, start)
    return [
        list(
            itertools.islice(
                ResumableSampler(
                    n, SEED, epoch, index, rank=rank, world_size=world, rank_batch=batch
                ),
                steps * batch,
            )
        )
        for rank in range(world)
    ]


def interleave(streams: Sequence[Sequence[SampleKey]], batch: int) -> list[SampleKey]:
    """Step by step, rank 0's chunk, then rank 1's, ...: the global stream the ranks form."""
    steps = len(streams[0]) // batch
    return [key for k in range(steps) for s in streams for key in s[k * batch : (k + 1) * batch]]


def start_position(n: int, epoch: int, index: int) -> int:
    return epoch * n + index % n


@pytest.mark.parametrize("n", [7, 10])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 12])
@pytest.mark.parametrize(("epoch", "index"), STARTS)
def test_ranks_together_are_the_single_stream(n, world, batch, epoch, index):
    start = start_position(n, epoch, index)
    steps = -(-4 * n // (world * batch)) + 1  # at least four epochs, epoch ends straddled
    streams = rank_streams(n, world, batch, steps, start)
    assert all(len(s) == steps * batch for s in streams)
    expected = single(n, steps * world * batch, start)
    assert interleave(streams, batch) == expected
    if world > 1 and batch > 1:
        # a round-robin split (rank r takes positions r, r+W, ...) would not pass the check above
        round_robin = [expected[r::world] for r in range(world)]
        assert interleave(round_robin, batch) != expected


@pytest.mark.parametrize("n", [7, 10])
@pytest.mark.parametrize(("world", "batch"), [(2, 1), (2, 3), (3, 2), (4, 5)])
@pytest.mark.parametrize(("epoch", "index"), STARTS)
def test_ranks_share_out_each_epoch_without_overlap(n, world, batch, epoch, index):
    start = start_position(n, epoch, index)
    steps = -(-3 * n // (world * batch)) + 1  # covers the whole epoch after the start one
    streams = rank_streams(n, world, batch, steps, start)
    full = epoch + 1
    order, seeds = epoch_order(n, SEED, full)
    epoch_keys = set(zip(order.tolist(), seeds.tolist(), strict=True))
    shares = [[key for key in s if key in epoch_keys] for s in streams]
    for share in shares:
        assert len(set(share)) == len(share)  # no rank sees an item twice in the epoch
    for a, b in itertools.combinations(shares, 2):
        assert not set(a) & set(b)
    assert sorted(item for share in shares for item, _ in share) == list(range(n))


def old_sampler(n: int, seed: int, epoch: int, index: int):
    """The sampler as it was before ranks existed: the behaviour one process must keep."""
    while True:
        order, seeds = epoch_order(n, seed, epoch)
        for position in range(index, n):
            yield int(order[position]), int(seeds[position])
        epoch, index = epoch + 1, 0


@pytest.mark.parametrize(("epoch", "index"), [(0, 0), (1, 3), (3, 6)])
def test_one_rank_is_the_old_sampler(epoch, index):
    old = list(itertools.islice(old_sampler(7, SEED, epoch, index), 50))
    for batch in (1, 4, 9):
        sampler = ResumableSampler(7, SEED, epoch, index, rank=0, world_size=1, rank_batch=batch)
        assert list(itertools.islice(sampler, 50)) == old
        assert list(itertools.islice(sampler, 50)) == old  # every iter() starts again
    assert list(itertools.islice(ResumableSampler(7, SEED, epoch, index), 50)) == old
    ranked = ResumableSampler(7, SEED, epoch, index, rank=1, world_size=2, rank_batch=3)
    first = list(itertools.islice(ranked, 12))
    assert list(itertools.islice(ranked, 12)) == first


@pytest.mark.parametrize(
    ("before", "after"),  # (world, rank batch) before and after the resume
    [((2, 3), (1, 6)), ((1, 4), (2, 2)), ((3, 2), (2, 5)), ((2, 2), (4, 3))],
)
@pytest.mark.parametrize("steps_before", [1, 2, 5])
def test_resume_with_another_world_size_continues_the_stream(before, after, steps_before):
    n = 10
    (w0, b0), (w1, b1) = before, after
    consumed = steps_before * w0 * b0  # what the checkpoint records: global samples
    first = interleave(rank_streams(n, w0, b0, steps_before), b0)
    assert len(first) == consumed
    steps_after = 7
    then = interleave(rank_streams(n, w1, b1, steps_after, consumed), b1)
    assert first + then == single(n, consumed + steps_after * w1 * b1)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"rank": -1, "world_size": 2}, "rank"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"rank": 0, "world_size": 0}, "world_size"),
        ({"rank": 0, "world_size": 2, "rank_batch": 0}, "rank_batch"),
        ({"rank_batch": -3}, "rank_batch"),
    ],
)
def test_bad_rank_arguments_are_named(kwargs, named):
    with pytest.raises(ValueError, match=rf"^{named} must"):
        ResumableSampler(7, SEED, **kwargs)


class TinyDataset(SkippingDataset):
    """Samples made only of the item index and the sample's random draws: no files."""

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lr = torch.from_numpy(rng.random((3, 3, 2, 2))).float() + index
        gt = torch.from_numpy(rng.random((3, 6, 6))).float() - index
        return lr, gt


def test_micro_batch_must_divide_the_rank_batch():
    with pytest.raises(ValueError, match="rank_batch"):
        build_train_loader(TinyDataset(7), 2, 0, False, seed=SEED, world_size=2, rank_batch=3)


@pytest.mark.parametrize(("world", "batch", "micro"), [(2, 2, 1), (2, 4, 2), (3, 2, 2), (4, 3, 3)])
@pytest.mark.parametrize(("epoch", "index"), [(0, 0), (1, 5)])
def test_rank_loaders_together_are_the_single_loader(world, batch, micro, epoch, index):
    dataset, steps = TinyDataset(7), 6
    whole = build_train_loader(
        dataset, world * batch, 0, False, seed=SEED, start_epoch=epoch, start_index=index
    )
    expected = list(itertools.islice(whole, steps))
    per_step = batch // micro
    ranks = [
        list(
            itertools.islice(
                build_train_loader(
                    dataset,
                    micro,
                    0,
                    False,
                    seed=SEED,
                    start_epoch=epoch,
                    start_index=index,
                    rank=rank,
                    world_size=world,
                    rank_batch=batch,
                ),
                steps * per_step,
            )
        )
        for rank in range(world)
    ]
    for k, step in enumerate(expected):
        parts = [b for r in ranks for b in r[k * per_step : (k + 1) * per_step]]
        assert all(b.lr.shape[0] == micro for b in parts)
        assert torch.equal(torch.cat([b.lr for b in parts]), step.lr)
        assert torch.equal(torch.cat([b.gt for b in parts]), step.gt)
    assert not torch.equal(ranks[0][0].lr, ranks[1][0].lr)  # the ranks' data really differ
