"""TrainingEngine: the facade the GPU worker calls — one optimizer step, the batch plan,
validation, live config, state capture and restore — as plain synchronous code.

It runs only on the GPU worker thread (runtime.worker is the bridge) and knows nothing of
asyncio, HTTP or files. The work lives in one module per job: `parts` (the objects of the run),
`step` (accumulation, OOM redo, clip), `batching` (plan, loader, micro-batches), `telemetry`
(window statistics, histograms, runtime facts), `state` (checkpoint state, RNG), `validation`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from vsr_async.records import StepResult, StepStats, ValidationResult
from vsr_async.settings import Config
from vsr_async.training import batching, state, step, telemetry
from vsr_async.training.batch_fit import BatchPlan
from vsr_async.training.distributed import RankContext, is_exchange_failure
from vsr_async.training.parts import EngineParts, Resumed
from vsr_async.training.rank_channel import (
    ApplyConfig,
    Continue,
    Op,
    RankChannel,
    Stop,
    Validate,
)
from vsr_async.training.rank_channel import next_round as next_round_step
from vsr_async.training.validation import ValShard, run_validation

__all__ = ["Resumed", "TrainingEngine"]

log = logging.getLogger(__name__)


class TrainingEngine(EngineParts):
    """Owns every tensor of the run; built on the GPU thread (CUDA handles are per thread)."""

    def __init__(self, config: Config, dataset_info: Any, ranks: RankContext | None = None) -> None:
        super().__init__(config, dataset_info, ranks)
        batching.plan_at_start(self)
        # Under torchrun: the command channel. Rank 0 leads a round at step `run_until` (see
        # rank_channel); the notes other ranks sent with it wait in `rank_notes`.
        self.channel = RankChannel(ranks) if ranks is not None else None
        self.run_until = 0
        self.rank_notes: list[str] = []
        self._round_clock: tuple[float, int] | None = None  # (time, step) of the last Continue
        self._step_seconds: float | None = None  # training time per step, between rounds

    # --- the command channel (torchrun) --------------------------------------------------------

    @property
    def leads_ranks(self) -> bool:
        return self.channel is not None and self.channel.ranks.leader

    @property
    def at_round(self) -> bool:
        """Whether every rank is at this step boundary now (always, without torchrun): only
        then may rank 0 validate, change the config, pause or stop. False once an exchange
        failed: there is no next round."""
        if self.channel is None:
            return True
        return not self.channel.broken and self.step >= self.run_until

    def tell_ranks(self, op: Op) -> None:
        """Rank 0: a round with `op` (no-op elsewhere and without torchrun)."""
        if not self.leads_ranks:
            return
        assert self.channel is not None and self.at_round, "ranks are not at a round"
        if not isinstance(op, Continue):
            self._round_clock = None  # time spent on `op` is not training time
        if isinstance(op, ApplyConfig):  # the ranks need no credentials
            op = ApplyConfig(op.config.without_secrets())
        self.rank_notes.extend(self.channel.lead(op))

    def stop_ranks(self, reason: str) -> list[str]:
        """The last round (every rank, rank 0 with `reason`): stop here, compare the weights'
        fingerprints (DDP keeps them equal; every rank's, by rank), and combine the open
        logging window's sums, so that the final checkpoint holds the whole job's."""
        if self.leads_ranks and not self.at_round:
            return []  # no round to tell it in: the other ranks end when this process does
        self.tell_ranks(Stop(reason))
        assert self.ranks is not None
        prints = self.ranks.all_gather(self.weights_fingerprint())
        self.window.combine_ranks()
        self.adaptive.combine_ranks()
        if self.leads_ranks:
            if len(set(prints)) == 1:
                log.info("every rank holds the same weights at step %d (%s)", self.step, prints[0])
            else:
                log.error("the ranks' weights differ at step %d: %s", self.step, prints)
        else:
            log.info("weights at step %d: %s", self.step, prints[self.ranks.rank])
        return prints

    def weights_fingerprint(self) -> str:
        """sha256 of the model's weights (names and bytes): equal only if bit for bit equal."""
        digest = hashlib.sha256()
        for name, value in self.model.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return f"sha256 {digest.hexdigest()[:16]}"

    def _continue_ranks(self) -> None:
        """Rank 0, at a round before a step: measure the training pace since the last round,
        then tell the ranks the step of the next one."""
        now = time.perf_counter()
        if self._round_clock is not None and self.step > self._round_clock[1]:
            pace = (now - self._round_clock[0]) / (self.step - self._round_clock[1])
            old = self._step_seconds
            self._step_seconds = pace if old is None else 0.7 * old + 0.3 * pace
        until = next_round_step(self.step, self.config, self._step_seconds)
        self.tell_ranks(Continue(until))
        self.run_until, self._round_clock = until, (now, self.step)

    # --- batch plan and live config ----------------------------------------------------------

    def ensure_batch_plan(self) -> BatchPlan:
        """The batch plan; for BATCH_SIZE="auto" on CUDA, probed once before the first step."""
        return batching.ensure_batch_plan(self)

    def runtime_facts(self) -> dict[str, Any]:
        """The snapshot's `runtime` entries about this engine (read between steps)."""
        return telemetry.runtime_facts(self)

    def apply_config(self, config: Config) -> None:
        """A live config change (validated by the caller), effective from the next step."""
        self.tell_ranks(ApplyConfig(config))
        self.config = config
        self.schedule.update_bounds(config)
        self.adaptive.apply_config(config)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = config.WEIGHT_DECAY

    # --- training ------------------------------------------------------------------------------

    @property
    def epoch_steps_total(self) -> int:
        return step.epoch_steps_total(self)

    def is_logging_step(self, step_number: int) -> bool:
        """Whether completing step number `step_number` (1-based) reads numbers off the device."""
        return step.is_logging_step(self, step_number)

    def train_step(self) -> StepResult:
        if self.ranks is None:
            return step.train_step(self)
        if self.leads_ranks and self.at_round:
            self._continue_ranks()
        try:
            return step.train_step(self)
        except torch.OutOfMemoryError:
            raise  # redone inside the step when it can be; else the run's own error
        except RuntimeError as exc:  # DDP's gradient all-reduce: a peer gone or silent
            if not is_exchange_failure(exc):
                raise
            if self.channel is not None:
                self.channel.broken = True
            raise self.ranks.failure("a training step's exchange", exc) from None

    def peek_stats(self) -> StepStats | None:
        return telemetry.peek_stats(self)

    # --- validation ----------------------------------------------------------------------------

    def validate(
        self,
        progress: Callable[[float], None] = lambda f: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> ValidationResult:
        """Validate with the EMA weights when EMA is on, else the live weights; `should_stop`
        is polled per image (a stop interrupts with `ValidationInterrupted`)."""
        self.tell_ranks(Validate())
        shard = None
        if self.ranks is not None:  # each rank its share; every rank gets the whole result
            shard = ValShard(self.ranks.rank, self.ranks.world_size, self.ranks.all_gather)
        model = self.ema.model if self.ema is not None else self.model
        self.model.track_activity = False
        result = run_validation(
            model,
            self.val_set,
            device=self.device,
            scale=self.config.SCALE,
            num_frames=self.config.NUM_FRAMES,
            autocast=self.autocast,
            progress=progress,
            should_stop=should_stop,
            used_ema=self.ema is not None,
            tiling=self.validation_tiling,  # an OOM retries the clip in tiles, remembered
            shard=shard,
        )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # vram_usage_gb: peak since last val
        self.runtime_version += 1  # the tiling may have changed
        return result

    def on_validation(self, step_number: int, quality_ki: float) -> None:
        """Validation quality feeds the adaptive system's plateau detection."""
        self.adaptive.on_validation(step_number, quality_ki)
        telemetry.log_adaptive_events(self)

    # --- checkpoint state ----------------------------------------------------------------------

    def capture_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as CPU copies (syncs: checkpoint time only)."""
        return state.capture_state(self)

    def load_state(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint (already verified and shape-checked by the caller)."""
        state.load_state(self, saved)

    def continue_from_weights(
        self,
        *,
        step: int,
        model_state: dict[str, Any],
        optimizer_state: dict[str, dict[str, Any]] | None,
        run_id: str,
    ) -> None:
        """Continue at `step` from weights (and Adam's state by parameter name) alone."""
        state.continue_from_weights(
            self,
            step=step,
            model_state=model_state,
            optimizer_state=optimizer_state,
            run_id=run_id,
        )

    def close(self) -> None:
        """Stop loader workers (persistent workers otherwise outlive the run); leave the
        torchrun job after a clean stop (a group with a failed peer may not close)."""
        self._batches = iter(())
        if self.ranks is not None and self.channel is not None and not self.channel.broken:
            self.ranks.close()
