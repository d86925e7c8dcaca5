"""TrainingEngine: the model, optimizer, data and one optimizer step, as plain synchronous code.

It runs only on the GPU worker thread (worker.py is the bridge) and knows nothing of asyncio,
HTTP or files. A step returns device tensors folded into on-device accumulators; Python numbers
are made only on logging steps (LOG_TBOARD_EVERY), the one deliberate device→host sync.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vsr_async.adaptive import AdaptiveSystem
from vsr_async.data.loader import TrainBatch, build_datasets, build_train_loader
from vsr_async.losses import LossComputer
from vsr_async.metrics import psnr, quality, ssim
from vsr_async.model import VSRNet
from vsr_async.precision import PrecisionPlan, precision_for, resolve_device
from vsr_async.reports import ImageMetrics, StepResult, StepStats, ValidationResult
from vsr_async.schedule import LRSchedule

log = logging.getLogger(__name__)

STRIP_IMAGES = 8  # validation images that get an LR | output | GT strip (panel, TensorBoard)


def host_memory_gb() -> float:
    """Resident memory of this process (Linux: /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def bicubic_upscale(frame: Tensor, scale: int) -> Tensor:
    """The "LR" reference: bicubic upscaling of the centre LR frame, [B,3,h,w] → [B,3,H,W]."""
    return F.interpolate(frame, scale_factor=scale, mode="bicubic", align_corners=False)


def to_strip(lr_up: Tensor, sr: Tensor, gt: Tensor) -> Any:
    """LR | output | GT side by side as uint8 HxWx3 (numpy), for the panel and TensorBoard."""
    row = torch.cat([lr_up, sr, gt], dim=-1)[0].clamp(0, 1)  # [3, H, 3W]
    return (row * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class TrainingEngine:
    """Owns every tensor of the run; built on the GPU thread (CUDA handles are per thread)."""

    def __init__(self, config: Any, dataset_info: Any) -> None:
        self.config = config
        self.device = resolve_device(config.DEVICE)
        self.precision: PrecisionPlan = precision_for(config.AMP, self.device)
        torch.manual_seed(config.SEED)
        self.channels_last = config.CHANNELS_LAST and self.device.type == "cuda"

        # model and optimizer
        self.model = VSRNet(config.N_FEATS, config.N_BLOCKS, config.NUM_FRAMES, config.SCALE)
        self.model.gradient_checkpointing = config.GRADIENT_CHECKPOINTING
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
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
        self.adaptive = AdaptiveSystem(config)
        self.loss = LossComputer(self._perceptual(config))

        # data
        self.train_set, self.val_set = build_datasets(config, dataset_info)
        self.samples_per_step = config.BATCH_SIZE * config.ACCUMULATION_STEPS
        self.samples_consumed = 0
        self.step = 0  # optimizer steps completed
        self._batches = self._open_loader()

        # on-device accumulators, read and reset at the logging cadence
        self._zero = torch.zeros((), device=self.device)
        self._term_sum = torch.zeros(5, device=self.device)  # total, l1, ms, gradient, perceptual
        self._grad_norm_sum = torch.zeros((), device=self.device)
        self._nonfinite_total = torch.zeros((), device=self.device)
        self._nonfinite_streak = torch.zeros((), device=self.device)
        self._window_nonfinite = torch.zeros((), device=self.device)
        self._window_steps = 0

    # --- setup -------------------------------------------------------------------------------

    def _perceptual(self, config: Any) -> torch.nn.Module | None:
        if config.PERCEPTUAL_WEIGHT <= 0:
            return None
        from vsr_async.perceptual import load_perceptual

        return load_perceptual(config.PERCEPTUAL_WEIGHTS_PATH).to(self.device)

    def _open_loader(self) -> Iterator[TrainBatch]:
        n = len(self.train_set)
        loader = build_train_loader(
            self.train_set,
            batch_size=self.config.BATCH_SIZE,
            num_workers=self.config.NUM_WORKERS,
            pin_memory=self.config.PIN_MEMORY and self.device.type == "cuda",
            seed=self.config.SEED,
            start_epoch=self.samples_consumed // n,
            start_index=self.samples_consumed % n,
        )
        self._loader = loader
        return iter(loader)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.precision.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

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
        n = len(self.train_set)
        epoch, within = divmod(self.samples_consumed, n)
        return epoch, within // self.samples_per_step

    def is_logging_step(self, step: int) -> bool:
        """Whether completing step number `step` (1-based) reads numbers off the device."""
        return step % self.config.LOG_TBOARD_EVERY == 0

    # --- one optimizer step --------------------------------------------------------------------

    def train_step(self) -> StepResult:
        cfg, model = self.config, self.model
        step_index = self.step  # 0-based index of the step being taken
        logging_step = self.is_logging_step(step_index + 1)
        lr = self.schedule.lr(step_index)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        weights = self.adaptive.weights
        accumulation = cfg.ACCUMULATION_STEPS

        model.train()
        model.track_activity = logging_step
        self.optimizer.zero_grad(set_to_none=True)
        skipped: list[str] = []
        terms_sum = torch.zeros(5, device=self.device)
        for _ in range(accumulation):
            batch = next(self._batches)
            skipped.extend(batch.skipped)
            batch = batch.to(self.device, non_blocking=True)
            lr_frames, gt = batch.lr, batch.gt
            with self._autocast():
                sr = model(lr_frames)
            total, terms = self.loss(sr, gt, weights)
            self.scaler.scale(total / accumulation).backward()
            terms_sum += torch.cat([total.detach().reshape(1), terms.detach()])
        self.samples_consumed += self.samples_per_step

        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), max_norm=self.adaptive.grad_clip, foreach=True
        )
        finite = torch.isfinite(terms_sum[0]) & torch.isfinite(grad_norm)
        found_inf = (~finite).float()
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips on its own found_inf (no extra sync)
            self.scaler.update()
        else:
            # The fused optimizer skips the update on the device when found_inf is 1.
            self.optimizer.grad_scale = None
            self.optimizer.found_inf = found_inf
            self.optimizer.step()
        self.step += 1

        # fold into on-device accumulators (a non-finite step does not pollute the means)
        self._term_sum += torch.where(finite, terms_sum / accumulation, self._zero)
        self._grad_norm_sum += torch.where(finite, grad_norm.float(), self._zero)
        self._nonfinite_total += found_inf
        self._nonfinite_streak = (self._nonfinite_streak + found_inf) * found_inf
        self._window_nonfinite += found_inf
        self._window_steps += 1

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
        )

    def _read_stats(self) -> StepStats:
        """The logging-cadence sync: one transfer of every accumulator, then reset."""
        momentum_sum, momentum_count = self._zero.clone(), 0
        for state in self.optimizer.state.values():
            if "exp_avg" in state:
                momentum_sum += state["exp_avg"].abs().sum()
                momentum_count += state["exp_avg"].numel()
        packed = torch.cat(
            [
                self._term_sum,
                self._grad_norm_sum.reshape(1),
                self._nonfinite_total.reshape(1),
                self._nonfinite_streak.reshape(1),
                self._window_nonfinite.reshape(1),
                momentum_sum.reshape(1),
            ]
        )
        values = packed.tolist()  # device→host sync (logging cadence only)
        activity = self.model.read_activity(reset=True)
        self.model.track_activity = False
        total_nonfinite, streak = int(values[6]), int(values[7])
        finite_steps = max(self._window_steps - int(values[8]), 1)
        means = [v / finite_steps for v in values[:6]]
        self._term_sum.zero_()
        self._grad_norm_sum.zero_()
        self._window_nonfinite.zero_()
        self._window_steps = 0
        vram_peak = vram_reserved = None
        if self.device.type == "cuda":
            vram_peak = torch.cuda.max_memory_allocated(self.device) / 1e9
            vram_reserved = torch.cuda.memory_reserved(self.device) / 1e9
        return StepStats(
            loss_total=means[0],
            loss_l1=means[1],
            loss_ms=means[2],
            loss_gradient=means[3],
            loss_perceptual=means[4],
            grad_norm=means[5],
            weights=self.adaptive.weights,
            grad_clip=float(self.adaptive.grad_clip),
            adaptive=self.adaptive.report(),
            activity=activity,
            adam_momentum_avg=values[9] / max(momentum_count, 1),
            vram_peak_gb=vram_peak,
            vram_reserved_gb=vram_reserved,
            host_memory_gb=host_memory_gb(),
            nonfinite_steps=total_nonfinite,
            nonfinite_streak=streak,
        )

    # --- validation ----------------------------------------------------------------------------

    def validation_model(self) -> torch.nn.Module:
        return self.model

    @torch.inference_mode()
    def validate(self, progress: Callable[[float], None] = lambda f: None) -> ValidationResult:
        """PSNR/SSIM/quality of bicubic and output against the GT for every validation image."""
        started = time.perf_counter()
        model = self.validation_model()
        was_training = model.training
        model.eval()
        model.track_activity = False
        scale, centre = self.config.SCALE, self.config.NUM_FRAMES // 2
        images, strips, losses = [], [], []
        count = len(self.val_set)
        try:
            for i in range(count):
                name, lr_frames, gt = self.val_set[i]
                lr_frames = lr_frames.unsqueeze(0).to(self.device)  # [1, T, 3, h, w]
                gt = gt.unsqueeze(0).to(self.device)  # [1, 3, H, W]
                with self._autocast():
                    sr = model(lr_frames)
                sr = sr.float().clamp(0, 1)
                lr_up = bicubic_upscale(lr_frames[:, centre].float(), scale).clamp(0, 1)
                p_lr, p_ki = psnr(lr_up, gt)[0], psnr(sr, gt)[0]
                s_lr, s_ki = ssim(lr_up, gt)[0], ssim(sr, gt)[0]
                l1 = F.l1_loss(sr, gt)
                values = torch.stack([p_lr, p_ki, s_lr, s_ki, l1]).tolist()  # one sync per image
                p_lr_v, p_ki_v, s_lr_v, s_ki_v, l1_v = values
                images.append(
                    ImageMetrics(
                        name=name,
                        psnr_lr_db=p_lr_v,
                        psnr_ki_db=p_ki_v,
                        ssim_lr=s_lr_v,
                        ssim_ki=s_ki_v,
                        quality_lr=float(quality(p_lr_v, s_lr_v)),
                        quality_ki=float(quality(p_ki_v, s_ki_v)),
                    )
                )
                losses.append(l1_v)
                if i < STRIP_IMAGES:
                    strips.append(to_strip(lr_up, sr, gt))
                progress((i + 1) / count)
        finally:
            model.train(was_training)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # vram_usage_gb: peak since last val
        return ValidationResult(
            images=tuple(images),
            loss=sum(losses) / len(losses),
            duration_s=time.perf_counter() - started,
            used_ema=model is not self.model,
            strips=tuple(strips),
        )

    def close(self) -> None:
        """Stop loader workers (persistent workers otherwise outlive the run)."""
        self._batches = iter(())
        self._loader = None
