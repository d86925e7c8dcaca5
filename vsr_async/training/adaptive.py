"""Adaptive system: its modes, plateaus and LR boosts, over the adaptive loss weights
(`adaptive_weights`) and the adaptive gradient clip (`adaptive_clip`).

`record_step` runs every step and only folds device tensors into device accumulators (no sync).
`update` runs at the logging cadence: one device→host transfer, then every decision on the host.
It owns no model and no optimizer: the engine reads `weights` and `grad_clip`, and a boost goes
through `LRSchedule.start_boost`, so nothing else can overwrite it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vsr_async.records import AdaptiveMode, AdaptiveReport, LossMeans, LossWeights
from vsr_async.training.adaptive_clip import MIN_CLIP_SAMPLES, AdaptiveClip
from vsr_async.training.adaptive_weights import AdaptiveWeights
from vsr_async.training.schedule import LRSchedule

__all__ = ["MIN_CLIP_SAMPLES", "AdaptiveSystem"]

MAX_EVENTS = 100  # undrained events kept (the oldest are dropped)
STATE_VERSION = 1


class AdaptiveSystem:
    """Moves loss weights, boosts the learning rate and sets the gradient clip.

    Modes (`AdaptiveMode`): Off (ADAPTIVE_LOSS_WEIGHTS and ADAPTIVE_GRAD_CLIP both false: nothing
    moves), Warmup (step < WARMUP_STEPS), Settling (ADAPTIVE_SETTLING_STEPS after warmup, and
    ADAPTIVE_RESUME_SETTLING_STEPS after a resume or a safety reset), Stable, Aggressive (a
    plateau is detected; left when progress resumes). Weight moves and plateau decisions wait
    out Warmup and Settling; the clip adapts in every mode but Off.
    """

    def __init__(
        self,
        config: Any,
        schedule: LRSchedule,
        device: torch.device | str,
        sum_over_ranks: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        # Under torchrun the sharpness window is summed over the ranks before a decision, so
        # every rank decides the same (gradient norms agree already: DDP averaged them).
        self.sum_over_ranks = sum_over_ranks
        self.schedule = schedule
        self.device = torch.device(device)
        # Fixed at start: the perceptual network is loaded only when its weight is > 0.
        self.perceptual_on = config.PERCEPTUAL_WEIGHT > 0
        self._events: list[str] = []

        # host state (all of it in state_dict, with the parts' own)
        self._step = 0  # last step seen by update / on_validation / on_resume
        self._best_loss, self._best_loss_step = math.inf, 0
        self._best_quality, self._quality_stall = -math.inf, 0
        self._plateau_counter, self._plateau_since, self._boost_tried = 0, -1, False
        self._boost_ready_at = 0  # no boost before this step (boost + cooldown)
        self._resume_settle_until = 0
        self._perceptual_history: list[list[float]] = []  # [update step, window mean]
        self._weighting = AdaptiveWeights(config, self.device, perceptual_on=self.perceptual_on)
        self._clip = AdaptiveClip(config, self.device)

        self.apply_config(config)
        self._last_mode = self.mode

    # --- configuration -------------------------------------------------------------------------

    def apply_config(self, config: Any) -> None:
        """A live config change: thresholds apply from the next decision; targets, bounds and the
        switches apply at once (explicit user decisions are not rate-limited)."""
        self.config = config
        self._weighting.apply_config(config)
        self._clip.apply_config(config)

    @property
    def weights_adaptive(self) -> bool:
        return bool(self.config.ADAPTIVE_LOSS_WEIGHTS)

    @property
    def clip_adaptive(self) -> bool:
        return bool(self.config.ADAPTIVE_GRAD_CLIP)

    @property
    def needs_sharpness(self) -> bool:
        """Whether record_step uses its sharpness argument (the engine may skip computing it)."""
        return self.weights_adaptive

    # --- what the engine reads -----------------------------------------------------------------

    @property
    def weights(self) -> LossWeights:
        return self._weighting.weights

    @property
    def grad_clip(self) -> float:
        """A host float, changed only at the logging cadence (clip_grad_norm_ takes it per step)."""
        return self._clip.value

    @property
    def mode(self) -> AdaptiveMode:
        if not (self.weights_adaptive or self.clip_adaptive):
            return AdaptiveMode.OFF
        if self._step < self.config.WARMUP_STEPS:
            return AdaptiveMode.WARMUP
        if self._step < self._settle_until():
            return AdaptiveMode.SETTLING
        return AdaptiveMode.AGGRESSIVE if self._plateau_counter > 0 else AdaptiveMode.STABLE

    @property
    def lr_boost_available(self) -> bool:
        """False while boosting, during the boost cooldown, when Off, or with factor 1."""
        return (
            self.mode != AdaptiveMode.OFF
            and self.config.ADAPTIVE_LR_BOOST_FACTOR > 1.0
            and not self.schedule.boosting(self._step)
            and self._step >= self._boost_ready_at
        )

    def report(self) -> AdaptiveReport:
        remaining = self._weighting.cooldown_remaining(self._step) if self.weights_adaptive else 0
        return AdaptiveReport(
            mode=self.mode,
            is_cooldown=remaining > 0,
            cooldown_remaining=remaining,
            plateau_counter=self._plateau_counter,
            lr_boost_available=self.lr_boost_available,
            perceptual_trend=self.perceptual_trend,
        )

    @property
    def perceptual_trend(self) -> float:
        """Least-squares slope of the smoothed perceptual loss over the window, per 1000 steps;
        0.0 when the perceptual loss is off or fewer than two points are in the window."""
        points = self._perceptual_history
        if not self.perceptual_on or len(points) < 2:
            return 0.0
        mean_x = sum(p[0] for p in points) / len(points)
        mean_y = sum(p[1] for p in points) / len(points)
        sxx = sum((p[0] - mean_x) ** 2 for p in points)
        sxy = sum((p[0] - mean_x) * (p[1] - mean_y) for p in points)
        return 1000.0 * sxy / sxx if sxx > 0 else 0.0

    @property
    def events(self) -> list[str]:
        """Decisions since the last drain_events(), oldest first (the engine logs them)."""
        return self._events

    def drain_events(self) -> list[str]:
        events, self._events = self._events, []
        return events

    # --- every step: device ops only -----------------------------------------------------------

    def record_step(self, grad_norm: Tensor, sharpness: Tensor, finite: Tensor) -> None:
        """Fold one step into the device accumulators: 0-dim tensors, no value is read (no sync,
        no branch on a value). A non-finite step counts in neither the sharpness nor the clip."""
        if self.weights_adaptive:
            self._weighting.record(sharpness, finite)
        if self.clip_adaptive:
            self._clip.record(grad_norm, finite)

    # --- logging cadence: one transfer, then host decisions ------------------------------------

    def update(self, step: int, smoothed_loss: float, perceptual_loss: float) -> None:
        """Decide at the logging cadence. `step`: optimizer steps completed. `smoothed_loss`: the
        window mean of a loss that the adaptive weights do not change (see `loss_at_targets`);
        `perceptual_loss`: the window mean of the unweighted perceptual term."""
        self._step = step
        if self.mode == AdaptiveMode.OFF:
            self._note_mode()
            return
        sharp_sum, sharp_count, quantile, samples = self._read_device()
        if self.clip_adaptive:
            self._clip.adapt(self.config, quantile, samples)
        self._weighting.close_window(step, sharp_sum, sharp_count, keep=self.weights_adaptive)
        if self.perceptual_on and math.isfinite(perceptual_loss):
            self._perceptual_history.append([float(step), perceptual_loss])
        self._prune_windows(step)
        self._track_best_loss(step, smoothed_loss)
        if self.mode in (AdaptiveMode.STABLE, AdaptiveMode.AGGRESSIVE):
            self._observe_plateau(step)  # may boost, or reset into Settling
        self._note_mode()
        if self.mode in (AdaptiveMode.STABLE, AdaptiveMode.AGGRESSIVE) and self.weights_adaptive:
            moved = self._weighting.move(step, aggressive=self.mode == AdaptiveMode.AGGRESSIVE)
            if moved is not None:
                self._event(step, moved)

    def on_validation(self, step: int, quality_ki: float) -> None:
        """A finished validation: a new best quality resets the stall count, otherwise (after
        Warmup and Settling) it grows. The plateau is re-evaluated at the next update."""
        self._step = step
        if self.mode == AdaptiveMode.OFF or not math.isfinite(quality_ki):
            return
        if quality_ki > self._best_quality + self.config.ADAPTIVE_QUALITY_MIN_GAIN:
            self._best_quality, self._quality_stall = quality_ki, 0
        elif self.mode in (AdaptiveMode.STABLE, AdaptiveMode.AGGRESSIVE):
            self._quality_stall += 1

    def combine_ranks(self) -> None:
        """Under torchrun, at the last round: the open sharpness window becomes the sum over
        the ranks (on rank 0; a resumed rank > 0 starts its share from zero, `share_only`)."""
        if self.sum_over_ranks is not None:
            self.sum_over_ranks(self._weighting.sharpness_sum)
            self.sum_over_ranks(self._weighting.sharpness_count)

    def share_only(self) -> None:
        """A rank > 0 after loading rank 0's state: the open window's sharpness sums are rank 0's
        (summed over the ranks at the next read), so this rank starts its own from zero."""
        self._weighting.sharpness_sum.zero_()
        self._weighting.sharpness_count.zero_()

    def on_resume(self, step: int) -> None:
        """Call after load_state_dict: Settling for ADAPTIVE_RESUME_SETTLING_STEPS."""
        self._step = step
        self._resume_settle_until = step + self.config.ADAPTIVE_RESUME_SETTLING_STEPS
        self._note_mode()

    @staticmethod
    def loss_at_targets(config: Any, losses: LossMeans) -> float:
        """The training loss under the config's target weights: what `update` should get as
        `smoothed_loss`, so a weight move is never mistaken for progress or for a plateau."""
        targets = LossWeights.from_config(config)
        return (
            targets.l1 * losses.l1
            + targets.ms * losses.ms
            + targets.gradient * losses.gradient
            + targets.perceptual * losses.perceptual
        )

    # --- rules ---------------------------------------------------------------------------------

    def _read_device(self) -> tuple[float, float, float, float]:
        """(sharpness sum, sharpness count, clip percentile, finite norms) in one transfer."""
        quantile = samples = torch.zeros((), device=self.device)
        if self.clip_adaptive:
            quantile, samples = self._clip.summary(self.config.ADAPTIVE_CLIP_PERCENTILE)
        sharpness = torch.stack(list(self._weighting.window_sums()))
        if self.sum_over_ranks is not None:
            sharpness = self.sum_over_ranks(sharpness)
        packed = torch.cat([sharpness, torch.stack([quantile, samples])])
        sharp_sum, sharp_count, q, n = packed.tolist()  # device→host sync (logging cadence only)
        return sharp_sum, sharp_count, q, n

    def _track_best_loss(self, step: int, loss: float) -> None:
        """Progress = the smoothed loss below best x (1 − ADAPTIVE_PLATEAU_THRESHOLD)."""
        threshold = self.config.ADAPTIVE_PLATEAU_THRESHOLD
        if math.isfinite(loss) and loss < self._best_loss * (1 - threshold):
            self._best_loss, self._best_loss_step = loss, step

    def _observe_plateau(self, step: int) -> None:
        """One observation per update: count it, boost when available, reset when it lasts."""
        cfg = self.config
        loss_stalled = step - self._best_loss_step >= cfg.ADAPTIVE_PLATEAU_PATIENCE_STEPS
        quality_stalled = self._quality_stall >= cfg.ADAPTIVE_QUALITY_PATIENCE
        if not (loss_stalled or quality_stalled):
            if self._plateau_counter:
                self._event(step, f"progress resumed after {self._plateau_counter} plateau updates")
            self._plateau_counter, self._plateau_since, self._boost_tried = 0, -1, False
            return
        if self._plateau_counter == 0:
            self._plateau_since, self._boost_tried = step, False
            reasons = []
            if loss_stalled:
                reasons.append(f"loss: no new best since step {self._best_loss_step}")
            if quality_stalled:
                reasons.append(f"quality: {self._quality_stall} validations without a new best")
            self._event(step, "plateau (" + "; ".join(reasons) + ")")
        self._plateau_counter += 1
        if self._boost_tried and step - self._plateau_since >= cfg.ADAPTIVE_RESET_STEPS:
            self._safety_reset(step)  # first: a boost coming due must not postpone the reset
        elif self.lr_boost_available:
            self._start_boost(step)

    def _start_boost(self, step: int) -> None:
        cfg = self.config
        factor, duration = cfg.ADAPTIVE_LR_BOOST_FACTOR, cfg.ADAPTIVE_LR_BOOST_STEPS
        self.schedule.start_boost(step, factor, duration)  # boosts step indices [step, +duration)
        self._boost_ready_at = step + duration + cfg.ADAPTIVE_LR_BOOST_COOLDOWN_STEPS
        self._boost_tried = True
        self._event(
            step,
            f"LR boost x{factor:g} for {duration} steps: lr {self.schedule.lr(step):.3g} "
            f"(MAX_LR {self.schedule.max_lr:.3g}); next boost from step {self._boost_ready_at}",
        )

    def _safety_reset(self, step: int) -> None:
        """The plateau outlived a boost by ADAPTIVE_RESET_STEPS: back to the configured start."""
        cfg = self.config
        since = self._plateau_since
        self._weighting.reset(step)
        self._clip.reset(cfg)
        self._plateau_counter, self._plateau_since, self._boost_tried = 0, -1, False
        self._best_loss_step, self._quality_stall = step, 0  # fresh patience; the best stays
        self._resume_settle_until = step + cfg.ADAPTIVE_RESUME_SETTLING_STEPS
        self._event(
            step,
            f"safety reset: plateau since step {since} outlasted an LR boost; weights back to "
            f"targets, clip back to {self._clip.value:g}",
        )

    # --- helpers -------------------------------------------------------------------------------

    def _settle_until(self) -> int:
        after_warmup = self.config.WARMUP_STEPS + self.config.ADAPTIVE_SETTLING_STEPS
        return max(after_warmup, self._resume_settle_until)

    def _prune_windows(self, step: int) -> None:
        """Keep the updates whose interval ends inside the last ADAPTIVE_WINDOW_STEPS steps."""
        cutoff = step - self.config.ADAPTIVE_WINDOW_STEPS
        self._weighting.prune(cutoff)
        self._perceptual_history = [e for e in self._perceptual_history if e[0] > cutoff]

    def _note_mode(self) -> None:
        mode = self.mode
        if mode != self._last_mode:
            self._event(self._step, f"mode {self._last_mode} -> {mode}")
            self._last_mode = mode

    def _event(self, step: int, text: str) -> None:
        self._events.append(f"step {step}: {text}")
        del self._events[:-MAX_EVENTS]

    # --- checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, lists and CPU tensors only (loads with torch.load(weights_only=True));
        one flat dict, the parts' entries included, as checkpoints have always held it."""
        return {
            "version": STATE_VERSION,
            "step": self._step,
            "best_loss": self._best_loss,
            "best_loss_step": self._best_loss_step,
            "best_quality": self._best_quality,
            "quality_stall": self._quality_stall,
            "plateau_counter": self._plateau_counter,
            "plateau_since": self._plateau_since,
            "boost_tried": self._boost_tried,
            "boost_ready_at": self._boost_ready_at,
            "resume_settle_until": self._resume_settle_until,
            "perceptual_history": [list(e) for e in self._perceptual_history],
            **self._weighting.state_dict(),
            **self._clip.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["version"]) != STATE_VERSION:
            raise ValueError(f"adaptive state version {state['version']} != {STATE_VERSION}")
        self._step = int(state["step"])
        self._best_loss = float(state["best_loss"])
        self._best_loss_step = int(state["best_loss_step"])
        self._best_quality = float(state["best_quality"])
        self._quality_stall = int(state["quality_stall"])
        self._plateau_counter = int(state["plateau_counter"])
        self._plateau_since = int(state["plateau_since"])
        self._boost_tried = bool(state["boost_tried"])
        self._boost_ready_at = int(state["boost_ready_at"])
        self._resume_settle_until = int(state["resume_settle_until"])
        self._perceptual_history = [[float(v) for v in e] for e in state["perceptual_history"]]
        self._weighting.load_state_dict(state)
        self._clip.load_state_dict(state)
        self.apply_config(self.config)  # the current config's bounds and ring length apply
        self._last_mode = self.mode
