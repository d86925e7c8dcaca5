"""Numerics of the training step: gradient accumulation, bf16 autocast on the CPU, EMA weights for
validation, and non-finite steps (skipped on the device, counted, NAN_LIMIT stops the run).

Non-finite losses are injected by wrapping the engine's batch iterator (fault injection); all
else is the real engine and the real supervisor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from helpers import wait_until
from torch.overrides import TorchFunctionMode

from vsr_async.data.loader import TrainBatch
from vsr_async.files.checkpoints import CHECKPOINT_DIR, checkpoint_name, load_checkpoint
from vsr_async.runtime.commands import Trigger
from vsr_async.runtime.launch import Run, build_run, scan, scan_async
from vsr_async.settings import Config
from vsr_async.training.engine import TrainingEngine
from vsr_async.training.validation import run_validation

# Tensor methods that copy a device value to the host (a CPU-GPU sync on CUDA).
HOST_READS = {
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__format__",
    "__repr__",
}


def engine_for(make_config: Callable[..., Config], **overrides: Any) -> TrainingEngine:
    config = make_config(**overrides)
    return TrainingEngine(config, scan(config))


def poisoned(batch: TrainBatch) -> TrainBatch:
    return TrainBatch(torch.full_like(batch.lr, float("nan")), batch.gt, batch.skipped)


# --- gradient accumulation -----------------------------------------------------------------------

PLAIN = dict(  # no adaptive clip or weights, no clipping, no decay: the gradient as computed
    ADAPTIVE_LOSS_WEIGHTS=False,
    ADAPTIVE_GRAD_CLIP=False,
    INITIAL_GRAD_CLIP=1e6,
    WEIGHT_DECAY=0.0,
    AMP="off",
)


def gradients_after_one_step(engine: TrainingEngine) -> list[torch.Tensor]:
    engine.train_step()  # gradients stay in .grad until the next step zeroes them
    return [p.grad.clone() for p in engine.model.parameters()]


def test_accumulation_gives_the_gradient_of_one_big_batch(make_config) -> None:
    """Done-when 6: 2 micro-batches of 2 == one batch of 4 (the same 4 samples, same init)."""
    big = engine_for(make_config, BATCH_SIZE=4, ACCUMULATION_STEPS=1, **PLAIN)
    accumulated = engine_for(make_config, BATCH_SIZE=2, ACCUMULATION_STEPS=2, **PLAIN)
    half = engine_for(make_config, BATCH_SIZE=2, ACCUMULATION_STEPS=1, **PLAIN)
    g_big = gradients_after_one_step(big)
    g_acc = gradients_after_one_step(accumulated)
    g_half = gradients_after_one_step(half)

    scale = max(g.abs().max().item() for g in g_big)
    for a, b in zip(g_big, g_acc, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * scale)
    # The check can fail: half the batch (or a missing 1/k) gives a clearly different gradient.
    assert (
        max((a - h).abs().max().item() for a, h in zip(g_big, g_half, strict=True)) > 1e-3 * scale
    )
    assert big.samples_consumed == accumulated.samples_consumed == 4
    for a, b in zip(big.model.parameters(), accumulated.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)  # and so the same update
    # The logged loss is the mean over the micro-batches, like the big batch's.
    torch.testing.assert_close(accumulated.window.term_sum, big.window.term_sum, rtol=1e-5, atol=0)


# --- bf16 autocast on the CPU ------------------------------------------------------------------


async def test_bf16_autocast_trains_and_validates_on_the_cpu(start_run) -> None:
    run = await start_run(AMP="bf16", DEVICE="cpu", VAL_STEP_EVERY=4, LOG_TBOARD_EVERY=2)
    mode, dtype = await run.supervisor.worker.run_on_engine(
        lambda engine: (engine.precision.mode, engine.precision.autocast_dtype)
    )
    assert mode == "bf16" and dtype is torch.bfloat16
    await wait_until(lambda: run.store.validation.count >= 2, run.store, timeout=120)

    def conv_dtypes(engine: TrainingEngine) -> set[torch.dtype]:
        """Output dtypes of the convolutions in one autocast forward (where the time goes)."""
        seen: set[torch.dtype] = set()
        convs = [m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d)]
        hooks = [c.register_forward_hook(lambda m, i, out: seen.add(out.dtype)) for c in convs]
        try:
            with torch.no_grad(), engine.autocast():
                engine.model(torch.rand(1, 3, 3, 8, 8))
        finally:
            for hook in hooks:
                hook.remove()
        return seen

    assert await run.supervisor.worker.run_on_engine(conv_dtypes) == {torch.bfloat16}
    snapshot = run.store.snapshot()
    assert snapshot["total_loss_value"] is not None and snapshot["total_loss_value"] > 0
    assert snapshot["psnr_ki_db"] is not None and snapshot["psnr_ki_db"] > 10
    assert snapshot["nonfinite_steps_skipped"] == 0
    assert await run.supervisor.worker.run_on_engine(
        lambda engine: all(torch.isfinite(p).all() for p in engine.model.parameters())
    )


# --- EMA ---------------------------------------------------------------------------------------


async def test_validation_uses_the_ema_weights(start_run) -> None:
    run = await start_run(EMA_DECAY=0.8, MAX_LR=3e-3)
    await wait_until(lambda: run.store.progress.step >= 6, run.store)
    await asyncio.wait_for(run.supervisor.pause(), 60)
    request = await run.supervisor.request_validation(Trigger.WEB)
    report = await asyncio.wait_for(request.result, 60)
    assert run.store.snapshot()["validation_used_ema"] is True

    def validate_both(engine: TrainingEngine) -> tuple[float, float]:
        kw = dict(
            device=engine.device, scale=3, num_frames=3, autocast=engine.autocast, used_ema=True
        )
        ema = run_validation(engine.ema.model, engine.val_set, **kw)
        live = run_validation(engine.model, engine.val_set, **kw)
        return ema.psnr_ki_db, live.psnr_ki_db

    ema_psnr, live_psnr = await run.supervisor.worker.run_on_engine(validate_both)
    assert report.metrics["psnr_ki_db"] == ema_psnr
    assert live_psnr != ema_psnr

    saved = await asyncio.wait_for(run.supervisor.save_checkpoint("test"), 60)
    state = load_checkpoint(run.run_dir / CHECKPOINT_DIR / saved)
    assert state["ema"] is not None
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])


# --- non-finite steps ----------------------------------------------------------------------------


class Recorder:
    """Wraps the engine's batches: poisons chosen steps, and records the state after each step
    (taken when the next step asks for its batch, i.e. after the optimizer and EMA updates)."""

    def __init__(self, engine: TrainingEngine, poison: Callable[[int], bool]) -> None:
        self.engine = engine
        self.poison = poison
        self.after: dict[int, dict[str, Any]] = {}  # step -> weights, Adam step counts, momentum
        self._clean = engine._batches
        engine._batches = self._batches()

    def _record(self, step: int) -> None:
        optimizer = self.engine.optimizer
        states = [
            optimizer.state[p] for p in self.engine.model.parameters() if p in optimizer.state
        ]
        self.after[step] = {
            "weights": [p.detach().clone() for p in self.engine.model.parameters()],
            "adam_steps": [float(s["step"]) for s in states],
            "momentum": [s["exp_avg"].clone() for s in states],
        }

    def _batches(self) -> Iterator[TrainBatch]:
        for index, batch in enumerate(self._clean):  # ACCUMULATION_STEPS=1: batch i is step i+1
            self._record(index)
            yield poisoned(batch) if self.poison(index + 1) else batch


async def poisoned_run(
    make_config: Callable[..., Config], poison: Callable[[int], bool], **overrides: Any
) -> tuple[Run, Recorder, asyncio.Task[int]]:
    config = make_config(**overrides)
    run = build_run(config, await scan_async(config), console_log=False)
    await run.supervisor.worker.start()
    recorder = await run.supervisor.worker.run_on_engine(lambda engine: Recorder(engine, poison))
    return run, recorder, asyncio.create_task(run.execute())


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


async def test_a_poisoned_batch_is_skipped_counted_and_training_goes_on(make_config) -> None:
    """Done-when 7: no update from the NaN step (weights, Adam state), counted, run continues."""
    run, recorder, task = await poisoned_run(
        make_config, lambda step: step == 6, LOG_TBOARD_EVERY=5, NAN_LIMIT=2
    )
    try:
        await wait_until(lambda: run.store.progress.step >= 12, run.store, timeout=120)
        assert not task.done()
        await asyncio.wait_for(run.supervisor.stop("test"), 60)
        assert await asyncio.wait_for(task, 120) == 0
    finally:
        if not task.done():
            run.supervisor.stop("test teardown")
            await asyncio.wait_for(task, 120)
    before, skipped, after = (recorder.after[s] for s in (5, 6, 7))
    assert_same(skipped["weights"], before["weights"])
    assert_same(skipped["momentum"], before["momentum"])
    assert skipped["adam_steps"] == before["adam_steps"] == [5.0] * len(before["adam_steps"])
    assert after["adam_steps"] == [6.0] * len(after["adam_steps"])
    assert any(
        not torch.equal(x, y) for x, y in zip(after["weights"], skipped["weights"], strict=True)
    )
    assert all(torch.isfinite(p).all() for p in recorder.after[11]["weights"])

    snapshot = run.store.snapshot()
    assert snapshot["nonfinite_steps_skipped"] == 1
    assert snapshot["total_loss_value"] is not None  # the window mean leaves the NaN out
    assert snapshot["stop_reason"] == "test"
    log_text = (run.run_dir / "training.log").read_text()
    assert (
        "non-finite loss: 1 step(s) skipped without an update up to step 10 (1 in all)" in log_text
    )


async def test_nan_limit_consecutive_nonfinite_steps_stop_with_the_last_good_state(
    make_config,
) -> None:
    """Done-when 7: NAN_LIMIT in a row stop the run (exit 1) with a checkpoint of step 5's
    weights; the stop is decided at the logging step (no sync in between)."""
    run, recorder, task = await poisoned_run(
        make_config, lambda step: step >= 6, LOG_TBOARD_EVERY=5, NAN_LIMIT=3
    )
    code = await asyncio.wait_for(task, 120)
    assert code == 1
    assert run.store.stop_reason == "5 consecutive non-finite losses"
    assert run.store.progress.step == 10
    state = load_checkpoint(run.run_dir / CHECKPOINT_DIR / checkpoint_name(10))
    assert state["reason"] == "shutdown"
    last_good = recorder.after[5]["weights"]
    saved = list(state["model"].values())
    names = [n for n, _ in recorder.engine.model.named_parameters()]  # the run has ended
    assert all(torch.isfinite(t).all() for t in saved)
    assert_same([state["model"][n] for n in names], last_good)
    assert run.store.snapshot()["nonfinite_steps_skipped"] == 5
    log_text = (run.run_dir / "training.log").read_text()
    assert "5 consecutive non-finite losses (NAN_LIMIT=3): stopping with the last good" in log_text


class HostReadCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("adaptive", [True, False])
def test_nonfinite_detection_reads_nothing_off_the_device_between_logging_steps(
    make_config, adaptive: bool
) -> None:
    """A non-logging step, finite or not, converts no tensor to a host value (on CUDA each such
    read would be a sync); the logging step does, once per window (the counter works)."""
    engine = engine_for(
        make_config,
        LOG_TBOARD_EVERY=5,
        HIST_STEP_EVERY=1000,
        ADAPTIVE_LOSS_WEIGHTS=adaptive,
        ADAPTIVE_GRAD_CLIP=adaptive,
    )
    batches = [next(engine._batches) for _ in range(5)]
    batches[2] = poisoned(batches[2])
    engine._batches = iter(batches)  # data loading is not the step's business here
    for step in range(1, 5):
        with HostReadCounter() as counter:
            engine.train_step()
        assert counter.reads == [], f"step {step} read {counter.reads} off the device"
    with HostReadCounter() as counter:
        result = engine.train_step()
    assert counter.reads and result.stats is not None
    assert result.stats.nonfinite_steps == 1 and result.stats.nonfinite_streak == 0
