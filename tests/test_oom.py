"""Out of memory during the run: a training step is redone from the same samples at half the
micro-batch (then with gradient checkpointing, then a clear error), and trains on exactly like a
run that started at the smaller micro-batch; a validation clip is retried in tiles, with the same
metrics as untiled.

The out-of-memory errors are injected (fault injection: a forward that raises
torch.OutOfMemoryError, as CUDA's allocator does); all else is the real engine and supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
from helpers import wait_until

from vsr_async.data.degrade import bicubic_downscale
from vsr_async.errors import DeviceMemoryError
from vsr_async.files.checkpoints import CHECKPOINT_DIR, find_resume_checkpoint
from vsr_async.nn.model import VSRNet
from vsr_async.nn.tiling import TiledInference, receptive_radius, tiled_forward
from vsr_async.runtime.launch import build_run, scan, scan_async
from vsr_async.settings import Config
from vsr_async.training.engine import TrainingEngine
from vsr_async.training.validation import run_validation


def engine_for(make_config: Callable[..., Config], **overrides: Any) -> TrainingEngine:
    config = make_config(**overrides)
    return TrainingEngine(config, scan(config))


def injected_oom(what: str = "") -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate 2.00 GiB (injected{what})"
    )


class FaultyForward:
    """Wraps an engine's forward: records every input, raises an OOM where `fails(call, lr)`."""

    def __init__(self, engine: TrainingEngine, fails: Callable[[int, torch.Tensor], bool]) -> None:
        self.engine, self.inner, self.fails = engine, engine.forward, fails
        self.seen: list[torch.Tensor] = []
        engine.forward = self

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        call = len(self.seen)
        self.seen.append(lr.clone())
        if self.fails(call, lr):
            raise injected_oom()
        return self.inner(lr)


def params(engine: TrainingEngine) -> list[torch.Tensor]:
    return [p.detach() for p in engine.model.parameters()]


@pytest.mark.parametrize(
    "fails",
    [
        pytest.param(lambda call, lr: lr.shape[0] > 2, id="micro-batch-4-never-fits"),
        pytest.param(lambda call, lr: call == 1, id="second-micro-batch-once-after-a-backward"),
    ],
)
def test_oom_halves_the_micro_batch_and_trains_on_like_a_run_started_smaller(
    make_config, fails: Callable[[int, torch.Tensor], bool]
) -> None:
    """Done-when 1: same effective batch, the step redone from the same samples, and after K
    steps bitwise the same weights, Adam state and logged numbers as a run at micro-batch 2."""
    steps = 6
    shrunk = engine_for(make_config, BATCH_SIZE=4, ACCUMULATION_STEPS=2, LOG_TBOARD_EVERY=1)
    smaller = engine_for(make_config, BATCH_SIZE=2, ACCUMULATION_STEPS=4, LOG_TBOARD_EVERY=1)
    fault = FaultyForward(shrunk, fails)
    reference = FaultyForward(smaller, lambda call, lr: False)

    results = [(shrunk.train_step(), smaller.train_step()) for _ in range(steps)]

    plan = shrunk.batch_plan
    assert (plan.micro_batch, plan.accumulation_steps, plan.effective_batch) == (2, 4, 8)
    assert shrunk.samples_consumed == smaller.samples_consumed == 8 * steps
    [event] = shrunk.oom_events
    assert (event["step"], event["micro_batch_before"], event["micro_batch_after"]) == (1, 4, 2)
    assert event["accumulation_steps_after"] == 4 and "injected" in event["error"]

    # the redo starts again at the step's first sample, in halves; the run that started at 2
    # saw exactly what the redo and all later steps saw
    failed_at = next(i for i, lr in enumerate(fault.seen) if fails(i, lr))
    attempt, redo = fault.seen[: failed_at + 1], fault.seen[failed_at + 1 :]
    assert torch.equal(torch.cat(attempt), torch.cat(redo[: 2 * len(attempt)]))
    assert len(redo) == len(reference.seen) == 4 * steps
    assert all(torch.equal(x, y) for x, y in zip(redo, reference.seen, strict=True))

    assert all(torch.equal(x, y) for x, y in zip(params(shrunk), params(smaller), strict=True))
    for p, q in zip(shrunk.model.parameters(), smaller.model.parameters(), strict=True):
        a, b = shrunk.optimizer.state[p], smaller.optimizer.state[q]
        assert torch.equal(a["exp_avg"], b["exp_avg"])
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    for got, want in results:  # the window means and layer activity (no double count either)
        assert got.stats.losses.total == want.stats.losses.total
        assert got.stats.grad_norm == want.stats.grad_norm
        assert got.stats.activity == want.stats.activity


