"""TensorBoard logging into DATA_ROOT/tensorboard, on a thread of its own.

Image encoding and event-file writes never run on the event loop or the GPU thread. Tag names
follow the predecessor where it had one (`Loss/Total`, `Quality/KI_Quality`, `Val/sample_0000`…)
so old dashboards and comparisons keep working.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vsr_async.reports import StepResult, ValidationResult

log = logging.getLogger(__name__)

MODE_INDEX = {"Off": 0, "Warmup": 1, "Settling": 2, "Stable": 3, "Aggressive": 4}


def step_scalars(result: StepResult, iteration_duration_s: float | None) -> dict[str, float]:
    """Scalars of a logging step (tag → value)."""
    s = result.stats
    assert s is not None
    scalars = {
        "Loss/Total": s.loss_total,
        "Loss/L1": s.loss_l1,
        "Loss/MS": s.loss_ms,
        "Loss/Gradient": s.loss_gradient,
        "Loss/Perceptual": s.loss_perceptual,
        "Training/LearningRate": result.learning_rate,
        "Training/GradNorm": s.grad_norm,
        "Training/GradClip": s.grad_clip,
        "Training/NonFiniteSteps": float(s.nonfinite_steps),
        "Weights/L1": s.weights.l1,
        "Weights/MS": s.weights.ms,
        "Weights/Gradient": s.weights.grad,
        "Weights/Perceptual": s.weights.perceptual,
        "Adaptive/Mode": float(MODE_INDEX.get(s.adaptive.mode, -1)),
        "Adaptive/PlateauCounter": float(s.adaptive.plateau_counter),
        "Adaptive/CooldownRemaining": float(s.adaptive.cooldown_remaining),
        "Adaptive/PerceptualTrend": s.adaptive.perceptual_trend,
        "Performance/AdamMomentumAvg": s.adam_momentum_avg,
        "Performance/HostMemory_GB": s.host_memory_gb,
    }
    if iteration_duration_s is not None:
        scalars["Performance/IterationDuration_s"] = iteration_duration_s
    if s.vram_peak_gb is not None:
        scalars["Performance/VRAM_GB"] = s.vram_peak_gb
    for name, value in s.activity.items():
        scalars[f"Activity/{name}"] = value
    return scalars


def validation_scalars(result: ValidationResult) -> dict[str, float]:
    return {
        "Quality/Improvement": result.quality_improvement,
        "Quality/KI_Quality": result.quality_ki,
        "Quality/LR_Quality": result.quality_lr,
        "Quality/KI_to_GT": result.quality_ki_to_gt,
        "Quality/LR_to_GT": result.quality_lr_to_gt,
        "Metrics/KI_PSNR": result.psnr_ki_db,
        "Metrics/LR_PSNR": result.psnr_lr_db,
        "Metrics/PSNR_Gain": result.psnr_gain_db,
        "Metrics/KI_SSIM": result.ssim_ki,
        "Metrics/LR_SSIM": result.ssim_lr,
        "Validation/Loss": result.loss,
        "Validation/Duration_s": result.duration_s,
    }


class TensorBoardLogger:
    """Submits every write to one I/O thread; `close()` waits for them and flushes."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tensorboard")
        self._writer: Any = None
        self._last: Future[None] | None = None
        self._submit(self._open)

    def _open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import: keep it off the loop

        self.directory.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.directory), flush_secs=10)

    def _submit(self, fn: Any, *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except Exception:  # a logging failure must never stop training
                log.exception("tensorboard: write failed")

        self._last = self._executor.submit(run)

    def _scalars(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)

    def log_step(self, result: StepResult, iteration_duration_s: float | None) -> None:
        if result.stats is not None:
            self._submit(self._scalars, step_scalars(result, iteration_duration_s), result.step)

    def log_validation(self, step: int, result: ValidationResult) -> None:
        self._submit(self._scalars, validation_scalars(result), step)
        for i, strip in enumerate(result.strips):
            self._submit(self._image, f"Val/sample_{i:04d}", strip, step)

    def _image(self, tag: str, image: Any, step: int) -> None:
        self._writer.add_image(tag, image, step, dataformats="HWC")

    def log_histograms(self, step: int, histograms: dict[str, Any]) -> None:
        def write() -> None:
            for name, values in histograms.items():
                self._writer.add_histogram(f"Weights/{name}", values, step)

        self._submit(write)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self._submit(lambda: self._writer.add_text(tag, text, step))

    def flush(self) -> None:
        self._submit(lambda: self._writer.flush())

    def close(self) -> None:
        """Blocking: call from a thread (the supervisor uses `asyncio.to_thread`)."""

        def finish() -> None:
            if self._writer is not None:
                self._writer.close()

        self._submit(finish)
        self._executor.shutdown(wait=True)
