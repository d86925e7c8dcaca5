"""The batch plan: micro-batch, accumulation and gradient checkpointing, and how they are found.

`fit_batch` is the search for `BATCH_SIZE = "auto"`, a pure function over a trial callable (the
engine's real forward+backward on the GPU; a simulated memory model in the tests). `after_oom`
is the plan that the run falls back to when a step runs out of memory. Neither touches a device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import torch

from vsr_async.data.loader import TrainBatch
from vsr_async.errors import DeviceMemoryError
from vsr_async.settings import Config

log = logging.getLogger(__name__)

SAFETY_MARGIN = 0.10
"""Fraction of the usable device memory a fitted micro-batch leaves free (fragmentation, the
larger clips and the memory growth of a long run)."""

GB = 1e9


@dataclass(frozen=True)
class Trial:
    """One probe: micro-batch `n`, checkpointing on/off, and what it measured."""

    micro_batch: int
    gradient_checkpointing: bool
    peak_bytes: int | None  # None: the trial ran out of memory
    fits: bool


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's EFFECTIVE_BATCH samples run: micro_batch x accumulation_steps.

    `requested` is the setting it was made for ("auto/8" or "4x2"), so that a resumed run keeps
    a fitted or OOM-reduced plan only while the configuration still asks for the same thing.
    """

    micro_batch: int
    accumulation_steps: int
    gradient_checkpointing: bool
    requested: str
    reason: str
    measured_peak_bytes: int | None = None
    limit_bytes: int | None = None
    trials: tuple[Trial, ...] = ()

    def __post_init__(self) -> None:
        if self.micro_batch < 1 or self.accumulation_steps < 1:
            raise ValueError(f"bad batch plan {self.micro_batch} x {self.accumulation_steps}")

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.accumulation_steps

    def describe(self) -> str:
        """One line for the log and the console."""
        text = (
            f"micro-batch {self.micro_batch} x {self.accumulation_steps} accumulation = "
            f"{self.effective_batch} samples per step, gradient checkpointing "
            f"{'on' if self.gradient_checkpointing else 'off'}"
        )
        if self.measured_peak_bytes is not None:
            text += f", measured peak {self.measured_peak_bytes / GB:.2f} GB"
        if self.limit_bytes is not None:
            text += f" (limit {self.limit_bytes / GB:.2f} GB)"
        return f"{text}: {self.reason}"

    def to_snapshot(self) -> dict[str, Any]:
        """The snapshot's `runtime.batch_plan` (JSON-ready; memory in GB)."""
        return {
            "micro_batch": self.micro_batch,
            "accumulation_steps": self.accumulation_steps,
            "effective_batch": self.effective_batch,
            "gradient_checkpointing": self.gradient_checkpointing,
            "measured_peak_gb": _gb(self.measured_peak_bytes),
            "limit_gb": _gb(self.limit_bytes),
            "reason": self.reason,
            "trials": [
                {
                    "micro_batch": t.micro_batch,
                    "gradient_checkpointing": t.gradient_checkpointing,
                    "peak_gb": _gb(t.peak_bytes),
                    "fits": t.fits,
                }
                for t in self.trials
            ],
        }

    def to_state(self) -> dict[str, Any]:
        """For checkpoints (plain Python values)."""
        state = asdict(self)
        state["trials"] = [asdict(t) for t in self.trials]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BatchPlan:
        values = dict(state)
        values["trials"] = tuple(Trial(**t) for t in values.get("trials", ()))
        return cls(**values)


def _gb(value: int | None) -> float | None:
    return None if value is None else round(value / GB, 3)


def requested_setting(config: Config) -> str:
    """What the configuration asks for, as `BatchPlan.requested` records it."""
    if config.BATCH_SIZE == "auto":
        return f"auto/{config.EFFECTIVE_BATCH}"
    return f"{config.BATCH_SIZE}x{config.ACCUMULATION_STEPS}"


def effective_batch(config: Config) -> int:
    """Samples per optimizer step: EFFECTIVE_BATCH for "auto", else BATCH_SIZE x ACCUMULATION."""
    if config.BATCH_SIZE == "auto":
        return int(config.EFFECTIVE_BATCH)
    return int(config.BATCH_SIZE) * int(config.ACCUMULATION_STEPS)


