"""TensorBoard logging into DATA_ROOT/tensorboard, on a thread of its own.

Summaries are encoded and appended to the event file by our own I/O thread, so image encoding
and disk writes never run on the event loop or the GPU thread, and a failing disk (full,
read-only) is logged once and retried with a new event file instead of killing a background
writer. Tag names follow the predecessor where it had one (`Loss/Total`, `Quality/KI_Quality`,
`Val/sample_0000`…) so old dashboards and comparisons keep working.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from vsr_async.files.config_record import config_markdown, hparam_values
from vsr_async.records import AdaptiveMode, StepResult, ValidationResult

log = logging.getLogger(__name__)

MODE_INDEX = {mode: index for index, mode in enumerate(AdaptiveMode)}  # Off 0 … Aggressive 4


def step_scalars(result: StepResult, iteration_duration_s: float | None) -> dict[str, float]:
    """Scalars of a logging step (tag → value)."""
    s = result.stats
    assert s is not None
    scalars = {
        "Loss/Total": s.losses.total,
        "Loss/L1": s.losses.l1,
        "Loss/MS": s.losses.ms,
        "Loss/Gradient": s.losses.gradient,
        "Loss/Perceptual": s.losses.perceptual,
        "Training/LearningRate": result.learning_rate,
        "Training/GradNorm": s.grad_norm,
        "Training/GradClip": s.grad_clip,
        "Training/NonFiniteSteps": float(s.nonfinite_steps),
        "Weights/L1": s.weights.l1,
        "Weights/MS": s.weights.ms,
        "Weights/Gradient": s.weights.gradient,
        "Weights/Perceptual": s.weights.perceptual,
        "Adaptive/Mode": float(MODE_INDEX[s.adaptive.mode]),
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
        # Y channel (BT.601), SCALE pixels cropped at the border: the numbers papers report
        "Metrics/KI_PSNR_Y": result.psnr_y_ki_db,
        "Metrics/LR_PSNR_Y": result.psnr_y_lr_db,
        "Metrics/PSNR_Gain_Y": result.psnr_y_gain_db,
        "Metrics/KI_SSIM_Y": result.ssim_y_ki,
        "Metrics/LR_SSIM_Y": result.ssim_y_lr,
        "Validation/Loss": result.loss,
        "Validation/Duration_s": result.duration_s,
    }


class EventFile:
    """One append-only TensorBoard event file, written synchronously by the caller's thread."""

    def __init__(self, directory: Path) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = Event
        directory.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}."
            f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        )
        self._file: BinaryIO = open(directory / name, "ab")  # noqa: SIM115 (closed in close())
        self._records = RecordWriter(self._file)
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def add(self, summary: Any, step: int) -> None:
        self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Submits every write to one I/O thread; `close()` waits for them and closes the file."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tensorboard")
        self._file: EventFile | None = None
        self._failing = False

    def _submit(self, write: Callable[[EventFile], None]) -> None:
        self._executor.submit(self._run, write)

    def _run(self, write: Callable[[EventFile], None]) -> None:
        """On the I/O thread: write, flush; a failure is logged once and the file reopened."""
        try:
            if self._file is None:
                self._file = EventFile(self.directory)
            write(self._file)
            self._file.flush()
        except OSError as exc:
            if not self._failing:
                log.error("tensorboard: cannot write (%s); retrying with a new event file", exc)
            self._failing = True
            self._drop_file()
            return
        except Exception:  # a logging bug must never stop training
            log.exception("tensorboard: write failed")
            return
        if self._failing:
            log.info("tensorboard: writing again")
            self._failing = False

    def _drop_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    # The summary helpers are imported inside the writers: the import is slow, and runs on
    # the I/O thread that way, never on the event loop.

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        def write(events: EventFile) -> None:
            from torch.utils.tensorboard.summary import scalar

            for tag, value in scalars.items():
                events.add(scalar(tag, value), step)

        self._submit(write)

    def log_step(self, result: StepResult, iteration_duration_s: float | None) -> None:
        if result.stats is not None:
            self.log_scalars(step_scalars(result, iteration_duration_s), result.step)

    def log_validation(self, step: int, result: ValidationResult) -> None:
        self.log_scalars(validation_scalars(result), step)
        strips = result.strips

        def write(events: EventFile) -> None:
            from torch.utils.tensorboard.summary import image

            for i, strip in enumerate(strips):  # PNG encoding happens here, off the loop
                events.add(image(f"Val/sample_{i:04d}", strip, dataformats="HWC"), step)

        self._submit(write)

    def log_histograms(self, step: int, histograms: dict[str, Any]) -> None:
        def write(events: EventFile) -> None:
            from torch.utils.tensorboard.summary import histogram

            for name, values in histograms.items():
                events.add(histogram(f"Histograms/{name}", values, bins=64), step)

        self._submit(write)

    def log_config(self, values: dict[str, Any], step: int, metrics: tuple[str, ...]) -> None:
        """The resolved configuration at a run's start: Markdown text (the predecessor's
        `Config/Initial_Configuration`) and hparams, with `metrics` (scalar tags) as the hparams
        plugin's metric columns. `values` must hold no secret (`Config.public_dict()`)."""
        self.log_text("Config/Initial_Configuration", config_markdown(values), step)
        hparams = hparam_values(values)

        def write(events: EventFile) -> None:
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            for summary in hparams_summaries(hparams, dict.fromkeys(metrics, 0.0)):
                events.add(summary, step)

        self._submit(write)

    def log_text(self, tag: str, text: str, step: int) -> None:
        def write(events: EventFile) -> None:
            from torch.utils.tensorboard.summary import text as text_summary

            events.add(text_summary(tag, text), step)

        self._submit(write)

    def close(self) -> None:
        """Blocking: call from a thread (the supervisor uses `asyncio.to_thread`)."""
        self._executor.submit(self._drop_file)
        self._executor.shutdown(wait=True)
