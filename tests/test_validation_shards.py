"""Sharded validation (torchrun): W real processes in a gloo process group each validate every
W-th image, gather the records once, and every rank returns the ValidationResult of a single
process, bit for bit (same order, same float sums, same strips), also when the images do not
divide evenly or are fewer than the ranks. A rank whose share fails makes every rank fail after
the one gather, so no rank waits in a collective and the group stays usable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port
from torch import nn

from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.validation_set import ValidationSet, ValSample
from vsr_async.errors import DatasetError, ValidationInterrupted
from vsr_async.nn.models import build_model
from vsr_async.records import ImageMetrics, ValidationResult
from vsr_async.training.validation import STRIP_IMAGES, ValShard, run_validation

SCALE, FRAMES = 2, 3
SMALL = 3  # this image is 14x14: too small for SSIM-Y after the border crop (NaN)


def tiny_model() -> nn.Module:
    """A seeded VSRNet with weights that change the output visibly (the initial net is close to
    bicubic, which would make every output alike)."""
    torch.manual_seed(0)
    model = build_model("vsrnet", n_feats=8, n_blocks=2, num_frames=FRAMES, scale=SCALE)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
    return model


def clips(count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """`count` pans over a photograph (24x24 GT, one 14x14): (name, lr, gt) as uint8."""
    photo = skimage.data.astronaut()
    items = []
    for i in range(count):
        size = 14 if i == SMALL else 24
        x, y = 40 + 37 * i, 30 + 23 * i
        lr = np.stack(
            [
                bicubic_downscale(photo[y : y + size, x + d : x + d + size], SCALE)
                for d in (-1, 0, 1)
            ]
        )
        items.append((f"clip{i:02d}", lr, photo[y : y + size, x : x + size].copy()))
    return items


def val_set(count: int) -> ValidationSet:
    return ValidationSet(clips(count))


class BrokenSet(ValidationSet):
    """A validation set whose image 1 cannot be read (it lands on rank 1)."""

    def __getitem__(self, i: int) -> ValSample:
        if i == 1:
            raise DatasetError("Val/GT/clip01.png", "truncated file")
        return super().__getitem__(i)


def validate(model: nn.Module, images: ValidationSet, **kw: Any) -> ValidationResult:
    return run_validation(
        model,
        images,
        device=torch.device("cpu"),
        scale=SCALE,
        num_frames=FRAMES,
        autocast=contextlib.nullcontext,
        used_ema=True,
        **kw,
    )


def counts(world: int) -> list[int]:
    """Uneven shards, fewer images than ranks, more images than strips."""
    return [5, world - 1, 10]


def rank_main(rank: int, world: int, port: int, state: dict, out: Path) -> None:
    """One torchrun rank: every scenario in the same group, in the same order on all ranks."""
    torch.set_num_threads(1)  # the same arithmetic as the reference, whatever the core count
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),  # a hang fails the test, not the 300 s limit
    )
    try:
        model = tiny_model()
        model.load_state_dict(state)

        def gather(obj: Any) -> list[Any]:
            everyone: list[Any] = [None] * world
            dist.all_gather_object(everyone, obj)
            return everyone

        shard = ValShard(rank, world, gather)
        report: dict[str, Any] = {}
        for count in counts(world):
            progress: list[float] = []
            result = validate(
                model,
                val_set(count),
                shard=shard,
                progress=progress.append,
            )
            report[f"result {count}"] = (result, progress)
        # The last rank is asked to stop after its first image; every rank stops there.
        asked = iter([False, *[rank == world - 1] * 10])
        try:
            validate(model, val_set(5), shard=shard, should_stop=lambda: next(asked))
        except ValidationInterrupted as exc:
            report["stop"] = str(exc)
        report["after stop"] = validate(model, val_set(5), shard=shard)  # still in step
        try:
            validate(model, BrokenSet(clips(5)), shard=shard)
        except Exception as exc:
            report["failure"] = (type(exc).__name__, str(exc))
        report["after failure"] = validate(model, val_set(5), shard=shard)  # still in step
        (out / f"rank{rank}.pkl").write_bytes(pickle.dumps(report))
    finally:
        dist.destroy_process_group()


def same(a: Any, b: Any) -> bool:
    """Exact equality, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b) and type(a) is type(b)


def assert_same_result(got: ValidationResult, want: ValidationResult) -> None:
    assert [m.name for m in got.images] == [m.name for m in want.images]
    for g, w in zip(got.images, want.images, strict=True):
        for f in dataclasses.fields(ImageMetrics):
            assert same(getattr(g, f.name), getattr(w, f.name)), (g.name, f.name)
    assert got.loss == want.loss  # summed in index order, as one process does
    assert got.used_ema is want.used_ema
    assert len(got.strips) == len(want.strips)
    assert all(np.array_equal(g, w) for g, w in zip(got.strips, want.strips, strict=True))
    assert got.duration_s > 0


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_single_process_result(world: int, tmp_path: Path) -> None:
    model = tiny_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = {count: validate(model, val_set(count)) for count in [*counts(world), 5]}
    finally:
        torch.set_num_threads(threads)
    assert math.isnan(want[5].images[SMALL].ssim_y_ki)  # the NaN path is exercised
    assert not math.isnan(want[5].images[SMALL].psnr_y_ki_db)
    assert len(want[10].strips) == STRIP_IMAGES < 10

    mp.spawn(
        rank_main,
        args=(world, free_port(), model.state_dict(), tmp_path),
        nprocs=world,
        join=True,
        start_method="spawn",
    )

    for rank in range(world):
        report = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        for count in counts(world):
            result, progress = report[f"result {count}"]
            assert_same_result(result, want[count])
            share = len(range(rank, count, world))  # this rank's images: rank, rank+W, ...
            assert progress == [(k + 1) / share for k in range(share)]
        kind, message = report["failure"]
        if rank == 1:  # the rank that read the broken file raises its own error
            assert (kind, message) == ("DatasetError", "dataset Val/GT/clip01.png: truncated file")
        else:  # the others fail with it after the gather instead of waiting for rank 1
            assert kind == "VsrError"
            assert message == (
                "validation failed on rank 1: dataset Val/GT/clip01.png: truncated file"
            )
        assert_same_result(report["after failure"], want[5])
        # one rank's stop interrupts every rank at the same image slot, and none gathers
        assert report["stop"] == f"validation interrupted after {world} of 5 images"
        assert_same_result(report["after stop"], want[5])


def test_one_rank_or_none_is_the_single_process_path() -> None:
    """world_size 1 never gathers and keeps the per-image stop; a bad shard is an error."""
    model = tiny_model()

    def no_gather(obj: Any) -> list[Any]:
        raise AssertionError("a world of one does not gather")

    images = val_set(3)
    assert_same_result(
        validate(model, images, shard=ValShard(0, 1, no_gather)), validate(model, images)
    )
    with pytest.raises(ValidationInterrupted, match="interrupted after 0 of 3"):
        validate(model, images, shard=ValShard(0, 1, no_gather), should_stop=lambda: True)
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        ValShard(2, 2, no_gather)
