"""StatsStore: the single source of truth for what the panel, dashboard, download and Statistik
files show. Written only from the event-loop thread; `snapshot()` is the one place where internal
names become the contract's JSON keys (DESIGN §3), filling the one definition in `snapshot.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, cast

from vsr_async.files.statistics import statistics_name
from vsr_async.names import display_name
from vsr_async.records import StepResult, StepStats, ValidationResult
from vsr_async.runtime.json_values import (
    finite_or_none,
    format_duration,
    iso_utc,
    utc_now_iso,
    with_display_names,
)
from vsr_async.runtime.run_state import Progress, Timing, ValidationState
from vsr_async.runtime.snapshot import (
    SCHEMA_VERSION,
    Snapshot,
)
from vsr_async.runtime.snapshot_values import (
    activity_keys,
    image_entry,
    job_keys,
    runtime_entries,
    y_channel_keys,
)

HISTORY_POINTS = 5000  # per series, at the logging cadence; the oldest points are dropped


class StatsStore:
    """Run state as typed fields; every snapshot key is derived from them in `snapshot()`."""

    def __init__(
        self, *, run_id: str, step_max: int, predecessor_activity_names: bool = False
    ) -> None:
        self.run_id = run_id
        self.predecessor_activity_names = predecessor_activity_names  # MODEL "vsrpp"
        self.progress = Progress(step_max=step_max)
        self.stats: StepStats | None = None  # latest logging-step numbers
        self.timing = Timing()
        self.validation = ValidationState()
        self.run_phase = "starting"  # the supervisor's Phase, as text
        self.training_active = False
        self.training_paused = False
        self.stopped = False
        self.stop_reason: str | None = None
        self.statistics_file: str | None = None
        self.last_statistics_written: str | None = None
        self.last_statistics_error: str | None = None
        self.last_checkpoint: str | None = None
        self.skipped_files: list[str] = []
        self.pending_commands: list[str] = []
        self.extra: dict[str, Any] = {}  # runtime facts set once (device, precision, batch plan)
        self.config_live: dict[str, Any] = {}  # current values of the live-changeable keys
        self.tensorboard_port: int | None = None  # the TensorBoard this run serves, if any
        self.local_ip_address = "127.0.0.1"  # set once at the start (`host_address`)
        self.last_update_time = time.time()
        self.loss_history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
        self.quality_history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
        self.version = 0
        self._changed = asyncio.Event()

    # --- change notification -------------------------------------------------------------------

    def _touch(self) -> None:
        self.version += 1
        self.last_update_time = time.time()
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, version: int, timeout: float | None = None) -> int:
        """Return the store version once it differs from `version` (or after `timeout`)."""
        if self.version != version:
            return self.version
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
        return self.version

    # --- writers (event-loop thread only) ------------------------------------------------------

    def publish_step(self, result: StepResult, now: float | None = None) -> None:
        p = self.progress
        p.step, p.epoch = result.step, result.epoch
        p.epoch_step, p.epoch_steps_total = result.epoch_step, result.epoch_steps_total
        p.learning_rate, p.lr_phase = result.learning_rate, result.lr_phase
        self.timing.step_done(time.monotonic() if now is None else now)
        if result.skipped_files:
            self.skipped_files.extend(display_name(path) for path in result.skipped_files)
        if result.stats is not None:
            self.stats = result.stats
            self.loss_history.append(
                {
                    "step": result.step,
                    **result.stats.losses._asdict(),  # total, then each LossTerm by its name
                    "learning_rate": result.learning_rate,
                    "grad_norm": result.stats.grad_norm,
                }
            )
        self._touch()

    def set_phase(self, phase: str) -> None:
        self.run_phase = phase
        self._touch()

    def set_training(self, *, active: bool | None = None, paused: bool | None = None) -> None:
        if active is not None:
            self.training_active = active
        if paused is not None:
            self.training_paused = paused
        if not self.training_active or self.training_paused:
            self.timing.interrupt()
        else:  # the next step is timed from now: one step suffices for a duration and an ETA
            self.timing.resume(time.monotonic())
        self._touch()

    def validation_started(self, trigger: str) -> None:
        self.validation.running = True
        self.validation.progress = 0.0
        self.validation.trigger = trigger
        self.timing.interrupt()
        self._touch()

    def set_validation_progress(self, fraction: float) -> None:
        self.validation.progress = min(max(fraction, 0.0), 1.0)
        self._touch()

    def validation_failed(self) -> None:
        self.validation.running = False
        self._touch()

    def publish_validation(self, result: ValidationResult, *, step: int, trigger: str) -> bool:
        """Record a finished validation; returns True if it set a new best quality."""
        result = with_display_names(result)  # the panel's strips read these names too
        v = self.validation
        v.result, v.step, v.trigger = result, step, trigger
        v.count += 1
        v.validated_at = utc_now_iso()
        v.running, v.progress = False, 1.0
        improved = v.best_quality is None or result.quality_ki > v.best_quality
        if improved:
            v.best_quality, v.best_step = result.quality_ki, step
        self.statistics_file = statistics_name(step)
        self.quality_history.append(
            {
                "step": step,
                "quality_lr": result.quality_lr,
                "quality_ki": result.quality_ki,
                "improvement": result.quality_improvement,
                "psnr_lr_db": result.psnr_lr_db,
                "psnr_ki_db": result.psnr_ki_db,
                "ssim_lr": result.ssim_lr,
                "ssim_ki": result.ssim_ki,
                "validation_loss": result.loss,
            }
        )
        self._touch()
        return improved

    def restore(
        self,
        *,
        run_id: str,
        step: int,
        best_quality: float | None,
        best_step: int | None,
        validation_count: int,
    ) -> None:
        """A resumed run continues its identity, step and best quality (from the checkpoint)."""
        self.run_id = run_id
        self.progress.step = step
        self.validation.best_quality, self.validation.best_step = best_quality, best_step
        self.validation.count = validation_count
        self._touch()

    def statistics_written(self, name: str) -> None:
        self.last_statistics_written = display_name(name)
        self.last_statistics_error = None
        self._touch()

    def statistics_failed(self, message: str) -> None:
        self.last_statistics_error = display_name(message)
        self._touch()

    def checkpoint_saved(self, name: str) -> None:
        self.last_checkpoint = display_name(name)
        self._touch()

    def set_pending_commands(self, names: list[str]) -> None:
        self.pending_commands = list(names)
        self._touch()

    def set_config_live(self, values: dict[str, Any]) -> None:
        self.config_live = dict(values)
        self._touch()

    def set_extra(self, **values: Any) -> None:
        self.extra.update(values)
        self._touch()

    def set_local_ip_address(self, address: str) -> None:
        self.local_ip_address = address
        self._touch()

    def publish_stats(self, stats: StepStats) -> None:
        """Numbers read when a validation starts before this process's first logging step, so
        its Statistik file holds real losses, weights and adaptive state (never null)."""
        self.stats = stats
        self._touch()

    def set_tensorboard_port(self, port: int | None) -> None:
        self.tensorboard_port = port
        self._touch()

    def mark_stopped(self, reason: str) -> None:
        self.stopped, self.stop_reason = True, reason
        self.training_active = False
        self._touch()

    # --- reading -------------------------------------------------------------------------------

    def eta_seconds(self) -> tuple[float | None, float | None]:
        """(ETA of the run, ETA of the epoch) from training-step time only."""
        sps = self.timing.seconds_per_step
        if sps is None:
            return None, None
        p = self.progress
        total = max(p.step_max - p.step, 0) * sps
        epoch = max(p.epoch_steps_total - p.epoch_step, 0) * sps if p.epoch_steps_total else None
        return total, epoch

    def snapshot(self) -> Snapshot:
        """A JSON-ready deep copy of everything, in the contract's key names (DESIGN §3)."""
        p, s, v = self.progress, self.stats, self.validation
        r = v.result
        eta_total, eta_epoch = self.eta_seconds()
        adaptive = s.adaptive if s is not None else None
        activity, activity_peak = activity_keys(
            s.activity if s else {}, self.predecessor_activity_names
        )
        snap: Snapshot = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            # progress
            "step_current": p.step,
            "step_max": p.step_max,
            "epoch_num": p.epoch + 1,  # counted from 1, as the predecessor's files
            "epoch_step_current": p.epoch_step,
            "epoch_step_total": p.epoch_steps_total,
            "learning_rate_value": p.learning_rate,
            "lr_phase_name": p.lr_phase,
            # losses (window means of unweighted components, read at the logging cadence)
            "total_loss_value": s.losses.total if s else None,
            "l1_loss_value": s.losses.l1 if s else None,
            "ms_loss_value": s.losses.ms if s else None,
            "gradient_loss_value": s.losses.gradient if s else None,
            "perceptual_loss_value": s.losses.perceptual if s else None,
            # weights
            "l1_weight_current": s.weights.l1 if s else None,
            "ms_weight_current": s.weights.ms if s else None,
            "gradient_weight_current": s.weights.gradient if s else None,
            "perceptual_weight_current": s.weights.perceptual if s else None,
            "gradient_clip_val": s.grad_clip if s else None,
            "grad_norm_value": s.grad_norm if s else None,
            # adaptive
            "adaptive_mode": adaptive.mode.value if adaptive else None,
            "adaptive_is_cooldown": adaptive.is_cooldown if adaptive else None,
            "adaptive_cooldown_remaining": adaptive.cooldown_remaining if adaptive else None,
            "adaptive_plateau_counter": adaptive.plateau_counter if adaptive else None,
            "adaptive_lr_boost_available": adaptive.lr_boost_available if adaptive else None,
            "adaptive_perceptual_trend": adaptive.perceptual_trend if adaptive else None,
            # quality of the latest validation (fractions 0-1)
            "quality_lr_value": r.quality_lr if r else None,
            "quality_ki_value": r.quality_ki if r else None,
            "quality_improvement_value": r.quality_improvement if r else None,
            "quality_ki_to_gt_value": r.quality_ki_to_gt if r else None,
            "quality_lr_to_gt_value": r.quality_lr_to_gt if r else None,
            "validation_loss_value": r.loss if r else None,
            "best_quality_ever": v.best_quality,
            "best_quality_step": v.best_step,
            # performance
            "iteration_duration": self.timing.seconds_per_step,
            "vram_usage_gb": s.vram_peak_gb if s else None,
            "vram_reserved_gb": s.vram_reserved_gb if s else None,
            "host_memory_gb": s.host_memory_gb if s else None,
            "adam_momentum_avg": s.adam_momentum_avg if s else None,
            "eta_total_formatted": format_duration(eta_total),
            "eta_epoch_formatted": format_duration(eta_epoch),
            "layer_activity_map": activity,
            "layer_activity_peak_value": activity_peak,
            "nonfinite_steps_skipped": s.nonfinite_steps if s else 0,
            "corrupt_files_skipped": len(self.skipped_files),
            "corrupt_files": self.skipped_files[-20:],
            # status
            "training_active": self.training_active,
            "validation_running": v.running,
            "validation_progress": v.progress,
            "training_paused": self.training_paused,
            "training_stopped": self.stopped,
            "run_phase": self.run_phase,
            "stop_reason": self.stop_reason,
            "pending_commands": self.pending_commands,
            "last_update_time": self.last_update_time,
            "last_update_iso": iso_utc(self.last_update_time),
            "local_ip_address": self.local_ip_address,
            "tensorboard_port": self.tensorboard_port,
            # validation
            "validation_step": v.step,
            "validation_trigger": v.trigger,
            "validation_count": v.count,
            "validated_at": v.validated_at,
            "psnr_lr_db": r.psnr_lr_db if r else None,
            "psnr_ki_db": r.psnr_ki_db if r else None,
            "psnr_gain_db": r.psnr_gain_db if r else None,
            "ssim_lr": r.ssim_lr if r else None,
            "ssim_ki": r.ssim_ki if r else None,
            **y_channel_keys(r),
            "validation_images": [image_entry(m) for m in r.images] if r else [],
            "validation_duration_s": r.duration_s if r else None,
            "validation_used_ema": r.used_ema if r else None,
            # files
            "statistics_file": self.statistics_file,
            "last_statistics_written": self.last_statistics_written,
            "last_statistics_error": self.last_statistics_error,
            "last_checkpoint": self.last_checkpoint,
            **job_keys(self.extra),
            "runtime": runtime_entries(self.extra),
            "config_live": dict(self.config_live),
        }
        return cast(Snapshot, finite_or_none(snap))

    def history(self) -> dict[str, Any]:
        return finite_or_none(
            {"loss": list(self.loss_history), "quality": list(self.quality_history)}
        )
