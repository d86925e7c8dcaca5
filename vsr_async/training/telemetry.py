"""Telemetry: what the engine reports beyond a step's number — the logging-window statistics
(the one deliberate device→host sync per LOG_TBOARD_EVERY), weight histograms, host memory and
the runtime facts (precision, batch plan, OOM events, validation tiling) for the snapshot.
"""

from __future__ import annotations

import logging
import os
import resource
from typing import Any

import torch

from vsr_async.records import StepStats
from vsr_async.training.adaptive import AdaptiveSystem
from vsr_async.training.parts import EngineParts
from vsr_async.training.step_window import WindowMeans

log = logging.getLogger(__name__)


def host_memory_gb() -> float:
    """Resident memory of this process (Linux: /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _momentum(parts: EngineParts) -> tuple[torch.Tensor, int]:
    """Sum of |first moment| over the optimizer's state (on the device) and its element count."""
    momentum_sum, momentum_count = torch.zeros((), device=parts.device), 0
    for state in parts.optimizer.state.values():
        if "exp_avg" in state:
            momentum_sum += state["exp_avg"].abs().sum()
            momentum_count += state["exp_avg"].numel()
    return momentum_sum, momentum_count


def read_stats(parts: EngineParts) -> StepStats:
    """The logging-cadence sync: one transfer of every window sum, then a new window."""
    momentum_sum, momentum_count = _momentum(parts)
    means = parts.window.read(extra=[momentum_sum])
    smoothed = AdaptiveSystem.loss_at_targets(parts.config, means.losses)
    parts.adaptive.update(parts.step, smoothed, means.losses.perceptual)
    log_adaptive_events(parts)
    activity = parts.model.read_activity(reset=True)
    parts.model.track_activity = False
    parts.activity_read = True
    return _stats(parts, means, momentum_count, activity)


def peek_stats(parts: EngineParts) -> StepStats | None:
    """The numbers so far, changing nothing (no new window, no adaptive update): for a
    validation before the first logging step. None while no step has run in the window."""
    if parts.window.steps == 0:
        return None
    momentum_sum, momentum_count = _momentum(parts)
    means = parts.window.peek(extra=[momentum_sum])
    return _stats(parts, means, momentum_count, parts.model.read_activity(reset=False))


def _stats(
    parts: EngineParts, means: WindowMeans, momentum_count: int, activity: dict[str, float]
) -> StepStats:
    (momentum_total,) = means.extra
    vram_peak = vram_reserved = None
    if parts.device.type == "cuda":
        vram_peak = torch.cuda.max_memory_allocated(parts.device) / 1e9
        vram_reserved = torch.cuda.memory_reserved(parts.device) / 1e9
    return StepStats(
        losses=means.losses,
        grad_norm=means.grad_norm,
        weights=parts.adaptive.weights,
        grad_clip=float(parts.adaptive.grad_clip),
        adaptive=parts.adaptive.report(),
        activity=activity,
        adam_momentum_avg=momentum_total / max(momentum_count, 1),
        vram_peak_gb=vram_peak,
        vram_reserved_gb=vram_reserved,
        host_memory_gb=host_memory_gb(),
        nonfinite_steps=means.nonfinite_total,
        nonfinite_streak=means.nonfinite_streak,
    )


def log_adaptive_events(parts: EngineParts) -> None:
    for event in parts.adaptive.drain_events():
        log.info("adaptive: %s", event)


def histograms(parts: EngineParts) -> dict[str, Any]:
    """Weight values for TensorBoard histograms (HIST_STEP_EVERY; a deliberate copy)."""
    return {
        name: p.detach().float().flatten().cpu().numpy()
        for name, p in parts.model.named_parameters()
    }


def runtime_facts(parts: EngineParts) -> dict[str, Any]:
    """The snapshot's `runtime` entries about this engine (read between steps)."""
    plan = parts.batch_plan
    return {
        "precision": parts.precision.mode,
        "precision_reason": parts.precision.reason,
        "batch_plan": plan.to_snapshot() if plan is not None else None,
        "oom_events": len(parts.oom_events),
        "oom_recent": parts.oom_events[-10:],
        "validation_tiling": parts.validation_tiling.to_snapshot(),
        "world_size": parts.world_size,
        "global_batch": parts.samples_per_step,  # samples per optimizer step, all ranks
    }