def configured_plan(config: Config) -> BatchPlan:
    """The plan a fixed BATCH_SIZE gives (no probe)."""
    return BatchPlan(
        micro_batch=int(config.BATCH_SIZE),
        accumulation_steps=int(config.ACCUMULATION_STEPS),
        gradient_checkpointing=bool(config.GRADIENT_CHECKPOINTING),
        requested=requested_setting(config),
        reason="as configured (BATCH_SIZE, ACCUMULATION_STEPS)",
    )


def unlimited_plan(config: Config, device_type: str) -> BatchPlan:
    """BATCH_SIZE="auto" where device memory sets no limit (the CPU): one micro-batch per step."""
    total = effective_batch(config)
    return BatchPlan(
        micro_batch=total,
        accumulation_steps=1,
        gradient_checkpointing=bool(config.GRADIENT_CHECKPOINTING),
        requested=requested_setting(config),
        reason=(
            f'BATCH_SIZE="auto" on the {device_type.upper()}: no device-memory limit to fit, '
            f"so one micro-batch of EFFECTIVE_BATCH={total}"
        ),
    )


def divisors(n: int) -> list[int]:
    """The divisors of n, ascending."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def next_smaller_micro_batch(effective: int, micro: int) -> int | None:
    """The largest divisor of `effective` that is at most half of `micro` (None at 1).

    For powers of two that is exactly half; otherwise the halving keeps
    micro-batch x accumulation == effective batch.
    """
    smaller = [d for d in divisors(effective) if d <= micro // 2]
    return smaller[-1] if smaller else None


def after_oom(plan: BatchPlan, error: str = "") -> BatchPlan:
    """The plan to redo a step with after an out-of-memory error in it.

    Halve the micro-batch (accumulation doubles, the effective batch stays); at micro-batch 1
    switch gradient checkpointing on; if that ran out of memory too, a `DeviceMemoryError`.
    """
    total = plan.effective_batch
    smaller = next_smaller_micro_batch(total, plan.micro_batch)
    if smaller is not None:
        return replace(
            plan,
            micro_batch=smaller,
            accumulation_steps=total // smaller,
            reason=(
                f"out of memory at micro-batch {plan.micro_batch}: halved to {smaller} "
                f"(accumulation {total // smaller})"
            ),
        )
    if not plan.gradient_checkpointing:
        return replace(
            plan,
            gradient_checkpointing=True,
            reason="out of memory at micro-batch 1: gradient checkpointing switched on",
        )
    raise DeviceMemoryError(
        f"out of device memory even at micro-batch 1 with gradient checkpointing "
        f"(EFFECTIVE_BATCH {total} = 1 x {total}): the model does not fit this device at this "
        f"sample size; reduce N_FEATS, N_BLOCKS, NUM_FRAMES or the patch size"
        + (f" ({error})" if error else "")
    )


TrialFn = Callable[[int, bool], int]
"""`try_micro_batch(n, gradient_checkpointing) -> peak bytes`; raises torch.OutOfMemoryError."""


def fit_batch(
    effective: int,
    try_micro_batch: TrialFn,
    *,
    limit_bytes: int | None,
    requested: str,
    checkpointing_configured: bool = False,
) -> BatchPlan:
    """The largest micro-batch that divides `effective` and fits under `limit_bytes`.

    A micro-batch fits when its trial step does not run out of memory and its measured peak is
    at most `limit_bytes` (the usable memory less the safety margin; None: no limit). Memory
    grows with the micro-batch, so the search tries EFFECTIVE_BATCH first (one trial where it
    fits), then bisects the divisors below it. Without checkpointing first (unless configured
    on); if not even 1 fits, again with gradient checkpointing; if that fails too, a
    `DeviceMemoryError` that names the sizes.
    """
    if effective < 1:
        raise ValueError(f"effective batch must be >= 1, got {effective}")
    candidates = divisors(effective)
    trials: list[Trial] = []

    def fits(n: int, checkpointing: bool) -> bool:
        try:
            peak: int | None = int(try_micro_batch(n, checkpointing))
        except torch.OutOfMemoryError:
            peak = None
        ok = peak is not None and (limit_bytes is None or peak <= limit_bytes)
        trials.append(Trial(n, checkpointing, peak, ok))
        if peak is None:
            outcome = "out of memory"
        else:
            outcome = f"peak {peak / GB:.2f} GB" + ("" if ok else " (over the limit)")
        log.info(
            "batch fit: micro-batch %d, checkpointing %s: %s",
            n,
            "on" if checkpointing else "off",
            outcome,
        )
        return ok

    modes = (True,) if checkpointing_configured else (False, True)
    for checkpointing in modes:
        best = _largest_fitting(candidates, partial(fits, checkpointing=checkpointing))
        if best is None:
            continue
        peak = next(t.peak_bytes for t in reversed(trials) if t.micro_batch == best and t.fits)
        if checkpointing and not checkpointing_configured:
            why = "gradient checkpointing switched on: without it not even micro-batch 1 fits"
        elif best == effective:
            why = f"the whole EFFECTIVE_BATCH={effective} fits in one micro-batch"
        else:
            why = f"largest divisor of EFFECTIVE_BATCH={effective} that fits"
        return BatchPlan(
            micro_batch=best,
            accumulation_steps=effective // best,
            gradient_checkpointing=checkpointing,
            requested=requested,
            reason=f"fitted by {len(trials)} trial step(s): {why}",
            measured_peak_bytes=peak,
            limit_bytes=limit_bytes,
            trials=tuple(trials),
        )
    smallest = [t for t in trials if t.micro_batch == 1 and t.gradient_checkpointing]
    need = smallest[-1].peak_bytes if smallest else None
    raise DeviceMemoryError(
        f'BATCH_SIZE="auto": not even micro-batch 1 (of EFFECTIVE_BATCH {effective}) fits with '
        "gradient checkpointing"
        + (f" (it needs {need / GB:.2f} GB" if need is not None else " (out of memory")
        + (f", limit {limit_bytes / GB:.2f} GB)" if limit_bytes is not None else ")")
        + "; reduce N_FEATS, N_BLOCKS, NUM_FRAMES or the patch size"
    )


def _largest_fitting(candidates: list[int], fits: Callable[[int], bool]) -> int | None:
    """The largest candidate (ascending list) for which `fits` holds, assuming monotonicity."""
    if fits(candidates[-1]):
        return candidates[-1]
    lo, hi, best = 0, len(candidates) - 2, None
    while lo <= hi:
        mid = (lo + hi + 1) // 2
        if fits(candidates[mid]):
            best, lo = candidates[mid], mid + 1
        else:
            hi = mid - 1
    return best


# --- device side: what the engine's probe and step use --------------------------------------


def usable_device_memory(device: torch.device) -> int:
    """Bytes this process can hold on a CUDA device: what is free plus what it has reserved,
    capped by `torch.cuda.set_per_process_memory_fraction`."""
    # An index: get_per_process_memory_fraction refuses torch.device("cuda") without one.
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    usable = free + torch.cuda.memory_reserved(index)
    fraction = torch.cuda.get_per_process_memory_fraction(index)
    return min(usable, int(total * fraction))


def optimizer_state_placeholders(model: torch.nn.Module, optimizer: Any) -> list[torch.Tensor]:
    """Tensors the size of AdamW's not yet allocated state (exp_avg, exp_avg_sq per parameter),
    so a probe's peak includes that memory without taking an optimizer step."""
    missing = [p for p in model.parameters() if p.requires_grad and not optimizer.state.get(p)]
    return [torch.empty_like(p) for p in missing for _ in range(2)]