def test_at_micro_batch_one_checkpointing_goes_on_then_a_clear_error(make_config) -> None:
    engine = engine_for(make_config, BATCH_SIZE=2, ACCUMULATION_STEPS=1)
    FaultyForward(engine, lambda call, lr: not engine.model.gradient_checkpointing)
    engine.train_step()
    plan = engine.batch_plan
    assert (plan.micro_batch, plan.accumulation_steps, plan.gradient_checkpointing) == (1, 2, True)
    fallbacks = [
        (e["micro_batch_after"], e["gradient_checkpointing_after"]) for e in engine.oom_events
    ]
    assert fallbacks == [(1, False), (1, True)]
    assert engine.step == 1

    weights = [p.clone() for p in params(engine)]
    FaultyForward(engine, lambda call, lr: True)  # now nothing fits at all
    with pytest.raises(DeviceMemoryError) as caught:
        engine.train_step()
    assert str(caught.value).startswith(
        "out of device memory even at micro-batch 1 with gradient checkpointing "
        "(EFFECTIVE_BATCH 2 = 1 x 2)"
    )
    assert engine.step == 1 and engine.samples_consumed == 2  # the step was not taken
    assert all(p.grad is None for p in engine.model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(params(engine), weights, strict=True))


class OomOnDevice:
    """Fault injection for a whole run (class-level, so the engine built on the GPU thread has
    it): training micro-batches above `max_batch` and the first `val_failures` validation
    forwards run out of memory; `train_after` successful training forwards, all do."""

    def __init__(self, max_batch: int, val_failures: int = 0, train_after: int | None = None):
        self.max_batch, self.val_failures, self.train_after = max_batch, val_failures, train_after
        self.train_ok = 0
        self.real = VSRNet.forward

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fault = self

        def forward(model: VSRNet, lr: torch.Tensor) -> torch.Tensor:
            if torch.is_inference_mode_enabled():
                if fault.val_failures > 0:
                    fault.val_failures -= 1
                    raise injected_oom(", validation")
            elif lr.shape[0] > fault.max_batch or fault.train_ok == fault.train_after:
                raise injected_oom(", training")
            else:
                fault.train_ok += 1
            return fault.real(model, lr)

        monkeypatch.setattr(VSRNet, "forward", forward)


