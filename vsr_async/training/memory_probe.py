"""The CUDA memory probe for BATCH_SIZE="auto": real trial steps of the run's own model on
synthetic samples of the training size, the peak measured, never guessed.

Runs on the GPU thread before the first step; leaves weights, optimizer state and the global RNG
as they were, and frees what it allocated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from vsr_async.nn.tiling import free_device_memory
from vsr_async.training.batch_fit import (
    SAFETY_MARGIN,
    BatchPlan,
    fit_batch,
    optimizer_state_placeholders,
    requested_setting,
    usable_device_memory,
)

if TYPE_CHECKING:
    from vsr_async.nn.losses import LossComputer
    from vsr_async.nn.models import Model
    from vsr_async.training.adaptive import AdaptiveSystem

log = logging.getLogger(__name__)


class ProbedEngine(Protocol):
    """What the probe uses of `TrainingEngine`, which calls it (so the probe never imports the
    engine back)."""

    config: Any
    device: torch.device
    model: Model
    optimizer: torch.optim.Optimizer
    adaptive: AdaptiveSystem
    loss: LossComputer
    forward: Callable[[Tensor], Tensor]
    train_gt_size: tuple[int, int]
    samples_per_step: int

    def autocast(self) -> contextlib.AbstractContextManager[Any]: ...


def probe_batch_plan(engine: ProbedEngine) -> BatchPlan:
    """Real trial steps (forward+backward, no optimizer step) at the training sample size.

    The peak is measured with max_memory_allocated; memory AdamW's state will take is held
    by placeholders meanwhile. Weights, optimizer state and the RNG are left as they were.
    """
    usable = usable_device_memory(engine.device)
    limit = int(usable * (1 - SAFETY_MARGIN))
    log.info(
        'BATCH_SIZE="auto": probing micro-batches for EFFECTIVE_BATCH=%d on %s '
        "(%.2f GB usable, limit %.2f GB with a %d%% margin)",
        engine.samples_per_step,
        engine.device,
        usable / 1e9,
        limit / 1e9,
        round(SAFETY_MARGIN * 100),
    )
    placeholders = optimizer_state_placeholders(engine.model, engine.optimizer)
    try:
        return fit_batch(
            engine.samples_per_step,
            functools.partial(trial_step, engine),
            limit_bytes=limit,
            requested=requested_setting(engine.config),
            checkpointing_configured=engine.config.GRADIENT_CHECKPOINTING,
        )
    finally:
        del placeholders
        engine.optimizer.zero_grad(set_to_none=True)
        engine.model.gradient_checkpointing = engine.config.GRADIENT_CHECKPOINTING
        free_device_memory(engine.device)
        torch.cuda.reset_peak_memory_stats(engine.device)  # vram_usage_gb starts after it


def trial_step(engine: ProbedEngine, micro_batch: int, checkpointing: bool) -> int:
    """Forward+backward of `micro_batch` synthetic samples; the peak allocated bytes."""
    engine.optimizer.zero_grad(set_to_none=True)
    free_device_memory(engine.device)  # what a failed trial held is unreferenced by now
    torch.cuda.reset_peak_memory_stats(engine.device)
    engine.model.train()
    engine.model.track_activity = False
    engine.model.gradient_checkpointing = checkpointing
    w, h = engine.train_gt_size
    s, t = engine.config.SCALE, engine.config.NUM_FRAMES
    generator = torch.Generator().manual_seed(0)  # the global RNG stays untouched
    lr = torch.rand((micro_batch, t, 3, h // s, w // s), generator=generator)
    gt = torch.rand((micro_batch, 3, h, w), generator=generator)
    weights = engine.adaptive.weights
    if engine.loss.perceptual is not None:  # the VGG pass may be switched on later: count it
        weights = dataclasses.replace(weights, perceptual=max(weights.perceptual, 1.0))
    try:
        with engine.autocast():
            sr = engine.forward(lr.to(engine.device))  # [n, 3, H, W]
        total, _ = engine.loss(sr, gt.to(engine.device), weights)
        total.backward()  # no scaler, no optimizer step: nothing of the run changes
        torch.cuda.synchronize(engine.device)
        return torch.cuda.max_memory_allocated(engine.device)
    finally:
        engine.optimizer.zero_grad(set_to_none=True)