def split_batch(parts: list[TrainBatch], size: int) -> list[TrainBatch]:
    """One step's samples (a list of TrainBatch) as micro-batches of `size` samples.

    A micro-batch inside one part is a view (pinned memory stays pinned); one that spans parts
    is concatenated. (Skipped-file names stay with the parts: the step reports them.)
    """
    pieces: list[tuple[TrainBatch, int, int]] = []  # (part, start, end) of the next micro-batch
    micro: list[TrainBatch] = []
    need = size
    for part in parts:
        start, count = 0, part.lr.shape[0]
        while start < count:
            end = min(start + need, count)
            pieces.append((part, start, end))
            need -= end - start
            start = end
            if need == 0:
                micro.append(_join(pieces))
                pieces, need = [], size
    if pieces:
        raise ValueError(f"{sum(e - s for _, s, e in pieces)} samples left over for size {size}")
    return micro


def _join(pieces: list[tuple[TrainBatch, int, int]]) -> TrainBatch:
    if len(pieces) == 1:
        part, start, end = pieces[0]
        return TrainBatch(part.lr[start:end], part.gt[start:end])
    return TrainBatch(
        torch.cat([p.lr[s:e] for p, s, e in pieces]), torch.cat([p.gt[s:e] for p, s, e in pieces])
    )
