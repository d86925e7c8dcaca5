"""RunPublisher: puts what the GPU worker hands back into the store, TensorBoard and the log —
a step's numbers, a validation's results, the point a resumed run continues from — and watches
the non-finite-step counters (NAN_LIMIT). The supervisor decides when; nothing here awaits.
"""

from __future__ import annotations

import logging
from typing import Any

from vsr_async.files.tensorboard import TensorBoardLogger
from vsr_async.records import StepResult, ValidationResult
from vsr_async.runtime.store import StatsStore
from vsr_async.settings import Config

log = logging.getLogger(__name__)


class RunPublisher:
    def __init__(self, store: StatsStore, tensorboard: TensorBoardLogger) -> None:
        self.store = store
        self.tensorboard = tensorboard
        self._nonfinite_reported = 0  # skipped non-finite steps already named in the log

    def restore(self, resumed: Any) -> None:
        """A resumed run keeps its run id, step, best quality and validation count."""
        if resumed is None:
            return
        self.store.restore(
            run_id=resumed.run_id,
            step=resumed.step,
            best_quality=resumed.best_quality,
            best_step=resumed.best_step,
            validation_count=resumed.validation_count,
        )
        log.info("resumed run %s at step %d", resumed.run_id, resumed.step)

    def step(self, result: StepResult, config: Config) -> str | None:
        """Publish one step; the reason to stop when NAN_LIMIT non-finite steps came in a row."""
        self.store.publish_step(result)
        if result.histograms is not None:
            self.tensorboard.log_histograms(result.step, result.histograms)
        if result.stats is None:
            return None
        stats = result.stats
        sps = self.store.timing.seconds_per_step
        self.tensorboard.log_step(result, sps)
        log.info(
            "step %d/%d  loss %.5f  lr %.2e (%s)  %s",
            result.step,
            config.MAX_STEPS,
            stats.losses.total,
            result.learning_rate,
            result.lr_phase,
            f"{1 / sps:.2f} it/s" if sps else "-- it/s",
        )
        if stats.nonfinite_steps > self._nonfinite_reported:
            log.warning(
                "non-finite loss: %d step(s) skipped without an update up to step %d (%d in all)",
                stats.nonfinite_steps - self._nonfinite_reported,
                result.step,
                stats.nonfinite_steps,
            )
            self._nonfinite_reported = stats.nonfinite_steps
        if stats.nonfinite_streak < config.NAN_LIMIT:
            return None
        log.error(
            "%d consecutive non-finite losses (NAN_LIMIT=%d): stopping with the last good weights",
            stats.nonfinite_streak,
            config.NAN_LIMIT,
        )
        return f"{stats.nonfinite_streak} consecutive non-finite losses"

    def validation_logged(self, step: int, result: ValidationResult, trigger: str) -> None:
        """TensorBoard and the log line of a validation (after the store has it)."""
        self.tensorboard.log_validation(step, result)
        log.info(
            "validation at step %d (%s): quality LR %.2f%% -> output %.2f%% (improvement "
            "%+.2f%%), PSNR %.2f -> %.2f dB (Y channel %.2f -> %.2f dB)",
            step,
            trigger,
            result.quality_lr * 100,
            result.quality_ki * 100,
            result.quality_improvement * 100,
            result.psnr_lr_db,
            result.psnr_ki_db,
            result.psnr_y_lr_db,
            result.psnr_y_ki_db,
        )
