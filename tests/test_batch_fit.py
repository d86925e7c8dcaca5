"""BATCH_SIZE="auto": the micro-batch search over a simulated memory model, the engine's probe
against a simulated CUDA memory (the only thing mocked: torch.cuda's memory functions), the plan
after an out-of-memory step, splitting a step's samples, and the plan in the snapshot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import wait_until

from vsr_async.data.loader import TrainBatch
from vsr_async.errors import DeviceMemoryError, VsrError
from vsr_async.nn import model as model_module
from vsr_async.runtime.launch import scan
from vsr_async.settings import Config
from vsr_async.training.batch_fit import (
    BatchPlan,
    after_oom,
    divisors,
    fit_batch,
    next_smaller_micro_batch,
    split_batch,
)
from vsr_async.training.engine import TrainingEngine
from vsr_async.training.memory_probe import probe_batch_plan

GB = 10**9


class SimulatedDevice:
    """peak(n) = base + n x per-sample memory (less with checkpointing); an allocation past
    `capacity` raises torch.OutOfMemoryError, as the CUDA allocator does."""

    def __init__(
        self, capacity: int, *, base: int = 2 * GB, sample: int = GB, sample_ckpt: int | None = None
    ) -> None:
        self.capacity, self.base = capacity, base
        self.sample, self.sample_ckpt = sample, sample_ckpt if sample_ckpt is not None else sample
        self.calls: list[tuple[int, bool]] = []

    def peak(self, n: int, checkpointing: bool) -> int:
        return self.base + n * (self.sample_ckpt if checkpointing else self.sample)

    def __call__(self, n: int, checkpointing: bool) -> int:
        self.calls.append((n, checkpointing))
        peak = self.peak(n, checkpointing)
        if peak > self.capacity:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {peak} bytes")
        return peak


def fit(device: SimulatedDevice, effective: int, limit: int | None, **kw: Any) -> BatchPlan:
    return fit_batch(effective, device, limit_bytes=limit, requested=f"auto/{effective}", **kw)


def test_largest_power_of_two_that_fits_and_accumulation_makes_up_the_rest() -> None:
    device = SimulatedDevice(capacity=6 * GB)  # 2 GB + n GB: up to n = 4 in memory
    plan = fit(device, 8, limit=int(5.5 * GB))  # the margin leaves n = 3 at most
    assert (plan.micro_batch, plan.accumulation_steps, plan.effective_batch) == (2, 4, 8)
    assert plan.gradient_checkpointing is False
    assert plan.measured_peak_bytes == 4 * GB and plan.limit_bytes == int(5.5 * GB)
    assert device.calls[0] == (8, False)  # EFFECTIVE_BATCH first: one trial where it fits
    assert [(t.micro_batch, t.fits) for t in plan.trials] == [(8, False), (2, True), (4, False)]
    assert plan.trials[2].peak_bytes == 6 * GB  # ran, but over the limit: measured, rejected
    assert "largest divisor of EFFECTIVE_BATCH=8 that fits" in plan.reason


def test_the_whole_effective_batch_in_one_trial_when_it_fits() -> None:
    device = SimulatedDevice(capacity=80 * GB)
    plan = fit(device, 8, limit=72 * GB)
    assert (plan.micro_batch, plan.accumulation_steps) == (8, 1)
    assert device.calls == [(8, False)]
    assert "whole EFFECTIVE_BATCH=8 fits" in plan.reason


@pytest.mark.parametrize(
    ("effective", "fits_up_to", "expected"),
    [(12, 5, 4), (12, 11, 6), (6, 4, 3), (9, 8, 3), (7, 6, 1), (24, 24, 24), (1, 3, 1)],
)
def test_micro_batch_divides_the_effective_batch(effective, fits_up_to, expected) -> None:
    device = SimulatedDevice(capacity=2 * GB + fits_up_to * GB)
    plan = fit(device, effective, limit=None)
    assert plan.micro_batch == expected
    assert plan.micro_batch * plan.accumulation_steps == effective


@pytest.mark.parametrize("effective", [1, 2, 6, 8, 12, 16, 30, 64, 100])
@pytest.mark.parametrize("capacity_gb", [4, 5, 7, 9, 13, 17, 40, 70, 200])
def test_the_search_finds_what_trying_every_divisor_finds(effective, capacity_gb) -> None:
    device = SimulatedDevice(capacity=capacity_gb * GB)
    limit = int(capacity_gb * GB * 0.9)
    plan = fit(device, effective, limit=limit)
    brute = max(d for d in divisors(effective) if device.peak(d, False) <= limit)
    assert plan.micro_batch == brute
    assert len(plan.trials) <= 1 + len(divisors(effective)).bit_length()  # bisection, not a scan


def test_gradient_checkpointing_is_switched_on_when_not_even_one_sample_fits() -> None:
    device = SimulatedDevice(capacity=6 * GB, sample=5 * GB, sample_ckpt=GB)
    plan = fit(device, 8, limit=6 * GB)
    assert plan.gradient_checkpointing is True
    assert (plan.micro_batch, plan.accumulation_steps) == (4, 2)
    assert (1, False) in device.calls  # without checkpointing first, down to one sample
    assert "gradient checkpointing switched on" in plan.reason


def test_configured_checkpointing_is_probed_with_checkpointing_only() -> None:
    device = SimulatedDevice(capacity=6 * GB, sample=5 * GB, sample_ckpt=GB)
    plan = fit(device, 4, limit=6 * GB, checkpointing_configured=True)
    assert (plan.micro_batch, plan.gradient_checkpointing) == (4, True)
    assert all(checkpointing for _, checkpointing in device.calls)


def test_nothing_fits_is_a_clear_error_naming_the_sizes() -> None:
    device = SimulatedDevice(capacity=4 * GB, base=3 * GB, sample=4 * GB, sample_ckpt=2 * GB)
    with pytest.raises(DeviceMemoryError) as caught:
        fit(device, 8, limit=int(3.6 * GB))
    assert isinstance(caught.value, VsrError)  # one line on stderr, exit code 1
    message = str(caught.value)
    assert "not even micro-batch 1 (of EFFECTIVE_BATCH 8) fits with gradient checkpointing" in (
        message
    )
    assert "out of memory" in message and "reduce N_FEATS" in message
    assert device.calls[-1] == (1, True)


def test_over_the_limit_without_an_oom_is_named_with_its_measured_peak() -> None:
    device = SimulatedDevice(capacity=100 * GB, base=3 * GB, sample=4 * GB, sample_ckpt=2 * GB)
    with pytest.raises(DeviceMemoryError, match=r"it needs 5\.00 GB, limit 4\.00 GB"):
        fit(device, 2, limit=4 * GB)


def test_after_oom_halves_until_one_then_checkpointing_then_an_error() -> None:
    plan = BatchPlan(8, 1, False, requested="auto/8", reason="fitted")
    seen = []
    with pytest.raises(DeviceMemoryError) as caught:
        while True:
            plan = after_oom(plan, "CUDA out of memory")
            seen.append((plan.micro_batch, plan.accumulation_steps, plan.gradient_checkpointing))
    assert seen == [(4, 2, False), (2, 4, False), (1, 8, False), (1, 8, True)]
    assert "micro-batch 1 with gradient checkpointing (EFFECTIVE_BATCH 8 = 1 x 8)" in str(
        caught.value
    )


def test_after_oom_keeps_the_effective_batch_for_any_divisor() -> None:
    assert [next_smaller_micro_batch(12, m) for m in (12, 6, 4, 3, 2, 1)] == [6, 3, 2, 1, 1, None]
    plan = after_oom(BatchPlan(6, 2, False, requested="6x2", reason=""))
    assert (plan.micro_batch, plan.accumulation_steps) == (3, 4)


def test_split_batch_views_within_a_part_and_joins_across_parts() -> None:
    lr, gt = torch.arange(8.0).view(8, 1), torch.arange(8.0).view(8, 1) * 10
    parts = [TrainBatch(lr[:4], gt[:4], ["a.png"]), TrainBatch(lr[4:], gt[4:])]
    halves = split_batch(parts, 2)
    assert [m.lr.flatten().tolist() for m in halves] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert halves[1].lr.data_ptr() == parts[0].lr[2:].data_ptr()  # a view: no copy
    whole = split_batch(parts, 8)
    assert torch.equal(whole[0].lr, lr) and torch.equal(whole[0].gt, gt)
    quarters = [m.gt.flatten().tolist() for m in split_batch(parts, 4)]
    assert quarters == [[0, 10, 20, 30], [40, 50, 60, 70]]
    with pytest.raises(ValueError, match="left over"):
        split_batch(parts, 3)


def test_plan_survives_a_checkpoint_round_trip_and_is_json_in_the_snapshot() -> None:
    device = SimulatedDevice(capacity=6 * GB)
    plan = fit(device, 8, limit=int(5.5 * GB))
    assert BatchPlan.from_state(plan.to_state()) == plan
    shown = json.loads(json.dumps(plan.to_snapshot()))
    assert shown["micro_batch"] == 2 and shown["accumulation_steps"] == 4
    assert shown["effective_batch"] == 8 and shown["measured_peak_gb"] == 4.0
    assert len(shown["trials"]) == 3


# --- the engine's probe, against a simulated CUDA memory -------------------------------------


class SimulatedCudaMemory:
    """Stands in for torch.cuda's memory functions: the forward of a micro-batch of n
    "allocates" base + n x per-sample bytes (a quarter with gradient checkpointing)."""

    def __init__(self, model: torch.nn.Module, total: int, base: int, sample: int) -> None:
        self.model, self.total, self.base, self.sample = model, total, base, sample
        self.peak = 0
        self.shapes: list[tuple[tuple[int, ...], bool]] = []
        model.register_forward_pre_hook(self._forward)

    def _forward(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        lr = args[0]
        self.shapes.append((tuple(lr.shape), module.gradient_checkpointing))
        per_sample = self.sample // 4 if module.gradient_checkpointing else self.sample
        need = self.base + lr.shape[0] * per_sample
        if need > self.total:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.peak = max(self.peak, need)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "current_device", lambda: 0)
        monkeypatch.setattr(cuda, "mem_get_info", lambda device=None: (self.total, self.total))
        monkeypatch.setattr(cuda, "memory_reserved", lambda device=None: 0)
        monkeypatch.setattr(cuda, "get_per_process_memory_fraction", lambda device=None: 0.5)
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda device=None: self._reset())
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)

    def _reset(self) -> None:
        self.peak = 0


def auto_engine(make_config: Callable[..., Config], **overrides: Any) -> TrainingEngine:
    config = make_config(BATCH_SIZE="auto", EFFECTIVE_BATCH=8, **overrides)
    return TrainingEngine(config, scan(config))


def test_engine_probe_measures_real_trial_steps_and_changes_nothing(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = auto_engine(make_config, EMA_DECAY=0.9)
    memory = SimulatedCudaMemory(engine.model, total=20 * GB, base=2 * GB, sample=3 * GB)
    memory.install(monkeypatch)  # usable: half of 20 GB (the process fraction), limit 9 GB
    weights = [p.detach().clone() for p in engine.model.parameters()]
    rng = torch.get_rng_state()

    plan = probe_batch_plan(engine)

    assert (plan.micro_batch, plan.accumulation_steps, plan.gradient_checkpointing) == (2, 4, False)
    assert plan.limit_bytes == 9 * GB and plan.measured_peak_bytes == 8 * GB
    t, s = engine.config.NUM_FRAMES, engine.config.SCALE
    w, h = engine.train_gt_size
    assert memory.shapes[0] == ((8, t, 3, h // s, w // s), False)  # the training sample size
    assert all(torch.equal(p, q) for p, q in zip(engine.model.parameters(), weights, strict=True))
    assert all(p.grad is None for p in engine.model.parameters())
    assert not engine.optimizer.state  # no optimizer step was taken
    assert torch.equal(torch.get_rng_state(), rng)
    assert engine.model.gradient_checkpointing is False


def test_engine_probe_switches_checkpointing_on_and_training_uses_the_plan(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = auto_engine(make_config)
    memory = SimulatedCudaMemory(engine.model, total=2 * 9 * GB, base=2 * GB, sample=8 * GB)
    memory.install(monkeypatch)  # 1 sample needs 10 GB > 8.1 GB; checkpointed 4 need 10 GB
    engine.batch_plan, engine._batches = None, None  # as on CUDA: nothing known before the probe
    plan = engine.ensure_batch_plan()
    assert (plan.micro_batch, plan.accumulation_steps, plan.gradient_checkpointing) == (2, 4, True)
    assert engine.model.gradient_checkpointing is True

    memory.shapes.clear()
    engine.train_step()  # the loader was opened at the fitted micro-batch
    assert [shape[0] for shape, _ in memory.shapes] == [2, 2, 2, 2]
    assert all(checkpointing for _, checkpointing in memory.shapes)
    assert engine.samples_consumed == 8


@pytest.mark.parametrize("configured", [True, False])
def test_the_engine_honours_gradient_checkpointing(
    make_config, monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    real, calls = model_module.checkpoint, []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module, "checkpoint", spy)
    config = make_config(GRADIENT_CHECKPOINTING=configured)
    engine = TrainingEngine(config, scan(config))
    assert engine.batch_plan.gradient_checkpointing is engine.model.gradient_checkpointing
    assert engine.model.gradient_checkpointing is configured
    engine.train_step()
    frames = config.NUM_FRAMES
    assert len(calls) == (frames + frames // 2 + 1 if configured else 0)  # one per trunk step


async def test_auto_on_the_cpu_is_one_micro_batch_and_the_plan_is_in_the_snapshot(
    start_run,
) -> None:
    run = await start_run(BATCH_SIZE="auto", EFFECTIVE_BATCH=4)
    await wait_until(lambda: run.store.progress.step >= 2, run.store, timeout=60)
    plan = run.store.snapshot()["runtime"]["batch_plan"]
    assert (plan["micro_batch"], plan["accumulation_steps"], plan["effective_batch"]) == (4, 1, 4)
    assert plan["gradient_checkpointing"] is False
    assert plan["reason"] == (
        'BATCH_SIZE="auto" on the CPU: no device-memory limit to fit, so one micro-batch of '
        "EFFECTIVE_BATCH=4"
    )
    await asyncio.wait_for(run.supervisor.pause(), 60)  # no step between the two reads
    consumed = await run.supervisor.worker.run_on_engine(lambda engine: engine.samples_consumed)
    assert consumed == 4 * run.store.progress.step
    run.supervisor.stop("test")
    await wait_until(lambda: run.supervisor.finished.is_set(), run.store, timeout=60)
    assert (
        "batch plan: micro-batch 4 x 1 accumulation" in (run.run_dir / "training.log").read_text()
    )
