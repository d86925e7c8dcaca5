"""One optimizer step: the learning rate, forward and backward of every micro-batch
(accumulation), the redo after an out-of-memory error, gradient clipping and the update.

Device tensors only: the step folds its numbers into on-device sums; Python numbers are made only
on logging steps (telemetry.read_stats), the one deliberate device→host sync.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from vsr_async.data.loader import TrainBatch
from vsr_async.nn.losses import sharpness_ratio
from vsr_async.nn.tiling import free_device_memory
from vsr_async.records import StepResult
from vsr_async.training import batching, telemetry
from vsr_async.training.batch_fit import split_batch
from vsr_async.training.parts import EngineParts
from vsr_async.training.step_window import LOSS_VALUES


class FusedSkip(Protocol):
    """The two attributes a fused optimizer's `step()` reads to skip an update on the device
    (GradScaler sets them the same way); torch's stubs do not declare them on the optimizer."""

    grad_scale: Tensor | None
    found_inf: Tensor | None


def is_logging_step(parts: EngineParts, step: int) -> bool:
    """Whether completing step number `step` (1-based) reads numbers off the device."""
    return step % parts.config.LOG_TBOARD_EVERY == 0


def histogram_step(parts: EngineParts) -> bool:
    """Weight histograms are copied on rank 0 only (the weights agree; only it writes)."""
    leader = parts.ranks is None or parts.ranks.leader
    return leader and parts.step % parts.config.HIST_STEP_EVERY == 0


def epoch_steps_total(parts: EngineParts) -> int:
    return max(len(parts.train_set) // parts.samples_per_step, 1)


def progress(parts: EngineParts) -> tuple[int, int]:
    """(epoch, step within the epoch) of the samples consumed so far."""
    epoch, within = divmod(parts.samples_consumed, len(parts.train_set))
    return epoch, within // parts.samples_per_step


def train_step(parts: EngineParts) -> StepResult:
    step_index = parts.step  # 0-based index of the step being taken
    logging_step = is_logging_step(parts, step_index + 1)
    lr = parts.schedule.lr(step_index)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    weights = parts.adaptive.weights
    batching.ensure_batch_plan(parts)
    assert parts.batch_plan is not None

    parts.model.train()
    parts.model.track_activity = logging_step or not parts.activity_read
    samples = batching.next_samples(parts)  # on the host; split into micro-batches when used
    skipped = [path for part in samples for path in part.skipped]
    terms, sr, gt = accumulate_fitting(parts, samples, weights, step_index + 1)
    accumulation = parts.batch_plan.accumulation_steps  # after an OOM: the reduced plan's

    parts.scaler.unscale_(parts.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        parts.model.parameters(), max_norm=parts.adaptive.grad_clip, foreach=True
    )
    finite = torch.isfinite(terms[0]) & torch.isfinite(grad_norm)
    if parts.ranks is not None:  # every rank skips or takes the update alike (on the device)
        finite = parts.ranks.sum_((~finite).float().reshape(1))[0] == 0
    if parts.scaler.is_enabled():
        parts.scaler.step(parts.optimizer)  # skips on its own found_inf (no extra sync)
        parts.scaler.update()
    else:
        # The fused optimizer skips the update on the device when found_inf is 1.
        skip = cast(FusedSkip, parts.optimizer)  # see FusedSkip: a gap in torch's stubs
        skip.grad_scale = None
        skip.found_inf = (~finite).float()
        parts.optimizer.step()
    if parts.ema is not None:
        parts.ema.update()
    # Counted with the step (after its last exchange with other ranks): a checkpoint written
    # after a failed step holds the position of the last step taken.
    parts.samples_consumed += parts.samples_per_step
    parts.step += 1
    parts.window.add(terms / accumulation, grad_norm, finite)
    sharpness = (
        sharpness_ratio(sr, gt)  # of the last micro-batch: a sample suffices
        if parts.adaptive.needs_sharpness
        else grad_norm.new_zeros(())
    )
    parts.adaptive.record_step(grad_norm, sharpness, finite)

    epoch, epoch_step = progress(parts)
    return StepResult(
        step=parts.step,
        epoch=epoch,
        epoch_step=epoch_step,
        epoch_steps_total=epoch_steps_total(parts),
        learning_rate=lr,
        lr_phase=parts.schedule.phase(step_index),
        skipped_files=tuple(skipped),
        stats=telemetry.read_stats(parts) if logging_step else None,
        histograms=telemetry.histograms(parts) if histogram_step(parts) else None,
    )


def accumulate(
    parts: EngineParts, samples: list[TrainBatch], weights: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward of every micro-batch of one step: the summed total and terms
    ([LOSS_VALUES], laid out as `LossMeans`), and the last micro-batch's output and GT (device
    tensors, no sync)."""
    assert parts.batch_plan is not None
    accumulation = parts.batch_plan.accumulation_steps
    parts.optimizer.zero_grad(set_to_none=True)
    terms = torch.zeros(LOSS_VALUES, device=parts.device)  # the total, then each LossTerm
    micros = list(split_batch(samples, parts.batch_plan.micro_batch))
    for index, micro in enumerate(micros):
        batch = micro.to(parts.device, non_blocking=True)
        # Under torchrun only the last micro-batch's backward averages gradients over the ranks.
        with gradient_sync(parts, last=index == len(micros) - 1):
            with parts.autocast():
                sr = parts.forward(batch.lr)  # [B, 3, H, W]
            total, components = parts.loss(sr, batch.gt, weights)
            parts.scaler.scale(total / accumulation).backward()
        terms += torch.cat([total.detach().reshape(1), components])
    return terms, sr.detach(), batch.gt


def gradient_sync(parts: EngineParts, *, last: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's no_sync for every micro-batch but the last (a plain process: nothing)."""
    if parts.ddp is None or last:
        return contextlib.nullcontext()
    return parts.ddp.no_sync()


def accumulate_fitting(
    parts: EngineParts, samples: list[TrainBatch], weights: Any, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`accumulate`; after an out-of-memory error, memory is freed, the plan shrinks (half
    the micro-batch, twice the accumulation) and the step is redone from the same samples."""
    while True:
        activity = None
        if parts.model.track_activity:  # a failed attempt must not count twice
            activity = (parts.model.activity_sum.clone(), parts.model.activity_count.clone())
        try:
            return accumulate(parts, samples, weights)
        except torch.OutOfMemoryError as exc:
            message = str(exc).splitlines()[0] if str(exc) else "out of memory"
        # Outside the except block: the failed attempt's tensors are unreferenced now.
        parts.optimizer.zero_grad(set_to_none=True)
        if activity is not None:
            parts.model.activity_sum.copy_(activity[0])
            parts.model.activity_count.copy_(activity[1])
        del activity
        free_device_memory(parts.device)
        batching.shrink_after_oom(parts, step, message)
