"""TrainingEngine: the model, optimizer, data and one optimizer step, as plain synchronous code.

It runs only on the GPU worker thread (worker.py is the bridge) and knows nothing of asyncio,
HTTP or files. A step folds device tensors into on-device sums; Python numbers are made only on
logging steps (LOG_TBOARD_EVERY), the one deliberate device→host sync.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vsr_async.data.loader import TrainBatch, build_datasets, build_train_loader
from vsr_async.errors import DeviceMemoryError
from vsr_async.nn.ema import EmaWeights
from vsr_async.nn.losses import LossComputer, sharpness_ratio
from vsr_async.nn.model import VSRNet
from vsr_async.nn.tiling import TiledInference, free_device_memory
from vsr_async.records import StepResult, StepStats, ValidationResult
from vsr_async.training.adaptive import AdaptiveSystem
from vsr_async.training.batch_fit import (
    BatchPlan,
    after_oom,
    configured_plan,
    effective_batch,
    requested_setting,
    split_batch,
    unlimited_plan,
)
from vsr_async.training.memory_probe import probe_batch_plan
from vsr_async.training.precision import PrecisionPlan, precision_for, resolve_device
from vsr_async.training.rng import capture_rng, restore_rng
from vsr_async.training.schedule import LRSchedule
from vsr_async.training.step_window import StepWindow
from vsr_async.training.validation import run_validation

log = logging.getLogger(__name__)


def host_memory_gb() -> float:
    """Resident memory of this process (Linux: /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def cpu_copy(value: Any) -> Any:
    """A detached CPU copy of every tensor in a nested state (taken on the GPU thread)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(cpu_copy(v) for v in value)
    return value


@dataclass(frozen=True)
class Resumed:
    """What a resumed engine continues from (the supervisor restores the store from it)."""

    step: int
    run_id: str
    best_quality: float | None
    best_step: int | None
    validation_count: int
    source: Path | None = None  # the file it came from (retention's lineage: see checkpoints.py)


class TrainingEngine:
    """Owns every tensor of the run; built on the GPU thread (CUDA handles are per thread)."""

    def __init__(self, config: Any, dataset_info: Any) -> None:
        self.config = config
        self.device = resolve_device(config.DEVICE)
        self.precision: PrecisionPlan = precision_for(config.AMP, self.device)
        log.info("precision: %s (%s)", self.precision.mode, self.precision.reason)
        torch.manual_seed(config.SEED)
        self.channels_last = config.CHANNELS_LAST and self.device.type == "cuda"

        # model, EMA, optimizer
        self.model = VSRNet(config.N_FEATS, config.N_BLOCKS, config.NUM_FRAMES, config.SCALE)
        self.model.gradient_checkpointing = config.GRADIENT_CHECKPOINTING
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if config.COMPILE else self.model
        self.ema = EmaWeights(self.model, config.EMA_DECAY) if config.EMA_DECAY > 0 else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.MAX_LR,
            weight_decay=config.WEIGHT_DECAY,
            fused=True,  # device-side skip of non-finite steps (found_inf), no host sync
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision.uses_grad_scaler
        )
        self.schedule = LRSchedule.from_config(config)
        self.adaptive = AdaptiveSystem(config, self.schedule, self.device)
        self.loss = LossComputer(self._perceptual(config))

        # data
        self.train_set, self.val_set = build_datasets(config, dataset_info)
        self.train_gt_size: tuple[int, int] = dataset_info.train_gt_size  # (W, H), for the probe
        self.samples_per_step = effective_batch(config)
        self.samples_consumed = 0
        self.step = 0  # optimizer steps completed

        # batch plan (micro-batch x accumulation, checkpointing): known now, except for
        # BATCH_SIZE="auto" on CUDA, which `ensure_batch_plan` probes before the first step
        self.batch_plan: BatchPlan | None = None
        self.oom_events: list[dict[str, Any]] = []  # out-of-memory steps redone, oldest first
        self.validation_tiling = TiledInference()
        self.runtime_version = 0  # bumped when a fact of `runtime_facts()` changes
        self._batches: Iterator[TrainBatch] | None = None  # yields the plan's micro-batches
        if config.BATCH_SIZE != "auto":
            self._apply_plan(configured_plan(config))
        elif self.device.type != "cuda":
            self._apply_plan(unlimited_plan(config, self.device.type))
        if self.batch_plan is not None:
            self._batches = self._open_loader()
        self.window = StepWindow(self.device)
        self.resumed: Resumed | None = None

    # --- setup -------------------------------------------------------------------------------

    def _perceptual(self, config: Any) -> torch.nn.Module | None:
        if config.PERCEPTUAL_WEIGHT <= 0:
            return None
        from vsr_async.nn.perceptual import load_perceptual

        return load_perceptual(config.PERCEPTUAL_WEIGHTS_PATH).to(self.device)

    def _open_loader(self) -> Iterator[TrainBatch]:
        """Batches of the plan's micro-batch (a divisor of a step's samples; _next_samples)."""
        assert self.batch_plan is not None
        n = len(self.train_set)
        return iter(
            build_train_loader(
                self.train_set,
                batch_size=self.batch_plan.micro_batch,
                num_workers=self.config.NUM_WORKERS,
                pin_memory=self.config.PIN_MEMORY and self.device.type == "cuda",
                seed=self.config.SEED,
                start_epoch=self.samples_consumed // n,
                start_index=self.samples_consumed % n,
            )
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.precision.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # --- batch plan ----------------------------------------------------------------------------

    def ensure_batch_plan(self) -> BatchPlan:
        """The batch plan; for BATCH_SIZE="auto" on CUDA, probed once before the first step."""
        if self.batch_plan is None:
            self._apply_plan(probe_batch_plan(self))
        if self._batches is None:
            self._batches = self._open_loader()
        assert self.batch_plan is not None
        return self.batch_plan

    def _apply_plan(self, plan: BatchPlan) -> None:
        self.batch_plan = plan
        self.model.gradient_checkpointing = plan.gradient_checkpointing
        self.runtime_version += 1
        log.info("batch plan: %s", plan.describe())

    def _shrink_after_oom(self, step: int, message: str) -> None:
        """Halve the micro-batch (or switch checkpointing on) after an OOM in step `step`."""
        old = self.batch_plan
        assert old is not None
        try:
            new = after_oom(old, message)
        except DeviceMemoryError:
            log.error("out of memory in step %d at micro-batch 1 with gradient checkpointing", step)
            raise
        event = {
            "step": step,
            "micro_batch_before": old.micro_batch,
            "micro_batch_after": new.micro_batch,
            "accumulation_steps_after": new.accumulation_steps,
            "gradient_checkpointing_after": new.gradient_checkpointing,
            "error": message,
        }
        self.oom_events.append(event)
        log.warning(
            "out of memory in step %d at micro-batch %d (%s): redoing the step from the same "
            "samples with micro-batch %d x %d accumulation, gradient checkpointing %s",
            step,
            old.micro_batch,
            message,
            new.micro_batch,
            new.accumulation_steps,
            "on" if new.gradient_checkpointing else "off",
        )
        self._apply_plan(new)

    def runtime_facts(self) -> dict[str, Any]:
        """The snapshot's `runtime` entries about this engine (read between steps)."""
        plan = self.batch_plan
        return {
            "precision": self.precision.mode,
            "precision_reason": self.precision.reason,
            "batch_plan": plan.to_snapshot() if plan is not None else None,
            "oom_events": len(self.oom_events),
            "oom_recent": self.oom_events[-10:],
            "validation_tiling": self.validation_tiling.to_snapshot(),
        }

    def apply_config(self, config: Any) -> None:
        """A live config change (validated by the caller), effective from the next step."""
        self.config = config
        self.schedule.update_bounds(config)
        self.adaptive.apply_config(config)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = config.WEIGHT_DECAY

    # --- progress ------------------------------------------------------------------------------

    @property
    def epoch_steps_total(self) -> int:
        return max(len(self.train_set) // self.samples_per_step, 1)

    def _progress(self) -> tuple[int, int]:
        epoch, within = divmod(self.samples_consumed, len(self.train_set))
        return epoch, within // self.samples_per_step

    def is_logging_step(self, step: int) -> bool:
        """Whether completing step number `step` (1-based) reads numbers off the device."""
        return step % self.config.LOG_TBOARD_EVERY == 0

    # --- one optimizer step --------------------------------------------------------------------

    def train_step(self) -> StepResult:
        cfg = self.config
        step_index = self.step  # 0-based index of the step being taken
        logging_step = self.is_logging_step(step_index + 1)
        lr = self.schedule.lr(step_index)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        weights = self.adaptive.weights
        self.ensure_batch_plan()

        self.model.train()
        self.model.track_activity = logging_step
        samples = self._next_samples()  # on the host; split into micro-batches when used
        skipped = [path for part in samples for path in part.skipped]
        terms, sr, gt = self._accumulate_fitting(samples, weights, step_index + 1)
        accumulation = self.batch_plan.accumulation_steps  # after an OOM: the reduced plan's
        self.samples_consumed += self.samples_per_step

        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), max_norm=self.adaptive.grad_clip, foreach=True
        )
        finite = torch.isfinite(terms[0]) & torch.isfinite(grad_norm)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips on its own found_inf (no extra sync)
            self.scaler.update()
        else:
            # The fused optimizer skips the update on the device when found_inf is 1.
            self.optimizer.grad_scale = None
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        self.window.add(terms / accumulation, grad_norm, finite)
        sharpness = (
            sharpness_ratio(sr, gt)  # of the last micro-batch: a sample suffices
            if self.adaptive.needs_sharpness
            else grad_norm.new_zeros(())
        )
        self.adaptive.record_step(grad_norm, sharpness, finite)

        epoch, epoch_step = self._progress()
        return StepResult(
            step=self.step,
            epoch=epoch,
            epoch_step=epoch_step,
            epoch_steps_total=self.epoch_steps_total,
            learning_rate=lr,
            lr_phase=self.schedule.phase(step_index),
            skipped_files=tuple(skipped),
            stats=self._read_stats() if logging_step else None,
            histograms=self._histograms() if self.step % cfg.HIST_STEP_EVERY == 0 else None,
        )

    def _next_samples(self) -> list[TrainBatch]:
        """One optimizer step's samples (EFFECTIVE_BATCH of them) as the loader's batches.

        The loader yields batches of the micro-batch it was opened with, a divisor of the step's
        samples; the step is split into micro-batches of the current plan only when it runs,
        so a step that ran out of memory is redone from the same samples, split finer.
        """
        assert self._batches is not None
        parts = [next(self._batches)]
        count = parts[0].lr.shape[0]
        while count < self.samples_per_step:
            parts.append(next(self._batches))
            count += parts[-1].lr.shape[0]
        if count != self.samples_per_step:
            raise RuntimeError(
                f"loader batches gave {count} samples for a step of {self.samples_per_step}"
            )
        return parts

    def _accumulate(
        self, samples: list[TrainBatch], weights: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward and backward of every micro-batch of one step: the summed terms [5], and the
        last micro-batch's output and GT (device tensors, no sync)."""
        assert self.batch_plan is not None
        accumulation = self.batch_plan.accumulation_steps
        self.optimizer.zero_grad(set_to_none=True)
        terms = torch.zeros(5, device=self.device)  # total, l1, ms, gradient, perceptual
        for micro in split_batch(samples, self.batch_plan.micro_batch):
            batch = micro.to(self.device, non_blocking=True)
            with self.autocast():
                sr = self.forward(batch.lr)  # [B, 3, H, W]
            total, components = self.loss(sr, batch.gt, weights)
            self.scaler.scale(total / accumulation).backward()
            terms += torch.cat([total.detach().reshape(1), components])
        return terms, sr.detach(), batch.gt

    def _accumulate_fitting(
        self, samples: list[TrainBatch], weights: Any, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_accumulate`; after an out-of-memory error, memory is freed, the plan shrinks (half
        the micro-batch, twice the accumulation) and the step is redone from the same samples."""
        while True:
            activity = None
            if self.model.track_activity:  # a failed attempt must not count twice
                activity = (self.model.activity_sum.clone(), self.model.activity_count.clone())
            try:
                return self._accumulate(samples, weights)
            except torch.OutOfMemoryError as exc:
                message = str(exc).splitlines()[0] if str(exc) else "out of memory"
            # Outside the except block: the failed attempt's tensors are unreferenced now.
            self.optimizer.zero_grad(set_to_none=True)
            if activity is not None:
                self.model.activity_sum.copy_(activity[0])
                self.model.activity_count.copy_(activity[1])
            del activity
            free_device_memory(self.device)
            self._shrink_after_oom(step, message)

    def _read_stats(self) -> StepStats:
        """The logging-cadence sync: one transfer of every window sum, then a new window."""
        momentum_sum, momentum_count = torch.zeros((), device=self.device), 0
        for state in self.optimizer.state.values():
            if "exp_avg" in state:
                momentum_sum += state["exp_avg"].abs().sum()
                momentum_count += state["exp_avg"].numel()
        means = self.window.read(extra=[momentum_sum])
        total, l1, ms, gradient, perceptual = means.terms
        smoothed = AdaptiveSystem.loss_at_targets(self.config, l1, ms, gradient, perceptual)
        self.adaptive.update(self.step, smoothed, perceptual)
        for event in self.adaptive.drain_events():
            log.info("adaptive: %s", event)
        activity = self.model.read_activity(reset=True)
        self.model.track_activity = False
        vram_peak = vram_reserved = None
        if self.device.type == "cuda":
            vram_peak = torch.cuda.max_memory_allocated(self.device) / 1e9
            vram_reserved = torch.cuda.memory_reserved(self.device) / 1e9
        return StepStats(
            loss_total=total,
            loss_l1=l1,
            loss_ms=ms,
            loss_gradient=gradient,
            loss_perceptual=perceptual,
            grad_norm=means.grad_norm,
            weights=self.adaptive.weights,
            grad_clip=float(self.adaptive.grad_clip),
            adaptive=self.adaptive.report(),
            activity=activity,
            adam_momentum_avg=means.extra[0] / max(momentum_count, 1),
            vram_peak_gb=vram_peak,
            vram_reserved_gb=vram_reserved,
            host_memory_gb=host_memory_gb(),
            nonfinite_steps=means.nonfinite_total,
            nonfinite_streak=means.nonfinite_streak,
        )

    def _histograms(self) -> dict[str, Any]:
        """Weight values for TensorBoard histograms (HIST_STEP_EVERY; a deliberate copy)."""
        return {
            name: p.detach().float().flatten().cpu().numpy()
            for name, p in self.model.named_parameters()
        }

    # --- validation ----------------------------------------------------------------------------

    def validate(
        self,
        progress: Callable[[float], None] = lambda f: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> ValidationResult:
        """Validate with the EMA weights when EMA is on, else the live weights; `should_stop`
        is polled per image (a stop interrupts with `ValidationInterrupted`)."""
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
        )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # vram_usage_gb: peak since last val
        self.runtime_version += 1  # the tiling may have changed
        return result

    def on_validation(self, step: int, quality_ki: float) -> None:
        """Validation quality feeds the adaptive system's plateau detection."""
        self.adaptive.on_validation(step, quality_ki)
        for event in self.adaptive.drain_events():
            log.info("adaptive: %s", event)

    # --- checkpoint state ----------------------------------------------------------------------

    def capture_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as CPU copies (syncs: checkpoint time only)."""
        return {
            "format_version": 1,
            "step": self.step,
            "samples_consumed": self.samples_consumed,
            "config": self.config.public_dict(),  # never a secret: people share checkpoints
            "model": cpu_copy(self.model.state_dict()),
            "ema": cpu_copy(self.ema.state_dict()) if self.ema is not None else None,
            "optimizer": cpu_copy(self.optimizer.state_dict()),
            "scaler": cpu_copy(self.scaler.state_dict()),
            "schedule": self.schedule.state_dict(),
            "adaptive": cpu_copy(self.adaptive.state_dict()),
            "window": cpu_copy(self.window.state_dict()),
            "rng": capture_rng(),
            "batch_plan": self.batch_plan.to_state() if self.batch_plan is not None else None,
            "oom_events": list(self.oom_events),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (already verified and shape-checked by the caller)."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.schedule.load_state_dict(state["schedule"])
        self.adaptive.load_state_dict(state["adaptive"])
        self.window.load_state_dict(state["window"])
        restore_rng(state["rng"])
        self.step = int(state["step"])
        self.samples_consumed = int(state["samples_consumed"])
        self._restore_batch_plan(state.get("batch_plan"))
        self.oom_events = list(state.get("oom_events") or [])
        # the sampler continues where the run stopped (after the probe, if one is still due)
        self._batches = self._open_loader() if self.batch_plan is not None else None
        self.adaptive.on_resume(self.step)
        self.resumed = Resumed(
            step=self.step,
            run_id=state["run_id"],
            best_quality=state.get("best_quality"),
            best_step=state.get("best_step"),
            validation_count=int(state.get("validation_count") or 0),
        )

    def _restore_batch_plan(self, saved: dict[str, Any] | None) -> None:
        """Keep the checkpoint's fitted (or OOM-reduced) plan while the config asks for the same
        batch setting; a changed BATCH_SIZE/ACCUMULATION_STEPS/EFFECTIVE_BATCH wins."""
        if saved is None:
            return
        plan = BatchPlan.from_state(saved)
        if plan.requested != requested_setting(self.config):
            log.info(
                "the checkpoint's batch plan was made for %s; the config now asks for %s: "
                "not reused",
                plan.requested,
                requested_setting(self.config),
            )
            return
        if self.config.GRADIENT_CHECKPOINTING and not plan.gradient_checkpointing:
            plan = dataclasses.replace(plan, gradient_checkpointing=True)
        suffix = " (from the checkpoint)"
        reason = plan.reason if plan.reason.endswith(suffix) else plan.reason + suffix
        self._apply_plan(dataclasses.replace(plan, reason=reason))

    def close(self) -> None:
        """Stop loader workers (persistent workers otherwise outlive the run)."""
        self._batches = iter(())
