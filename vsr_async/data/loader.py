"""Batches for the GPU worker: the training loader and the datasets built from a scan.

Workers are started with "forkserver" (or "spawn"), never "fork": the parent runs the event
loop, the GPU thread and the web server, and forking a process with threads can deadlock.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, default_collate

from vsr_async.data.frames import FrameTrainDataset, FrameValDataset
from vsr_async.data.images import ProcessResourceError
from vsr_async.data.info import Clip, DatasetInfo, PatchPair
from vsr_async.data.patches import PatchTrainDataset, PatchValDataset
from vsr_async.data.sampler import ResumableSampler
from vsr_async.data.skipping import SkippingDataset, TrainSample
from vsr_async.data.validation_set import ValidationSet
from vsr_async.errors import DatasetError
from vsr_async.settings import Config

log = logging.getLogger(__name__)

PREFETCH_BATCHES_PER_WORKER = 4


@dataclass
class TrainBatch:
    """One micro-batch: lr [B, T, 3, h, w], gt [B, 3, H, W], and files skipped to make it."""

    lr: torch.Tensor
    gt: torch.Tensor
    skipped: list[str] = field(default_factory=list)

    def pin_memory(self) -> TrainBatch:
        """Called by DataLoader(pin_memory=True) in its pinning thread."""
        return TrainBatch(self.lr.pin_memory(), self.gt.pin_memory(), self.skipped)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        return TrainBatch(
            self.lr.to(device, non_blocking=non_blocking),
            self.gt.to(device, non_blocking=non_blocking),
            self.skipped,
        )


def collate_train(samples: Sequence[TrainSample]) -> TrainBatch:
    """Stack samples; in a worker, `default_collate` stacks straight into shared memory."""
    lrs, gts, skipped = zip(*samples, strict=True)
    return TrainBatch(
        default_collate(list(lrs)), default_collate(list(gts)), [p for s in skipped for p in s]
    )


class TrainLoader:
    """A DataLoader's batches, with skipped files logged once each, in the main process.

    Workers have no logging set up, so the warning is written here, where the run's log goes.
    `skipped_counts` holds how often each file was skipped. (A wrapper, not a DataLoader
    subclass: DataLoader.__iter__ is typed to return its own iterator class.)
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.skipped_counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[TrainBatch]:
        try:
            for batch in self.loader:
                for path in batch.skipped:
                    if path not in self.skipped_counts:
                        log.warning(
                            "skipped unreadable training file %s (using another sample)", path
                        )
                    self.skipped_counts[path] += 1
                yield batch
        except RuntimeError as exc:
            error = _error_from_worker(exc)
            if error is None:
                raise
            raise error from None


def _error_from_worker(exc: RuntimeError) -> DatasetError | ProcessResourceError | None:
    """The DatasetError or ProcessResourceError a worker raised, rebuilt from torch's re-raise.

    torch re-raises a worker's exception by calling its class with the traceback text, which
    these (path, message) classes cannot take, so it arrives as a RuntimeError; the user should
    read the one-line error instead (the same text: "dataset <path>: <message>", or "cannot
    read <path>: this process is out of file descriptors ...").
    """
    dataset = f"{DatasetError.__module__}.{DatasetError.__qualname__}: dataset "
    resource = f"{ProcessResourceError.__module__}.{ProcessResourceError.__qualname__}: "
    lines = [line for line in str(exc).splitlines() if line.startswith((dataset, resource))]
    if not lines:
        return None
    if lines[-1].startswith(resource):
        return ProcessResourceError.from_message(lines[-1].removeprefix(resource))
    path, _, message = lines[-1].removeprefix(dataset).partition(": ")
    return DatasetError(path, message)


def build_train_loader(
    dataset: SkippingDataset,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    seed: int,
    start_epoch: int = 0,
    start_index: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
    rank_batch: int = 1,
) -> TrainLoader:
    """An endless loader of TrainBatch, resuming at (start_epoch, start_index).

    Batches are the same for any `num_workers`: every random choice comes from the sampler's
    per-sample seed. Pinning is used only where a CUDA device can use it.

    Under torchrun, rank `rank` of `world_size` loads only its chunks of `rank_batch` positions
    of the global stream (see ResumableSampler); `batch_size` (the micro-batch) must divide
    `rank_batch`, so that no micro-batch mixes two steps' chunks. The defaults are one process.
    """
    if world_size > 1 and rank_batch % batch_size:
        raise ValueError(
            f"batch_size {batch_size} must divide rank_batch {rank_batch} (samples per rank "
            "and step), or a micro-batch would mix two steps"
        )
    sampler = ResumableSampler(
        len(dataset),
        seed,
        start_epoch,
        start_index,
        rank=rank,
        world_size=world_size,
        rank_batch=rank_batch,
    )
    workers: dict[str, Any] = {}
    if num_workers > 0:
        workers = dict(
            multiprocessing_context=_worker_start_method(),
            persistent_workers=True,
            prefetch_factor=PREFETCH_BATCHES_PER_WORKER,
            worker_init_fn=_ignore_interrupts,
        )
    return TrainLoader(
        DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=num_workers,
            collate_fn=collate_train,
            pin_memory=pin_memory and torch.cuda.is_available(),
            **workers,
        )
    )


def build_datasets(config: Config, info: DatasetInfo) -> tuple[SkippingDataset, ValidationSet]:
    """The training and validation datasets of a scanned dataset, honoring VAL_MAX_IMAGES."""
    if (info.num_frames, info.scale) != (config.NUM_FRAMES, config.SCALE):
        raise ValueError(
            f"dataset was scanned for NUM_FRAMES={info.num_frames}, SCALE={info.scale}, "
            f"config has NUM_FRAMES={config.NUM_FRAMES}, SCALE={config.SCALE}"
        )
    val_items = info.val_items
    if config.VAL_MAX_IMAGES:
        val_items = val_items[: config.VAL_MAX_IMAGES]
    if info.layout == "patches":
        pairs = cast(tuple[PatchPair, ...], info.train_items)
        val_pairs = cast(tuple[PatchPair, ...], val_items)
        return (
            PatchTrainDataset(pairs, info.num_frames, info.scale),
            PatchValDataset(val_pairs, info.num_frames, info.scale),
        )
    clips = cast(tuple[Clip, ...], info.train_items)
    windows = cast(tuple[Clip, ...], val_items)
    return (
        FrameTrainDataset(clips, info.num_frames, info.scale, info.train_gt_size[0]),
        FrameValDataset(windows, info.num_frames, info.scale),
    )


def _ignore_interrupts(worker_id: int) -> None:
    """Ctrl+C reaches the whole process group; the main process stops the run gracefully (and
    its workers with it), so a worker must not die first and fail the step still running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
