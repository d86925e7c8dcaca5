"""Batching: the batch plan (micro-batch x accumulation, gradient checkpointing), the loader
that yields its micro-batches, one step's samples, and the plan's changes (probe, out-of-memory
shrink, restore from a checkpoint). Runs on the GPU thread, on `EngineParts`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from vsr_async.data.loader import TrainBatch, build_train_loader
from vsr_async.errors import DeviceMemoryError
from vsr_async.training.batch_fit import (
    BatchPlan,
    after_oom,
    configured_plan,
    requested_setting,
    unlimited_plan,
)
from vsr_async.training.memory_probe import probe_batch_plan
from vsr_async.training.parts import EngineParts

log = logging.getLogger(__name__)


def plan_at_start(parts: EngineParts) -> None:
    """The plan known at construction (all but BATCH_SIZE="auto" on CUDA), and its loader."""
    config = parts.config
    if config.BATCH_SIZE != "auto":
        apply_plan(parts, configured_plan(config))
    elif parts.device.type != "cuda":
        apply_plan(parts, unlimited_plan(config, parts.device.type))
    if parts.batch_plan is not None:
        parts._batches = open_loader(parts)


def open_loader(parts: EngineParts) -> Iterator[TrainBatch]:
    """Batches of the plan's micro-batch (a divisor of a step's samples; next_samples)."""
    assert parts.batch_plan is not None
    n = len(parts.train_set)
    return iter(
        build_train_loader(
            parts.train_set,
            batch_size=parts.batch_plan.micro_batch,
            num_workers=parts.config.NUM_WORKERS,
            pin_memory=parts.config.PIN_MEMORY and parts.device.type == "cuda",
            seed=parts.config.SEED,
            start_epoch=parts.samples_consumed // n,
            start_index=parts.samples_consumed % n,
            # under torchrun: this rank's chunk of every step of the one global sample stream
            rank=parts.ranks.rank if parts.ranks is not None else 0,
            world_size=parts.world_size,
            rank_batch=parts.rank_batch,
        )
    )


def ensure_batch_plan(parts: EngineParts) -> BatchPlan:
    """The batch plan; for BATCH_SIZE="auto" on CUDA, probed once before the first step."""
    if parts.batch_plan is None:
        apply_plan(parts, probe_batch_plan(parts))
    if parts._batches is None:
        parts._batches = open_loader(parts)
    assert parts.batch_plan is not None
    return parts.batch_plan


def apply_plan(parts: EngineParts, plan: BatchPlan) -> None:
    parts.batch_plan = plan
    parts.model.gradient_checkpointing = plan.gradient_checkpointing
    parts.runtime_version += 1
    log.info("batch plan: %s", plan.describe())


def shrink_after_oom(parts: EngineParts, step: int, message: str) -> None:
    """Halve the micro-batch (or switch checkpointing on) after an OOM in step `step`."""
    old = parts.batch_plan
    assert old is not None
    try:
        new = after_oom(old, message)
    except DeviceMemoryError:
        log.error("out of memory in step %d at micro-batch 1 with gradient checkpointing", step)
        raise
    event = {
        "step": step,
        "micro_batch_before": old.micro_batch,
        "micro_batch_after": new.micro_batch,
        "accumulation_steps_after": new.accumulation_steps,
        "gradient_checkpointing_after": new.gradient_checkpointing,
        "error": message,
    }
    parts.oom_events.append(event)
    log.warning(
        "out of memory in step %d at micro-batch %d (%s): redoing the step from the same "
        "samples with micro-batch %d x %d accumulation, gradient checkpointing %s",
        step,
        old.micro_batch,
        message,
        new.micro_batch,
        new.accumulation_steps,
        "on" if new.gradient_checkpointing else "off",
    )
    apply_plan(parts, new)


def next_samples(parts: EngineParts) -> list[TrainBatch]:
    """This rank's samples of one optimizer step (EFFECTIVE_BATCH) as the loader's batches.

    The loader yields batches of the micro-batch it was opened with, a divisor of the step's
    samples; the step is split into micro-batches of the current plan only when it runs,
    so a step that ran out of memory is redone from the same samples, split finer.
    """
    assert parts._batches is not None
    batches = [next(parts._batches)]
    count = batches[0].lr.shape[0]
    while count < parts.rank_batch:
        batches.append(next(parts._batches))
        count += batches[-1].lr.shape[0]
    if count != parts.rank_batch:
        raise RuntimeError(f"loader batches gave {count} samples for a step of {parts.rank_batch}")
    return batches


def restore_batch_plan(parts: EngineParts, saved: dict[str, Any] | None) -> None:
    """Keep the checkpoint's fitted (or OOM-reduced) plan while the config asks for the same
    batch setting; a changed BATCH_SIZE/ACCUMULATION_STEPS/EFFECTIVE_BATCH wins."""
    if saved is None:
        return
    plan = BatchPlan.from_state(saved)
    if plan.requested != requested_setting(parts.config):
        log.info(
            "the checkpoint's batch plan was made for %s; the config now asks for %s: not reused",
            plan.requested,
            requested_setting(parts.config),
        )
        return
    if parts.config.GRADIENT_CHECKPOINTING and not plan.gradient_checkpointing:
        plan = dataclasses.replace(plan, gradient_checkpointing=True)
    suffix = " (from the checkpoint)"
    reason = plan.reason if plan.reason.endswith(suffix) else plan.reason + suffix
    apply_plan(parts, dataclasses.replace(plan, reason=reason))
