"""State capture and restore: everything a checkpoint needs to continue a run exactly (weights,
EMA, optimizer, scaler, schedule, adaptive system, step window, RNG, batch plan), as CPU copies
taken on the GPU thread, and the way back.
"""

from __future__ import annotations

from typing import Any

import torch

from vsr_async.training import batching
from vsr_async.training.parts import EngineParts, Resumed
from vsr_async.training.rng import capture_rng, restore_rng


def cpu_copy(value: Any) -> Any:
    """A detached CPU copy of every tensor in a nested state (taken on the GPU thread)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(cpu_copy(v) for v in value)
    return value


def capture_state(parts: EngineParts) -> dict[str, Any]:
    """Everything needed to continue exactly, as CPU copies (syncs: checkpoint time only)."""
    return {
        "format_version": 1,
        "step": parts.step,
        "samples_consumed": parts.samples_consumed,
        "config": parts.config.public_dict(),  # never a secret: people share checkpoints
        "model": cpu_copy(parts.model.state_dict()),
        "ema": cpu_copy(parts.ema.state_dict()) if parts.ema is not None else None,
        "optimizer": cpu_copy(parts.optimizer.state_dict()),
        "scaler": cpu_copy(parts.scaler.state_dict()),
        "schedule": parts.schedule.state_dict(),
        "adaptive": cpu_copy(parts.adaptive.state_dict()),
        "window": cpu_copy(parts.window.state_dict()),
        "rng": capture_rng(),
        "batch_plan": parts.batch_plan.to_state() if parts.batch_plan is not None else None,
        "oom_events": list(parts.oom_events),
    }


def load_state(parts: EngineParts, state: dict[str, Any]) -> None:
    """Continue from a checkpoint (already verified and shape-checked by the caller)."""
    parts.model.load_state_dict(state["model"])
    if parts.ema is not None:
        parts.ema.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if state["scaler"]:
        parts.scaler.load_state_dict(state["scaler"])
    parts.schedule.load_state_dict(state["schedule"])
    parts.adaptive.load_state_dict(state["adaptive"])
    parts.window.load_state_dict(state["window"])
    restore_rng(state["rng"])
    parts.step = int(state["step"])
    parts.samples_consumed = int(state["samples_consumed"])
    batching.restore_batch_plan(parts, state.get("batch_plan"))
    parts.oom_events = list(state.get("oom_events") or [])
    # the sampler continues where the run stopped (after the probe, if one is still due)
    parts._batches = batching.open_loader(parts) if parts.batch_plan is not None else None
    parts.adaptive.on_resume(parts.step)
    parts.resumed = Resumed(
        step=parts.step,
        run_id=state["run_id"],
        best_quality=state.get("best_quality"),
        best_step=state.get("best_step"),
        validation_count=int(state.get("validation_count") or 0),
    )


def continue_from_weights(
    parts: EngineParts,
    *,
    step: int,
    model_state: dict[str, Any],
    optimizer_state: dict[str, dict[str, Any]] | None,
    run_id: str,
) -> None:
    """Continue at `step` from weights alone (a predecessor checkpoint): the model (strict), the
    EMA from it, Adam's per-parameter state by name when given (the hyperparameters stay this
    run's); schedule, adaptive system, window and RNG start fresh at `step`. The sampler starts
    as if `step` steps of this run's batch had been taken (the file does not say)."""
    parts.model.load_state_dict(model_state, strict=True)
    if parts.ema is not None:
        parts.ema.load_state_dict(parts.model.state_dict())
    if optimizer_state is not None:
        names = {id(p): name for name, p in parts.model.named_parameters()}
        saved = parts.optimizer.state_dict()  # this run's groups and hyperparameters
        params = [p for group in parts.optimizer.param_groups for p in group["params"]]
        saved["state"] = {
            index: optimizer_state[names[id(p)]]
            for index, p in enumerate(params)
            if names[id(p)] in optimizer_state
        }
        parts.optimizer.load_state_dict(saved)
    parts.step = step
    parts.samples_consumed = step * parts.samples_per_step
    parts._batches = batching.open_loader(parts) if parts.batch_plan is not None else None
    parts.adaptive.on_resume(step)
    parts.resumed = Resumed(
        step=step, run_id=run_id, best_quality=None, best_step=None, validation_count=0
    )