async def test_a_run_survives_oom_and_the_snapshot_checkpoint_and_resume_show_the_plan(
    start_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    OomOnDevice(max_batch=1, val_failures=1).install(monkeypatch)
    run = await start_run(BATCH_SIZE=2, ACCUMULATION_STEPS=1)
    await wait_until(lambda: run.store.progress.step >= 3, run.store, timeout=60)
    runtime = run.store.snapshot()["runtime"]
    assert runtime["oom_events"] == 1
    assert runtime["oom_recent"][0]["step"] == 1
    plan = runtime["batch_plan"]
    assert (plan["micro_batch"], plan["accumulation_steps"], plan["effective_batch"]) == (1, 2, 2)
    assert plan["reason"] == "out of memory at micro-batch 2: halved to 1 (accumulation 2)"

    request = await run.supervisor.request_validation("web")
    report = await asyncio.wait_for(request.result, 60)
    snapshot = run.store.snapshot()
    assert snapshot["quality_ki_value"] is not None  # validated in tiles, not skipped
    tiling = snapshot["runtime"]["validation_tiling"]
    assert (tiling["tiles_per_side"], tiling["oom_retries"], tiling["exact"]) == (2, 1, True)
    saved = json.loads((run.run_dir / report.statistics_file).read_text())
    assert saved["runtime"]["oom_events"] == 1
    assert saved["runtime"]["validation_tiling"]["oom_retries"] == 1

    run.supervisor.stop("test")
    await wait_until(lambda: run.supervisor.finished.is_set(), run.store, timeout=60)
    log_text = (run.run_dir / "training.log").read_text()
    assert "out of memory in step 1 at micro-batch 2" in log_text
    assert "validation out of memory on" in log_text

    _, state = find_resume_checkpoint(run.run_dir / CHECKPOINT_DIR, run.config)
    assert state["batch_plan"]["micro_batch"] == 1 and len(state["oom_events"]) == 1
    resumed = engine_for(lambda **kw: run.config)
    resumed.load_state(state)
    assert (resumed.batch_plan.micro_batch, resumed.batch_plan.accumulation_steps) == (1, 2)
    assert resumed.batch_plan.reason.endswith("(from the checkpoint)")
    resumed.train_step()  # micro-batch 1 from the start: no new out-of-memory event
    assert len(resumed.oom_events) == 1


async def test_when_nothing_fits_the_run_stops_with_a_checkpoint_and_a_clear_error(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    OomOnDevice(max_batch=1, train_after=2).install(monkeypatch)  # step 3 cannot run at all
    config = make_config(BATCH_SIZE=1, ACCUMULATION_STEPS=1)
    run = build_run(config, await scan_async(config), console_log=False)
    with pytest.raises(DeviceMemoryError, match=r"even at micro-batch 1 with gradient check"):
        await asyncio.wait_for(run.execute(), 120)
    assert run.store.progress.step == 2
    _, state = find_resume_checkpoint(run.run_dir / CHECKPOINT_DIR, config)
    assert state["step"] == 2 and state["reason"] == "shutdown"
    assert state["batch_plan"]["gradient_checkpointing"] is True
    assert "out of memory in step 3 at micro-batch 1" in (run.run_dir / "training.log").read_text()


# --- validation in tiles -------------------------------------------------------------------


def textured_model(seed: int = 0) -> VSRNet:
    """The tiny VSRNet with weights that change the output visibly (the initial net is ~bicubic,
    which would make any tiling look exact)."""
    torch.manual_seed(seed)
    model = VSRNet(8, 2, 3, 3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
    return model


def photo_clip(x: int, y: int, w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LR frames [3, 3, h/3, w/3] of a pan over a photograph, and the GT [3, h, w]."""
    photo = skimage.data.astronaut()
    frames = [bicubic_downscale(photo[y : y + h, x + d : x + d + w], 3) for d in (-1, 0, 1)]
    lr = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    gt = torch.from_numpy(photo[y : y + h, x : x + w].copy()).permute(2, 0, 1).float() / 255
    return lr, gt


def test_tiles_with_the_receptive_overlap_give_the_untiled_output() -> None:
    model = textured_model()
    lr = photo_clip(100, 60, 192, 150)[0].unsqueeze(0)  # [1, 3, 3, 50, 64]
    radius = receptive_radius(model)
    assert radius == 12  # (3 + 1 + 1) steps x 2 convs x 1 block + feature and upsample convs
    with torch.inference_mode():
        whole = model(lr)
        for tiles in (2, 3, 4):
            tiled = tiled_forward(model, lr, scale=3, tiles=tiles, overlap=radius)
            torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)
        seams = tiled_forward(model, lr, scale=3, tiles=2, overlap=0)
    assert (seams - whole).abs().max() > 1e-2  # the check can fail: no overlap, visible seams


class SmallDevice(VSRNet):
    """A VSRNet on a device where a clip larger than `max_pixels` LR pixels runs out of memory."""

    max_pixels = 40 * 48

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.shape[-1] * lr.shape[-2] > self.max_pixels:
            raise injected_oom(", validation clip")
        return super().forward(lr)


def validate(model: torch.nn.Module, val_set: list, tiling: TiledInference | None = None):
    return run_validation(
        model,
        val_set,
        device=torch.device("cpu"),
        scale=3,
        num_frames=3,
        autocast=contextlib.nullcontext,
        tiling=tiling,
    )


def test_validation_out_of_memory_is_retried_in_tiles_with_the_same_metrics() -> None:
    """Done-when: an OOM in validation gives the same metrics in tiles, not a skipped clip."""
    model = textured_model()
    small = SmallDevice(8, 2, 3, 3)
    small.load_state_dict(model.state_dict())
    val_set = [("a", *photo_clip(60, 40, 192, 150)), ("b", *photo_clip(200, 220, 144, 192))]

    untiled = validate(model, val_set)
    tiling = TiledInference()
    tiled = validate(small, val_set, tiling)

    assert tiling.to_snapshot() == {
        "tiles_per_side": 2,
        "oom_retries": 1,  # the second clip starts in tiles: no second failed attempt
        "overlap_lr_px": 12,
        "exact": True,
    }
    for got, want in zip(tiled.images, untiled.images, strict=True):
        assert got.name == want.name
        assert got.psnr_ki_db == pytest.approx(want.psnr_ki_db, abs=1e-4)
        assert got.ssim_ki == pytest.approx(want.ssim_ki, abs=1e-6)
        assert got.quality_ki == pytest.approx(want.quality_ki, abs=1e-6)
        assert (got.psnr_lr_db, got.ssim_lr) == (want.psnr_lr_db, want.ssim_lr)
    assert tiled.loss == pytest.approx(untiled.loss, rel=1e-5)
    for got, want in zip(tiled.strips, untiled.strips, strict=True):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_a_clip_that_fits_in_no_tiling_is_a_clear_error() -> None:
    small = SmallDevice(8, 2, 3, 3)
    small.max_pixels = 0
    with pytest.raises(DeviceMemoryError, match=r"validation clip a \(64x50 LR\) is out of"):
        validate(small, [("a", *photo_clip(60, 40, 192, 150))])
