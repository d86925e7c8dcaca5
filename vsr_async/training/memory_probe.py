"""The CUDA memory probe for BATCH_SIZE="auto": real trial steps of the run's own model on
synthetic samples of the training size, the peak measured, never guessed.

Runs on the GPU thread before the first step; leaves weights, optimizer state and the global RNG
as they were, and frees what it allocated.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import torch

from vsr_async.nn.tiling import free_device_memory
from vsr_async.training.batch_fit import (
    SAFETY_MARGIN,
    BatchPlan,
    fit_batch,
    optimizer_state_placeholders,
    requested_setting,
    usable_device_memory,
)
from vsr_async.training.parts import EngineParts

log = logging.getLogger(__name__)


def probe_batch_plan(parts: EngineParts) -> BatchPlan:
    """Real trial steps (forward+backward, no optimizer step) at the training sample size.

    The peak is measured with max_memory_allocated; memory AdamW's state will take is held
    by placeholders meanwhile. Weights, optimizer state and the RNG are left as they were.
    """
    usable = usable_device_memory(parts.device)
    limit = int(usable * (1 - SAFETY_MARGIN))
    log.info(
        'BATCH_SIZE="auto": probing micro-batches for EFFECTIVE_BATCH=%d on %s '
        "(%.2f GB usable, limit %.2f GB with a %d%% margin)",
        parts.rank_batch,
        parts.device,
        usable / 1e9,
        limit / 1e9,
        round(SAFETY_MARGIN * 100),
    )
    placeholders = optimizer_state_placeholders(parts.model, parts.optimizer)
    try:
        return fit_batch(
            parts.rank_batch,
            functools.partial(trial_step, parts),
            limit_bytes=limit,
            requested=requested_setting(parts.config),
            checkpointing_configured=parts.config.GRADIENT_CHECKPOINTING,
        )
    finally:
        del placeholders
        parts.optimizer.zero_grad(set_to_none=True)
        parts.model.gradient_checkpointing = parts.config.GRADIENT_CHECKPOINTING
        free_device_memory(parts.device)
        torch.cuda.reset_peak_memory_stats(parts.device)  # vram_usage_gb starts after it


def trial_step(parts: EngineParts, micro_batch: int, checkpointing: bool) -> int:
    """Forward+backward of `micro_batch` synthetic samples; the peak allocated bytes."""
    parts.optimizer.zero_grad(set_to_none=True)
    free_device_memory(parts.device)  # what a failed trial held is unreferenced by now
    torch.cuda.reset_peak_memory_stats(parts.device)
    parts.model.train()
    parts.model.track_activity = False
    parts.model.gradient_checkpointing = checkpointing
    w, h = parts.train_gt_size
    s, t = parts.config.SCALE, parts.config.NUM_FRAMES
    generator = torch.Generator().manual_seed(0)  # the global RNG stays untouched
    lr = torch.rand((micro_batch, t, 3, h // s, w // s), generator=generator)
    gt = torch.rand((micro_batch, 3, h, w), generator=generator)
    weights = parts.adaptive.weights
    if parts.loss.perceptual is not None:  # the VGG pass may be switched on later: count it
        weights = dataclasses.replace(weights, perceptual=max(weights.perceptual, 1.0))
    try:
        with parts.autocast():
            # The bare model under torchrun: each rank probes alone (DDP's backward would
            # wait for the other ranks' gradients).
            forward = parts.forward if parts.ddp is None else parts.model
            sr = forward(lr.to(parts.device))  # [n, 3, H, W]
        total, _ = parts.loss(sr, gt.to(parts.device), weights)
        total.backward()  # no scaler, no optimizer step: nothing of the run changes
        torch.cuda.synchronize(parts.device)
        return torch.cuda.max_memory_allocated(parts.device)
    finally:
        parts.optimizer.zero_grad(set_to_none=True)
