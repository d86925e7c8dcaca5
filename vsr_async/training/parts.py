"""EngineParts: every tensor-holding object of one run (model, EMA, optimizer, scaler, schedule,
adaptive system, loss, datasets) and the counters the other engine modules share.

Built on the GPU thread (CUDA handles are per thread). The step, batching, telemetry and state
modules work on these parts; `engine.TrainingEngine` is the facade that the worker calls.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch.nn.parallel import DistributedDataParallel

from vsr_async.data.loader import TrainBatch, build_datasets
from vsr_async.nn.ema import EmaWeights
from vsr_async.nn.losses import LossComputer
from vsr_async.nn.models import build_model
from vsr_async.nn.tiling import TiledInference
from vsr_async.settings import Config
from vsr_async.training.adaptive import AdaptiveSystem
from vsr_async.training.batch_fit import BatchPlan, effective_batch
from vsr_async.training.distributed import RankContext
from vsr_async.training.precision import PrecisionPlan, precision_for, resolve_device
from vsr_async.training.schedule import LRSchedule
from vsr_async.training.step_window import StepWindow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resumed:
    """What a resumed engine continues from (the supervisor restores the store from it)."""

    step: int
    run_id: str
    best_quality: float | None
    best_step: int | None
    validation_count: int
    source: Path | None = None  # the file it came from (retention's lineage: see checkpoints.py)


def rank_local_buffers() -> dict[str, Any]:
    """DDP keyword that leaves buffers (the activity sums) rank-local after the start: no
    broadcast before every forward. Its name changed in torch 2.13."""
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class EngineParts:
    """Owns every tensor of the run; built on the GPU thread (CUDA handles are per thread)."""

    def __init__(self, config: Config, dataset_info: Any, ranks: RankContext | None = None) -> None:
        self.config = config
        self.ranks = ranks  # None: a plain process (no torchrun), which changes nothing below
        self.device = resolve_device(config.DEVICE)
        if ranks is not None:
            self.device = ranks.device(self.device)
        self.precision: PrecisionPlan = precision_for(config.AMP, self.device)
        log.info("precision: %s (%s)", self.precision.mode, self.precision.reason)
        torch.manual_seed(config.SEED)
        self.channels_last = config.CHANNELS_LAST and self.device.type == "cuda"

        # model, EMA, optimizer
        self.model = build_model(
            config.MODEL,
            n_feats=config.N_FEATS,
            n_blocks=config.N_BLOCKS,
            num_frames=config.NUM_FRAMES,
            scale=config.SCALE,
        )
        self.model.gradient_checkpointing = config.GRADIENT_CHECKPOINTING
        self.model.to(self.device)
        if self.channels_last:
            # Module.to accepts memory_format; torch's overloads for it leave the keyword out.
            cast(Any, self.model).to(memory_format=torch.channels_last)
        # Under torchrun the step's forward goes through DDP (its backward averages the
        # gradients over the ranks); validation, EMA and checkpoints use the bare model.
        self.ddp: DistributedDataParallel | None = None
        trained: torch.nn.Module = self.model
        if ranks is not None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # VSR++ with one frame leaves its fusion layers out of the graph (DDP must know).
            unused = config.MODEL == "vsrpp" and config.NUM_FRAMES == 1
            try:
                self.ddp = DistributedDataParallel(
                    self.model,
                    device_ids=ids,
                    find_unused_parameters=unused,
                    **rank_local_buffers(),
                )
            except RuntimeError as exc:  # its start compares and broadcasts the weights
                raise ranks.failure("DistributedDataParallel's start", exc) from None
            trained = self.ddp
        self.forward = torch.compile(trained) if config.COMPILE else trained
        self.ema = EmaWeights(self.model, config.EMA_DECAY) if config.EMA_DECAY > 0 else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.MAX_LR,
            weight_decay=config.WEIGHT_DECAY,
            fused=True,  # device-side skip of non-finite steps (found_inf), no host sync
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision.uses_grad_scaler
        )
        self.schedule = LRSchedule.from_config(config)
        sum_over_ranks = ranks.sum_ if ranks is not None else None
        self.adaptive = AdaptiveSystem(config, self.schedule, self.device, sum_over_ranks)
        self.loss = LossComputer(self._perceptual(config))

        # data
        self.train_set, self.val_set = build_datasets(config, dataset_info)
        self.train_gt_size: tuple[int, int] = dataset_info.train_gt_size  # (W, H), for the probe
        # The batch settings mean per rank; a step consumes world_size x that many samples.
        self.world_size = ranks.world_size if ranks is not None else 1
        self.rank_batch = effective_batch(config)  # this rank's samples per step
        self.samples_per_step = self.rank_batch * self.world_size  # one step, all ranks
        self.samples_consumed = 0
        self.step = 0  # optimizer steps completed

        # batch plan (micro-batch x accumulation, checkpointing): set by `batching`; known at
        # construction except for BATCH_SIZE="auto" on CUDA, probed before the first step
        self.batch_plan: BatchPlan | None = None
        self.oom_events: list[dict[str, Any]] = []  # out-of-memory steps redone, oldest first
        self.validation_tiling = TiledInference()
        self.runtime_version = 0  # bumped when a fact of `telemetry.runtime_facts` changes
        self._batches: Iterator[TrainBatch] | None = None  # yields the plan's micro-batches
        self.window = StepWindow(self.device, ranks.mean_ if ranks is not None else None)
        # activity is tracked on logging steps, and on every step until the first is read, so
        # a validation before the first logging step has a layer activity map too
        self.activity_read = False
        self.resumed: Resumed | None = None

    def _perceptual(self, config: Config) -> torch.nn.Module | None:
        if config.PERCEPTUAL_WEIGHT <= 0:
            return None
        from vsr_async.nn.perceptual import load_perceptual

        return load_perceptual(config.PERCEPTUAL_WEIGHTS_PATH).to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.precision.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)
